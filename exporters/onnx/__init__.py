"""ONNX exporter: a per-layer-pruned Llama-family decoder with KV cache for onnxruntime.

    from exporters.onnx import export_onnx, onnx_perplexity
    from exporters.onnx.runtime import OnnxDecoder
"""

from .evaluate import onnx_perplexity
from .export import export_onnx
from .quantize import ONNX_QUANTS

__all__ = ["ONNX_QUANTS", "export_onnx", "onnx_perplexity"]
