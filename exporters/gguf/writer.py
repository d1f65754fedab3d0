"""Write one GGUF file with the `gguf` package: metadata, tokenizer, tensors."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as T

from toolchain.models import LoadedModel

from .hparams import add_hparams, architecture, check_widths, per_layer_widths
from .layout import read_layout
from .metadata import add_general, base_model, is_pruned
from .quants import QuantSpec, direct_type
from .tensors import model_tensors
from .tokenizer import add_tokenizer, source_gguf


def _encode(arr: np.ndarray, qtype: T) -> tuple[np.ndarray, T | None]:
    """(data, raw_dtype) for GGUFWriter.add_tensor."""
    if qtype == T.F32:
        return arr, None
    if qtype == T.F16:
        return arr.astype(np.float16), None
    return gguf.quants.quantize(arr, qtype), qtype


def write_gguf(loaded: LoadedModel, path: Path, spec: QuantSpec, recipe: dict | None,
               progress: bool = False) -> dict:
    """Write `loaded.model` to `path` at `spec` (a direct type); returns what was chosen."""
    model = loaded.model
    widths = per_layer_widths(model)
    check_widths(widths)
    arch = architecture(widths)
    src = source_gguf(loaded.source)
    source = read_layout(src, keep=lambda k: k.startswith(("general.", "tokenizer."))) if src else None
    vocab_size = int(model.model.embed_tokens.weight.shape[0])

    writer = gguf.GGUFWriter(path, arch)
    add_general(writer, base_model(loaded, source), is_pruned(model, widths), recipe, spec.file_type)
    add_hparams(writer, model, arch, widths)
    tokenizer_source = add_tokenizer(writer, loaded.tokenizer, vocab_size, source)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for name, arr in model_tensors(model):
        data, raw = _encode(arr, direct_type(spec, arr.shape))
        writer.add_tensor(name, data, raw_dtype=raw)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=progress)
    writer.close()
    return {"architecture": arch, "tokenizer_source": tokenizer_source,
            "pruned": is_pruned(model, widths), "widths": widths}
