"""PyTorch eager on a liar-export checkpoint or a Hugging Face directory:
the reference the exported runtimes are compared with."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from toolchain.errors import UserError


class TorchBackend:
    def __init__(self, path: Path, device: str, threads: int, n_ctx: int, for_logits: bool):
        self.path, self.device, self.threads = path, device, threads
        self.model = self.tokenizer = self.past = None

    def load(self) -> None:
        import torch

        from toolchain.models import open_model

        torch.set_num_threads(self.threads)
        if self.device == "cuda" and not torch.cuda.is_available():
            raise UserError("--device cuda: this PyTorch has no CUDA; install a CUDA build or use --device cpu")
        opened = open_model(str(self.path))
        self.model, self.tokenizer = opened.module().to(self.device), opened.tokenizer
        self._sync()

    def _sync(self) -> None:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()

    def _forward(self, ids: Sequence[int], past=None):
        import torch

        from toolchain.models import cache_keyword

        with torch.no_grad():
            x = torch.tensor([list(ids)], device=self.device)
            out = self.model(x, use_cache=True, **{cache_keyword(self.model): past})
        self._sync()
        return out

    def tokenize(self, text: str) -> list[int]:
        from toolchain.perplexity import encode

        return encode(self.tokenizer, text)

    def prefill(self, ids: Sequence[int]) -> int:
        out = self._forward(ids)
        self.past = out.past_key_values
        return int(out.logits[0, -1].argmax())

    def step(self, token: int) -> int:
        out = self._forward([token], self.past)
        self.past = out.past_key_values
        return int(out.logits[0, -1].argmax())

    def logits(self, window: Sequence[int]) -> np.ndarray:
        import torch

        with torch.no_grad():
            x = torch.tensor([list(window)], device=self.device)
            return self.model(x, use_cache=False).logits[0].float().cpu().numpy()

    def peak_gpu_bytes(self) -> int | None:
        import torch

        return int(torch.cuda.max_memory_allocated()) if self.device == "cuda" else None
