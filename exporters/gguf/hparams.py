"""Model hyper-parameters in llama.cpp's terms (`{arch}.*` keys).

Width keys are scalars for uniform widths and per-layer arrays otherwise (only the
per-layer architectures, deci, are given arrays: toolchain.gguf_names.choose_arch).
Head size and rope dimensions are always written explicitly: llama.cpp would
otherwise derive them from layer 0's head count (docs/DESIGN.md §5).
"""

from __future__ import annotations

import math

import gguf

from toolchain.errors import UserError
from toolchain.families import GGUFArch
from toolchain.models import Model

def rope_parameters(config, layer_type: str = "full_attention") -> dict:
    """The rope settings dict, whichever attribute this transformers version uses
    (per layer type where the config has one per type, as Gemma 3)."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    if isinstance(params.get(layer_type), dict):
        params = dict(params[layer_type])
    if "rope_theta" not in params and hasattr(config, "rope_theta"):
        params["rope_theta"] = config.rope_theta
    legacy = getattr(config, "rope_scaling", None)
    if legacy and "rope_type" not in params:
        params.update(legacy)
    return params


def llama3_rope_factors(params: dict, head_dim: int) -> list[float]:
    """Per-frequency divisors llama.cpp applies for llama3-style rope scaling
    (the `rope_freqs.weight` tensor), computed as convert_hf_to_gguf.py does."""
    base = float(params.get("rope_theta", 10000.0))
    factor = float(params.get("factor", 8.0))
    low, high = float(params.get("low_freq_factor", 1.0)), float(params.get("high_freq_factor", 4.0))
    old_ctx = float(params.get("original_max_position_embeddings", 8192))
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    factors = []
    for i in range(0, head_dim, 2):
        wavelen = 2 * math.pi * base ** (i / head_dim)
        if wavelen < high_wavelen:
            factors.append(1.0)
        elif wavelen > low_wavelen:
            factors.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            factors.append(1.0 / ((1 - smooth) / factor + smooth))
    return factors


def rotary_dims(config, head_dim: int) -> int:
    """Dimensions of each head that rope rotates (Phi-4-mini rotates 3/4 of them)."""
    return int(rope_parameters(config).get("partial_rotary_factor", 1.0) * head_dim)


def add_hparams(writer: gguf.GGUFWriter, model: Model, arch: GGUFArch) -> None:
    """Write `{arch}.*` keys: scalars for uniform widths, per-layer arrays otherwise."""
    config, widths = model.config, model.widths
    dims = model.dims
    head_dim = dims["head_dim"]
    pick = (lambda v: v[0]) if not arch.per_layer else list
    writer.add_block_count(len(widths))
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(dims["hidden_size"])
    writer.add_feed_forward_length(pick(widths.column("intermediate_size")))
    writer.add_head_count(pick(widths.column("num_attention_heads")))
    writer.add_head_count_kv(pick(widths.column("num_key_value_heads")))
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(rotary_dims(config, head_dim))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(int(config.vocab_size))
    params = rope_parameters(config)
    writer.add_rope_freq_base(float(params.get("rope_theta", 10000.0)))
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(params["factor"]))
    elif rope_type not in ("default", "llama3"):  # llama3 travels as the rope_freqs tensor
        raise UserError(f"rope type {rope_type!r} is not supported by the GGUF exporter "
                        "(supported: default, linear, llama3)")
    EXTRA_KEYS.get(arch.name, lambda w, m: None)(writer, model)


def _gemma3_keys(writer: gguf.GGUFWriter, model: Model) -> None:
    """Sliding-window layers (an explicit per-layer pattern: llama.cpp's default is every 6th
    layer global), their own rope base, and the optional final soft-cap."""
    config = model.config
    types = [model.family.layer_type(config, i) for i in range(model.num_layers)]
    if "sliding_attention" in types:
        writer.add_sliding_window(int(config.sliding_window))
        writer.add_sliding_window_pattern([t == "sliding_attention" for t in types])
        writer.add_rope_freq_base_swa(float(rope_parameters(config, "sliding_attention").get("rope_theta", 10000.0)))
    if getattr(config, "final_logit_softcapping", None):
        writer.add_final_logit_softcapping(float(config.final_logit_softcapping))
    if getattr(config, "attn_logit_softcapping", None):
        raise UserError("llama.cpp's gemma3 architecture has no attention soft-capping "
                        "(attn_logit_softcapping is set in this config)")


EXTRA_KEYS = {"gemma3": _gemma3_keys}
