"""The model's weights as GGUF tensors: names, shapes and llama.cpp's layout, planned
before any data is read so the file can be written one tensor at a time.

Names come from the chosen architecture's table (toolchain.families, toolchain.gguf_names).
q/k rows are permuted per head for architectures with llama.cpp's NORM rope, each layer
with its *own* kept head count (pruned layers differ); fused projections are split where
the architecture wants separate tensors; norm weights get the architecture's offset
(Gemma stores 1 + w).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

from toolchain.errors import UserError
from toolchain.families import GGUFArch
from toolchain.gguf_names import ROPE_FREQS, global_names, is_norm, rope_heads, rope_permute
from toolchain.models import Model

from .hparams import llama3_rope_factors, rope_parameters

Transform = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class PlannedTensor:
    """One tensor of the file: its GGUF name, numpy shape, and how to produce its data."""

    name: str
    shape: tuple[int, ...]  # numpy order: shape[-1] is the GGUF row
    load: Callable[[], np.ndarray]  # float32 data in llama.cpp's layout


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float32).cpu().contiguous().numpy()


def embeddings_tied(model: Model) -> bool:
    """True when the LM head is the token embedding (then no output.weight is written)."""
    head = f"{model.family.lm_head}.weight"
    if head not in set(model.weights.names()):
        return True
    return model.tied() or torch.equal(model.weights.get(head), model.weights.get(f"{model.family.embed}.weight"))


def _loader(model: Model, hf_name: str, transform: Transform | None = None, rows: slice | None = None):
    def load() -> np.ndarray:
        arr = _np(model.weights.get(hf_name))
        if rows is not None:
            arr = np.ascontiguousarray(arr[rows])
        return transform(arr) if transform is not None else arr
    return load


def attention_scale_factor(model: Model) -> float:
    """Gemma 3: what llama.cpp's attention scale must be multiplied by to equal the model's
    query_pre_attn_scalar^-1/2. llama.cpp uses 1/sqrt(key_length), or 1/sqrt(n_embd / n_head(0))
    for 62-layer (27B) models, and never reads query_pre_attn_scalar; the factor is folded
    into attn_q_norm (which precedes rope, a linear map), exactly."""
    d, config = model.dims, model.config
    wanted = float(config.query_pre_attn_scalar) ** -0.5
    heads0 = model.widths[0].num_attention_heads
    used = (d["hidden_size"] / heads0) ** -0.5 if model.num_layers == 62 else d["head_dim"] ** -0.5
    return wanted / used


def _norm_transform(arch: GGUFArch, scale: float = 1.0) -> Transform | None:
    if not arch.norm_offset and scale == 1.0:
        return None
    return lambda a: (a + arch.norm_offset) * scale


def _layer_tensors(model: Model, arch: GGUFArch, i: int, names: set[str]) -> Iterator[PlannedTensor]:
    family, w = model.family, model.widths[i]
    prefix = model.layer_prefix(i)
    q_scale = attention_scale_factor(model) if arch.name == "gemma3" else 1.0
    for module, gg in arch.tensors.items():
        for kind in ("weight", "bias"):
            hf = f"{prefix}{module}.{kind}"
            if hf not in names:
                continue
            shape = model.weights.shape(hf)
            if isinstance(gg, tuple):  # a fused projection written as its parts
                yield from _split(model, arch, i, module, gg, kind, hf, shape)
                continue
            if is_norm(family, module):
                transform = _norm_transform(arch, q_scale if module == "self_attn.q_norm" else 1.0)
            else:
                heads = rope_heads(family, arch, module, w.num_attention_heads, w.num_key_value_heads)
                transform = (lambda a, h=heads: rope_permute(a, h)) if heads is not None else None
            yield PlannedTensor(f"blk.{i}.{gg}.{kind}", shape, _loader(model, hf, transform))


def _split(model: Model, arch: GGUFArch, i: int, module: str, parts: tuple[str, ...], kind: str, hf: str,
           shape: tuple[int, ...]) -> Iterator[PlannedTensor]:
    """[q | k | v] or [gate | up] rows of a fused projection as separate tensors."""
    w = model.widths[i]
    d = w.head_dim
    if module == model.family.qkv:
        sizes = [w.num_attention_heads * d, w.num_key_value_heads * d, w.num_key_value_heads * d]
        heads = [w.num_attention_heads, w.num_key_value_heads, None] if arch.rope_permute else [None] * 3
    else:
        sizes, heads = [w.intermediate_size] * 2, [None, None]
    start = 0
    for gg, size, h in zip(parts, sizes, heads):
        transform = (lambda a, n=h: rope_permute(a, n)) if h is not None else None
        yield PlannedTensor(f"blk.{i}.{gg}.{kind}", (size, *shape[1:]),
                            _loader(model, hf, transform, slice(start, start + size)))
        start += size


def plan_tensors(model: Model, arch: GGUFArch) -> Iterator[PlannedTensor]:
    """Every tensor llama.cpp consumes, nothing more (it refuses a file with unused tensors),
    in file order; biases only where the model has them."""
    family, names = model.family, set(model.weights.names())
    glob = global_names(family)
    embed = f"{family.embed}.weight"
    yield PlannedTensor(f"{glob[family.embed]}.weight", model.weights.shape(embed), _loader(model, embed))
    params = rope_parameters(model.config)
    if params.get("rope_type") == "llama3":
        factors = np.asarray(llama3_rope_factors(params, model.dims["head_dim"]), dtype=np.float32)
        yield PlannedTensor(ROPE_FREQS, factors.shape, lambda: factors)
    for i in range(model.num_layers):
        yield from _layer_tensors(model, arch, i, names)
    if family.final_norm:
        hf = f"{family.final_norm}.weight"
        yield PlannedTensor(f"{glob[family.final_norm]}.weight", model.weights.shape(hf),
                            _loader(model, hf, _norm_transform(arch)))
    if not embeddings_tied(model):
        hf = f"{family.lm_head}.weight"
        yield PlannedTensor(f"{glob[family.lm_head]}.weight", model.weights.shape(hf), _loader(model, hf))


def check_representable(model: Model, arch: GGUFArch) -> None:
    """A model holding tensors the architecture never loads would be refused by llama.cpp
    ("wrong number of tensors"): say which, and how to avoid them, before writing."""
    heads = model.dims["num_heads"]
    for i, w in enumerate(model.widths):
        if not arch.heads and w.num_attention_heads != heads:
            raise UserError(f"layer {i} keeps {w.num_attention_heads} of {heads} query heads, and llama.cpp's "
                            f"{arch.name} architecture keeps every head: compress with --prune ffn")
    if arch.biases:
        return
    for i, w in enumerate(model.widths):
        if w.o_proj_bias or w.down_proj_bias:
            raise UserError(f"layer {i} has an o_proj / down_proj bias, which llama.cpp's {arch.name} architecture "
                            "does not load: compress with --to gguf in the same run (reconstruction then adds "
                            "none), or export --to onnx / hf")
