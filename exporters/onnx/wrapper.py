"""Trace a (possibly per-layer-pruned) causal LM to ONNX with a flat KV cache.

`torch.onnx.export` cannot take a transformers cache object as an input, so the
exported module takes one tensor per layer and per K/V, builds a DynamicCache
inside `forward`, and returns the updated cache as flat tensors again. Each
layer's KV head count comes from its own k_proj, so pruned layers keep their
own static cache shapes.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from toolchain.models import cache_keyword

from .iospec import input_names, output_names

# Example sizes for tracing: all different and > 1 so that torch.export keeps them symbolic.
_BATCH, _SEQ, _PAST = 2, 5, 3


class FlatKVDecoder(nn.Module):
    """`forward(input_ids, attention_mask, position_ids, *past) -> (logits, *present)`."""

    def __init__(self, model: nn.Module, num_layers: int):
        super().__init__()
        self.model = model
        self.num_layers = num_layers

    def forward(self, input_ids, attention_mask, position_ids, past):
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        for i in range(self.num_layers):
            cache.update(past[2 * i], past[2 * i + 1], i)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         use_cache=True, **{cache_keyword(self.model): cache})
        present = []
        for layer in out.past_key_values.layers:
            present += [layer.keys, layer.values]
        return (out.logits, *present)


def example_inputs(model: nn.Module, kv_heads: list[int], head_dim: int) -> tuple:
    dtype = next(model.parameters()).dtype
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (_BATCH, _SEQ))
    mask = torch.ones(_BATCH, _PAST + _SEQ, dtype=torch.long)
    pos = torch.arange(_PAST, _PAST + _SEQ).expand(_BATCH, _SEQ).contiguous()
    past = [torch.zeros(_BATCH, h, _PAST, head_dim, dtype=dtype) for h in kv_heads for _ in (0, 1)]
    return ids, mask, pos, past


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter logs registry warnings (torchvision ops) and deprecations: not ours."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo",
                                                "onnxscript", "torch.fx.experimental.symbolic_shapes")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def trace_to_onnx(model: nn.Module, onnx_file: Path, external_data: bool, kv_heads: list[int],
                  head_dim: int) -> None:
    """Export `model` (eval mode) to `onnx_file`; weights in `<file>.data` if `external_data`.

    `kv_heads` (per layer, from the widths record) and `head_dim` shape the cache inputs."""
    L = len(kv_heads)
    tok = {0: "batch", 1: "sequence"}
    dynamic = (tok, {0: "batch", 1: "total_sequence"}, tok,
               [{0: "batch", 2: "past_sequence"}] * (2 * L))
    with _quiet(), torch.no_grad():
        program = torch.onnx.export(FlatKVDecoder(model, L).eval(), example_inputs(model, kv_heads, head_dim),
                                    dynamo=True,
                                    input_names=input_names(L), output_names=output_names(L),
                                    dynamic_shapes=dynamic, verbose=False)
        program.save(str(onnx_file), external_data=external_data)
