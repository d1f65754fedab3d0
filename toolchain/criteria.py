"""Pruning criteria: one importance score per input channel of o_proj / down_proj.

W is the consuming Linear's weight (out × in), x_j its j-th input channel over
the calibration tokens. Heads are scored by summing their channels (see
allocation.py). Higher score = more important = kept.

    magnitude   ‖W[:, j]‖
    wanda-sp    ‖W[:, j]‖ · ‖x_j‖              (Wanda, structured: An et al. / FLAP)
    flap        Var(x_j) · ‖W[:, j]‖²          (FLAP's fluctuation metric)
    random      U(0, 1), seeded                (a baseline)
"""

from __future__ import annotations

from typing import Callable

import torch

from .stats import InputStats

Criterion = Callable[[torch.Tensor, InputStats, torch.Generator], torch.Tensor]


def _col_norm(w: torch.Tensor) -> torch.Tensor:
    return w.double().norm(dim=0)


def magnitude(w: torch.Tensor, stats: InputStats, gen: torch.Generator) -> torch.Tensor:
    return _col_norm(w)


def wanda_sp(w: torch.Tensor, stats: InputStats, gen: torch.Generator) -> torch.Tensor:
    return _col_norm(w) * stats.sq_norm.sqrt()


def flap(w: torch.Tensor, stats: InputStats, gen: torch.Generator) -> torch.Tensor:
    return stats.var * _col_norm(w).square()


def random(w: torch.Tensor, stats: InputStats, gen: torch.Generator) -> torch.Tensor:
    return torch.rand(w.shape[1], generator=gen, dtype=torch.float64)


CRITERIA: dict[str, Criterion] = {
    "magnitude": magnitude,
    "wanda-sp": wanda_sp,
    "flap": flap,
    "random": random,
}
