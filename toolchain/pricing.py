"""What removing structure costs: the error it adds to its module's output after reconstruction.

A Linear y = W x loses the inputs P and keeps S. After reconstruction the expected
squared error of y over the calibration tokens is (C the input covariance, M = E[x xᵀ]):

    none    E(P) = tr(W_P M_PP W_Pᵀ)                    the removed inputs' whole contribution
    bias    E(P) = tr(W_P C_PP W_Pᵀ)                    their mean is folded into the bias
    liar    E(P) = tr(W_P S_P W_Pᵀ),  S_P = C_PP − C_PS C_SS⁻¹ C_SP
                                                        what the kept inputs cannot predict

(LIAR without intercept uses M for C.) A layer's units are removed in a fixed order, so
a unit's price is its marginal error along that order, E(P_k) − E(P_{k−1}) with P_k the
inputs of the first k units: pricing each unit alone would call two redundant chunks
cheap although removing both is not (measured on SmolLM2: perplexity 1288 instead of
43 at 20%).

Every prefix at once, exactly (docs/DESIGN.md §4, Allocation): order the inputs as
π = (never removed, then the removal order backwards) and factor C_π = L Lᵀ. The
trailing block of a Cholesky factor is the Schur complement's, S_{P_k} = L_kk L_kkᵀ for
the last |P_k| positions, and L is lower triangular, so
    E(P_k) = ‖W_{P_k} L_kk‖² = Σ_{j ∈ P_k} ‖(W_π L)_{:, j}‖²
— one factorisation and one product per module, suffix sums of column norms after it.
For none / bias, E(P_k) is the leading k×k sum of (WᵀW ⊙ A) in removal order.
"""

from __future__ import annotations

import torch

from .stats import InputStats

COLUMN_BLOCK = 2048  # columns of W_π L formed at a time: no [out, in] float64 product beside the factor


def second_moments(stats: InputStats, centred: bool, order: torch.Tensor | None = None) -> torch.Tensor:
    """C (centred) or M = C + μμᵀ in float64, one fresh matrix beside the Gram matrix (a
    14336-wide one is 1.6 GB); `order`: its rows and columns in that order."""
    mu, gram = stats.total / stats.n, stats.gram
    if order is not None:
        mu, gram = mu[order], gram[order[:, None], order[None, :]]
        out = gram.div_(stats.n)
    else:
        out = gram / stats.n
    out.addr_(mu, mu, alpha=-1)
    if not centred:
        mean = stats.mean if order is None else stats.mean[order]
        out.addr_(mean, mean)
    return out


def prefix_errors(w: torch.Tensor, stats: InputStats, order: list[int], method: str, ridge: float = 1e-3,
                  intercept: bool = True) -> torch.Tensor:
    """E(P_k) for k = 1..len(order): the error after removing the first k input columns of
    `order` from the Linear weight `w` [out, in] and reconstructing with `method`."""
    w = w.detach().cpu()
    centred = method != "none" and intercept
    removed = torch.tensor(order, dtype=torch.long)
    if method != "liar":
        w = w[:, removed].double()
        block = (w.T @ w).mul_(second_moments(stats, centred, removed))
        return block.cumsum(0).cumsum(1).diagonal().clone()
    rest = torch.ones(w.shape[1], dtype=torch.bool)
    rest[removed] = False
    perm = torch.cat([torch.nonzero(rest).flatten(), removed.flip(0)])
    a = second_moments(stats, centred, perm)
    diag = a.diagonal()
    diag += ridge * diag.mean().clamp_min(1e-12)
    # a is symmetric, so its column-major view is itself: factoring that view in place gives L in a
    # without the column-major temporary cholesky(a, out=a) allocates (another 1.6 GB at FFN 14336)
    torch.linalg.cholesky(a.mT, upper=True, out=a.mT)
    factor = a
    w = w[:, perm].double()
    start = len(perm) - len(order)
    col = torch.cat([(w[:, j:] @ factor[j:, j:j + COLUMN_BLOCK]).pow_(2).sum(0)  # L is zero above row j
                     for j in range(start, len(perm), COLUMN_BLOCK)])
    return col.flip(0).cumsum(0)


def marginal_errors(w: torch.Tensor, stats: InputStats, units: list[list[int]], method: str, ridge: float = 1e-3,
                    intercept: bool = True) -> list[float]:
    """Each unit's added error when the units (lists of input columns) are removed in the given order."""
    if not units:
        return []
    cum = prefix_errors(w, stats, [c for cols in units for c in cols], method, ridge, intercept)
    out, prev, end = [], 0.0, 0
    for cols in units:
        end += len(cols)
        out.append(float(cum[end - 1]) - prev)
        prev = float(cum[end - 1])
    return out
