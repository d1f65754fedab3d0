"""The layer walk: calibration hidden states stream through the model one layer at a time.

Every compression stage (statistics for the plan, LIAR / bias, sequential
reconstruction, local refinement, unstructured sparsity) plugs into this one
walk and none of them walks layers itself (docs/DESIGN.md §3). Per group of
consecutive layers (one layer, or K for block-wise refinement) the walk

  1. builds the layers from the source weights (nothing else of the model is
     in memory but the embeddings' output) and moves them to the device in
     float32,
  2. hands them to the stage with the hidden states that enter them — the
     dense stream (what the dense model computes) and the pruned stream (what
     the already-pruned earlier layers compute),
  3. takes the streams the stage leaves at the group's end, and passes the
     finished layers to a sink (a checkpoint written shard by shard, or memory).

Hidden states between layers stay on the CPU and travel to the device in
micro-batches, so the device holds one layer and one micro-batch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Protocol

import torch
from torch import nn
from tqdm import tqdm

from .models import Model


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the wanted input is captured."""


class Runner:
    """Runs one layer over all calibration sequences in micro-batches on `device`.

    `tokens` [n, L] marks real tokens (encoders' padded batches); statistics
    hooks only ever see those.
    """

    def __init__(self, model: Model, ids: torch.Tensor, device: torch.device, batch_size: int,
                 tokens: torch.Tensor | None = None):
        self.model, self.family, self.device, self.batch_size = model, model.family, device, batch_size
        self.tokens = tokens
        self._batch_tokens: torch.Tensor | None = None
        n, seqlen = ids.shape
        with torch.no_grad():
            self.hidden = model.part("embed")(ids).float()  # [n, L, hid] on the CPU
        self.pos_ids = torch.arange(seqlen, device=device).unsqueeze(0)
        rotary = model.skeleton.get_submodule(self.family.rotary) if self.family.rotary else None
        self._rotary = rotary.to(device) if rotary is not None else None
        self._contexts: dict[tuple, tuple] = {}
        self.seqlen = seqlen

    def context(self, i: int) -> tuple[torch.Tensor, torch.Tensor, object]:
        """(attention mask, position ids, position embeddings) for layer `i`."""
        kind = self.family.layer_type(self.model.config, i)
        window = self.family.sliding_window(self.model.config, i)
        key = (kind, window)
        if key not in self._contexts:
            mask = causal_mask(self.seqlen, window)[None, None].to(self.device)
            x = self.hidden[:1].to(self.device)
            pos_emb = (self.family.position_embeddings(self._rotary, x, self.pos_ids, kind)
                       if self._rotary is not None else None)
            self._contexts[key] = (mask, self.pos_ids, pos_emb)
        return self._contexts[key]

    def forward(self, i: int, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        _, pos, pos_emb = self.context(i)
        return self.family.call_layer(layer, x, self.layer_mask(i), pos, pos_emb)

    def layer_mask(self, i: int) -> torch.Tensor | None:
        """Layer `i`'s attention mask for the current micro-batch."""
        return self.family.batch_mask(self.context(i)[0], self._batch_tokens)

    def select(self, sl: slice | torch.Tensor) -> slice | torch.Tensor:
        """Make the sequences `sl` (a slice or index tensor) the current micro-batch: its real-token
        mask for hooks and encoder masks. Returns `sl`."""
        self._batch_tokens = self.tokens[sl].to(self.device) if self.tokens is not None else None
        return sl

    @property
    def real_tokens(self) -> torch.Tensor | None:
        """The current micro-batch's real tokens as a bool [b, L] mask (None: every position is real)."""
        return self._batch_tokens.bool() if self._batch_tokens is not None else None

    def batches(self, n: int) -> Iterator[slice]:
        for start in range(0, n, self.batch_size):
            yield self.select(slice(start, min(start + self.batch_size, n)))

    def run(self, i: int, layer: nn.Module, hidden: torch.Tensor, keep_output: bool = True
            ) -> torch.Tensor | None:
        """Forward `hidden` through layer `i`; hooks may raise _Stop to end a batch early."""
        outs = []
        with torch.no_grad():
            for sl in self.batches(hidden.shape[0]):
                try:
                    y = self.forward(i, layer, hidden[sl].to(self.device))
                except _Stop:
                    continue
                if keep_output:
                    outs.append(y.cpu())
        return torch.cat(outs) if keep_output else None

    def capture(self, module: nn.Module, sink: Callable[[torch.Tensor], None], stop: bool = False):
        """Pre-forward hook feeding the module's input (real tokens only) to `sink(x)`."""
        def hook(_mod, args):
            x = args[0]
            sink(x[self.real_tokens] if self._batch_tokens is not None else x)
            if stop:
                raise _Stop
        return module.register_forward_pre_hook(hook)

    def module_inputs(self, i: int, streams: list[tuple[str, nn.Module, nn.Module, torch.Tensor]]
                      ) -> Iterator[dict[str, torch.Tensor]]:
        """Per micro-batch, the input of each stream's module, keyed by the stream's name.

        A stream is (name, module inside `layer`, layer, the layer's input hidden states); the
        layer runs only up to the module. Streams are token-aligned, so their inputs pair up.
        """
        n = streams[0][3].shape[0]
        for start in range(0, n, self.batch_size):
            got: dict[str, torch.Tensor] = {}
            for name, module, layer, hidden in streams:
                hook = self.capture(module, lambda x, k=name: got.__setitem__(k, x), stop=True)
                try:
                    with torch.no_grad():
                        sl = self.select(slice(start, start + self.batch_size))
                        self.forward(i, layer, hidden[sl].to(self.device))
                except _Stop:
                    pass
                finally:
                    hook.remove()
            yield got


def causal_mask(seqlen: int, window: int | None = None) -> torch.Tensor:
    """Additive [L, L] mask: position q sees k ≤ q (and q − k < window for sliding layers)."""
    mask = torch.full((seqlen, seqlen), float("-inf")).triu(1)
    if window is not None:
        mask = mask.masked_fill(torch.ones(seqlen, seqlen, dtype=torch.bool).tril(-window), float("-inf"))
    return mask


@dataclass
class Step:
    """One layer as the walk hands it to a stage."""

    index: int
    layer: nn.Module  # float32 on the device; the stage prunes it in place (or replaces it)
    dense_in: torch.Tensor | None = None  # hidden states the dense model feeds this layer
    pruned_in: torch.Tensor | None = None  # ... and the already-pruned earlier layers
    dense_out: torch.Tensor | None = None  # left by the stage for the next layer
    pruned_out: torch.Tensor | None = None
    report: dict = field(default_factory=dict)


class Stage(Protocol):
    def __call__(self, steps: list[Step], runner: Runner) -> None:
        """Process a group of consecutive layers in place; chain the streams from each step's
        inputs to its outputs (the last step's outputs feed the next group)."""


class Sink(Protocol):
    def layer(self, i: int, layer: nn.Module) -> None: ...


def walk(model: Model, runner: Runner, stage: Stage, sink: Sink | None, desc: str, group: int = 1,
         progress: bool = True) -> list[dict]:
    """Run `stage` over every layer of `model`, `group` consecutive layers at a time.

    Returns the per-layer reports the stage wrote (with "layer" and "seconds").
    """
    n = model.num_layers
    dense_h = pruned_h = runner.hidden
    reports: list[dict] = []
    bar = tqdm(total=n, desc=desc, unit="layer", disable=not progress, leave=False)
    try:
        for first in range(0, n, group):
            start = time.perf_counter()
            steps = [Step(i, model.layer(i).to(runner.device, torch.float32))
                     for i in range(first, min(first + group, n))]
            steps[0].dense_in, steps[0].pruned_in = dense_h, pruned_h
            stage(steps, runner)
            dense_h, pruned_h = steps[-1].dense_out, steps[-1].pruned_out
            seconds = (time.perf_counter() - start) / len(steps)
            for s in steps:
                if sink is not None:
                    sink.layer(s.index, s.layer.to("cpu", model.dtype))
                reports.append({"layer": s.index, **s.report, "seconds": seconds})
                bar.update()
            del steps
    finally:
        bar.close()
    return reports
