"""`export_gguf`: write, quantise, verify, then publish atomically.

The file is verified *before* it is renamed into place, so `out_path` only ever
holds a verified artifact (or, with verify=False, a complete unverified one).
A file that fails verification is kept for inspection as `OUT.failed` — a name
no tool mistakes for a model to ship — and any previous `out_path` is left
untouched; VerificationError then carries the summary as `.summary`.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from toolchain.atomic import atomic_path
from toolchain.errors import UserError, VerificationError
from toolchain.models import Model
from toolchain.texts import heldout_text

from .bert import verify_encoder_gguf
from .quantize import inspect_types, llama_quantize, report_fallbacks
from .quants import DEFAULT_QUANT, QUANT_SPECS, QuantSpec, quant_spec
from .verify import verify_gguf
from .writer import write_gguf


def _say(progress: bool, msg: str) -> None:
    if progress:
        print(msg, file=sys.stderr, flush=True)


def _write(model: Model, tmp: Path, spec: QuantSpec, recipe: dict | None, progress: bool,
           n_threads: int | None) -> dict:
    """Write `tmp` at `spec`: directly, or via an F32 intermediate (streamed to disk, then
    read by llama.cpp's quantiser tensor by tensor) for the llama.cpp-quantised types."""
    if not spec.via_llama:
        return write_gguf(model, tmp, spec, recipe, progress)
    fd, name = tempfile.mkstemp(prefix=f".{tmp.name}.f32-", dir=tmp.parent)
    os.close(fd)
    intermediate = Path(name)
    try:
        info = write_gguf(model, intermediate, QUANT_SPECS["f32"], recipe, progress)
        _say(progress, f"quantising to {spec.name} with llama.cpp")
        llama_quantize(intermediate, tmp, spec, n_threads)
        return info
    finally:
        intermediate.unlink(missing_ok=True)


def export_gguf(model: Model, out_path: str | Path, quant: str = DEFAULT_QUANT,
                recipe: dict | None = None, verify: bool = True, verify_text: str | None = None,
                verify_seqlen: int = 256, progress: bool = True, verify_windows: int = 4,
                n_threads: int | None = None) -> dict:
    """Export `model` (dense or pruned) to a GGUF file llama.cpp runs; returns a JSON-able summary.

    Uniform widths give the family's llama.cpp architecture, per-layer widths its
    per-layer one (llama → `deci`). The recipe defaults to the checkpoint's own
    (`model.meta["recipe"]`).
    Verification runs `verify_windows` windows of `verify_seqlen` tokens of
    `verify_text` (default: the held-out legal text) through both runtimes.
    """
    spec = quant_spec(quant)
    out_path = Path(out_path)
    if out_path.is_dir():
        raise UserError(f"output {out_path} is a directory: give a file name such as model.gguf")
    if recipe is None:
        recipe = model.meta.get("recipe")
    failed_path = out_path.with_name(out_path.name + ".failed")
    with atomic_path(out_path) as tmp:
        _say(progress, f"writing {out_path} ({spec.name})")
        info = _write(model, tmp, spec, recipe, progress, n_threads)
        types, fallbacks = inspect_types(tmp, spec)
        report_fallbacks(fallbacks, spec)
        summary = {"path": str(out_path), "bytes": tmp.stat().st_size,
                   "architecture": info["architecture"], "quant": spec.name,
                   "pruned": info["pruned"], "tokenizer_source": info["tokenizer_source"],
                   "tensor_types": types, "fallbacks": fallbacks,
                   "widths": info["widths"]}
        if verify:
            _say(progress, "verifying against PyTorch (llama.cpp" + (" embeddings)" if model.family.encoder
                                                                      else ", F32 KV cache)"))
            text = verify_text if verify_text is not None else heldout_text()
            if model.family.encoder:
                summary.update(verify_encoder_gguf(model, tmp, spec, text, n_threads))
            else:
                summary.update(verify_gguf(model, tmp, spec, text, verify_seqlen, verify_windows,
                                           info["tokenizer_source"] == "hf", n_threads))
            if not summary["passed"]:
                os.replace(tmp, failed_path)
                summary["path"] = str(failed_path)
                err = VerificationError(f"GGUF verification failed ({'; '.join(summary['failures'])}); "
                                        f"the file was kept as {failed_path}")
                err.summary = summary
                raise err
    failed_path.unlink(missing_ok=True)  # a stale failure from an earlier run no longer applies
    return summary
