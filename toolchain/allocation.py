"""Turn per-channel scores into a PruningPlan under one block-parameter budget.

Units of removal, per layer, in the order they would be removed:
  * FFN: the lowest-scoring channels, in steps that keep the width a multiple
    of `round_to` (quantisation-friendly rows in the exported ffn_down);
  * attention, GQA-aware:
      - `per-group`: the r-th weakest query head of *every* KV group at once,
        so each kept KV head serves the same number of query heads;
      - `groups`: a whole KV group (its query heads and the K/V head).
    With one query head per KV head (MHA) both are "drop a head and its K/V".
Every layer keeps at least one attention unit and `round_to` FFN channels, so
no layer ever becomes one the runtimes cannot represent (docs/DESIGN.md §5).

Allocation:
  * `uniform`: the same number of attention units and the same FFN width in
    every layer, chosen so the total comes closest to the target;
  * `global`: units ranked by a price across all layers and the cheapest
    removed until the cumulative parameter cost is closest to the target. The
    price is FLAP's mean standardised score (channel scores standardised within
    each layer and module), or — `pricing="error"` — each unit's estimated output
    error after reconstruction per parameter removed (toolchain.pricing), which
    puts heads and FFN channels on one scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import UserError
from .plan import LayerPlan, PruningPlan
from .recipe import ALLOCATIONS, HEAD_UNITS, PRUNE_CHOICES, check_choice


@dataclass
class Unit:
    layer: int
    kind: str  # "attn" | "ffn"
    rank: int  # position in the layer's removal order
    z: float  # global allocation's price: mean standardised score, or error per parameter
    cost: int  # block parameters removed
    error: float = 0.0  # estimated output error it adds after reconstruction, along the layer's order
    heads: tuple[int, ...] = ()
    kv_heads: tuple[int, ...] = ()
    channels: tuple[int, ...] = ()


def _standardise(x: torch.Tensor) -> torch.Tensor:
    std = x.std()
    return (x - x.mean()) / std if std > 0 else torch.zeros_like(x)


def _attn_units(layer: int, scores: torch.Tensor, plan: PruningPlan, mode: str) -> list[Unit]:
    d, hid, g = plan.head_dim, plan.hidden_size, plan.group_size
    z = _standardise(scores).view(plan.num_heads, d).mean(1)
    raw = scores.view(plan.num_heads, d).sum(1)
    units = []
    if mode == "groups":
        group_raw = raw.view(plan.num_kv_heads, g).sum(1)
        order = sorted(range(plan.num_kv_heads), key=lambda k: (group_raw[k].item(), k))
        for r, kv in enumerate(order[:-1]):
            heads = tuple(range(kv * g, (kv + 1) * g))
            units.append(Unit(layer, "attn", r, z[list(heads)].mean().item(),
                              (2 * g + 2) * d * hid, heads=heads, kv_heads=(kv,)))
    else:
        per_group = [sorted(range(k * g, (k + 1) * g), key=lambda h: (raw[h].item(), h))
                     for k in range(plan.num_kv_heads)]
        for r in range(g - 1):
            heads = tuple(sorted(grp[r] for grp in per_group))
            units.append(Unit(layer, "attn", r, z[list(heads)].mean().item(),
                              2 * len(heads) * d * hid, heads=heads))
    return units


def ffn_widths(size: int, round_to: int) -> list[int]:
    """Allowed kept widths, largest first: the dense size, then multiples of round_to."""
    return [size] + [w for w in range((size - 1) // round_to * round_to, 0, -round_to)]


def _ffn_units(layer: int, scores: torch.Tensor, plan: PruningPlan, round_to: int) -> list[Unit]:
    z = _standardise(scores)
    order = sorted(range(len(scores)), key=lambda j: (scores[j].item(), j))
    widths = ffn_widths(plan.intermediate_size, round_to)
    units, start = [], 0
    for r, (hi, lo) in enumerate(zip(widths, widths[1:])):
        chans = tuple(order[start:start + hi - lo])
        units.append(Unit(layer, "ffn", r, z[list(chans)].mean().item(),
                          plan.ffn_matrices * len(chans) * plan.hidden_size, channels=chans))
        start += hi - lo
    return units


def _plan_from_removed(dense: PruningPlan, removed: list[list[Unit]]) -> PruningPlan:
    layers = []
    for lp, units in zip(dense.layers, removed):
        heads = set().union(*(u.heads for u in units)) if units else set()
        kv = set().union(*(u.kv_heads for u in units)) if units else set()
        ch = set().union(*(u.channels for u in units)) if units else set()
        layers.append(LayerPlan([h for h in lp.heads if h not in heads],
                                [k for k in lp.kv_heads if k not in kv],
                                [c for c in lp.channels if c not in ch]))
    return dense.with_layers(layers)


def resolve_head_unit(mode: str, plan: PruningPlan) -> str:
    check_choice("head-unit", mode, HEAD_UNITS)
    if mode == "auto":
        return "groups" if plan.group_size == 1 else "per-group"
    return mode


def layer_units(layer: int, attn_scores: torch.Tensor, ffn_scores: torch.Tensor, dense: PruningPlan,
                round_to: int = 32, head_unit: str = "auto", prune: str = "heads,ffn"
                ) -> tuple[list[Unit], list[Unit]]:
    """One layer's (attention, FFN) units in removal order, priced by mean standardised score.

    `attn_scores` scores the o_proj inputs (num_heads × head_dim), `ffn_scores` the
    down_proj inputs (intermediate_size). `prune` restricts what may go: "heads,ffn",
    "ffn" (every head kept) or "heads" (every FFN channel kept).
    """
    if round_to < 1:
        raise UserError(f"--round-to must be a positive integer (got {round_to})")
    check_choice("prune", prune, PRUNE_CHOICES)
    kinds = prune.split(",")
    attn = _attn_units(layer, attn_scores, dense, resolve_head_unit(head_unit, dense)) if "heads" in kinds else []
    ffn = _ffn_units(layer, ffn_scores, dense, round_to) if "ffn" in kinds else []
    return attn, ffn


def select(dense: PruningPlan, attn: list[list[Unit]], ffn: list[list[Unit]], sparsity: float,
           allocation: str = "global", balance: bool = False) -> PruningPlan:
    """The plan removing ~`sparsity` of block parameters from every layer's units.

    `balance`: each layer spends the parameters the allocation took from it on the mix of
    attention and FFN units with the least estimated error (`Unit.error`)."""
    if not 0 <= sparsity < 1:
        raise UserError(f"--sparsity must be in [0, 1) (got {sparsity})")
    check_choice("allocation", allocation, ALLOCATIONS)
    target = sparsity * dense.block_params()
    removed = _uniform(attn, ffn, target, sparsity) if allocation == "uniform" else _global(attn, ffn, target)
    if balance and allocation == "global":
        removed = [_balanced(a, f, sum(u.cost for u in r)) for a, f, r in zip(attn, ffn, removed)]
    return _plan_from_removed(dense, removed)


def _prefix_sums(values: list[float]) -> list[float]:
    out = [0.0]
    for v in values:
        out.append(out[-1] + v)
    return out


def _balanced(attn: list[Unit], ffn: list[Unit], budget: int) -> list[Unit]:
    """One layer's first n_a attention and n_f FFN units costing `budget` (to within half an FFN
    step), the pair with the least summed error: o_proj and down_proj write into the same
    residual stream, so within a layer their errors are on one scale (docs/DESIGN.md §4)."""
    cost_a, cost_f = _prefix_sums([u.cost for u in attn]), _prefix_sums([u.cost for u in ffn])
    err_a, err_f = _prefix_sums([u.error for u in attn]), _prefix_sums([u.error for u in ffn])
    slack = max((u.cost for u in ffn), default=0) / 2
    best: tuple[float, int, int] | None = None
    for n_a in range(len(attn) + 1):
        n_f = min(range(len(ffn) + 1), key=lambda k: (abs(cost_a[n_a] + cost_f[k] - budget), k))
        if abs(cost_a[n_a] + cost_f[n_f] - budget) > slack:
            continue
        err = err_a[n_a] + err_f[n_f]
        if best is None or err < best[0]:
            best = (err, n_a, n_f)
    _, n_a, n_f = best
    return attn[:n_a] + ffn[:n_f]


def allocate(dense: PruningPlan, attn_scores: list[torch.Tensor], ffn_scores: list[torch.Tensor],
             sparsity: float, allocation: str = "global", round_to: int = 32,
             head_unit: str = "auto", prune: str = "heads,ffn") -> PruningPlan:
    """Choose what to remove so that ~`sparsity` of block parameters go (FLAP's pricing)."""
    if not 0 <= sparsity < 1:
        raise UserError(f"--sparsity must be in [0, 1) (got {sparsity})")
    units = [layer_units(i, a, f, dense, round_to, head_unit, prune)
             for i, (a, f) in enumerate(zip(attn_scores, ffn_scores))]
    return select(dense, [a for a, _ in units], [f for _, f in units], sparsity, allocation)


def _uniform(attn: list[list[Unit]], ffn: list[list[Unit]], target: float,
             sparsity: float) -> list[list[Unit]]:
    """Same attention cut and FFN width everywhere; FFN absorbs the rounding (without FFN
    units, the attention cut comes closest to the target on its own)."""
    n_layers = len(attn)
    n_attn_units = len(attn[0]) + 1  # removable units + the one always kept
    n_a = min(round(sparsity * n_attn_units), len(attn[0]))
    if not ffn[0]:
        costs = [sum(u.cost for u in attn[0][:n]) * n_layers for n in range(len(attn[0]) + 1)]
        n_a = min(range(len(costs)), key=lambda n: abs(costs[n] - target))
    attn_cost = sum(u.cost for u in attn[0][:n_a]) * n_layers
    best_k, best_err = 0, float("inf")
    cum = 0
    for k in range(len(ffn[0]) + 1):
        err = abs(attn_cost + cum * n_layers - target)
        if err < best_err:
            best_k, best_err = k, err
        if k < len(ffn[0]):
            cum += ffn[0][k].cost
    return [a[:n_a] + f[:best_k] for a, f in zip(attn, ffn)]


def _global(attn: list[list[Unit]], ffn: list[list[Unit]], target: float) -> list[list[Unit]]:
    """Lowest standardised score first; stop where the removed cost is closest to target."""
    units = sorted((u for layer in attn + ffn for u in layer),
                   key=lambda u: (u.z, u.kind, u.layer, u.rank))
    best_n, best_err, cum = 0, abs(target), 0
    for n, u in enumerate(units, 1):
        cum += u.cost
        if abs(cum - target) < best_err:
            best_n, best_err = n, abs(cum - target)
        if cum > target:
            break
    removed: list[list[Unit]] = [[] for _ in attn]
    for u in units[:best_n]:
        removed[u.layer].append(u)
    return removed
