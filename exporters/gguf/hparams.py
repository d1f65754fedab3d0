"""Architecture choice and model hyper-parameters in llama.cpp's terms.

llama.cpp's `llama` architecture builds every layer from layer 0's widths, so
a model whose layers differ is written as `deci` (Nemotron-51B's
architecture), which reads per-layer arrays for head counts and FFN length
everywhere and uses the same tensor names. Head size and rope dimensions are
always written explicitly: `deci` would otherwise derive them from layer 0.
"""

from __future__ import annotations

import math

import gguf

from toolchain.errors import UserError
from toolchain.models import model_dims
from toolchain.surgery import layer_widths


def per_layer_widths(model) -> dict[str, list[int]]:
    """Plain-int lists (the gguf writer rejects numpy ints) of kept widths per layer."""
    widths = layer_widths(model)
    return {"head_count": [int(w["num_attention_heads"]) for w in widths],
            "head_count_kv": [int(w["num_key_value_heads"]) for w in widths],
            "feed_forward_length": [int(w["intermediate_size"]) for w in widths]}


def check_widths(widths: dict[str, list[int]]) -> None:
    """Refuse layers llama.cpp cannot run correctly (DESIGN.md §5 traps).

    The compression stage never produces them (PruningPlan.validate); this
    guards hand-edited checkpoints.
    """
    for i, (nh, nkv, ff) in enumerate(zip(widths["head_count"], widths["head_count_kv"],
                                          widths["feed_forward_length"])):
        if nh < 1 or nkv < 1 or ff < 1:
            raise UserError(f"layer {i} keeps {nh} heads, {nkv} KV heads and {ff} FFN channels: "
                            "llama.cpp needs at least one of each per layer (lower --sparsity)")
        if nh % nkv:
            raise UserError(f"layer {i} has {nh} query heads for {nkv} KV heads: "
                            "llama.cpp needs n_head % n_head_kv == 0")


def architecture(widths: dict[str, list[int]]) -> str:
    """`llama` when every layer has the same widths, else `deci`."""
    uniform = all(len(set(v)) == 1 for v in widths.values())
    return "llama" if uniform else "deci"


def rope_parameters(config) -> dict:
    """The rope settings dict, whichever attribute this transformers version uses."""
    params = dict(getattr(config, "rope_parameters", None) or {})
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


def add_hparams(writer: gguf.GGUFWriter, model, arch: str, widths: dict[str, list[int]]) -> None:
    """Write `{arch}.*` keys: scalars for `llama`, per-layer arrays for `deci`."""
    config = model.config
    dims = model_dims(config)
    head_dim = dims["head_dim"]
    pick = (lambda v: v[0]) if arch == "llama" else list
    writer.add_block_count(dims["num_layers"])
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(dims["hidden_size"])
    writer.add_feed_forward_length(pick(widths["feed_forward_length"]))
    writer.add_head_count(pick(widths["head_count"]))
    writer.add_head_count_kv(pick(widths["head_count_kv"]))
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
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
