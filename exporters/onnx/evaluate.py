"""Perplexity of an exported ONNX decoder, through onnxruntime (`liar-eval FILE.onnx`)."""

from __future__ import annotations

from pathlib import Path

from toolchain.errors import UserError
from toolchain.perplexity import encode, perplexity

from .iospec import model_file
from .runtime import OnnxDecoder


def load_tokenizer(onnx_dir: Path):
    """The tokenizer saved next to the graph by export_onnx."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(onnx_dir))
    except (OSError, ValueError) as e:
        raise UserError(f"no usable tokenizer next to the ONNX model in {onnx_dir} ({e}): "
                        "re-export with liar-export --to onnx") from None


def onnx_perplexity(path: str | Path, text: str, seqlen: int, threads: int | None = None,
                    max_windows: int | None = None, providers=None, progress: bool = False) -> dict:
    """{"backend": "onnxruntime", "perplexity", "nll", "tokens", "windows", "seqlen", ...}."""
    f = model_file(path)
    dec = OnnxDecoder(f, providers=providers, threads=threads)
    ids = encode(load_tokenizer(f.parent), text)
    res = perplexity(dec.logits_fn(), ids, seqlen, max_windows=max_windows, progress=progress)
    return {"backend": "onnxruntime", "path": str(f), "providers": dec.providers,
            "quant": (dec.io or {}).get("quant"), **res}
