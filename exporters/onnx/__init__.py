"""ONNX exporter: a per-layer-pruned Llama-family decoder with KV cache for onnxruntime.

    from exporters.onnx import export_onnx, onnx_perplexity
    from exporters.onnx.runtime import OnnxDecoder
"""

import importlib

from .quantize import ONNX_QUANTS

__all__ = ["ONNX_QUANTS", "export_onnx", "onnx_perplexity"]
_LAZY = {"export_onnx": ".export", "onnx_perplexity": ".evaluate"}


def __getattr__(name: str):
    """The exporter and evaluator import torch / onnxruntime; load them on first use (fast --help)."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
