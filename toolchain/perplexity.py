"""Perplexity with the usual protocol, for every backend.

The text is tokenised once (no special tokens), cut into non-overlapping
windows of `seqlen` tokens (the remainder is dropped), and each window is
scored independently: position i predicts token i+1. Backends only provide a
function from a window of token ids to its logits, so PyTorch, llama.cpp and
onnxruntime are measured the same way.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from .errors import UserError

LogitsFn = Callable[[Sequence[int]], np.ndarray]  # [n] ids -> [n, vocab] float logits


def token_windows(ids: Sequence[int], seqlen: int, max_windows: int | None = None) -> list[list[int]]:
    if seqlen < 2:
        raise UserError(f"--seqlen must be at least 2 (got {seqlen})")
    n = len(ids) // seqlen
    if n == 0:
        raise UserError(f"text has {len(ids)} tokens, fewer than one window of {seqlen}: "
                        "use a longer text or a smaller --seqlen")
    if max_windows:
        n = min(n, max_windows)
    return [list(ids[i * seqlen:(i + 1) * seqlen]) for i in range(n)]


def window_nll(logits: np.ndarray, window: Sequence[int]) -> float:
    """Summed negative log-likelihood of window[1:] given logits[:-1] (float64)."""
    lg = np.asarray(logits[: len(window) - 1], dtype=np.float64)
    lg = lg - lg.max(axis=-1, keepdims=True)
    logz = np.log(np.exp(lg).sum(axis=-1))
    target = lg[np.arange(len(window) - 1), np.asarray(window[1:])]
    return float((logz - target).sum())


def perplexity(logits_fn: LogitsFn, ids: Sequence[int], seqlen: int,
               max_windows: int | None = None, progress: bool = False) -> dict:
    """{"perplexity", "nll", "tokens", "windows", "seqlen"} over non-overlapping windows."""
    from tqdm import tqdm

    windows = token_windows(ids, seqlen, max_windows)
    total, count = 0.0, 0
    for w in tqdm(windows, desc="perplexity", unit="win", disable=not progress, leave=False):
        total += window_nll(logits_fn(w), w)
        count += len(w) - 1
    nll = total / count
    if not math.isfinite(nll):
        raise UserError("perplexity is not finite: the model produced NaN/Inf logits")
    return {"perplexity": math.exp(nll), "nll": nll, "tokens": count,
            "windows": len(windows), "seqlen": seqlen}


def torch_logits_fn(model, device: str = "cpu") -> LogitsFn:
    import torch

    def fn(window: Sequence[int]) -> np.ndarray:
        with torch.no_grad():
            ids = torch.tensor([list(window)], device=device)
            return model(ids).logits[0].float().cpu().numpy()

    return fn


def encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
