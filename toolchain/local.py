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

Memory: only one submodel (its pruned and dense versions) is on the device at
a time; the residual-stream activations between submodels stay on the CPU and
travel in micro-batches. What trains is whatever the pruned submodel already
has (kept weights, RMSNorm weights, biases): shapes and plan never change.
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

from .errors import UserError
from .pipeline import LayerRunner
from .recipe import LocalOptions, block_count


@dataclass(frozen=True)
class Submodel:
    """A slice of the decoder: `layers` (consecutive) and which part of them."""

    layers: tuple[int, ...]
    part: str  # attn | mlp | block

    @property
    def name(self) -> str:
        span = f"{self.layers[0]}" if len(self.layers) == 1 else f"{self.layers[0]}-{self.layers[-1]}"
        return f"L{span} {self.part}"

    def modules(self, model: nn.Module) -> list[nn.Module]:
        """The modules holding this submodel's parameters."""
        layers = [model.model.layers[i] for i in self.layers]
        if self.part == "attn":
            return [layers[0].input_layernorm, layers[0].self_attn]
        if self.part == "mlp":
            return [layers[0].post_attention_layernorm, layers[0].mlp]
        return layers

    def forward(self, model: nn.Module, x: torch.Tensor, ctx: LayerRunner) -> torch.Tensor:
        """Residual stream in at the submodel's start, residual stream out at its end."""
        layer = model.model.layers[self.layers[0]]
        if self.part == "attn":
            out = layer.self_attn(layer.input_layernorm(x), position_embeddings=ctx.pos_emb,
                                  attention_mask=ctx.mask, position_ids=ctx.pos_ids)[0]
            return x + out
        if self.part == "mlp":
            return x + layer.mlp(layer.post_attention_layernorm(x))
        for i in self.layers:
            y = model.model.layers[i](x, attention_mask=ctx.mask, position_ids=ctx.pos_ids,
                                      position_embeddings=ctx.pos_emb)
            x = y[0] if isinstance(y, tuple) else y
        return x


def submodels(granularity: str, num_layers: int) -> list[Submodel]:
    """The decoder cut into consecutive submodels, in forward order."""
    k = block_count(granularity)
    if k == 0:
        return [Submodel((i,), part) for i in range(num_layers) for part in ("attn", "mlp")]
    return [Submodel(tuple(range(i, min(i + k, num_layers))), "block") for i in range(0, num_layers, k)]


def default_steps(n_sequences: int, batch_size: int) -> int:
    """One epoch: every calibration sequence once (the last batch may be short)."""
    return math.ceil(n_sequences / batch_size)


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


def _place(modules: list[nn.Module], device: torch.device, dtype: torch.dtype) -> None:
    for m in modules:
        m.to(device=device, dtype=dtype)


class _Refiner:
    """State shared by all submodels of one run: options, device, positions and mask."""

    def __init__(self, dense: nn.Module, calib_ids: torch.Tensor, opts: LocalOptions, device: torch.device):
        self.opts, self.device = opts, device
        ctx = LayerRunner(dense, calib_ids, device, opts.batch_size)
        # training runs in float32 whatever the model's dtype (bf16 only through autocast)
        ctx.hidden = ctx.hidden.float()
        ctx.mask = ctx.mask.float()
        ctx.pos_emb = tuple(t.float() for t in ctx.pos_emb)
        self.ctx = ctx
        self.autocast = opts.mixed_precision and device.type == "cuda"
        self.gen = torch.Generator().manual_seed(opts.seed)

    def _fwd(self, sub: Submodel, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
            return sub.forward(model, x, self.ctx).float()

    def outputs(self, sub: Submodel, model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """The submodel's outputs over all sequences (CPU, float32)."""
        bs = self.opts.batch_size
        with torch.no_grad():
            return torch.cat([self._fwd(sub, model, hidden[i:i + bs].to(self.device)).cpu()
                              for i in range(0, len(hidden), bs)])

    def measure(self, sub: Submodel, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                keep: bool) -> tuple[float, torch.Tensor | None]:
        """MSE to `targets` over all sequences, and the outputs (CPU) if `keep`."""
        bs, total, outs = self.opts.batch_size, 0.0, []
        with torch.no_grad():
            for i in range(0, len(inputs), bs):
                y = self._fwd(sub, model, inputs[i:i + bs].to(self.device))
                total += (y.double() - targets[i:i + bs].to(self.device).double()).pow(2).sum().item()
                if keep:
                    outs.append(y.cpu())
        return total / targets.numel(), torch.cat(outs) if keep else None

    def train(self, sub: Submodel, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
              steps: int, on_step: Callable[[float], None]) -> None:
        """AdamW on the submodel's parameters, MSE to the dense targets."""
        params = [p for m in sub.modules(model) for p in m.parameters()]
        flags = [p.requires_grad for p in params]
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.AdamW(params, lr=self.opts.lr, weight_decay=self.opts.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, steps, self.opts.warmup))
        try:
            for idx in _batches(len(inputs), self.opts.batch_size, steps, self.gen):
                x, y = inputs[idx].to(self.device), targets[idx].to(self.device)
                loss = F.mse_loss(self._fwd(sub, model, x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                on_step(loss.item())
        finally:
            for p, flag in zip(params, flags):
                p.grad = None
                p.requires_grad_(flag)

    def refine(self, sub: Submodel, dense: nn.Module, pruned: nn.Module, dense_h: torch.Tensor,
               pruned_h: torch.Tensor | None, steps: int, bar: tqdm):
        """Train one submodel; returns its report row and both streams at its output."""
        start = time.perf_counter()
        mods = (sub.modules(dense), sub.modules(pruned))
        dtypes = [next(m[0].parameters()).dtype for m in mods]
        for m in mods:
            _place(m, self.device, torch.float32)
        targets = self.outputs(sub, dense, dense_h)  # also the dense stream's next input
        inputs, keep = (dense_h, False) if pruned_h is None else (pruned_h, True)
        before, _ = self.measure(sub, pruned, inputs, targets, keep=False)
        bar.set_description(f"local {sub.name}")
        running: list[float] = []

        def on_step(loss: float) -> None:
            running.append(loss)
            bar.set_postfix(mse=f"{sum(running[-8:]) / len(running[-8:]):.4g}", before=f"{before:.4g}")
            bar.update()

        start_state = [copy.deepcopy(m.state_dict()) for m in mods[1]]
        self.train(sub, pruned, inputs, targets, steps, on_step)
        after, out = self.measure(sub, pruned, inputs, targets, keep)
        reverted = not after < before  # never leave a submodel worse than it started
        if reverted:
            for m, state in zip(mods[1], start_state):
                m.load_state_dict(state)
            after, out = self.measure(sub, pruned, inputs, targets, keep) if keep else (before, None)
        for m, dtype in zip(mods, dtypes):
            _place(m, torch.device("cpu"), dtype)
        row = {"layers": list(sub.layers), "part": sub.part, "loss_before": before, "loss_after": after,
               "reverted": reverted, "steps": steps, "seconds": time.perf_counter() - start}
        return row, targets, out


def _check_pair(dense: nn.Module, pruned: nn.Module) -> None:
    if type(dense) is not type(pruned):
        raise UserError(f"dense and pruned models differ in class ({type(dense).__name__} vs "
                        f"{type(pruned).__name__})")
    if len(dense.model.layers) != len(pruned.model.layers) or \
            dense.config.hidden_size != pruned.config.hidden_size:
        raise UserError("the dense model does not match the pruned one (layer count or hidden size)")


def local_reconstruct(dense: nn.Module, pruned: nn.Module, calib_ids: torch.Tensor, opts: LocalOptions,
                      device: torch.device, progress: bool = True) -> list[dict]:
    """Refine `pruned` in place, submodel by submodel, against `dense` (left unchanged).

    Returns per submodel {"layers", "part", "loss_before", "loss_after", "reverted", "steps",
    "seconds"} (losses: MSE over all calibration tokens and hidden dimensions, float32 compute).
    A submodel whose calibration MSE did not improve (e.g. lr too high) gets its starting
    weights back ("reverted": true, loss_after == loss_before).
    """
    opts.validate()
    _check_pair(dense, pruned)
    run = _Refiner(dense, calib_ids, opts, device)
    parts = submodels(opts.granularity, len(pruned.model.layers))
    steps = opts.steps or default_steps(len(calib_ids), opts.batch_size)
    dense_h = run.ctx.hidden
    pruned_h = dense_h if opts.inputs == "pruned" else None
    report = []
    bar = tqdm(total=len(parts) * steps, desc="local", unit="step", disable=not progress, leave=False)
    try:
        for sub in parts:
            row, dense_h, pruned_h = run.refine(sub, dense, pruned, dense_h, pruned_h, steps, bar)
            report.append(row)
    finally:
        bar.close()
    return report
