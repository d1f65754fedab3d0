"""Structured pruning: choose a plan, then prune and reconstruct every layer.

Two passes of the layer walk (docs/DESIGN.md §3–4):

plan pass   (global allocation, or sequential mode, without a given plan) the
            dense model's o_proj / down_proj input statistics — diagonals only,
            all the criteria need — give every layer's channel scores; the
            allocation turns them into the plan. Nothing is written.
compress    each layer is pruned to the plan and its o_proj / down_proj are
            reconstructed, then written:
            one-shot    from the dense layer's full input statistics (LIAR as
                        in the paper); with uniform allocation the layer's own
                        scores give its plan here, in a single pass;
            sequential  from inputs that went through the pruned earlier
                        layers, regressing onto the dense model's inputs so the
                        reconstruction also corrects accumulated error
                        (o_proj first, then down_proj on the repaired attention).
Only one layer's statistics exist at a time, whatever the allocation.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from .allocation import Unit, allocate, layer_units, select
from .criteria import CRITERIA
from .errors import UserError
from .families.base import head_rows
from .models import Model
from .plan import LayerPlan, PruningPlan
from .pricing import marginal_errors
from .recipe import CompressOptions, LocalOptions
from .reconstruct import adds_bias, reconstruct_cross, reconstruct_oneshot
from .stats import CrossAccumulator, InputStats, StatsAccumulator
from .surgery import prune_layer
from .walk import Runner, Sink, Step, walk
from .widths import Widths


@dataclass
class CompressResult:
    plan: PruningPlan
    widths: Widths
    methods_used: list[dict] = field(default_factory=list)  # per layer: {"o_proj": .., "down_proj": ..}
    local: list[dict] | None = None  # per submodel, with --reconstruct local / liar+local
    seconds: dict[str, float] = field(default_factory=dict)  # per pass


def dense_plan(model: Model) -> PruningPlan:
    d = model.dims
    return PruningPlan.dense(d["num_layers"], d["num_heads"], d["num_kv_heads"], d["head_dim"],
                             d["hidden_size"], d["intermediate_size"], model.family.ffn_matrices,
                             model.family.fixed_layer_params(model.config))


def check_dense(model: Model, dense: PruningPlan, plan: PruningPlan | None) -> None:
    if model.widths != dense.widths(*_dense_biases(model)):
        raise UserError("the model is already pruned: start from the dense model "
                        "(replay its plan with --plan instead)")
    if plan is not None:
        if plan.shapes() != dense.shapes():
            raise UserError("the given --plan was made for a model with other dimensions")
        plan.validate()


def _dense_biases(model: Model) -> tuple[list[bool], list[bool]]:
    return [w.o_proj_bias for w in model.widths], [w.down_proj_bias for w in model.widths]


def planned_widths(model: Model, plan: PruningPlan, method: str, mode: str, intercept: bool = True) -> Widths:
    """The widths record the compressed model will have (biases as reconstruction adds them)."""
    dense_o, dense_down = _dense_biases(model)
    d = model.dims
    o = [db or adds_bias(method, mode, d["num_heads"] - lp.num_heads, intercept)
         for db, lp in zip(dense_o, plan.layers)]
    down = [db or adds_bias(method, mode, d["intermediate_size"] - lp.intermediate_size, intercept)
            for db, lp in zip(dense_down, plan.layers)]
    return plan.widths(o, down)


def layer_stats(runner: Runner, step: Step, family, full: bool) -> tuple[InputStats, InputStats, torch.Tensor]:
    """Statistics of o / down inputs over the dense stream, and the dense layer's output."""
    acc_o, acc_d = StatsAccumulator(full), StatsAccumulator(full)
    hooks = [runner.capture(step.layer.get_submodule(family.o), acc_o.add),
             runner.capture(step.layer.get_submodule(family.down), acc_d.add)]
    try:
        out = runner.run(step.index, step.layer, step.dense_in)
    finally:
        for h in hooks:
            h.remove()
    return acc_o.result(), acc_d.result(), out


def scores(criterion: str, layer: nn.Module, family, o_stats: InputStats, d_stats: InputStats,
           gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    fn = CRITERIA[criterion]
    return (fn(layer.get_submodule(family.o).weight.detach().cpu(), o_stats, gen),
            fn(layer.get_submodule(family.down).weight.detach().cpu(), d_stats, gen))


def pass_on(steps: list[Step], k: int) -> None:
    """Step k's outputs are the inputs of step k + 1 (within a group)."""
    if k + 1 < len(steps):
        steps[k + 1].dense_in, steps[k + 1].pruned_in = steps[k].dense_out, steps[k].pruned_out


def priced_units(i: int, layer: nn.Module, model: Model, o_st: InputStats, d_st: InputStats,
                 opts: CompressOptions, gen: torch.Generator) -> tuple[list[Unit], list[Unit]]:
    """Layer `i`'s removal units, priced for the global allocation: by FLAP's standardised
    score, or (pricing "error") by the output error each adds after reconstruction, along the
    layer's removal order, per parameter removed (toolchain.pricing), made non-decreasing."""
    family, dense = model.family, dense_plan(model)
    a, f = scores(opts.criterion, layer, family, o_st, d_st, gen)
    attn, ffn = layer_units(i, a, f, dense, opts.round_to, opts.head_unit, opts.prune)
    if opts.pricing != "score":
        for units, path, st, cols in ((attn, family.o, o_st, lambda u: head_rows(u.heads, dense.head_dim).tolist()),
                                      (ffn, family.down, d_st, lambda u: list(u.channels))):
            errors = marginal_errors(layer.get_submodule(path).weight, st, [cols(u) for u in units],
                                     opts.reconstruct, opts.ridge, opts.biases)
            price = 0.0
            for u, e in zip(units, errors):
                u.error = e
                if opts.pricing == "error":
                    price = max(price, e / u.cost)
                    u.z = price
    return attn, ffn


class ScorePass:
    """Plan pass: every layer's priced removal units from the dense stream's statistics
    (diagonal only, unless error pricing needs the covariance).

    `keep`: also keep every layer's statistics (full Gram matrices when `full`) so the
    compress pass can reuse them instead of running the dense layers again.
    """

    def __init__(self, model: Model, opts: CompressOptions, gen: torch.Generator, keep: bool = False,
                 full: bool = False):
        self.model, self.opts, self.gen, self.keep = model, opts, gen, keep
        self.full = full or opts.pricing != "score"
        self.attn: list[list[Unit]] = []
        self.ffn: list[list[Unit]] = []
        self.stats: list[tuple[InputStats, InputStats]] = []

    def __call__(self, steps: list[Step], runner: Runner) -> None:
        for k, s in enumerate(steps):
            o_st, d_st, s.dense_out = layer_stats(runner, s, self.model.family, full=self.full)
            a, f = priced_units(s.index, s.layer, self.model, o_st, d_st, self.opts, self.gen)
            self.attn.append(a)
            self.ffn.append(f)
            if self.keep:
                self.stats.append((o_st, d_st))
            pass_on(steps, k)


class Oneshot:
    """Prune each layer to its plan and reconstruct from the dense layer's statistics.

    `plan` None: uniform allocation from each layer's own scores. `dense_stats`:
    statistics already collected (by the plan pass, or shared between recipes by a
    benchmark: then `shared`, and the Gram matrices are copied, not consumed).
    """

    def __init__(self, model: Model, dense: PruningPlan, opts: CompressOptions, gen: torch.Generator,
                 plan: PruningPlan | None, dense_stats: list | None = None, shared: bool = False):
        self.model, self.family, self.dense, self.opts, self.gen = model, model.family, dense, opts, gen
        self.plan, self.dense_stats, self.shared = plan, dense_stats, shared
        self.layer_plans: list[LayerPlan] = []

    def _stats(self, runner: Runner, s: Step) -> tuple[InputStats, InputStats]:
        if self.dense_stats is not None:
            return self.dense_stats[s.index]
        o_st, d_st, s.dense_out = layer_stats(runner, s, self.family, full=self.opts.reconstruct == "liar")
        return o_st, d_st

    def _layer_plan(self, i: int, s: Step, o_st: InputStats, d_st: InputStats) -> LayerPlan:
        if self.plan is not None:
            return self.plan.layers[i]
        a, f = scores(self.opts.criterion, s.layer, self.family, o_st, d_st, self.gen)
        one = self.dense.with_layers([self.dense.layers[i]])
        return allocate(one, [a], [f], self.opts.sparsity, "uniform", self.opts.round_to,
                        self.opts.head_unit, self.opts.prune).layers[0]

    def __call__(self, steps: list[Step], runner: Runner) -> None:
        for k, s in enumerate(steps):
            o_st, d_st = self._stats(runner, s)
            lp = self._layer_plan(s.index, s, o_st, d_st)
            self.layer_plans.append(lp)
            s.report.update(prune_oneshot(s.layer, self.family, lp, self.model.dims, o_st, d_st,
                                          self.opts.reconstruct, self.opts.ridge, consume=not self.shared,
                                          intercept=self.opts.biases))
            if self.dense_stats is not None and not self.shared:
                self.dense_stats[s.index] = None  # used up
            pass_on(steps, k)


def prune_oneshot(layer: nn.Module, family, lp: LayerPlan, dense: dict, o_st: InputStats, d_st: InputStats,
                  method: str, ridge: float, consume: bool = True, intercept: bool = True) -> dict:
    """Prune one dense layer to `lp` and reconstruct its o / down projections in place."""
    dense_o, dense_down = layer.get_submodule(family.o), layer.get_submodule(family.down)
    prune_layer(layer, family, lp, dense)
    heads = head_rows(lp.heads, dense["head_dim"]).tolist()
    new_o, used_o = reconstruct_oneshot(dense_o, heads, o_st, method, ridge, consume, intercept)
    new_down, used_d = reconstruct_oneshot(dense_down, lp.channels, d_st, method, ridge, consume, intercept)
    _replace(layer, family.o, new_o)
    _replace(layer, family.down, new_down)
    return {"o_proj": used_o, "down_proj": used_d}


def _replace(layer: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(layer.get_submodule(parent), name, module)


class Sequential:
    """Reconstruct each layer on the pruned stream against the dense stream."""

    def __init__(self, model: Model, plan: PruningPlan, opts: CompressOptions):
        self.model, self.family, self.plan, self.opts = model, model.family, plan, opts

    def _cross(self, runner: Runner, s: Step, path: str, pruned: nn.Module, dense: nn.Module,
               keep: list[int]):
        """Cov(x*_S, x) for one Linear: x* from the pruned stream, x from the dense stream."""
        acc, keep_t = CrossAccumulator(), torch.tensor(keep, device=runner.device)
        for got in runner.module_inputs(s.index, [("a", pruned.get_submodule(path), pruned, s.pruned_in),
                                                  ("b", dense.get_submodule(path), dense, s.dense_in)]):
            a = got["a"] if got["a"].shape[-1] == len(keep) else got["a"].index_select(-1, keep_t)
            acc.add(a, got["b"])
        return acc.result()

    def __call__(self, steps: list[Step], runner: Runner) -> None:
        f, d, m, r = self.family, self.model.dims, self.opts.reconstruct, self.opts.ridge
        for k, s in enumerate(steps):
            lp, layer = self.plan.layers[s.index], s.layer
            dense_layer = copy.deepcopy(layer)
            heads = head_rows(lp.heads, d["head_dim"]).tolist()
            st, cov, mu = self._cross(runner, s, f.o, layer, dense_layer, heads)
            prune_layer(layer, f, lp, d)
            _replace(layer, f.down, dense_layer.get_submodule(f.down))  # repaired below, on the repaired attention
            new_o, used_o = reconstruct_cross(dense_layer.get_submodule(f.o), heads, st, cov, mu, m, r,
                                              self.opts.biases)
            _replace(layer, f.o, new_o)
            st, cov, mu = self._cross(runner, s, f.down, layer, dense_layer, lp.channels)
            new_down, used_d = reconstruct_cross(dense_layer.get_submodule(f.down), lp.channels, st, cov, mu, m,
                                                 r, self.opts.biases)
            _replace(layer, f.down, new_down)
            s.report.update(o_proj=used_o, down_proj=used_d)
            s.pruned_out = runner.run(s.index, layer, s.pruned_in)
            s.dense_out = runner.run(s.index, dense_layer, s.dense_in)
            del dense_layer
            pass_on(steps, k)


class ThenRefine:
    """A closed-form stage followed by local refinement of the same layers."""

    def __init__(self, closed_form, refiner):
        self.closed_form, self.refiner = closed_form, refiner

    def __call__(self, steps: list[Step], runner: Runner) -> None:
        dense_layers = [copy.deepcopy(s.layer) for s in steps]
        self.closed_form(steps, runner)
        self.refiner(steps, dense_layers, runner)


STATS_MEMORY_SHARE = 0.25  # hold every layer's statistics only within this share of free memory


def all_stats_fit(model: Model, opts: CompressOptions) -> bool:
    """Whether every layer's o / down statistics (full Gram matrices for LIAR) fit comfortably
    in memory at once: then one dense pass serves both the plan and the reconstruction."""
    import psutil

    d = model.dims
    per_layer = (d["num_heads"] * d["head_dim"]) ** 2 + d["intermediate_size"] ** 2
    need = per_layer * 8 * model.num_layers if opts.reconstruct == "liar" else 0
    return need <= STATS_MEMORY_SHARE * psutil.virtual_memory().available


def dense_statistics(model: Model, ids: torch.Tensor, device: torch.device, batch_size: int = 8,
                     progress: bool = True, tokens: torch.Tensor | None = None
                     ) -> list[tuple[InputStats, InputStats]]:
    """Every layer's dense o / down input statistics with full Gram matrices, for benchmarks
    that run many one-shot recipes on one model (`compress(..., dense_stats=...)`).
    `tokens`: the real-token mask of padded (encoder) batches."""
    runner = Runner(model, ids, device, batch_size, tokens)
    pass_ = ScorePass(model, CompressOptions(criterion="magnitude"), torch.Generator(), keep=True, full=True)
    walk(model, runner, pass_, None, "statistics", progress=progress)
    return pass_.stats


def choose_plan(model: Model, ids: torch.Tensor, opts: CompressOptions, device: torch.device,
                gen: torch.Generator, progress: bool = True, keep_stats: bool = False,
                tokens: torch.Tensor | None = None) -> tuple[PruningPlan, float, list | None]:
    """The plan pass: scores of every layer, then the allocation. Returns the plan, its seconds
    and (with `keep_stats`) every layer's statistics for the compress pass."""
    start = time.perf_counter()
    runner = Runner(model, ids, device, opts.batch_size, tokens)
    pass_ = ScorePass(model, opts, gen, keep=keep_stats, full=opts.reconstruct == "liar")
    walk(model, runner, pass_, None, "plan (statistics)", progress=progress)
    plan = select(dense_plan(model), pass_.attn, pass_.ffn, opts.sparsity, opts.resolved_allocation,
                  opts.pricing == "balanced")
    return plan, time.perf_counter() - start, pass_.stats if keep_stats else None


def compress(model: Model, ids: torch.Tensor, opts: CompressOptions, device: torch.device, sink: Sink | None,
             plan: PruningPlan | None = None, local: LocalOptions | None = None, progress: bool = True,
             dense_stats: list | None = None, tokens: torch.Tensor | None = None) -> CompressResult:
    """Prune and reconstruct every layer of `model`, handing each finished layer to `sink`.

    `local`: refine every layer (block) against the dense one after the closed form
    (`opts.reconstruct` is then the closed form that runs first: liar or none).
    `dense_stats`: one-shot statistics shared between several calls (not consumed).
    `tokens`: [n, L] real-token mask of padded batches (encoders): statistics, masks and the
    local-refinement loss see only real tokens.
    """
    opts.validate()
    dense = dense_plan(model)
    check_dense(model, dense, plan)
    gen = torch.Generator().manual_seed(opts.seed)
    seconds: dict[str, float] = {}
    needs_plan_pass = plan is None and (opts.mode == "sequential" or opts.resolved_allocation == "global")
    shared = dense_stats is not None
    if needs_plan_pass and not shared:
        keep = opts.mode == "oneshot" and all_stats_fit(model, opts)
        plan, seconds["plan_pass"], dense_stats = choose_plan(model, ids, opts, device, gen, progress, keep,
                                                              tokens)
    elif needs_plan_pass:  # shared statistics: the units are priced from them
        attn, ffn = zip(*(priced_units(i, model.layer(i), model, *dense_stats[i], opts, gen)
                          for i in range(model.num_layers)))
        plan = select(dense, list(attn), list(ffn), opts.sparsity, opts.resolved_allocation,
                      opts.pricing == "balanced")
    start = time.perf_counter()
    runner = Runner(model, ids, device, opts.batch_size, tokens)
    if opts.mode == "sequential":
        stage = Sequential(model, plan, opts)
    else:
        stage = Oneshot(model, dense, opts, gen, plan, dense_stats, shared)
    group = 1
    refiner = None
    if local is not None:
        from .local import Refiner
        refiner = Refiner(model, runner, local, progress)
        stage, group = ThenRefine(stage, refiner), refiner.group
    reports = walk(model, runner, stage, sink, "compress", group=group, progress=progress)
    if plan is None:
        plan = dense.with_layers(stage.closed_form.layer_plans if refiner else stage.layer_plans)
    seconds["compress_pass"] = time.perf_counter() - start
    used = [{k: r[k] for k in ("o_proj", "down_proj")} for r in reports]
    return CompressResult(plan, planned_widths(model, plan, opts.reconstruct, opts.mode, opts.biases), used,
                          refiner.report if refiner else None, seconds)


def apply_plan(model: Model, plan: PruningPlan) -> Model:
    """`model` cut to `plan` with no reconstruction, in memory (tests, stand-in models)."""
    from .sinks import MemorySink

    dense = dense_plan(model)
    check_dense(model, dense, plan)
    sink = MemorySink(model)
    for i in range(model.num_layers):
        layer = model.layer(i)
        prune_layer(layer, model.family, plan.layers[i], model.dims)
        sink.layer(i, layer)
    return sink.close(planned_widths(model, plan, "none", "oneshot"), {"plan": plan.to_json()})
