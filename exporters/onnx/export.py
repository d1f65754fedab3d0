"""`export_onnx`: one directory per export, written atomically.

Layout of OUT/:
    model.onnx          the decoder graph (+ model.onnx.data when weights > 2 GB);
                        `export_onnx(..., "OUT/other.onnx")` names it other.onnx
    io.json             inputs / outputs, per-layer KV heads and widths, quant,
                        source, plan / recipe, verification numbers
    genai_config.json   what onnxruntime-genai's og.Model(OUT) reads (genai.py)
    tokenizer files     tokenizer.json, tokenizer_config.json, ...
The directory only appears once export, quantisation and verification have
all succeeded, so a directory that exists is a finished, verified artifact.
"""

from __future__ import annotations

import copy
import json
import shutil
import sys
import time
from pathlib import Path

import torch

from toolchain.atomic import atomic_path
from toolchain.errors import UserError
from toolchain.models import Model
from toolchain.perplexity import encode, token_windows
from toolchain.texts import heldout_text

from . import iospec
from .genai import write_genai_config
from .quantize import ONNX_QUANTS, quantize
from .runtime import OnnxDecoder
from .verify import verify as run_verification
from .wrapper import trace_to_onnx

PROTOBUF_LIMIT = 2 * 1024**3
# Protobuf overhead (graph, shapes) rides on top of the weights: switch early.
EXTERNAL_DATA_ABOVE = int(PROTOBUF_LIMIT * 0.9)
VERIFY_WINDOWS = 4


def _log(progress: bool, t0: float, msg: str) -> None:
    if progress:
        print(f"[onnx {time.perf_counter() - t0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def _target(out_path: Path) -> tuple[Path, str]:
    """`OUT/` -> (OUT, "model.onnx"); `OUT/name.onnx` -> (OUT, "name.onnx")."""
    if out_path.suffix == ".onnx":
        return out_path.parent, out_path.name
    return out_path, iospec.MODEL_FILE


def _check_args(out_dir: Path, quant: str) -> None:
    if quant not in ONNX_QUANTS:
        raise UserError(f"unknown ONNX quantisation {quant!r}: choose one of {', '.join(ONNX_QUANTS)}")
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"ONNX output directory {out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / iospec.IO_FILE).is_file():
        raise UserError(f"ONNX output directory {out_dir} is not empty and holds no earlier export "
                        "(no io.json): choose a new directory, it is replaced as a whole")


def float32_module(model: Model) -> torch.nn.Module:
    """The whole model in float32 (the graph's weights and the verification reference)."""
    module = model.module()
    if next(module.parameters()).dtype != torch.float32:
        module = copy.deepcopy(module).float()
    return module.eval()


def _io_json(model: Model, name: str, quant: str, external: bool, recipe: dict | None) -> dict:
    cfg, kv, d = model.config, model.widths.column("num_key_value_heads"), model.dims["head_dim"]
    return {"format": iospec.FORMAT, "version": iospec.FORMAT_VERSION,
            "model_file": name, "external_data": f"{name}.data" if external else None,
            "quant": quant, "dtype": "float32", "model_type": cfg.model_type,
            "num_layers": len(kv), "head_dim": d, "hidden_size": cfg.hidden_size,
            "vocab_size": cfg.vocab_size, "rope_theta": getattr(cfg, "rope_theta", None),
            "max_position_embeddings": getattr(cfg, "max_position_embeddings", None),
            "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id,
            "pad_token_id": getattr(cfg, "pad_token_id", None),
            "layers": model.widths.to_json(),
            **iospec.describe(kv, d, cfg.vocab_size),
            "source": model.source, "plan": model.meta.get("plan"),
            "recipe": recipe if recipe is not None else model.meta.get("recipe")}


def _sizes(out_dir: Path) -> dict:
    return {p.name: p.stat().st_size for p in sorted(out_dir.iterdir()) if p.is_file()}


def export_onnx(model: Model, out_path: Path, quant: str = "none", recipe: dict | None = None,
                verify: bool = True, verify_text: str | None = None, verify_seqlen: int = 256,
                progress: bool = True, verify_windows: int = VERIFY_WINDOWS,
                float_onnx: Path | None = None) -> dict:
    """Export `model` to the directory `out_path` (model.onnx, io.json, tokenizer files).

    `out_path` is either that directory or the .onnx file inside it (`OUT/model.onnx`);
    the whole directory is written atomically and replaces an earlier export there.

    `float_onnx`: an fp32 export of this same model (export_onnx(..., quant="none"))
    to quantise instead of tracing again (tracing is the slow part); verification
    still compares against `model`, so a graph of another model fails it.

    Returns a summary: paths, bytes, quant and (when `verify`) the verification
    numbers. Raises UserError on bad arguments and VerificationError when the
    exported graph disagrees with PyTorch; in both cases nothing is left at
    `out_path`.
    """
    out_dir, name = _target(Path(out_path))
    _check_args(out_dir, quant)
    module = float32_module(model)
    weight_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
    external = weight_bytes > EXTERNAL_DATA_ABOVE
    kv = model.widths.column("num_key_value_heads")
    ids: list[int] = []
    if verify:  # a text too short for one window is bad input: say so before the slow part
        ids = encode(model.tokenizer, verify_text if verify_text is not None else heldout_text())
        token_windows(ids, verify_seqlen, 1)
    t0 = time.perf_counter()
    with atomic_path(out_dir, is_dir=True) as tmp:
        onnx_file = tmp / name

        def trace(f: Path) -> None:
            _log(progress, t0, f"tracing {len(kv)} layers (KV heads {kv}) to ONNX")
            trace_to_onnx(module, f, external, kv, model.dims["head_dim"])

        if quant == "none":
            trace(onnx_file)
        else:
            src = iospec.model_file(float_onnx) if float_onnx is not None else tmp / ".float" / name
            if float_onnx is None:
                src.parent.mkdir()
                trace(src)
            _log(progress, t0, f"quantising weights to {quant}")
            quantize(src, onnx_file, quant, external)
            shutil.rmtree(tmp / ".float", ignore_errors=True)
        model.tokenizer.save_pretrained(tmp)
        io = _io_json(model, name, quant, external, recipe)
        summary: dict = {"format": "onnx", "quant": quant, "external_data": external}
        if verify:
            _log(progress, t0, f"verifying against PyTorch (seqlen {verify_seqlen}, "
                           f"{verify_windows} windows)")
            summary["verification"] = run_verification(module, OnnxDecoder(onnx_file), ids, quant,
                                                       verify_seqlen, verify_windows)
            io["verification"] = summary["verification"]
        (tmp / iospec.IO_FILE).write_text(json.dumps(io, indent=1, default=str) + "\n")
        write_genai_config(tmp, io)
        files = _sizes(tmp)
    summary.update(path=str(out_dir / name), dir=str(out_dir),
                   io_json=str(out_dir / iospec.IO_FILE), files=files,
                   bytes=sum(files.values()),
                   model_bytes=files[name] + files.get(f"{name}.data", 0),
                   seconds=round(time.perf_counter() - t0, 1))
    _log(progress, t0, f"wrote {out_dir} ({summary['model_bytes'] / 1e6:.1f} MB model)")
    return summary
