"""llama.cpp's own quantiser, and the per-tensor fallbacks it (or we) had to make.

A quantised type stores rows in blocks (32 values for Q4_0/Q8_0, 256 for the
k-quants). A pruned layer's row length (its kept FFN width, or kept heads ×
head size) need not be a multiple of the block; such a tensor gets another
type (llama.cpp: Q4_K→Q5_0, Q5_K→Q5_1, Q6_K→Q8_0, F16 below 32). Fallbacks
are found by reading the written file back, so the report is what the file
really holds.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Iterator

import gguf

from .quants import QuantSpec


@contextlib.contextmanager
def _llama_log_level(level: int) -> Iterator[None]:
    """Temporarily filter llama.cpp's log (routed through this Python logger)."""
    logger = logging.getLogger("llama-cpp-python")
    old = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(old)


def llama_quantize(src: Path, dst: Path, spec: QuantSpec, n_threads: int | None = None,
                   verbose: bool = False) -> None:
    """Quantise the F32 GGUF `src` into `dst` with llama.cpp's default mix for `spec`."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(spec.file_type)
    params.nthread = n_threads or os.cpu_count() or 1
    with _llama_log_level(logging.DEBUG if verbose else logging.ERROR):
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama.cpp's quantiser failed on {src} (return code {rc})")


def tensor_types(path: Path) -> dict[str, int]:
    """How many tensors of each GGML type the file holds (for the summary)."""
    reader = gguf.GGUFReader(path)
    return dict(Counter(t.tensor_type.name for t in reader.tensors))


def find_fallbacks(path: Path, spec: QuantSpec) -> list[dict]:
    """2-D tensors that did not get the requested type because of their row length.

    A tensor whose rows *are* a multiple of the block but got a different type
    is llama.cpp's deliberate mix (e.g. Q6_K for some tensors in Q4_K_M), not a
    fallback, and is not listed.
    """
    reader = gguf.GGUFReader(path)
    out = []
    for t in reader.tensors:
        row = int(t.shape[0])  # ggml order: ne0 is the row length
        if len(t.shape) >= 2 and t.tensor_type != spec.ggml_type and row % spec.block:
            out.append({"tensor": t.name, "requested": spec.ggml_type.name,
                        "used": t.tensor_type.name, "row": row})
    return out


def report_fallbacks(fallbacks: list[dict], spec: QuantSpec) -> None:
    """One stderr line per (used type, row length) group."""
    groups = Counter((f["used"], f["row"]) for f in fallbacks)
    for (used, row), n in sorted(groups.items()):
        example = next(f["tensor"] for f in fallbacks if (f["used"], f["row"]) == (used, row))
        print(f"quantisation fallback: {n} tensor(s) with rows of {row} (not a multiple of "
              f"{spec.block}) stored as {used} instead of {spec.ggml_type.name}, e.g. {example}",
              file=sys.stderr)
