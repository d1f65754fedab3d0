"""SparseGPT (Frantar & Alistarh 2023, arXiv 2301.00774): one-shot pruning with OBS updates.

For one operator with weight W [out, in] and H = E[x xᵀ] [in, in] of its inputs
(in the model being pruned), SparseGPT approximately solves

    minimise ‖(W* − W) X‖²_F  over W* with the sparsity pattern

column by column, left to right: pruning weight W[:, j] and moving its error
onto the columns not yet visited is the optimal brain surgeon (OBS) update
with the inverse Hessian of the remaining columns. Those inverses are the rows
of one matrix, the upper Cholesky factor of H⁻¹ (`Hinv`), so each column costs
a rank-1 update. H is damped first (percdamp × mean diag H on the diagonal).

Masks are chosen lazily, per block of `blocksize` columns (the paper's
adaptive mask selection), by the OBS saliency w² / [H⁻¹]²_jj of the weights as
they stand when the block starts:
  * unstructured: per output row, the lowest-saliency weights of the block, as
    many as the row's running budget allows — every row ends with exactly
    round(sparsity · in) zeros (the reference thresholds over the whole block,
    so its rows differ);
  * n:m (2:4): per row, the n lowest of every m consecutive columns.
Rows are independent problems sharing H, so operators fed the same input can
be pruned as one stacked W.
"""

from __future__ import annotations

import torch


def inverse_hessian(H: torch.Tensor, percdamp: float = 0.01) -> torch.Tensor:
    """Upper Cholesky factor of (H + percdamp · mean(diag H) · I)⁻¹, in float64.
    Dead inputs (diag H = 0) get H_jj = 1: their weights are pruned at no cost."""
    H = H.to(torch.float64).clone()
    dead = H.diagonal() == 0
    H[dead, dead] = 1
    damp = percdamp * H.diagonal().mean()
    H.diagonal().add_(damp)
    L = torch.linalg.cholesky(H)
    return torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)


def sparsegpt(W: torch.Tensor, H: torch.Tensor, pattern: str = "unstructured", sparsity: float = 0.5,
              blocksize: int = 128, percdamp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """(W*, mask): W* [out, in] in float32, zero exactly outside the boolean `mask`.

    pattern "unstructured" prunes round(sparsity · in) weights of every row; "2:4" prunes
    2 of every 4 consecutive inputs (sparsity must then be 0.5)."""
    prunen, prunem = (2, 4) if pattern == "2:4" else (0, 0)
    if prunem and blocksize % prunem:
        raise ValueError(f"blocksize {blocksize} is not a multiple of {prunem}")
    W = W.to(torch.float32).clone()
    rows, columns = W.shape
    dead = H.diagonal() == 0
    W[:, dead.to(W.device)] = 0
    Hinv = inverse_hessian(H, percdamp).to(W.device, torch.float32)
    mask = torch.zeros_like(W, dtype=torch.bool)  # True: pruned (the reference's convention)

    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        d1 = Hinv1.diagonal()
        mask1 = torch.zeros_like(W1, dtype=torch.bool)
        if prunen == 0:
            # this block's share of every row's budget, so that rows total round(sparsity · in)
            n_block = round(sparsity * i2) - round(sparsity * i1)
            if n_block:
                tmp = W1 ** 2 / d1[None, :] ** 2
                mask1.scatter_(1, tmp.topk(n_block, dim=1, largest=False).indices, True)
        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]
            if prunen and i % prunem == 0:
                tmp = W1[:, i:i + prunem] ** 2 / d1[i:i + prunem][None, :] ** 2
                mask1.scatter_(1, i + tmp.topk(prunen, dim=1, largest=False).indices, True)
            q = w.clone()
            q[mask1[:, i]] = 0
            Q1[:, i] = q
            err1 = (w - q) / d
            W1[:, i:] -= err1[:, None] @ Hinv1[i, i:][None, :]
            Err1[:, i] = err1
        W[:, i1:i2] = Q1
        mask[:, i1:i2] = mask1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    keep = ~mask
    return W * keep, keep
