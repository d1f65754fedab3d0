"""Streamed first- and second-moment statistics of Linear-layer inputs.

For every `o_proj` and `down_proj` input we accumulate, in float64, the Gram
matrix Σ(x−m)(x−m)ᵀ, the sum Σ(x−m) and the count N, where m is a fixed shift
(the first batch's mean). Shifting costs nothing and keeps the covariance
C = G/N − μμᵀ accurate even for channels whose mean dwarfs their spread.
Products are formed per batch in the activations' dtype (float32 on CPU) and
added into float64 accumulators: half the cost of float64 products, and the
per-batch rounding error (~1e-7 relative) is far below the ridge we add later.
They are formed in column blocks, so no full-size temporary ever sits beside
the accumulator (a 14336-wide Gram matrix is 1.6 GB in float64).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import UserError


# columns per float32 block product: a 14336-wide input's temporaries are then 14336×2048 float32 +
# float64 (350 MB); inputs up to 2048 wide (SmolLM2's FFN, a 1B model's hidden size) take one block,
# so their statistics are the very sums of a whole-matrix product (BLAS sums blocks in another order)
PRODUCT_BLOCK = 2048


def add_product(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """acc += aᵀ b (float64 accumulator, float32 products), one column block at a time."""
    for j in range(0, b.shape[1], PRODUCT_BLOCK):
        acc[:, j:j + PRODUCT_BLOCK] += (a.T @ b[:, j:j + PRODUCT_BLOCK]).double()


def check_finite(*xs: torch.Tensor) -> None:
    """Calibration activations must be finite: NaN/Inf means the model diverges on this text."""
    if not all(bool(torch.isfinite(x).all()) for x in xs):
        raise UserError("calibration produced NaN/Inf activations: the model diverges on this "
                        "calibration text (check the model file, or use --calib with other text)")


@dataclass
class InputStats:
    """Moments of one Linear layer's input channels over calibration tokens."""

    n: int
    shift: torch.Tensor  # [in] float64
    gram: torch.Tensor | None  # [in, in] float64, shifted; None when only diagonals are kept
    diag: torch.Tensor  # [in] float64, shifted Σ(x−m)²
    total: torch.Tensor  # [in] float64, shifted Σ(x−m)

    @property
    def mean(self) -> torch.Tensor:
        return self.shift + self.total / self.n

    @property
    def var(self) -> torch.Tensor:
        """Per-channel variance (population)."""
        mu = self.total / self.n
        return (self.diag / self.n - mu * mu).clamp_min(0)

    @property
    def sq_norm(self) -> torch.Tensor:
        """Σx² per channel (Wanda's ‖x_j‖²) from the shifted moments."""
        m = self.shift
        return self.diag + 2 * m * self.total + self.n * m * m

    def cov(self, inplace: bool = False) -> torch.Tensor:
        """Covariance C = G/N − μμᵀ (float64, shift-invariant).

        inplace: turn the Gram matrix itself into C and drop it from these stats, so one
        layer's statistics are never held twice (the walk's default; shared stats copy).
        """
        if self.gram is None:
            raise ValueError("covariance needs the full Gram matrix (collected with full=True)")
        mu = self.total / self.n
        if not inplace:
            return self.gram / self.n - torch.outer(mu, mu)
        c, self.gram = self.gram.div_(self.n).addr_(mu, mu, alpha=-1), None
        return c


class StatsAccumulator:
    """Accumulates InputStats from batches of activations [..., in]."""

    def __init__(self, full: bool = True) -> None:
        self.full = full
        self.n = 0
        self.shift = self.gram = self.diag = self.total = None

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1])
        check_finite(x)
        if self.shift is None:
            self.shift = x.double().mean(0)
            dim = x.shape[-1]
            kw = dict(dtype=torch.float64, device=x.device)
            self.gram = torch.zeros(dim, dim, **kw) if self.full else None
            self.diag = torch.zeros(dim, **kw)
            self.total = torch.zeros(dim, **kw)
        xc = x - self.shift.to(x.dtype)
        if self.full:
            add_product(self.gram, xc, xc)
        self.diag += (xc * xc).sum(0).double()
        self.total += xc.sum(0).double()
        self.n += x.shape[0]

    def result(self) -> InputStats:
        to_cpu = lambda t: None if t is None else t.cpu()  # noqa: E731
        return InputStats(self.n, to_cpu(self.shift), to_cpu(self.gram), to_cpu(self.diag),
                          to_cpu(self.total))


class CrossAccumulator:
    """Σ a bᵀ, Σ a, Σ b for token-aligned pairs (a: pruned-stream kept inputs,
    b: dense-stream inputs) — what sequential reconstruction regresses on."""

    def __init__(self) -> None:
        self.a = StatsAccumulator(full=True)
        self.cross = self.b_total = None

    def add(self, a: torch.Tensor, b: torch.Tensor) -> None:
        a2, b2 = a.detach().reshape(-1, a.shape[-1]), b.detach().reshape(-1, b.shape[-1])
        self.a.add(a2)
        ac = a2 - self.a.shift.to(a2.dtype)
        if self.cross is None:
            self.cross = torch.zeros(a2.shape[1], b2.shape[1], dtype=torch.float64, device=a2.device)
            self.b_total = torch.zeros(b2.shape[1], dtype=torch.float64, device=a2.device)
        add_product(self.cross, ac, b2)
        self.b_total += b2.sum(0).double()

    def result(self) -> tuple[InputStats, torch.Tensor, torch.Tensor]:
        """(stats of a, Cov(a, b) [k, m], mean of b)."""
        sa = self.a.result()
        mu_a_c = sa.total / sa.n
        mu_b = self.b_total.cpu() / sa.n
        cov_ab = self.cross.cpu() / sa.n - torch.outer(mu_a_c, mu_b)
        return sa, cov_ab, mu_b
