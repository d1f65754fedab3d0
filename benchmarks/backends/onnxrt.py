"""onnxruntime through the exporter's OnnxDecoder (prefill + present→past decode).

The tokenizer comes from the tokenizer.json the ONNX exporter writes next to
the graph, read with `tokenizers` so the worker does not need transformers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from toolchain.errors import UserError


class OnnxBackend:
    def __init__(self, path: Path, device: str, threads: int, n_ctx: int, for_logits: bool):
        self.path, self.device, self.threads = path, device, threads
        self.decoder = self.cache = None

    def load(self) -> None:
        import onnxruntime as ort
        from exporters.onnx.runtime import OnnxDecoder

        providers = None
        if self.device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise UserError("--device cuda: this onnxruntime has no CUDAExecutionProvider; "
                                "install onnxruntime-gpu or use --device cpu")
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        self.decoder = OnnxDecoder(self.path, providers=providers, threads=self.threads)
        if self.device == "cuda" and self.decoder.providers[0] != "CUDAExecutionProvider":
            raise UserError(f"onnxruntime could not place {self.path} on CUDA "
                            f"(providers: {', '.join(self.decoder.providers)})")

    def tokenize(self, text: str) -> list[int]:
        from tokenizers import Tokenizer

        tok_file = self.path.parent / "tokenizer.json"
        if not tok_file.is_file():
            raise UserError(f"{self.path.parent} has no tokenizer.json: benchmark the whole ONNX "
                            "export directory written by liar-export")
        return list(Tokenizer.from_file(str(tok_file)).encode(text, add_special_tokens=False).ids)

    def prefill(self, ids: Sequence[int]) -> int:
        logits, self.cache = self.decoder.prefill(ids)
        return int(np.argmax(logits[-1]))

    def step(self, token: int) -> int:
        logits, self.cache = self.decoder.decode(token, self.cache)
        return int(np.argmax(logits))

    def logits(self, window: Sequence[int]) -> np.ndarray:
        return self.decoder.logits(window)

    def peak_gpu_bytes(self) -> int | None:
        from ..gpu import process_gpu_bytes

        return process_gpu_bytes() if self.device == "cuda" else None
