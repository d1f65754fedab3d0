"""Local reconstruction: refine each pruned submodel to reproduce the dense model's outputs.

After pruning (and optionally LIAR's closed-form repair), the model is cut into
small submodels — one attention or MLP module, one decoder block, or K
consecutive blocks. Each pruned submodel is trained for a few AdamW steps
(linear warm-up, linear decay) so that its output matches, in mean squared
error, the dense submodel's output on the calibration sequences. The input fed
to the pruned submodel is either the dense model's own input at that boundary
("dense", the paper's choice) or what the already-refined pruned model produces
there ("pruned", our default: it also corrects the error accumulated upstream,
and measured far better on SmolLM2 — see toolchain.recipe.LocalOptions).

arXiv 2510.14444 ("A Free Lunch in LLM Compression: Revisiting Retraining
after Pruning") finds that this matches post-pruning fine-tuning at a fraction
of the data and memory, and that quality hardly depends on the submodel size,
so the granularity can follow the memory budget.

It runs inside the layer walk (toolchain.walk), right after the closed-form
stage of the same layers: the dense submodel is a copy of the layer taken
before it was pruned, so no dense copy of the whole model ever exists. Only
one submodel (its pruned and dense versions) is on the device at a time; the
residual-stream activations stay on the CPU and travel in micro-batches. What
trains is whatever the pruned submodel already has (kept weights, norm
weights, biases): shapes and plan never change.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .models import Model
from .recipe import LocalOptions, block_count
from .walk import Runner, Step


@dataclass(frozen=True)
class Submodel:
    """A slice of the walk's current group: its layers (index, pruned, dense) and which part."""

    layers: tuple[tuple[int, nn.Module, nn.Module], ...]
    part: str  # attn | mlp | block

    @property
    def indices(self) -> list[int]:
        return [i for i, _, _ in self.layers]

    @property
    def name(self) -> str:
        first, last = self.layers[0][0], self.layers[-1][0]
        return f"L{first if first == last else f'{first}-{last}'} {self.part}"

    def modules(self, family, which: int) -> list[nn.Module]:
        """The modules holding this submodel's parameters (which: 1 pruned, 2 dense)."""
        layers = [entry[which] for entry in self.layers]
        if self.part == "attn":
            return family.attention_modules(layers[0])
        if self.part == "mlp":
            return family.mlp_modules(layers[0])
        return layers

    def forward(self, runner: Runner, which: int, x: torch.Tensor) -> torch.Tensor:
        """Residual stream in at the submodel's start, residual stream out at its end
        (`x` is the runner's current micro-batch: its mask is the one applied)."""
        i, layer = self.layers[0][0], self.layers[0][which]
        if self.part == "attn":
            _, pos, pos_emb = runner.context(i)
            return runner.family.attention_forward(layer, x, runner.layer_mask(i), pos, pos_emb)
        if self.part == "mlp":
            return runner.family.mlp_forward(layer, x)
        for entry in self.layers:
            x = runner.forward(entry[0], entry[which], x)
        return x


PRUNED, DENSE = 1, 2


def squared_error(y: torch.Tensor, target: torch.Tensor, real: torch.Tensor | None) -> tuple[float, int]:
    """Σ (y − target)² in float64 over the real tokens (every position when `real` is None:
    padding must not count in an encoder's loss), and how many values were summed."""
    if real is not None:
        y, target = y[real], target[real]
    return (y.double() - target.double()).pow(2).sum().item(), target.numel()


def default_steps(n_sequences: int, batch_size: int, epochs: int = 1) -> int:
    """`epochs` passes over the calibration sequences (the last batch of each may be short)."""
    return epochs * math.ceil(n_sequences / batch_size)


def lr_factor(step: int, steps: int, warmup: float) -> float:
    """Linear warm-up to 1 over the first `warmup` fraction, then linear decay towards 0.

    No step runs at lr 0: with a handful of steps every one of them counts.
    """
    warm = int(warmup * steps)
    if step < warm:
        return (step + 1) / (warm + 1)
    return (steps - step) / (steps - warm)


def _batches(n: int, batch_size: int, steps: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """`steps` index batches; a fresh seeded permutation every epoch."""
    done = 0
    while True:
        for chunk in torch.randperm(n, generator=gen).split(batch_size):
            if done == steps:
                return
            done += 1
            yield chunk


class Refiner:
    """Local refinement as a stage of the walk: trains each submodel of the current group.

    `report` collects one row per submodel: {"layers", "part", "loss_before", "loss_after",
    "reverted", "steps", "seconds"} (losses: MSE over all calibration tokens and hidden
    dimensions, float32 compute). A submodel whose calibration MSE did not improve (e.g. lr
    too high) gets its starting weights back ("reverted": true, loss_after == loss_before).
    """

    def __init__(self, model: Model, runner: Runner, opts: LocalOptions, progress: bool = True):
        opts.validate()
        self.model, self.family, self.opts, self.device = model, model.family, opts, runner.device
        k = block_count(opts.granularity)
        self.group, self.parts = max(k, 1), (("attn", "mlp") if k == 0 else ("block",))
        self.steps = opts.steps or default_steps(runner.hidden.shape[0], opts.batch_size, opts.epochs)
        self.autocast = opts.mixed_precision and self.device.type == "cuda"
        self.gen = torch.Generator().manual_seed(opts.seed)
        self.report: list[dict] = []
        total = math.ceil(model.num_layers / self.group) * len(self.parts) * self.steps
        self.bar = tqdm(total=total, desc="local", unit="step", disable=not progress, leave=False)

    def _fwd(self, sub: Submodel, runner: Runner, which: int, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
            return sub.forward(runner, which, x).float()

    def outputs(self, sub: Submodel, runner: Runner, which: int, hidden: torch.Tensor) -> torch.Tensor:
        """The submodel's outputs over all sequences (CPU, float32)."""
        bs = self.opts.batch_size
        with torch.no_grad():
            return torch.cat([self._fwd(sub, runner, which, hidden[runner.select(slice(i, i + bs))].to(self.device))
                              .cpu() for i in range(0, len(hidden), bs)])

    def measure(self, sub: Submodel, runner: Runner, inputs: torch.Tensor, targets: torch.Tensor,
                keep: bool) -> tuple[float, torch.Tensor | None]:
        """MSE of the pruned submodel to `targets` over all real tokens, and its outputs if `keep`."""
        bs, total, count, outs = self.opts.batch_size, 0.0, 0, []
        with torch.no_grad():
            for i in range(0, len(inputs), bs):
                sl = runner.select(slice(i, i + bs))
                y = self._fwd(sub, runner, PRUNED, inputs[sl].to(self.device))
                err, n = squared_error(y, targets[sl].to(self.device), runner.real_tokens)
                total, count = total + err, count + n
                if keep:
                    outs.append(y.cpu())
        return total / count, torch.cat(outs) if keep else None

    def train(self, sub: Submodel, runner: Runner, inputs: torch.Tensor, targets: torch.Tensor,
              on_step: Callable[[float], None]) -> None:
        """AdamW on the pruned submodel's parameters, MSE to the dense targets."""
        params = [p for m in sub.modules(self.family, PRUNED) for p in m.parameters()]
        flags = [p.requires_grad for p in params]
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.AdamW(params, lr=self.opts.lr, weight_decay=self.opts.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, self.steps, self.opts.warmup))
        try:
            for idx in _batches(len(inputs), self.opts.batch_size, self.steps, self.gen):
                x, y = inputs[runner.select(idx)].to(self.device), targets[idx].to(self.device)
                out, real = self._fwd(sub, runner, PRUNED, x), runner.real_tokens
                loss = F.mse_loss(out, y) if real is None else F.mse_loss(out[real], y[real])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                on_step(loss.item())
        finally:
            for p, flag in zip(params, flags):
                p.grad = None
                p.requires_grad_(flag)

    def refine(self, sub: Submodel, runner: Runner, dense_h: torch.Tensor, pruned_h: torch.Tensor | None):
        """Train one submodel; returns both streams at its output."""
        start = time.perf_counter()
        targets = self.outputs(sub, runner, DENSE, dense_h)  # also the dense stream's next input
        inputs, keep = (dense_h, False) if pruned_h is None else (pruned_h, True)
        before, _ = self.measure(sub, runner, inputs, targets, keep=False)
        self.bar.set_description(f"local {sub.name}")
        running: list[float] = []

        def on_step(loss: float) -> None:
            running.append(loss)
            self.bar.set_postfix(mse=f"{sum(running[-8:]) / len(running[-8:]):.4g}", before=f"{before:.4g}")
            self.bar.update()

        mods = sub.modules(self.family, PRUNED)
        start_state = [copy.deepcopy(m.state_dict()) for m in mods]
        self.train(sub, runner, inputs, targets, on_step)
        after, out = self.measure(sub, runner, inputs, targets, keep)
        reverted = not after < before  # never leave a submodel worse than it started
        if reverted:
            for m, state in zip(mods, start_state):
                m.load_state_dict(state)
            after, out = self.measure(sub, runner, inputs, targets, keep) if keep else (before, None)
        self.report.append({"layers": sub.indices, "part": sub.part, "loss_before": before, "loss_after": after,
                            "reverted": reverted, "steps": self.steps, "seconds": time.perf_counter() - start})
        return targets, out

    def __call__(self, steps: list[Step], dense_layers: list[nn.Module], runner: Runner) -> None:
        """Refine the group `steps` (already pruned) against `dense_layers` (copies from before)."""
        entries = tuple((s.index, s.layer, d) for s, d in zip(steps, dense_layers))
        dense_h = steps[0].dense_in
        pruned_h = steps[0].pruned_in if self.opts.inputs == "pruned" else None
        subs = ([Submodel((e,), part) for e in entries for part in self.parts] if self.parts != ("block",)
                else [Submodel(entries, "block")])
        for sub in subs:
            dense_h, pruned_h = self.refine(sub, runner, dense_h, pruned_h)
        steps[-1].dense_out, steps[-1].pruned_out = dense_h, pruned_h
        if steps[-1].index == self.model.num_layers - 1:
            self.bar.close()
