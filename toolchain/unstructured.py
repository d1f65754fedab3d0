"""Unstructured and 2:4 sparsity: zero weights in place, shapes unchanged.

The walk goes decoder layer by decoder layer (one layer on the device, hidden
states on the CPU, micro-batched like the structured pipeline). Inside a layer
the operators are pruned in data-flow order, each stage fed the outputs of the
stages already pruned before it (intra-layer error correction):

    q/k/v  →  o_proj  →  gate/up  →  down_proj

X* (an operator's inputs in the model being pruned) is captured from the
pruned stream; X (its inputs in the dense model, the regression target for
`fista`) from a dense copy of the layer run on the dense stream. Operators fed
the same input are solved together (their rows are independent problems).
Layers run one after another: each layer's X* depends on the pruned layers
before it, so the walk is sequential by construction.

Criteria (the mask, and FISTA's warm start), per output row as in Wanda:
    magnitude  |W_ij|
    wanda      |W_ij| · ‖x*_j‖
Reconstruction: `fista` (toolchain.fista) or `none` (the criterion's mask on W).
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict
from typing import Iterator

import torch
from torch import nn
from tqdm import tqdm

from .errors import LiarError, UserError
from .fista import keep_mask, solve
from .pipeline import LayerRunner
from .stats import check_finite
from .recipe import SparsityOptions

STAGES: tuple[tuple[str, ...], ...] = (
    ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    ("self_attn.o_proj",),
    ("mlp.gate_proj", "mlp.up_proj"),
    ("mlp.down_proj",),
)


def sparse_linears(model: nn.Module) -> Iterator[tuple[str, nn.Linear]]:
    """Every Linear this module zeroes, in walk order: (name inside its decoder layer, module)."""
    for layer in model.model.layers:
        for stage in STAGES:
            for name in stage:
                yield name, layer.get_submodule(name)


class PairGram:
    """E[x* x*ᵀ], E[x x*ᵀ], E[x xᵀ] over token-aligned batches (float64 sums);
    with full=False only diag E[x* x*ᵀ] (all Wanda needs)."""

    def __init__(self, full: bool) -> None:
        self.full, self.n = full, 0
        self.h = self.c = self.g = self.diag = None

    def add(self, xs: torch.Tensor, x: torch.Tensor | None) -> None:
        xs = xs.detach().reshape(-1, xs.shape[-1])
        check_finite(xs, *([] if x is None else [x]))
        if self.diag is None:
            self.diag = torch.zeros(xs.shape[1], dtype=torch.float64, device=xs.device)
            if self.full:
                self.h, self.c, self.g = (torch.zeros(xs.shape[1], xs.shape[1], dtype=torch.float64,
                                                      device=xs.device) for _ in range(3))
        self.diag += (xs * xs).sum(0).double()
        if self.full:
            x = x.detach().reshape(-1, x.shape[-1])
            self.h += (xs.T @ xs).double()
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


class _Walk:
    def __init__(self, model: nn.Module, calib_ids: torch.Tensor, opts: SparsityOptions,
                 device: torch.device) -> None:
        if opts.pattern == "2:4":  # before any calibration work
            for name, lin in sparse_linears(model):
                if lin.in_features % 4:
                    raise UserError(f"{name} has {lin.in_features} inputs, not a multiple of 4: "
                                    "use --pattern unstructured")
        self.opts, self.device = opts, device
        self.layers = model.model.layers
        self.full = opts.reconstruct == "fista"
        self.needs_data = self.full or opts.criterion == "wanda"
        self.runner = LayerRunner(model, calib_ids, device, opts.batch_size) if self.needs_data else None

    def _stage_stats(self, first: str, layer: nn.Module, hidden: torch.Tensor,
                     dense_layer: nn.Module | None, dense_hidden: torch.Tensor | None) -> PairGram:
        """Inputs of `first` (pruned stream; dense stream too when reconstructing)."""
        acc = PairGram(self.full)
        streams = [("xs", layer.get_submodule(first), layer, hidden)]
        if self.full:
            streams.append(("x", dense_layer.get_submodule(first), dense_layer, dense_hidden))
        for got in self.runner.module_inputs(streams):
            acc.add(got["xs"], got.get("x"))
        return acc

    def _stage(self, stage: tuple[str, ...], layer: nn.Module, acc: PairGram | None) -> dict:
        """Prune (and reconstruct) the operators of one stage in place."""
        lins = [layer.get_submodule(n) for n in stage]
        w = torch.cat([lin.weight.detach().to(self.device, torch.float32) for lin in lins])
        mask0 = criterion_mask(w, acc.norms() if acc is not None else None, self.opts)
        info: dict = {"operators": [n.split(".")[-1] for n in stage]}
        if self.full:
            res = solve(w, *acc.moments(), mask0, self.opts.pattern, self.opts.sparsity, self.opts.fista())
            new = res.weight
            info.update(lambda_median=float(res.lam[res.lam > 0].median()) if (res.lam > 0).any() else 0.0,
                        iterations=res.iterations, err_before=res.err_before, err_after=res.err_after,
                        warm_start_rows=res.warm_start_rows, rows=w.shape[0])
        else:
            new = w * mask0
        if not torch.isfinite(new).all():
            raise LiarError(f"non-finite weights after pruning {', '.join(stage)}")
        with torch.no_grad():
            for lin, part in zip(lins, new.split([lin.out_features for lin in lins])):
                lin.weight.copy_(part.to(lin.weight.dtype))
        info["zeros"] = int((new == 0).sum())
        info["numel"] = new.numel()
        return info

    def run(self, progress: bool) -> list[dict]:
        hidden = dense_hidden = self.runner.hidden if self.runner else None
        out = []
        bar = tqdm(range(len(self.layers)), desc=f"sparsify {self.opts.pattern}", unit="layer",
                   disable=not progress, leave=False)
        for i in bar:
            start = time.perf_counter()
            layer = self.layers[i].to(self.device)
            dense_layer = copy.deepcopy(layer) if self.full else None
            stages = []
            for stage in STAGES:
                acc = (self._stage_stats(stage[0], layer, hidden, dense_layer, dense_hidden)
                       if self.needs_data else None)
                stages.append(self._stage(stage, layer, acc))
            if self.needs_data and i + 1 < len(self.layers):
                hidden = self.runner.run(layer, hidden)
                if self.full:
                    dense_hidden = self.runner.run(dense_layer, dense_hidden)
            self.layers[i].to("cpu")
            del dense_layer
            zeros, numel = sum(s["zeros"] for s in stages), sum(s["numel"] for s in stages)
            out.append({"layer": i, "sparsity": zeros / numel, "stages": stages,
                        "seconds": time.perf_counter() - start})
            bar.set_postfix(sparsity=f"{zeros / numel:.3f}")
        return out


def sparsify(model: nn.Module, calib_ids: torch.Tensor, opts: SparsityOptions, device: torch.device,
             progress: bool = True) -> dict:
    """Zero weights of every decoder-layer Linear in place (embeddings and LM head stay dense).

    Returns {"options", "sparsity" (over the pruned Linears), "seconds", "layers": per layer
    {"layer", "sparsity", "seconds", "stages": [{"operators", "zeros", "numel"} + with fista
    "lambda_median", "iterations", "err_before", "err_after" (relative, on calibration data),
    "warm_start_rows", "rows"]}]}."""
    opts.validate()
    start = time.perf_counter()
    layers = _Walk(model, calib_ids, opts, device).run(progress)
    zeros = sum(s["zeros"] for lay in layers for s in lay["stages"])
    numel = sum(s["numel"] for lay in layers for s in lay["stages"])
    return {"options": asdict(opts), "sparsity": zeros / numel, "seconds": time.perf_counter() - start,
            "layers": layers}
