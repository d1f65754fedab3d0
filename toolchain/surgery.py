"""Physically shrink a Llama-family model to the widths a pruning plan keeps.

After surgery every Linear is really smaller, `num_key_value_groups` is set per
layer, and `config.liar_layers` records the per-layer widths so that save/load
and the exporters never have to guess.
"""

from __future__ import annotations

import torch
from torch import nn

from .plan import LayerPlan, PruningPlan


def _head_rows(heads: list[int], head_dim: int) -> torch.Tensor:
    return torch.tensor([h * head_dim + j for h in heads for j in range(head_dim)], dtype=torch.long)


def _sliced_linear(lin: nn.Linear, rows: torch.Tensor | None = None,
                   cols: torch.Tensor | None = None) -> nn.Linear:
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


def prune_layer(layer: nn.Module, lp: LayerPlan, head_dim: int) -> None:
    """Remove the heads / channels `lp` does not keep from one decoder layer."""
    attn, mlp = layer.self_attn, layer.mlp
    q_rows, kv_rows = _head_rows(lp.heads, head_dim), _head_rows(lp.kv_heads, head_dim)
    attn.q_proj = _sliced_linear(attn.q_proj, rows=q_rows)
    attn.k_proj = _sliced_linear(attn.k_proj, rows=kv_rows)
    attn.v_proj = _sliced_linear(attn.v_proj, rows=kv_rows)
    attn.o_proj = _sliced_linear(attn.o_proj, cols=q_rows)
    attn.num_key_value_groups = lp.num_heads // lp.num_kv_heads
    ch = torch.tensor(lp.channels, dtype=torch.long)
    mlp.gate_proj = _sliced_linear(mlp.gate_proj, rows=ch)
    mlp.up_proj = _sliced_linear(mlp.up_proj, rows=ch)
    mlp.down_proj = _sliced_linear(mlp.down_proj, cols=ch)
    mlp.intermediate_size = lp.intermediate_size


def apply_plan(model: nn.Module, plan: PruningPlan) -> nn.Module:
    """Shrink every decoder layer of `model` (in place) and record the widths."""
    plan.validate()
    for layer, lp in zip(model.model.layers, plan.layers, strict=True):
        prune_layer(layer, lp, plan.head_dim)
    record_widths(model)
    return model


def ensure_bias(lin: nn.Linear) -> nn.Linear:
    """Return `lin` with a (zero-initialised) bias; reconstruction writes into it."""
    if lin.bias is not None:
        return lin
    new = nn.Linear(lin.in_features, lin.out_features, bias=True,
                    device=lin.weight.device, dtype=lin.weight.dtype)
    new.weight.data.copy_(lin.weight.data)
    new.bias.data.zero_()
    return new


def layer_widths(model: nn.Module) -> list[dict]:
    """Per-layer widths and biases as stored in `config.liar_layers`."""
    out = []
    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        d = attn.head_dim
        out.append({
            "num_attention_heads": attn.q_proj.out_features // d,
            "num_key_value_heads": attn.k_proj.out_features // d,
            "intermediate_size": mlp.down_proj.in_features,
            "o_proj_bias": attn.o_proj.bias is not None,
            "down_proj_bias": mlp.down_proj.bias is not None,
        })
    return out


def record_widths(model: nn.Module) -> None:
    model.config.liar_layers = layer_widths(model)


def resize_to_widths(model: nn.Module, widths: list[dict]) -> None:
    """Give a freshly built (dense-shaped) model the module shapes in `widths`.

    Used when loading a pruned checkpoint: the weights are loaded afterwards.
    """
    for layer, w in zip(model.model.layers, widths, strict=True):
        attn, mlp = layer.self_attn, layer.mlp
        d, hid = attn.head_dim, attn.q_proj.in_features
        nh, nkv, ff = w["num_attention_heads"], w["num_key_value_heads"], w["intermediate_size"]
        qkv_bias = attn.q_proj.bias is not None
        dev, dt = attn.q_proj.weight.device, attn.q_proj.weight.dtype
        mk = lambda i, o, b: nn.Linear(i, o, bias=b, device=dev, dtype=dt)  # noqa: E731
        attn.q_proj, attn.k_proj = mk(hid, nh * d, qkv_bias), mk(hid, nkv * d, qkv_bias)
        attn.v_proj = mk(hid, nkv * d, qkv_bias)
        attn.o_proj = mk(nh * d, hid, w["o_proj_bias"] or attn.o_proj.bias is not None)
        attn.num_key_value_groups = nh // nkv
        mlp_bias = mlp.gate_proj.bias is not None
        mlp.gate_proj, mlp.up_proj = mk(hid, ff, mlp_bias), mk(hid, ff, mlp_bias)
        mlp.down_proj = mk(ff, hid, w["down_proj_bias"] or mlp_bias)
        mlp.intermediate_size = ff
    model.config.liar_layers = [dict(w) for w in widths]
