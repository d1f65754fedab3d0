"""PyTorch reference logits computed layer by layer: the yardstick for every export.

Verification and `liar-eval` need the PyTorch model's logits on a few held-out
windows. Building the whole model for that would undo the bounded memory of
the compression walk, so the windows are pushed through one layer at a time
(the same `Runner` the walk uses), then through the final norm and the head.
On small models this agrees with the transformers forward to float32
rounding (a test checks it).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .models import Model
from .walk import Runner


class ReferenceLogits:
    """A logits function over fixed `windows` (token id lists of equal length)."""

    def __init__(self, model: Model, windows: Sequence[Sequence[int]], device: torch.device | None = None,
                 batch_size: int = 4):
        device = device or torch.device("cpu")
        self._index = {tuple(w): k for k, w in enumerate(windows)}
        runner = Runner(model, torch.tensor([list(w) for w in windows], dtype=torch.long), device, batch_size)
        hidden = runner.hidden
        for i in range(model.num_layers):
            layer = model.layer(i).to(device, torch.float32)
            hidden = runner.run(i, layer, hidden)
            del layer
        self.hidden, self.device, self.family = hidden, device, model.family
        self.norm = model.part("norm").to(device, torch.float32) if model.family.final_norm else None
        self.head = model.part("head").to(device, torch.float32)
        self.config = model.config

    def __call__(self, window: Sequence[int]) -> np.ndarray:
        """[n, vocab] float32 logits of one of the windows given at construction."""
        h = self.hidden[self._index[tuple(window)]][None].to(self.device)
        with torch.no_grad():
            if self.norm is not None:
                h = self.norm(h)
            logits = self.family.final_logits(self.config, self.head(h))
        return logits[0].float().cpu().numpy()
