"""GGUF: which llama.cpp architecture a model is written as, its tensor names, and the
array transforms between HF and llama.cpp layouts (docs/DESIGN.md §5).

Defined once, used both ways: the GGUF exporter writes `hf → gguf` for the chosen
architecture; opening a .gguf model reads `gguf → hf` for the family's native one
(what convert_hf_to_gguf writes). A family lists its architectures
(`Family.gguf`, `toolchain/families`); the three global tensors are the same everywhere.

Transforms: llama.cpp's NORM rope rotates adjacent pairs where HF rotates two
halves, so q/k rows are permuted per head for architectures that use it
(convert_hf_to_gguf.py `LlamaModel.permute`), each layer with its own head
count; Gemma's RMSNorm multiplies by (1 + w) and llama.cpp stores 1 + w.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .errors import UserError
from .families import Family, GGUFArch

GLOBAL = {"embed": "token_embd", "norm": "output_norm", "head": "output"}
ROPE_FREQS = "rope_freqs.weight"


def choose_arch(family: Family, config, uniform: bool) -> GGUFArch:
    """The first of the family's architectures that can hold these widths, or one clear line."""
    candidates = family.gguf_candidates(config)
    if not candidates:
        raise UserError(f"llama.cpp has no architecture for model type {family.model_type!r}: "
                        "export --to onnx or --to hf")
    for arch in candidates:
        if uniform or arch.per_layer:
            return arch
    names = "/".join(a.name for a in candidates)
    raise UserError(f"llama.cpp's {names} architecture builds every layer from layer 0's head count and FFN "
                    f"width, and this {family.model_type} model has per-layer widths: prune it with "
                    "--allocation uniform to export GGUF (ONNX and HF checkpoints keep per-layer widths)")


def rope_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Rows of one q/k projection (or its bias) from HF half-split to llama.cpp pair order."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def rope_unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse of `rope_permute`."""
    return (w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def global_names(family: Family) -> dict[str, str]:
    """HF module → GGUF name (without .weight) outside the layers."""
    return {family.embed: GLOBAL["embed"], family.final_norm: GLOBAL["norm"], family.lm_head: GLOBAL["head"]}


def is_norm(family: Family, module: str) -> bool:
    return module in family.norms or module in family.head_norms or module == family.final_norm


def split_layer_name(family: Family, name: str) -> tuple[int | None, str]:
    """"model.layers.3.self_attn.q_proj" → (3, "self_attn.q_proj"); outside the layers (None, name)."""
    prefix = family.layers + "."
    if not name.startswith(prefix):
        return None, name
    index, _, local = name[len(prefix):].partition(".")
    return int(index), local


def rope_heads(family: Family, arch: GGUFArch, module: str, heads: int, kv_heads: int) -> int | None:
    """Heads whose rows a rope permutation reorders in (unfused) `module` (None: not permuted)."""
    if not arch.rope_permute:
        return None
    return {family.q: heads, family.k: kv_heads}.get(module)


def gguf_to_hf(config, family: Family) -> tuple[dict[str, str], Callable[[str, np.ndarray], np.ndarray]]:
    """(GGUF name → HF name, transform from a GGUF array to the HF one) for a dense file in the
    family's native architecture."""
    arch = family.gguf_native
    if arch is None:
        raise UserError(f"GGUF files of model type {family.model_type!r} cannot be read: pass a HF directory")
    dims = family.dims(config)
    names: dict[str, str] = {}
    for hf, gg in global_names(family).items():
        names[f"{gg}.weight"] = f"{hf}.weight"
    for i in range(dims["num_layers"]):
        for module, gg in arch.tensors.items():
            for kind in ("weight", "bias"):
                names[f"blk.{i}.{gg}.{kind}"] = f"{family.layers}.{i}.{module}.{kind}"

    def transform(hf_name: str, arr: np.ndarray) -> np.ndarray:
        local = split_layer_name(family, hf_name.rpartition(".")[0])[1]
        heads = rope_heads(family, arch, local, dims["num_heads"], dims["num_kv_heads"])
        if heads is not None:
            arr = rope_unpermute(arr, heads)
        if arch.norm_offset and is_norm(family, local):
            arr = arr - arch.norm_offset
        return arr

    return names, transform
