"""Runtime backends: one per artifact format, all with the same small interface.

A backend loads an artifact in the runtime users deploy with and offers what
the benchmark measures: tokenize, prefill a prompt, decode one token at a
time (greedy), logits of a window (for perplexity) and peak GPU memory.
Runtimes are imported lazily so a llama.cpp worker never pays for torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from toolchain.errors import UserError


class Backend(Protocol):
    def load(self) -> None:
        """Open the artifact (the benchmark times this call)."""

    def tokenize(self, text: str) -> list[int]: ...

    def prefill(self, ids: Sequence[int]) -> int:
        """Start a fresh sequence with `ids`; return the greedy next token."""

    def step(self, token: int) -> int:
        """Append one token to the sequence; return the greedy next token."""

    def logits(self, window: Sequence[int]) -> np.ndarray:
        """[n, vocab] logits of a fresh sequence (needs `for_logits=True`)."""

    def peak_gpu_bytes(self) -> int | None: ...


# imported before the memory baseline is taken, so peak RSS minus that baseline
# is what loading and running the model cost, not the interpreter and libraries
RUNTIME_MODULES = {"gguf": ("llama_cpp", "exporters.llamacpp"),
                   "onnx": ("onnxruntime", "tokenizers", "exporters.onnx.runtime"),
                   "checkpoint": ("torch", "transformers", "toolchain.models"),
                   "hf": ("torch", "transformers", "toolchain.models")}


def preload(fmt: str) -> None:
    import importlib

    for name in RUNTIME_MODULES.get(fmt, ()):
        importlib.import_module(name)


def open_backend(path: str | Path, fmt: str, device: str, threads: int, n_ctx: int,
                 for_logits: bool = False) -> Backend:
    """The backend for an artifact format (see benchmarks.inventory.backend_of)."""
    if fmt == "gguf":
        from .llamacpp import LlamaCppBackend
        return LlamaCppBackend(Path(path), device, threads, n_ctx, for_logits)
    if fmt == "onnx":
        from .onnxrt import OnnxBackend
        return OnnxBackend(Path(path), device, threads, n_ctx, for_logits)
    if fmt in ("checkpoint", "hf"):
        from .torch_eager import TorchBackend
        return TorchBackend(Path(path), device, threads, n_ctx, for_logits)
    raise UserError(f"no backend for artifact format {fmt!r}")
