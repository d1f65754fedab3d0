"""Physically shrink one layer: its Linears really get smaller.

`prune_layer` keeps the rows / columns a plan names (pruning a dense layer);
`resize_layer` gives an empty layer the shapes of a widths record (building a
pruned model before its weights are loaded). Both go through the family's
description, so fused projections (Phi-3's qkv / gate_up) are handled where
they are described, not here.
"""

from __future__ import annotations

import torch
from torch import nn

from .families import Family
from .families.base import head_rows
from .plan import LayerPlan
from .widths import LayerWidths, Widths


def sliced_linear(lin: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Linear:
    """A new Linear holding the given rows (outputs) and columns (inputs) of `lin`."""
    w = lin.weight.data
    b = lin.bias.data if lin.bias is not None else None
    if rows is not None:
        w = w.index_select(0, rows.to(w.device))
        b = b.index_select(0, rows.to(w.device)) if b is not None else None
    if cols is not None:
        w = w.index_select(1, cols.to(w.device))
    new = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device=w.device, dtype=w.dtype)
    new.weight.data.copy_(w)
    if b is not None:
        new.bias.data.copy_(b)
    return new


def _set(layer: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(layer.get_submodule(parent) if parent else layer, name, module)


def prune_layer(layer: nn.Module, family: Family, lp: LayerPlan, dense: dict[str, int]) -> None:
    """Remove what `lp` does not keep from one dense layer, in place; o / down lose the
    inputs of removed heads / channels (reconstruction then replaces them)."""
    for path, rows in family.input_rows(lp, dense).items():
        _set(layer, path, sliced_linear(layer.get_submodule(path), rows=rows))
    _set(layer, family.o, sliced_linear(layer.get_submodule(family.o), cols=head_rows(lp.heads, dense["head_dim"])))
    _set(layer, family.down, sliced_linear(layer.get_submodule(family.down),
                                           cols=torch.tensor(lp.channels, dtype=torch.long)))
    family.set_widths(layer, lp.num_heads, lp.num_kv_heads, lp.intermediate_size)


def resize_layer(layer: nn.Module, family: Family, w: LayerWidths) -> None:
    """Give a freshly built layer (usually on the meta device) the shapes in `w`."""
    def fresh(path: str, inp: int, out: int, bias: bool) -> None:
        old = layer.get_submodule(path).weight
        _set(layer, path, nn.Linear(inp, out, bias=bias, device=old.device, dtype=old.dtype))

    hidden = layer.get_submodule(family.o).out_features
    for path, out in family.output_shapes(w).items():
        fresh(path, hidden, out, layer.get_submodule(path).bias is not None)
    fresh(family.o, w.num_attention_heads * w.head_dim, hidden, w.o_proj_bias)
    fresh(family.down, w.intermediate_size, hidden, w.down_proj_bias)
    family.set_widths(layer, w.num_attention_heads, w.num_key_value_heads, w.intermediate_size)


def widths_of(layers: nn.ModuleList, family: Family, head_dim: int) -> Widths:
    """The widths the modules really have (to check a model against its record)."""
    out = []
    for layer in layers:
        o, down = layer.get_submodule(family.o), layer.get_submodule(family.down)
        nh = o.in_features // head_dim
        if family.qkv:
            nkv = (layer.get_submodule(family.qkv).out_features // head_dim - nh) // 2
        else:
            nkv = layer.get_submodule(family.k).out_features // head_dim
        out.append(LayerWidths(nh, nkv, head_dim, down.in_features, o.bias is not None, down.bias is not None))
    return Widths(tuple(out))
