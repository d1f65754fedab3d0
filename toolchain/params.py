"""Parameter counts as the sparsity target defines them (DESIGN.md §4)."""

from __future__ import annotations

from torch import nn


def total_params(model: nn.Module) -> int:
    """Unique parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def block_params(model: nn.Module) -> int:
    """Parameters of the transformer blocks: embeddings, final norm and LM head excluded."""
    return sum(p.numel() for p in model.model.layers.parameters())


def param_summary(model: nn.Module) -> dict:
    return {"block": block_params(model), "total": total_params(model)}
