"""The compression walk: calibration tokens in, pruned + reconstructed model out.

Layer by layer, only one decoder layer lives on the device at a time together
with a micro-batch of activations; hidden states between layers stay on the
CPU. That is what lets the same code prune a model far larger than the
accelerator.

one-shot    one pass over the dense model collects every o_proj / down_proj
            input statistic; the plan is chosen; each layer is reconstructed
            from dense statistics (LIAR as in the paper). With uniform
            allocation (or a given plan) each layer is finished as soon as its
            statistics exist, so only one layer's statistics are ever held.
sequential  the plan comes from a cheap dense pass (diagonal statistics only);
            then each layer is reconstructed on inputs that already went
            through the pruned earlier layers, regressing onto the dense
            model's inputs so reconstruction also corrects accumulated error
            (o_proj first, then down_proj on the repaired attention's output).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn
from tqdm import tqdm

from .allocation import allocate
from .criteria import CRITERIA
from .errors import UserError
from .models import model_dims
from .plan import LayerPlan, PruningPlan
from .recipe import CompressOptions
from .reconstruct import reconstruct_cross, reconstruct_oneshot
from .stats import CrossAccumulator, InputStats, StatsAccumulator
from .surgery import prune_layer, record_widths


@dataclass
class CompressResult:
    plan: PruningPlan
    methods_used: list[dict] = field(default_factory=list)  # per layer: {"o_proj": .., "down_proj": ..}
    seconds: float = 0.0


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the wanted input is captured."""


class LayerRunner:
    """Runs one decoder layer over all calibration sequences in micro-batches."""

    def __init__(self, model: nn.Module, ids: torch.Tensor, device: torch.device, batch_size: int):
        self.device, self.batch_size = device, batch_size
        inner = model.model
        n, seqlen = ids.shape
        with torch.no_grad():
            self.hidden = inner.embed_tokens(ids)  # [n, L, hid] on the CPU
            pos = torch.arange(seqlen).unsqueeze(0)
            rotary = inner.rotary_emb.to(device)
            self.pos_emb = rotary(self.hidden[:1].to(device), pos.to(device))
        self.pos_ids = pos.to(device)
        mask = torch.full((seqlen, seqlen), float("-inf"), dtype=self.hidden.dtype).triu(1)
        self.mask = mask[None, None].to(device)  # explicit causal mask: every attention backend agrees

    def run(self, layer: nn.Module, hidden: torch.Tensor, keep_output: bool = True) -> torch.Tensor | None:
        """Forward `hidden` through `layer`; hooks may raise _Stop to end a batch early."""
        outs = []
        with torch.no_grad():
            for i in range(0, hidden.shape[0], self.batch_size):
                x = hidden[i:i + self.batch_size].to(self.device)
                try:
                    y = layer(x, attention_mask=self.mask, position_ids=self.pos_ids,
                              position_embeddings=self.pos_emb)
                except _Stop:
                    continue
                if keep_output:
                    outs.append((y[0] if isinstance(y, tuple) else y).cpu())
        return torch.cat(outs) if keep_output else None

    def module_inputs(self, streams: list[tuple[str, nn.Module, nn.Module, torch.Tensor]]
                      ) -> Iterator[dict[str, torch.Tensor]]:
        """Per micro-batch, the input of each stream's module, keyed by the stream's name.

        A stream is (name, module inside `layer`, layer, the layer's input hidden states); the
        layer runs only up to the module. Streams are token-aligned, so their inputs pair up.
        """
        for i in range(0, streams[0][3].shape[0], self.batch_size):
            got: dict[str, torch.Tensor] = {}
            for name, module, layer, hidden in streams:
                hook = _capture(module, lambda x, n=name: got.__setitem__(n, x), stop=True)
                try:
                    self.run(layer, hidden[i:i + self.batch_size], keep_output=False)
                finally:
                    hook.remove()
            yield got


def _capture(module: nn.Module, sink, stop: bool = False):
    """Pre-forward hook feeding the module's input to `sink(x)`."""
    def hook(_mod, args):
        sink(args[0])
        if stop:
            raise _Stop
    return module.register_forward_pre_hook(hook)


def _scores(criterion: str, layer: nn.Module, o_stats: InputStats, d_stats: InputStats,
            gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    fn = CRITERIA[criterion]
    return (fn(layer.self_attn.o_proj.weight.detach().cpu(), o_stats, gen),
            fn(layer.mlp.down_proj.weight.detach().cpu(), d_stats, gen))


def _head_channels(lp: LayerPlan, head_dim: int) -> list[int]:
    return [h * head_dim + j for h in lp.heads for j in range(head_dim)]


def dense_plan(model: nn.Module) -> PruningPlan:
    d = model_dims(model.config)
    return PruningPlan.dense(d["num_layers"], d["num_heads"], d["num_kv_heads"], d["head_dim"],
                             d["hidden_size"], d["intermediate_size"])


def _check_dense(model: nn.Module, dense: PruningPlan) -> None:
    for i, layer in enumerate(model.model.layers):
        if (layer.self_attn.q_proj.out_features != dense.num_heads * dense.head_dim
                or layer.mlp.down_proj.in_features != dense.intermediate_size):
            raise UserError(f"layer {i} is already pruned: start from the dense model "
                            "(replay its plan with --plan instead)")


class Compressor:
    """Walks the layers of `model` (in place) according to `opts`."""

    def __init__(self, model: nn.Module, calib_ids: torch.Tensor, opts: CompressOptions,
                 device: torch.device, plan: PruningPlan | None = None, progress: bool = True):
        opts.validate()
        self.model, self.opts, self.device, self.progress = model, opts, device, progress
        self.dense = dense_plan(model)
        _check_dense(model, self.dense)
        if plan is not None:
            if (plan.num_heads, plan.num_kv_heads, plan.head_dim, plan.hidden_size,
                    plan.intermediate_size, len(plan.layers)) != (
                    self.dense.num_heads, self.dense.num_kv_heads, self.dense.head_dim,
                    self.dense.hidden_size, self.dense.intermediate_size, len(self.dense.layers)):
                raise UserError("the given --plan was made for a model with other dimensions")
            plan.validate()
        self.plan = plan
        self.runner = LayerRunner(model, calib_ids, device, opts.batch_size)
        self.gen = torch.Generator().manual_seed(opts.seed)
        self.layers = model.model.layers

    def _bar(self, desc: str):
        return tqdm(range(len(self.layers)), desc=desc, unit="layer", disable=not self.progress,
                    leave=False)

    def _layer_stats(self, layer: nn.Module, hidden: torch.Tensor, full: bool):
        """Statistics of o_proj / down_proj inputs over `hidden`, and the layer's output."""
        acc_o, acc_d = StatsAccumulator(full), StatsAccumulator(full)
        hooks = [_capture(layer.self_attn.o_proj, acc_o.add), _capture(layer.mlp.down_proj, acc_d.add)]
        try:
            out = self.runner.run(layer, hidden)
        finally:
            for h in hooks:
                h.remove()
        return acc_o.result(), acc_d.result(), out

    def _allocate_layer(self, i: int, layer: nn.Module, o_st: InputStats, d_st: InputStats) -> LayerPlan:
        """Uniform allocation only needs this layer's scores."""
        a, f = _scores(self.opts.criterion, layer, o_st, d_st, self.gen)
        one = PruningPlan(self.dense.num_heads, self.dense.num_kv_heads, self.dense.head_dim,
                          self.dense.hidden_size, self.dense.intermediate_size, [self.dense.layers[i]])
        return allocate(one, [a], [f], self.opts.sparsity, "uniform", self.opts.round_to,
                        self.opts.head_unit).layers[0]

    def run(self, dense_stats: list[tuple[InputStats, InputStats]] | None = None) -> CompressResult:
        """Prune and reconstruct in place. `dense_stats` (from `collect_stats`, one-shot
        mode only) lets several recipes share one statistics pass over the same model."""
        start = time.perf_counter()
        if self.opts.mode == "oneshot":
            used = self._oneshot(dense_stats)
        else:
            used = self._sequential()
        record_widths(self.model)
        return CompressResult(self.plan, used, time.perf_counter() - start)

    # -- one-shot ---------------------------------------------------------------------------
    def _finish_layer_oneshot(self, layer: nn.Module, lp: LayerPlan, o_st: InputStats,
                              d_st: InputStats) -> dict:
        d, m, r = self.dense.head_dim, self.opts.reconstruct, self.opts.ridge
        dense_o, dense_down = layer.self_attn.o_proj, layer.mlp.down_proj
        prune_layer(layer, lp, d)
        layer.self_attn.o_proj, used_o = reconstruct_oneshot(dense_o, _head_channels(lp, d), o_st, m, r)
        layer.mlp.down_proj, used_d = reconstruct_oneshot(dense_down, lp.channels, d_st, m, r)
        return {"o_proj": used_o, "down_proj": used_d}

    def collect_stats(self, full: bool = True) -> list[tuple[InputStats, InputStats]]:
        """Dense o_proj / down_proj input statistics of every layer (model unchanged)."""
        hidden, stats = self.runner.hidden, []
        for i in self._bar("statistics"):
            o_st, d_st, hidden = self._layer_stats(self.layers[i].to(self.device), hidden, full)
            stats.append((o_st, d_st))
            self.layers[i].to("cpu")
        return stats

    def _oneshot(self, dense_stats: list[tuple[InputStats, InputStats]] | None) -> list[dict]:
        full = self.opts.reconstruct == "liar"
        if dense_stats is None and (self.plan is not None or self.opts.allocation == "uniform"):
            return self._oneshot_streaming(full)
        stats = dense_stats or self.collect_stats(full)
        self.plan = self.plan or self._plan_from_stats(stats)
        used = []
        for i in self._bar("reconstruct"):
            used.append(self._finish_layer_oneshot(self.layers[i], self.plan.layers[i], *stats[i]))
            if dense_stats is None:
                stats[i] = None  # free this layer's Gram matrices as we go
        return used

    def _oneshot_streaming(self, full: bool) -> list[dict]:
        """Each layer finished right after its statistics: one layer's Gram matrices at a time."""
        hidden, layer_plans, used = self.runner.hidden, [], []
        for i in self._bar("statistics"):
            layer = self.layers[i].to(self.device)
            o_st, d_st, hidden = self._layer_stats(layer, hidden, full)
            lp = self.plan.layers[i] if self.plan else self._allocate_layer(i, layer, o_st, d_st)
            layer_plans.append(lp)
            used.append(self._finish_layer_oneshot(layer, lp, o_st, d_st))
            self.layers[i].to("cpu")
        self.plan = self.plan or self._assemble(layer_plans)
        return used

    def _assemble(self, layer_plans: list[LayerPlan]) -> PruningPlan:
        plan = copy.deepcopy(self.dense)
        plan.layers = layer_plans
        plan.validate()
        return plan

    def _plan_from_stats(self, stats: list[tuple[InputStats, InputStats]]) -> PruningPlan:
        if self.opts.allocation == "uniform":
            return self._assemble([self._allocate_layer(i, layer, *st)
                                   for i, (layer, st) in enumerate(zip(self.layers, stats))])
        attn, ffn = zip(*(_scores(self.opts.criterion, layer, *st, self.gen)
                          for layer, st in zip(self.layers, stats)))
        return allocate(self.dense, list(attn), list(ffn), self.opts.sparsity, self.opts.allocation,
                        self.opts.round_to, self.opts.head_unit)

    def _cross_stats(self, module_pruned: nn.Module, layer_pruned: nn.Module, pruned_in: torch.Tensor,
                     module_dense: nn.Module, layer_dense: nn.Module, dense_in: torch.Tensor,
                     keep: list[int]):
        """Cov(x*_S, x) for one Linear: x* from the pruned stream, x from the dense stream."""
        acc, keep_t = CrossAccumulator(), torch.tensor(keep, device=self.device)
        for got in self.runner.module_inputs([("a", module_pruned, layer_pruned, pruned_in),
                                              ("b", module_dense, layer_dense, dense_in)]):
            a = got["a"] if got["a"].shape[-1] == len(keep) else got["a"].index_select(-1, keep_t)
            acc.add(a, got["b"])
        return acc.result()

    def _sequential(self) -> list[dict]:
        if self.plan is None:  # the plan comes from a cheap dense pass (diagonal statistics only)
            self.plan = self._plan_from_stats(self.collect_stats(full=False))
        d, m, r = self.dense.head_dim, self.opts.reconstruct, self.opts.ridge
        dense_hidden = pruned_hidden = self.runner.hidden
        used = []
        for i in self._bar("sequential"):
            lp = self.plan.layers[i]
            layer = self.layers[i].to(self.device)
            dense_layer = copy.deepcopy(layer)
            heads = _head_channels(lp, d)
            st, cov, mu = self._cross_stats(layer.self_attn.o_proj, layer, pruned_hidden,
                                            dense_layer.self_attn.o_proj, dense_layer, dense_hidden, heads)
            dense_down = layer.mlp.down_proj
            prune_layer(layer, lp, d)
            layer.mlp.down_proj = dense_down  # repaired below, on the repaired attention's output
            layer.self_attn.o_proj, used_o = reconstruct_cross(dense_layer.self_attn.o_proj, heads, st,
                                                               cov, mu, m, r)
            st, cov, mu = self._cross_stats(layer.mlp.down_proj, layer, pruned_hidden,
                                            dense_layer.mlp.down_proj, dense_layer, dense_hidden, lp.channels)
            layer.mlp.down_proj, used_d = reconstruct_cross(dense_down, lp.channels, st, cov, mu, m, r)
            used.append({"o_proj": used_o, "down_proj": used_d})
            pruned_hidden = self.runner.run(layer, pruned_hidden)
            dense_hidden = self.runner.run(dense_layer, dense_hidden)
            self.layers[i].to("cpu")
            del dense_layer
        return used
