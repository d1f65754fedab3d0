"""Graph I/O names and the `io.json` sidecar that describes an exported decoder.

The names follow Optimum / onnxruntime-genai (`past_key_values.N.key`,
`present.N.key`), so other tools recognise the graph. Per-layer KV head counts
are the one thing that differs from a dense export: they are static dims of
each layer's cache tensors, recorded here so a runtime never has to guess.
"""

from __future__ import annotations

import json
from pathlib import Path

from toolchain.errors import UserError

FORMAT = "liar-export-onnx"
FORMAT_VERSION = 1
MODEL_FILE = "model.onnx"
IO_FILE = "io.json"
TOKEN_INPUTS = ("input_ids", "attention_mask", "position_ids")


def past_names(layer: int) -> tuple[str, str]:
    return f"past_key_values.{layer}.key", f"past_key_values.{layer}.value"


def present_names(layer: int) -> tuple[str, str]:
    return f"present.{layer}.key", f"present.{layer}.value"


def input_names(num_layers: int) -> list[str]:
    return [*TOKEN_INPUTS, *(n for i in range(num_layers) for n in past_names(i))]


def output_names(num_layers: int) -> list[str]:
    return ["logits", *(n for i in range(num_layers) for n in present_names(i))]


def describe(kv_heads: list[int], head_dim: int, vocab_size: int) -> dict:
    """Inputs / outputs with symbolic (str) and static (int) dims."""
    L = len(kv_heads)
    tok = ["batch", "sequence"]
    inputs = [{"name": "input_ids", "dtype": "int64", "shape": tok},
              {"name": "attention_mask", "dtype": "int64", "shape": ["batch", "past_sequence + sequence"]},
              {"name": "position_ids", "dtype": "int64", "shape": tok}]
    outputs = [{"name": "logits", "dtype": "float32", "shape": ["batch", "sequence", vocab_size]}]
    for i in range(L):
        for n in past_names(i):
            inputs.append({"name": n, "dtype": "float32",
                           "shape": ["batch", kv_heads[i], "past_sequence", head_dim]})
        for n in present_names(i):
            outputs.append({"name": n, "dtype": "float32",
                            "shape": ["batch", kv_heads[i], "past_sequence + sequence", head_dim]})
    return {"inputs": inputs, "outputs": outputs}


def model_file(path: str | Path) -> Path:
    """`OUT/` or `OUT/model.onnx` -> the .onnx file (a UserError if there is none)."""
    p = Path(path).expanduser()
    if p.is_dir():
        io = read_io(p / MODEL_FILE)
        p = p / (io.get("model_file") or MODEL_FILE if io else MODEL_FILE)
    if not p.is_file():
        raise UserError(f"ONNX model {p} does not exist: pass an export directory or its .onnx file")
    return p


def read_io(onnx_file: Path) -> dict | None:
    """The io.json next to `onnx_file`, or None when there is none (a foreign export)."""
    f = onnx_file.parent / IO_FILE
    if not f.is_file():
        return None
    try:
        io = json.loads(f.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{f} is not valid JSON ({e}): re-export the model") from None
    if not isinstance(io, dict) or io.get("format") != FORMAT or not isinstance(io.get("layers"), list):
        raise UserError(f"{f} is not a {FORMAT} description: re-export the model")
    return io
