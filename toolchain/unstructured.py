"""Unstructured and 2:4 sparsity: zero weights in place, shapes unchanged.

A stage of the layer walk (toolchain.walk: one layer on the device, hidden
states on the CPU). Inside a layer the operators are pruned in data-flow order
(the family's `stages`), each fed the outputs of the operators already pruned
before it (intra-layer error correction):

    q/k/v (or fused qkv)  →  o_proj  →  gate/up (or gate_up)  →  down_proj

X* (an operator's inputs in the model being pruned) is captured from the
pruned stream; X (its inputs in the dense model, the regression target for
`fista`) from a dense copy of the layer run on the dense stream. Operators fed
the same input are solved together (their rows are independent problems).
Layers run one after another: each layer's X* depends on the pruned layers
before it, so the walk is sequential by construction.

Criteria (the mask, and FISTA's warm start), per output row as in Wanda:
    magnitude  |W_ij|
    wanda      |W_ij| · ‖x*_j‖
    sparsegpt  OBS saliency with column-by-column weight updates (toolchain.sparsegpt,
               from the full E[x* x*ᵀ]); its updated weights are the warm start
Reconstruction: `refit` (least squares for the kept weights on the criterion's mask: SparseGPT's
objective solved exactly), `fista` (toolchain.fista: a λ search for a better mask, then that
refit) or `none` (the criterion's result as it is).
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict

import torch
from torch import nn

from .errors import LiarError, UserError
from .fista import keep_mask, solve
from .models import Model
from .recipe import SparsityOptions
from .sparsegpt import sparsegpt
from .stats import check_finite
from .walk import Runner, Sink, Step, walk


class PairGram:
    """E[x* x*ᵀ], E[x x*ᵀ], E[x xᵀ] over token-aligned batches (float64 sums).

    full=False: only diag E[x* x*ᵀ] (all Wanda needs); full=True: E[x* x*ᵀ] (SparseGPT), and
    with pair=True the dense-stream moments too (FISTA's regression target)."""

    def __init__(self, full: bool, pair: bool | None = None) -> None:
        self.full, self.pair, self.n = full, full if pair is None else pair, 0
        self.h = self.c = self.g = self.diag = None

    def add(self, xs: torch.Tensor, x: torch.Tensor | None) -> None:
        xs = xs.detach().reshape(-1, xs.shape[-1])
        check_finite(xs, *([] if x is None else [x]))
        if self.diag is None:
            width = xs.shape[1]
            zeros = lambda: torch.zeros(width, width, dtype=torch.float64, device=xs.device)  # noqa: E731
            self.diag = torch.zeros(width, dtype=torch.float64, device=xs.device)
            self.h = zeros() if self.full else None
            if self.pair:
                self.c, self.g = zeros(), zeros()
        self.diag += (xs * xs).sum(0).double()
        if self.full:
            self.h += (xs.T @ xs).double()
        if self.pair:
            x = x.detach().reshape(-1, x.shape[-1])
            self.c += (x.T @ xs).double()
            self.g += (x.T @ x).double()
        self.n += xs.shape[0]

    def norms(self) -> torch.Tensor:
        """‖x*_j‖ / √N per input channel."""
        return (self.diag / self.n).sqrt()

    def moments(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.h / self.n, self.c / self.n, self.g / self.n


def criterion_mask(w: torch.Tensor, norms: torch.Tensor | None, opts: SparsityOptions) -> torch.Tensor:
    score = w.abs() if opts.criterion == "magnitude" else w.abs() * norms.to(w.device, w.dtype)
    return keep_mask(score, opts.pattern, opts.sparsity)


def warm_start(w: torch.Tensor, acc: PairGram | None, opts: SparsityOptions) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights, mask) the criterion gives: W ⊙ mask, or SparseGPT's updated weights."""
    if opts.criterion == "sparsegpt":
        return sparsegpt(w, acc.h / acc.n, opts.pattern, opts.sparsity)
    mask = criterion_mask(w, acc.norms() if acc is not None else None, opts)
    return w * mask, mask


def relative_error(new: torch.Tensor, w: torch.Tensor, h: torch.Tensor) -> float:
    """‖(W* − W) X*‖² / ‖W X*‖² from H = E[x* x*ᵀ] (SparseGPT's own objective)."""
    delta, w, h = (new - w).double(), w.double(), h.to(w.device, torch.float64)
    return float(((delta @ h) * delta).sum() / ((w @ h) * w).sum().clamp_min(1e-30))


def check_pattern(model: Model, opts: SparsityOptions) -> None:
    """2:4 needs every pruned operator's input width to be a multiple of 4 (checked from shapes)."""
    if opts.pattern != "2:4":
        return
    for i in range(model.num_layers):
        for name in model.family.linears():
            width = model.weights.shape(f"{model.layer_prefix(i)}{name}.weight")[1]
            if width % 4:
                raise UserError(f"{name} has {width} inputs, not a multiple of 4: use --pattern unstructured")


class Sparsify:
    """The walk stage: zero weights of one layer's operators, stage by stage."""

    def __init__(self, model: Model, opts: SparsityOptions):
        self.model, self.family, self.opts = model, model.family, opts
        self.fista = opts.reconstruct in ("fista", "refit")  # toolchain.fista.solve runs either
        self.full = self.fista and opts.target == "dense"  # both streams: the target is the dense model's
        self.hessian = self.fista or opts.criterion == "sparsegpt"
        self.needs_data = self.hessian or opts.criterion == "wanda"
        self.at_once = opts.within_layer == "at-once"

    def _stage_stats(self, runner: Runner, s: Step, first: str, dense_layer: nn.Module | None) -> PairGram:
        """Inputs of `first` on the pruned stream — through the layer's already-pruned stages
        ("sequential") or through the layer as it was before any was pruned ("at-once") — and on
        the dense stream when FISTA's target is the dense model."""
        acc = PairGram(self.hessian, self.full)
        source = dense_layer if self.at_once else s.layer
        streams = [("xs", source.get_submodule(first), source, s.pruned_in)]
        if self.full:
            streams.append(("x", dense_layer.get_submodule(first), dense_layer, s.dense_in))
        for got in runner.module_inputs(s.index, streams):
            acc.add(got["xs"], got.get("x"))
        return acc

    def _stage(self, stage: tuple[str, ...], layer: nn.Module, acc: PairGram | None, device) -> dict:
        """Prune (and reconstruct) the operators of one stage in place."""
        lins = [layer.get_submodule(n) for n in stage]
        w = torch.cat([lin.weight.detach().to(device, torch.float32) for lin in lins])
        w0, mask0 = warm_start(w, acc, self.opts)
        info: dict = {"operators": [n.split(".")[-1] for n in stage]}
        if self.fista:
            h, c, g = acc.moments() if self.full else (acc.h / acc.n,) * 3  # target W X* : X = X*
            res = solve(w, h, c, g, mask0, self.opts.pattern, self.opts.sparsity, self.opts.fista(), w0=w0)
            new = res.weight
            info.update(lambda_median=float(res.lam[res.lam > 0].median()) if (res.lam > 0).any() else 0.0,
                        iterations=res.iterations, err_before=res.err_before, err_after=res.err_after,
                        warm_start_rows=res.warm_start_rows, rows=w.shape[0])
        else:
            new = w0
            if acc is not None and acc.h is not None:
                info["err"] = relative_error(new, w, acc.h / acc.n)
        if not torch.isfinite(new).all():
            raise LiarError(f"non-finite weights after pruning {', '.join(stage)}")
        with torch.no_grad():
            for lin, part in zip(lins, new.split([lin.out_features for lin in lins])):
                lin.weight.copy_(part.to(lin.weight.dtype))
        info["zeros"] = int((new == 0).sum())
        info["numel"] = new.numel()
        return info

    def __call__(self, steps: list[Step], runner: Runner) -> None:
        for s in steps:
            dense_layer = copy.deepcopy(s.layer) if self.full or self.at_once else None
            stages = []
            for stage in self.family.stages():
                acc = self._stage_stats(runner, s, stage[0], dense_layer) if self.needs_data else None
                stages.append(self._stage(stage, s.layer, acc, runner.device))
            if self.needs_data and s.index + 1 < self.model.num_layers:
                s.pruned_out = runner.run(s.index, s.layer, s.pruned_in)
                if self.full:
                    s.dense_out = runner.run(s.index, dense_layer, s.dense_in)
            del dense_layer
            zeros, numel = sum(st["zeros"] for st in stages), sum(st["numel"] for st in stages)
            s.report.update(sparsity=zeros / numel, stages=stages)


def sparsify(model: Model, calib_ids: torch.Tensor, opts: SparsityOptions, device: torch.device,
             sink: Sink | None, progress: bool = True) -> dict:
    """Zero weights of every layer's Linears, handing each finished layer to `sink`
    (embeddings and LM head stay dense).

    Returns {"options", "sparsity" (over the pruned Linears), "seconds", "layers": per layer
    {"layer", "sparsity", "seconds", "stages": [{"operators", "zeros", "numel"} + with fista
    "lambda_median", "iterations", "err_before", "err_after" (relative to the dense model's
    outputs, on calibration data), "warm_start_rows", "rows"; with sparsegpt alone "err"
    (relative, on the pruned stream's calibration inputs)]}]}."""
    opts.validate()
    check_pattern(model, opts)
    start = time.perf_counter()
    stage = Sparsify(model, opts)
    runner = Runner(model, calib_ids, device, opts.batch_size)
    layers = walk(model, runner, stage, sink, f"sparsify {opts.pattern}", progress=progress)
    zeros = sum(st["zeros"] for lay in layers for st in lay["stages"])
    numel = sum(st["numel"] for lay in layers for st in lay["stages"])
    return {"options": asdict(opts), "sparsity": zeros / numel, "seconds": time.perf_counter() - start,
            "layers": layers}
