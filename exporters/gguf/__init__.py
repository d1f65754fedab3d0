"""GGUF exporter: pruned (per-layer widths) or dense Llama-family models that
llama.cpp loads, quantises and runs, verified against PyTorch.

    from exporters.gguf import export_gguf, QUANTS, DEFAULT_QUANT
    summary = export_gguf(model, "model.gguf", quant="q8_0")   # model: toolchain.models.Model

Modules: quants (types and tolerances), hparams (llama/deci and `{arch}.*`
keys), tensors (names, rope permutation), tokenizer, metadata (`general.*`),
writer (the gguf file), quantize (llama.cpp quantiser, fallbacks), verify,
export (the whole flow).
"""

import importlib

from .quants import DEFAULT_QUANT, QUANTS

__all__ = ["export_gguf", "QUANTS", "DEFAULT_QUANT"]


def __getattr__(name: str):
    """export_gguf imports torch; loading it on first use keeps `liar-export --help` fast."""
    if name == "export_gguf":
        return importlib.import_module(".export", __name__).export_gguf
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
