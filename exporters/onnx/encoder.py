"""ONNX export of a (pruned) sentence encoder, its onnxruntime runner and its verification.

Graph (docs/DESIGN.md §6, "Encoders"): inputs `input_ids`, `attention_mask`, `token_type_ids`
[batch, sequence] int64; outputs `last_hidden_state` [batch, sequence, hidden] and
`sentence_embedding` [batch, hidden] — the model's own pooling over real tokens, L2-normalised
as sentence-transformers' Normalize does. Batch and sequence are dynamic; each layer's head
count and FFN width are baked into its weights, so per-layer widths need nothing else.

Layout of OUT/ is the decoder's (model.onnx, io.json with `"kind": "encoder"`, tokenizer files),
written atomically; the export is verified against PyTorch on padded batches of held-out
passages before the directory appears.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from toolchain.atomic import atomic_path
from toolchain.cpus import usable_cpus
from toolchain.errors import UserError, VerificationError
from toolchain.models import Model
from toolchain.passages import tokenize, verification_texts
from toolchain.pooling import Pooling, normalize, pool, pooling_of
from toolchain.texts import heldout_text

from . import iospec
from .export import EXTERNAL_DATA_ABOVE, _check_args, _sizes, _target, float32_module
from .quantize import quantize
from .runtime import _first_line, resolve_providers
from .wrapper import _quiet

KIND = "encoder"
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OUTPUTS = ("last_hidden_state", "sentence_embedding")
FP32_REL = 1e-3  # max |Δ hidden| within 1e-3 of the hidden-state scale, as the decoders' logits
# Quantised weights: mean / worst cosine of the ONNX sentence embeddings to PyTorch's
# (all-MiniLM-L6-v2 on held-out passages: see tests/test_encoders_minilm.py).
TOLERANCES = {"none": {"min_mean_cosine": 0.99999, "min_cosine": 0.9999},
              "int8": {"min_mean_cosine": 0.99, "min_cosine": 0.95},
              "int4": {"min_mean_cosine": 0.90, "min_cosine": 0.75}}
VERIFY_TEXTS = 64


class EncoderGraph(nn.Module):
    """`forward(input_ids, attention_mask, token_type_ids) -> (last_hidden_state, sentence_embedding)`."""

    def __init__(self, model: nn.Module, pooling: str):
        super().__init__()
        self.model, self.pooling = model, pooling

    def forward(self, input_ids, attention_mask, token_type_ids):
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask,
                            token_type_ids=token_type_ids).last_hidden_state
        return hidden, normalize(pool(hidden, attention_mask, self.pooling))


def trace(graph: EncoderGraph, onnx_file: Path, external: bool) -> None:
    """torch.onnx (dynamo) with batch and sequence dynamic; the example batch holds padding."""
    ids = torch.tensor([[101, 7592, 2088, 102, 0], [101, 2023, 2003, 1037, 102]]) % graph.model.config.vocab_size
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    dims = {0: "batch", 1: "sequence"}
    with _quiet(), torch.no_grad():
        program = torch.onnx.export(graph.eval(), (ids, mask, torch.zeros_like(ids)), dynamo=True,
                                    input_names=list(INPUTS), output_names=list(OUTPUTS),
                                    dynamic_shapes=(dims, dims, dims), verbose=False)
        program.save(str(onnx_file), external_data=external)


class OnnxEncoder:
    """An onnxruntime session over an exported encoder; `embed(texts)` tokenises with the
    tokenizer.json written next to the graph (the `tokenizers` library, no transformers)."""

    def __init__(self, path: str | Path, providers=None, threads: int | None = None):
        import onnxruntime as ort

        self.path = iospec.model_file(path)
        self.io = iospec.read_io(self.path) or {}
        if self.io.get("kind") != KIND:
            raise UserError(f"{self.path} is not a liar-export encoder export (io.json kind "
                            f"{self.io.get('kind')!r}): export it with liar-export --to onnx")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads, opts.inter_op_num_threads = int(threads or usable_cpus()), 1
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=resolve_providers(providers))
        except Exception as e:  # onnxruntime raises its own pybind error types
            raise UserError(f"onnxruntime cannot load {self.path}: {_first_line(e)} "
                            "(corrupt or truncated file? re-export it)") from None
        names = [i.name for i in self.session.get_inputs()]
        if names != list(INPUTS):
            raise UserError(f"{self.path}: inputs must be {', '.join(INPUTS)} (got {', '.join(names)})")
        self.providers = self.session.get_providers()
        self._tokenizer = None

    def run(self, input_ids, attention_mask, token_type_ids) -> tuple[np.ndarray, np.ndarray]:
        """(last_hidden_state, sentence_embedding) of one padded batch."""
        feed = {n: np.asarray(a, dtype=np.int64) for n, a in zip(INPUTS, (input_ids, attention_mask, token_type_ids))}
        hidden, emb = self.session.run(list(OUTPUTS), feed)
        return hidden, emb

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from tokenizers import Tokenizer

            f = self.path.parent / "tokenizer.json"
            if not f.is_file():
                raise UserError(f"{self.path.parent} has no tokenizer.json: pass the whole ONNX export directory")
            tok = Tokenizer.from_file(str(f))
            tok.enable_truncation(int(self.io["max_length"]))
            tok.enable_padding(pad_id=int(self.io["pad_token_id"]), pad_token=self.io["pad_token"])
            self._tokenizer = tok
        return self._tokenizer

    def encode(self, texts: list[str]) -> dict[str, np.ndarray]:
        batch = self.tokenizer.encode_batch(texts)
        return {"input_ids": np.array([e.ids for e in batch]), "attention_mask": np.array([e.attention_mask for e in batch]),
                "token_type_ids": np.array([e.type_ids for e in batch])}

    def __call__(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """[n, hidden] L2-normalised sentence embeddings (toolchain.embeddings.EmbedFn)."""
        out = [self.run(**self.encode(texts[i:i + batch_size]))[1] for i in range(0, len(texts), batch_size)]
        return np.concatenate(out).astype(np.float32)


def measure(graph: EncoderGraph, enc: OnnxEncoder, tokenizer, texts: list[str], max_length: int,
            quant: str, batch_size: int = 16) -> dict:
    """Hidden-state and embedding agreement of ONNX with PyTorch on the same padded batches."""
    max_d, scale, cos = 0.0, 0.0, []
    for i in range(0, len(texts), batch_size):
        batch = tokenize(tokenizer, texts[i:i + batch_size], max_length)
        with torch.no_grad():
            h_t, e_t = (t.numpy() for t in graph(**batch))
        h_o, e_o = enc.run(**{k: v.numpy() for k, v in batch.items()})
        real = batch["attention_mask"].numpy().astype(bool)
        max_d = max(max_d, float(np.abs(h_o - h_t)[real].max()))
        scale = max(scale, float(np.abs(h_t)[real].max()))
        cos.append((e_o * e_t).sum(1) / np.linalg.norm(e_o, axis=1) / np.linalg.norm(e_t, axis=1))
    cos_all = np.concatenate(cos)
    stats = {"max_abs_dhidden": max_d, "hidden_scale": scale, "mean_cosine": float(cos_all.mean()),
             "min_cosine": float(cos_all.min()), "texts": len(texts), "tolerances": TOLERANCES[quant]}
    stats["failures"] = judge(stats, quant)
    stats["passed"] = not stats["failures"]
    return stats


def judge(stats: dict, quant: str) -> list[str]:
    tol, bad = TOLERANCES[quant], []
    if quant == "none":
        limit = FP32_REL * max(1.0, stats["hidden_scale"])
        if not stats["max_abs_dhidden"] <= limit:
            bad.append(f"max |Δ hidden| {stats['max_abs_dhidden']:.2e} > {limit:.2e}")
    if not stats["mean_cosine"] >= tol["min_mean_cosine"]:
        bad.append(f"mean embedding cosine {stats['mean_cosine']:.5f} < {tol['min_mean_cosine']}")
    if not stats["min_cosine"] >= tol["min_cosine"]:
        bad.append(f"worst embedding cosine {stats['min_cosine']:.5f} < {tol['min_cosine']}")
    return bad


def _io_json(model: Model, name: str, quant: str, external: bool, pooling: Pooling, max_length: int,
             recipe: dict | None) -> dict:
    cfg, tok = model.config, model.tokenizer
    seq = ["batch", "sequence"]
    return {"format": iospec.FORMAT, "version": iospec.FORMAT_VERSION, "kind": KIND, "model_file": name,
            "external_data": f"{name}.data" if external else None, "quant": quant, "dtype": "float32",
            "model_type": cfg.model_type, "num_layers": model.num_layers, "hidden_size": cfg.hidden_size,
            "vocab_size": cfg.vocab_size, "head_dim": model.dims["head_dim"], "max_length": max_length,
            "pad_token_id": tok.pad_token_id, "pad_token": tok.pad_token, "pooling": pooling.to_json(),
            "normalized": True, "layers": model.widths.to_json(),
            "inputs": [{"name": n, "dtype": "int64", "shape": seq} for n in INPUTS],
            "outputs": [{"name": OUTPUTS[0], "dtype": "float32", "shape": [*seq, cfg.hidden_size]},
                        {"name": OUTPUTS[1], "dtype": "float32", "shape": ["batch", cfg.hidden_size]}],
            "source": model.source, "plan": model.meta.get("plan"),
            "recipe": recipe if recipe is not None else model.meta.get("recipe")}


def export_encoder_onnx(model: Model, out_path: Path, quant: str = "none", recipe: dict | None = None,
                        verify: bool = True, verify_text: str | None = None, progress: bool = True,
                        float_onnx: Path | None = None) -> dict:
    """Export an encoder `model` to the directory `out_path` (or `OUT/name.onnx`), verified.

    `float_onnx`: an fp32 export of this same model to quantise instead of tracing again.
    Returns the summary (paths, bytes, verification); raises VerificationError, leaving nothing.
    """
    out_dir, name = _target(Path(out_path))
    _check_args(out_dir, quant)
    pooling = pooling_of(model)
    if model.tokenizer.pad_token_id is None:
        raise UserError("the encoder's tokenizer has no padding token: batched inputs need one")
    max_length = pooling.max_seq_length or int(model.config.max_position_embeddings)
    graph = EncoderGraph(float32_module(model), pooling.mode).eval()
    external = sum(p.numel() * 4 for p in graph.parameters()) > EXTERNAL_DATA_ABOVE
    texts = verification_texts(verify_text if verify_text is not None else heldout_text(), VERIFY_TEXTS) if verify else []
    t0 = time.perf_counter()
    say = (lambda msg: print(f"[onnx {time.perf_counter() - t0:6.1f}s] {msg}", file=sys.stderr, flush=True)) \
        if progress else (lambda msg: None)
    with atomic_path(out_dir, is_dir=True) as tmp:
        onnx_file = tmp / name
        if quant == "none":
            say(f"tracing the encoder ({model.num_layers} layers, {pooling.mode} pooling) to ONNX")
            trace(graph, onnx_file, external)
        else:
            src = iospec.model_file(float_onnx) if float_onnx is not None else tmp / ".float" / name
            if float_onnx is None:
                src.parent.mkdir()
                say(f"tracing the encoder ({model.num_layers} layers, {pooling.mode} pooling) to ONNX")
                trace(graph, src, external)
            say(f"quantising weights to {quant}")
            quantize(src, onnx_file, quant, external)
            shutil.rmtree(tmp / ".float", ignore_errors=True)
        model.tokenizer.save_pretrained(tmp)
        io = _io_json(model, name, quant, external, pooling, max_length, recipe)
        (tmp / iospec.IO_FILE).write_text(json.dumps(io, indent=1, default=str) + "\n")
        summary: dict = {"format": "onnx", "kind": KIND, "quant": quant, "external_data": external,
                         "pooling": pooling.mode}
        if verify:
            say(f"verifying against PyTorch ({len(texts)} held-out passages, padded batches)")
            stats = measure(graph, OnnxEncoder(onnx_file), model.tokenizer, texts, max_length, quant)
            if not stats["passed"]:
                raise VerificationError(f"ONNX encoder export ({quant}) disagrees with PyTorch: "
                                        + "; ".join(stats["failures"]))
            summary["verification"] = io["verification"] = stats
            (tmp / iospec.IO_FILE).write_text(json.dumps(io, indent=1, default=str) + "\n")
        files = _sizes(tmp)
    summary.update(path=str(out_dir / name), dir=str(out_dir), io_json=str(out_dir / iospec.IO_FILE), files=files,
                   bytes=sum(files.values()), model_bytes=files[name] + files.get(f"{name}.data", 0),
                   seconds=round(time.perf_counter() - t0, 1))
    say(f"wrote {out_dir} ({summary['model_bytes'] / 1e6:.1f} MB model)")
    return summary
