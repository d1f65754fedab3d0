"""llama.cpp through llama-cpp-python, configured as a deployment would run it.

Speed runs use llama.cpp's defaults (F16 KV cache, batch 512, all layers on
the GPU with --device cuda); perplexity goes through the exporter's shared
helpers (F32 KV cache, all logits, on the CPU), so quality numbers match the
exporter's parity checks and `liar-eval`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from toolchain.errors import UserError


class LlamaCppBackend:
    def __init__(self, path: Path, device: str, threads: int, n_ctx: int, for_logits: bool):
        self.path, self.device, self.threads, self.n_ctx = path, device, threads, n_ctx
        self.for_logits = for_logits
        self.llm = None

    def load(self) -> None:
        import llama_cpp

        from exporters.llamacpp import open_llama

        if self.for_logits:
            self.llm = open_llama(self.path, n_ctx=self.n_ctx, n_threads=self.threads)
            return
        # the file was already checked (exporters.llamacpp.check_gguf_file) by the parent,
        # outside the timed load
        gpu_layers = 0
        if self.device == "cuda":
            if not llama_cpp.llama_supports_gpu_offload():
                raise UserError("--device cuda: this llama-cpp-python was built without GPU offload; "
                                "reinstall it with CMAKE_ARGS=-DGGML_CUDA=on or use --device cpu")
            gpu_layers = -1
        try:
            self.llm = llama_cpp.Llama(str(self.path), n_ctx=self.n_ctx, n_threads=self.threads,
                                       n_threads_batch=self.threads, n_gpu_layers=gpu_layers,
                                       verbose=False)
        except (ValueError, RuntimeError) as e:
            raise UserError(f"llama.cpp cannot load {self.path}: {e}") from None

    def tokenize(self, text: str) -> list[int]:
        from exporters.llamacpp import llama_tokenize

        return llama_tokenize(self.llm, text)

    def _greedy(self) -> int:
        import llama_cpp

        row = llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
        return int(np.ctypeslib.as_array(row, shape=(self.llm.n_vocab(),)).argmax())

    def prefill(self, ids: Sequence[int]) -> int:
        self.llm.reset()
        self.llm.eval(list(ids))
        return self._greedy()

    def step(self, token: int) -> int:
        self.llm.eval([token])
        return self._greedy()

    def logits(self, window: Sequence[int]) -> np.ndarray:
        from exporters.llamacpp import llama_logits_fn

        return llama_logits_fn(self.llm)(window)

    def peak_gpu_bytes(self) -> int | None:
        from ..gpu import process_gpu_bytes

        return process_gpu_bytes() if self.device == "cuda" else None
