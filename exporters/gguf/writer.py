"""Write one GGUF file with the `gguf` package, one tensor at a time.

Every tensor's name, shape and type is known from the widths record before
any weight is read, so the header and tensor table are written first and the
data follows tensor by tensor (`add_tensor_info` / `write_tensor_data`):
memory holds one tensor, whatever the model's size.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T
from tqdm import tqdm

from toolchain.gguf_layout import read_layout
from toolchain.models import Model

from toolchain.gguf_names import choose_arch

from .bert import add_encoder_keys, plan_encoder_tensors
from .hparams import add_hparams
from .metadata import add_general, base_model
from .quants import QuantSpec, direct_type
from .tensors import check_representable, plan_tensors
from .tokenizer import add_tokenizer, source_gguf


def _encode(arr: np.ndarray, qtype: T) -> np.ndarray:
    """The bytes `write_tensor_data` writes for `arr` stored as `qtype`."""
    if qtype == T.F32:
        return np.ascontiguousarray(arr, dtype=np.float32)
    if qtype == T.F16:
        return arr.astype(np.float16)
    return gguf.quants.quantize(arr, qtype)


def _nbytes(shape: tuple[int, ...], qtype: T) -> int:
    block, type_size = GGML_QUANT_SIZES[qtype]
    rows = 1
    for s in shape[:-1]:
        rows *= s
    return rows * (shape[-1] // block) * type_size


def write_gguf(model: Model, path: Path, spec: QuantSpec, recipe: dict | None, progress: bool = False) -> dict:
    """Write `model` to `path` at `spec` (a direct type); returns what was chosen."""
    model.widths.check()
    arch = choose_arch(model.family, model.config, model.widths.is_uniform)
    check_representable(model, arch)
    src = source_gguf(model.source)
    source = read_layout(src, keep=lambda k: k.startswith(("general.", "tokenizer."))) if src else None

    writer = gguf.GGUFWriter(path, arch.name)
    add_general(writer, base_model(model, source), model.is_pruned, recipe, spec.file_type)
    if model.family.encoder:  # llama.cpp's bert: its own keys, vocabulary and embedding tensors
        tokenizer_source = add_encoder_keys(writer, model, arch)
        tensors = list(plan_encoder_tensors(model, arch))
    else:
        add_hparams(writer, model, arch)
        vocab_size = model.weights.shape(f"{model.family.embed}.weight")[0]
        tokenizer_source = add_tokenizer(writer, model.tokenizer, vocab_size, source)
        tensors = list(plan_tensors(model, arch))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    types = [direct_type(spec, t.shape, t.name) for t in tensors]
    for t, qtype in zip(tensors, types):
        writer.add_tensor_info(t.name, t.shape, np.dtype(np.float32), _nbytes(t.shape, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for t, qtype in tqdm(list(zip(tensors, types)), desc="gguf tensors", unit="tensor", disable=not progress,
                         leave=False):
        writer.write_tensor_data(_encode(t.load(), qtype))
    writer.close()
    return {"architecture": arch.name, "tokenizer_source": tokenizer_source, "pruned": model.is_pruned,
            "widths": model.widths.to_json()}
