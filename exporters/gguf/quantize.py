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
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import IO, Iterator

from toolchain.cpus import usable_cpus
from toolchain.gguf_layout import read_layout
from .quants import FLOAT_ONLY, QuantSpec


@contextlib.contextmanager
def _native_stderr_to(sink: IO[bytes]) -> Iterator[None]:
    """Send file descriptor 2 (where llama.cpp's C code logs) to `sink` for a while."""
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(sink.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def llama_quantize(src: Path, dst: Path, spec: QuantSpec, n_threads: int | None = None) -> None:
    """Quantise the F32 GGUF `src` into `dst` with llama.cpp's default mix for `spec`.

    llama.cpp's per-tensor log is captured (our own fallback report replaces
    it) and only shown if the quantiser fails.
    """
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(spec.file_type)
    params.nthread = n_threads or usable_cpus()
    with tempfile.TemporaryFile() as log:
        with _native_stderr_to(log):
            rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(),
                                                ctypes.byref(params))
        if rc != 0:
            log.seek(0)
            tail = log.read().decode("utf-8", "replace").strip().splitlines()[-5:]
            raise RuntimeError(f"llama.cpp's quantiser failed on {src} (return code {rc}): "
                               + " | ".join(tail))


def inspect_types(path: Path, spec: QuantSpec) -> tuple[dict[str, int], list[dict]]:
    """(tensor count per GGML type, fallbacks) of the written file.

    A fallback is a 2-D tensor that did not get the requested type *and* whose
    row length is not a multiple of that type's block. "requested" is the
    `--quant` base type: where llama.cpp's mix first asked for a higher type
    (Q6_K for some attn_v) the entry shows what the tensor finally got. A tensor whose rows fit
    but got another type is llama.cpp's deliberate mix (e.g. Q6_K for some
    tensors in Q4_K_M), not a fallback, and is not listed.
    """
    tensors = read_layout(path, keep=lambda key: False).tensors
    fallbacks = []
    for t in tensors:
        row = t.shape[0]
        if len(t.shape) >= 2 and t.type != spec.ggml_type and row % spec.block and t.name not in FLOAT_ONLY:
            fallbacks.append({"tensor": t.name, "requested": spec.ggml_type.name,
                              "used": t.type.name, "row": row})
    return dict(Counter(t.type.name for t in tensors)), fallbacks


def group_fallbacks(fallbacks: list[dict]) -> list[dict]:
    """Fallbacks counted per (requested → used type, row length), with one example tensor each:
    what a reader needs (a per-tensor list runs to hundreds of lines on a pruned model)."""
    groups: dict[tuple, dict] = {}
    for f in fallbacks:
        key = (f["requested"], f["used"], f["row"])
        if key not in groups:
            groups[key] = {"requested": f["requested"], "used": f["used"], "row": f["row"], "count": 0,
                           "example": f["tensor"]}
        groups[key]["count"] += 1
    return [groups[k] for k in sorted(groups)]


def report_fallbacks(fallbacks: list[dict], spec: QuantSpec) -> None:
    """One stderr line per (used type, row length) group."""
    for g in group_fallbacks(fallbacks):
        print(f"quantisation fallback: {g['count']} tensor(s) with rows of {g['row']} (not a multiple of "
              f"{spec.block}) stored as {g['used']} instead of {g['requested']}, e.g. {g['example']}",
              file=sys.stderr)
