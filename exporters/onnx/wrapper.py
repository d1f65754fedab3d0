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

from .iospec import input_names, output_names

# Example sizes for tracing: all different and > 1 so that torch.export keeps them symbolic.
_BATCH, _SEQ, _PAST = 2, 5, 3


class FlatKVDecoder(nn.Module):
    """`forward(input_ids, attention_mask, position_ids, *past) -> (logits, *present)`."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.num_layers = len(model.model.layers)

    def forward(self, input_ids, attention_mask, position_ids, past):
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        for i in range(self.num_layers):
            cache.update(past[2 * i], past[2 * i + 1], i)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                         position_ids=position_ids, past_key_values=cache, use_cache=True)
        present = []
        for layer in out.past_key_values.layers:
            present += [layer.keys, layer.values]
        return (out.logits, *present)


def kv_heads(model: nn.Module) -> list[int]:
    """Per-layer KV head counts, read from the real module shapes."""
    return [layer.self_attn.k_proj.out_features // layer.self_attn.head_dim
            for layer in model.model.layers]


def head_dim(model: nn.Module) -> int:
    return model.model.layers[0].self_attn.head_dim


def example_inputs(model: nn.Module) -> tuple:
    dtype = next(model.parameters()).dtype
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (_BATCH, _SEQ))
    mask = torch.ones(_BATCH, _PAST + _SEQ, dtype=torch.long)
    pos = torch.arange(_PAST, _PAST + _SEQ).expand(_BATCH, _SEQ).contiguous()
    d = head_dim(model)
    past = [torch.zeros(_BATCH, h, _PAST, d, dtype=dtype) for h in kv_heads(model) for _ in (0, 1)]
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


def trace_to_onnx(model: nn.Module, onnx_file: Path, external_data: bool) -> None:
    """Export `model` (eval mode) to `onnx_file`; weights in `<file>.data` if `external_data`."""
    L = len(model.model.layers)
    tok = {0: "batch", 1: "sequence"}
    dynamic = (tok, {0: "batch", 1: "total_sequence"}, tok,
               [{0: "batch", 2: "past_sequence"}] * (2 * L))
    with _quiet(), torch.no_grad():
        program = torch.onnx.export(FlatKVDecoder(model).eval(), example_inputs(model), dynamo=True,
                                    input_names=input_names(L), output_names=output_names(L),
                                    dynamic_shapes=dynamic, verbose=False)
        program.save(str(onnx_file), external_data=external_data)
