"""Weight quantisation with onnxruntime's own tools.

- int8: `quantize_dynamic` (int8 weights per output channel, activations
  quantised on the fly) on every MatMul with a constant weight.
- int4: `MatMulNBitsQuantizer` (weight-only, symmetric, blocks of 32 along the
  input dimension; odd pruned widths are padded by the quantiser).
Attention score MatMuls have no constant operand and stay float.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

ONNX_QUANTS = ("none", "int8", "int4")
INT4_BLOCK_SIZE = 32


def quantize(src: Path, dst: Path, quant: str, external_data: bool) -> None:
    """Write the `quant` version of the float model `src` to `dst`."""
    if quant == "int8":
        _int8(src, dst, external_data)
    elif quant == "int4":
        _int4(src, dst, external_data)
    else:
        raise ValueError(f"not a quantisation: {quant!r}")


@contextlib.contextmanager
def _quiet():
    """The quantisers log every skipped node at INFO/WARNING and print to stdout."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def _int8(src: Path, dst: Path, external_data: bool) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet():
        quantize_dynamic(src, dst, op_types_to_quantize=["MatMul"], per_channel=True,
                         weight_type=QuantType.QInt8, use_external_data_format=external_data)


def _int4(src: Path, dst: Path, external_data: bool) -> None:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    with _quiet():
        q = MatMulNBitsQuantizer(onnx.load(str(src)), bits=4, block_size=INT4_BLOCK_SIZE,
                                 is_symmetric=True)
        q.process()
        q.model.save_model_to_file(str(dst), use_external_data_format=external_data)
