"""Reconstruction: fold the removed inputs' contribution into what remains.

A Linear y = W x + b loses input channels P and keeps S. Its output on the
calibration data is repaired in closed form (float64, no back-propagation):

    none    W' = W_S,                  b' = b
    bias    W' = W_S,                  b' = b + W_P μ_P          (FLAP)
    liar    x_P ≈ Bᵀ x_S + c  with  B = (C_SS + λI)⁻¹ C_SP,  c = μ_P − Bᵀ μ_S
            W' = W_S + W_P Bᵀ,         b' = b + W_P c            (LIAR, arXiv 2407.13331)

`bias` is LIAR with B = 0. In sequential mode the kept inputs come from the
pruned model (x*_S) and the target is the dense model's full input x, so the
same least squares becomes x ≈ Bᵀ x*_S + c with B = (C*_SS + λI)⁻¹ Cov(x*_S, x),
W' = W Bᵀ, b' = b + W c — it also absorbs the error accumulated upstream.
λ = ridge · mean(diag C_SS); when the solve is still ill-conditioned λ grows
tenfold (deterministically) before giving up on that layer and using `bias`.

Without an intercept (the target runtime cannot load the bias: llama.cpp's
qwen3 / gemma3 / phi3 architectures) LIAR regresses on uncentred second
moments, x_P ≈ Bᵀ x_S with B = (M_SS + λI)⁻¹ M_SP, M = E[x xᵀ], and leaves b
alone; `bias` is then unavailable and an ill-conditioned solve falls back to `none`.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from .stats import InputStats

log = logging.getLogger(__name__)

RIDGE_RETRIES = 4


def adds_bias(method: str, mode: str, removed: int, intercept: bool = True) -> bool:
    """Whether reconstruction leaves a bias on the o / down projection that lost `removed`
    inputs (a dense bias stays either way). Known before the walk, so the widths record —
    and every streamed writer — knows each layer's tensors in advance."""
    return intercept and method in ("liar", "bias") and (mode == "sequential" or removed > 0)


def ridge_solve(c_ss: torch.Tensor, rhs: torch.Tensor, ridge: float) -> torch.Tensor | None:
    """(C_SS + λI)⁻¹ rhs by Cholesky, λ scaled to the mean variance; None if hopeless.

    λ goes onto C_SS's diagonal in place (restored before returning): no second k×k copy.
    """
    diag = c_ss.diagonal()
    original = diag.clone()
    scale = original.mean().clamp_min(1e-12)
    lam = ridge * scale
    try:
        for _ in range(RIDGE_RETRIES):
            diag.copy_(original + lam)
            chol, info = torch.linalg.cholesky_ex(c_ss)
            if info == 0:
                sol = torch.cholesky_solve(rhs, chol)
                if torch.isfinite(sol).all():
                    return sol
            del chol
            lam = lam * 10 if lam > 0 else 1e-6 * scale
        return None
    finally:
        diag.copy_(original)


def _linear_with(lin: nn.Linear, w: torch.Tensor, b: torch.Tensor | None) -> nn.Linear:
    """A Linear holding (w, b) in `lin`'s dtype/device; a bias only if b is given."""
    new = nn.Linear(w.shape[1], w.shape[0], bias=b is not None,
                    device=lin.weight.device, dtype=lin.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(w.to(new.weight.dtype))
        if b is not None:
            new.bias.copy_(b.to(new.weight.dtype))
    return new


def reconstruct_oneshot(lin: nn.Linear, keep: list[int], stats: InputStats, method: str,
                        ridge: float = 1e-3, consume: bool = False, intercept: bool = True
                        ) -> tuple[nn.Linear, str]:
    """Return the pruned Linear (inputs `keep`) repaired by `method`, and the method used.

    `lin` is the dense Linear; `stats` describe its (dense) inputs. `consume`: the
    covariance is formed in the Gram matrix's own memory (the stats are used up).
    `intercept` False: no bias is added (uncentred LIAR).
    """
    w = lin.weight.detach().double().cpu()
    b = lin.bias.detach().double().cpu() if lin.bias is not None else None
    keep_t = torch.tensor(keep, dtype=torch.long)
    mask = torch.ones(w.shape[1], dtype=torch.bool)
    mask[keep_t] = False
    drop_t = mask.nonzero().flatten()
    w_s, w_p = w[:, keep_t], w[:, drop_t]
    if method == "none" or len(drop_t) == 0:
        return _linear_with(lin, w_s, b), method
    mu = stats.mean
    used = method
    if method == "liar":
        c = stats.cov(inplace=consume)
        if not intercept:
            c = c.addr_(mu, mu)  # M = C + μμᵀ = E[x xᵀ] (c is this call's own matrix)
        c_ss, c_sp = c[keep_t[:, None], keep_t[None, :]], c[keep_t[:, None], drop_t[None, :]]
        del c
        bmat = ridge_solve(c_ss, c_sp, ridge)
        del c_ss, c_sp
        if bmat is None:
            used = "bias" if intercept else "none"
            log.warning(f"LIAR solve ill-conditioned; falling back to {used}")
        else:
            w_s = w_s + w_p @ bmat.T
            shift = mu[drop_t] - bmat.T @ mu[keep_t]
    if not intercept:
        return _linear_with(lin, w_s, b), used
    if used == "bias":
        shift = mu[drop_t]
    b_new = (b if b is not None else torch.zeros(w.shape[0], dtype=torch.float64)) + w_p @ shift
    return _linear_with(lin, w_s, b_new), used


def reconstruct_cross(lin: nn.Linear, keep: list[int], stats_in: InputStats, cov_in_out: torch.Tensor,
                      mean_out: torch.Tensor, method: str, ridge: float = 1e-3, intercept: bool = True
                      ) -> tuple[nn.Linear, str]:
    """Sequential mode: kept inputs x*_S (stats_in) predict the dense inputs x.

    `cov_in_out` = Cov(x*_S, x) [k, in], `mean_out` = E[x] [in]. `intercept` False:
    uncentred regression, no bias added.
    """
    w = lin.weight.detach().double().cpu()
    b = lin.bias.detach().double().cpu() if lin.bias is not None else None
    keep_t = torch.tensor(keep, dtype=torch.long)
    b0 = b if b is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    if method == "none":
        return _linear_with(lin, w[:, keep_t], b), method
    mu_in = stats_in.mean
    used = method
    if method == "liar" and not intercept:  # E[x* x*ᵀ] and E[x*_S xᵀ] from the centred moments
        bmat = ridge_solve(stats_in.cov() + torch.outer(mu_in, mu_in), cov_in_out + torch.outer(mu_in, mean_out),
                           ridge)
        if bmat is not None:
            return _linear_with(lin, w @ bmat.T, b), used
        log.warning("LIAR solve ill-conditioned; falling back to none")
        return _linear_with(lin, w[:, keep_t], b), "none"
    if method == "liar":
        bmat = ridge_solve(stats_in.cov(), cov_in_out, ridge)  # [k, in]
        if bmat is not None:
            w_new = w @ bmat.T
            return _linear_with(lin, w_new, b0 + w @ (mean_out - bmat.T @ mu_in)), used
        log.warning("LIAR solve ill-conditioned; falling back to bias compensation")
        used = "bias"
    # bias: keep W_S, match the dense output mean: b' = b + W μ − W_S μ*_S
    w_s = w[:, keep_t]
    return _linear_with(lin, w_s, b0 + w @ mean_out - w_s @ mu_in), used
