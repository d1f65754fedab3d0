"""The recipe: what to do to a model, as plain data (no torch).

Every choice the compression stages accept and the option dataclasses that
carry them (saved next to every artifact) live here, apart from the modules
that do the work (pipeline, local, unstructured, fista). That keeps the "what"
readable in one place and lets the CLI describe and check it — `--help`, bad
input — without importing torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import UserError

# structured pruning: toolchain.pipeline, .criteria, .allocation, .reconstruct
CRITERIA = ("magnitude", "wanda-sp", "flap", "random")
ALLOCATIONS = ("uniform", "global")
HEAD_UNITS = ("auto", "per-group", "groups")
MODES = ("oneshot", "sequential")
METHODS = ("liar", "bias", "none")
# local reconstruction after pruning: toolchain.local
LOCAL_METHODS = ("local", "liar+local")
LOCAL_INPUTS = ("dense", "pruned")
# unstructured / 2:4 sparsity: toolchain.unstructured, .fista
PATTERNS = ("unstructured", "2:4")
SPARSE_CRITERIA = ("magnitude", "wanda")
SPARSE_METHODS = ("fista", "none")


def check_choice(option: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise UserError(f"--{option} must be one of {', '.join(allowed)} (got {value!r})")


@dataclass
class CompressOptions:
    """Structured pruning + closed-form reconstruction."""

    sparsity: float = 0.2
    criterion: str = "flap"
    reconstruct: str = "liar"
    allocation: str = "global"
    mode: str = "oneshot"
    round_to: int = 32
    head_unit: str = "auto"
    ridge: float = 1e-3
    seed: int = 0
    batch_size: int = 8

    def validate(self) -> None:
        for option, value, allowed in (("criterion", self.criterion, CRITERIA), ("reconstruct", self.reconstruct, METHODS),
                                       ("allocation", self.allocation, ALLOCATIONS), ("mode", self.mode, MODES),
                                       ("head-unit", self.head_unit, HEAD_UNITS)):
            check_choice(option, value, allowed)
        if not 0 <= self.sparsity < 1:
            raise UserError(f"--sparsity must be in [0, 1) (got {self.sparsity})")
        if self.round_to < 1:
            raise UserError(f"--round-to must be a positive integer (got {self.round_to})")
        if self.ridge < 0:
            raise UserError("--ridge must be ≥ 0")


@dataclass
class LocalOptions:
    """Local reconstruction (arXiv 2510.14444) after pruning."""

    # Defaults measured on SmolLM2-135M (benchmarks/local_table.py, results/local/): whole blocks
    # beat attention and MLP separately at sparsity 0.5 and tie at 0.2, pruned-model inputs beat
    # dense inputs, and with one short epoch lr 1e-3 beats the paper's 1e-5..3e-4 (a submodel
    # that gets worse is reverted anyway).
    granularity: str = "block"  # "module" | "block" | "blocks:K"
    inputs: str = "pruned"       # where the pruned submodel's inputs come from: "pruned" | "dense"
    steps: int | None = None     # None: one epoch over the calibration sequences
    lr: float = 1e-3
    warmup: float = 0.1         # fraction of the steps spent warming up
    batch_size: int = 4
    weight_decay: float = 0.0
    seed: int = 0
    mixed_precision: bool = True  # bf16 autocast, CUDA only

    def validate(self) -> None:
        block_count(self.granularity)
        check_choice("local-inputs", self.inputs, LOCAL_INPUTS)
        if self.steps is not None and self.steps < 1:
            raise UserError(f"--local-steps must be ≥ 1 (got {self.steps})")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UserError(f"--local-lr must be a positive number (got {self.lr})")
        if not 0 <= self.warmup < 1:
            raise UserError(f"--local-warmup must be in [0, 1) (got {self.warmup})")
        if self.batch_size < 1:
            raise UserError(f"--local-batch-size must be ≥ 1 (got {self.batch_size})")
        if self.weight_decay < 0:
            raise UserError(f"--local-weight-decay must be ≥ 0 (got {self.weight_decay})")


def block_count(granularity: str) -> int:
    """Blocks per local submodel: 0 for "module" (attention and MLP separately), else K ≥ 1."""
    if granularity == "module":
        return 0
    if granularity == "block":
        return 1
    head, _, k = granularity.partition(":")
    if head == "blocks" and k.isdigit() and int(k) >= 1:
        return int(k)
    raise UserError(f"--local-granularity must be module, block or blocks:K with K ≥ 1 "
                    f"(got {granularity!r})")


@dataclass
class FistaOptions:
    """The FISTA solver's budget per operator (toolchain.fista.solve)."""

    iters: int = 10  # FISTA iterations per λ (warm-started from the previous λ's solution)
    steps: int = 6  # λ bisection steps
    refit_iters: int = 20  # conjugate-gradient iterations on the final mask (0: off)


@dataclass
class SparsityOptions:
    """The recipe for --pattern unstructured | 2:4."""

    pattern: str = "unstructured"
    sparsity: float = 0.5
    criterion: str = "wanda"
    reconstruct: str = "fista"
    iters: int = FistaOptions.iters  # FISTA iterations per λ step
    steps: int = FistaOptions.steps  # λ bisection steps
    refit_iters: int = FistaOptions.refit_iters  # λ = 0 iterations on the final mask
    seed: int = 0
    batch_size: int = 8

    def validate(self) -> None:
        for option, value, allowed in (("pattern", self.pattern, PATTERNS), ("criterion", self.criterion, SPARSE_CRITERIA),
                                       ("reconstruct", self.reconstruct, SPARSE_METHODS)):
            check_choice(option, value, allowed)
        if self.pattern == "2:4" and self.sparsity != 0.5:
            raise UserError(f"--pattern 2:4 is 50% sparsity by definition: pass --sparsity 0.5 (got {self.sparsity})")
        if not 0 < self.sparsity < 1:
            raise UserError(f"--sparsity must be in (0, 1) (got {self.sparsity})")
        if self.iters < 1 or self.steps < 0 or self.refit_iters < 0 or self.batch_size < 1:
            raise UserError("--fista-iters must be ≥ 1, --fista-steps ≥ 0, --fista-refit-iters ≥ 0, "
                            "--batch-size ≥ 1")

    def fista(self) -> FistaOptions:
        return FistaOptions(self.iters, self.steps, self.refit_iters)
