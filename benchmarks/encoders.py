"""`liar-bench encoders`: onnxruntime latency, memory and embedding quality of encoder exports.

    liar-bench encoders DENSE_ONNX PRUNED_ONNX... [--threads N] [--batch 32] [--seq-tokens 128]
                        [--repeats 5] [--iters 10] [--text FILE] -o RESULTS.json

The first artifact is the dense baseline. Speed: each repeat runs every artifact once, in its own
worker process (benchmarks.worker, mode "encode"), interleaved as `liar-bench run` does, so a noisy
neighbour slows both sides of a ratio alike; a worker loads the graph, warms up, then times `iters`
forward passes of one fixed batch (`batch` texts of exactly `seq_tokens` tokens cut from the text,
no padding) and reports the median, and its peak RSS (VmHWM reset after imports). Quality, in this
process: retrieval recall@k on the text's query/document halves and the mean cosine of each
artifact's sentence embeddings to the baseline's (toolchain.embeddings). Ratios are same-run medians.
"""

from __future__ import annotations

import hashlib
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from toolchain.errors import UserError

KIND = "liar-bench-encoders"
SCHEMA_VERSION = 1
MIB = 2**20


def fixed_batch(tokenizer_file: Path, text: str, batch: int, seq_tokens: int) -> dict[str, np.ndarray]:
    """`batch` rows of exactly `seq_tokens` ids ([CLS] … [SEP]) cut from `text` in order (cycled)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_file))
    body = tok.encode(text, add_special_tokens=False).ids
    if not body or seq_tokens < 3:
        raise UserError("the benchmark text tokenises to nothing, or --seq-tokens < 3")
    n = seq_tokens - 2
    body = (body * (batch * n // len(body) + 1))[:batch * n]
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    if cls is None or sep is None:
        raise UserError(f"{tokenizer_file} has no [CLS]/[SEP] tokens: not a BERT tokenizer")
    ids = np.array([[cls, *body[i * n:(i + 1) * n], sep] for i in range(batch)], dtype=np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}


def measure_encode(spec: dict) -> dict:
    """One worker's speed run (benchmarks.worker mode "encode")."""
    from exporters.onnx.encoder import OnnxEncoder
    from toolchain.texts import read_text_file

    from .worker import _peak_rss_bytes, _reset_peak_rss, _rss_bytes

    rss_before = _rss_bytes()
    _reset_peak_rss()
    t0 = time.perf_counter()
    enc = OnnxEncoder(spec["path"], threads=spec["threads"])
    load_s = time.perf_counter() - t0
    feed = fixed_batch(enc.path.parent / "tokenizer.json", read_text_file(spec["text_path"]), spec["batch"],
                       spec["seq_tokens"])
    for _ in range(spec["warmup"]):
        enc.run(**feed)
    times = []
    for _ in range(spec["iters"]):
        t0 = time.perf_counter()
        enc.run(**feed)
        times.append((time.perf_counter() - t0) * 1000)
    return {"load_s": load_s, "batch_ms": times, "rss_before_load_bytes": rss_before,
            "peak_rss_bytes": _peak_rss_bytes()}


def _describe(path: Path) -> dict:
    from exporters.onnx.encoder import OnnxEncoder
    from exporters.onnx.iospec import model_file

    f = model_file(path)
    io = OnnxEncoder(f).io
    data = f.with_name(f.name + ".data")
    layers = io["layers"]
    return {"path": str(f), "quant": io["quant"], "pooling": io["pooling"]["mode"],
            "bytes": f.stat().st_size + (data.stat().st_size if data.is_file() else 0),
            "heads": [w["num_attention_heads"] for w in layers], "ffn": [w["intermediate_size"] for w in layers],
            "recipe": io.get("recipe")}


def run_encoders(paths: list[str], threads: int, batch: int, seq_tokens: int, repeats: int, iters: int,
                 warmup: int, text_path: str | None, pin: bool = True) -> dict:
    """Speed in worker processes, quality here; the results document."""
    import tempfile

    from toolchain.embeddings import evaluate, open_encoder
    from toolchain.texts import HELDOUT_PATH, read_text_file

    from . import environment
    from .runner import Settings, artifact_names, progress, run_worker
    from .stats import summarize

    if len(paths) < 2:
        raise UserError("pass the dense encoder export first, then at least one pruned one")
    if min(batch, iters, repeats) < 1 or warmup < 0:
        raise UserError("--batch, --iters and --repeats must be ≥ 1, --warmup ≥ 0")
    settings = Settings(threads=threads, pin=pin)
    settings.check()
    text_file = Path(text_path) if text_path else HELDOUT_PATH
    text = read_text_file(text_file)
    entries = [{"name": n, **_describe(Path(p))} for n, p in zip(artifact_names([Path(p) for p in paths]), paths)]
    spec = {"mode": "encode", "format": "onnx", "threads": settings.threads, "affinity": settings.affinity(),
            "text_path": str(text_file), "batch": batch, "seq_tokens": seq_tokens, "iters": iters, "warmup": warmup}
    runs: dict[str, list[dict]] = {e["name"]: [] for e in entries}
    with tempfile.TemporaryDirectory(prefix="liar-bench-enc-") as tmp:
        for r in range(repeats):
            for e in entries:
                res = run_worker({**spec, "path": e["path"]}, Path(tmp))
                runs[e["name"]].append(res)
                progress(f"repeat {r + 1}/{repeats} {e['name']}: {np.median(res['batch_ms']):.1f} ms per batch of "
                         f"{batch}×{seq_tokens}, peak RSS {res['peak_rss_bytes'] / MIB:.0f} MiB")
    dense = open_encoder(entries[0]["path"], "onnxruntime", settings.threads)
    for e in entries:
        rs = runs[e["name"]]
        e["latency_ms"] = summarize([float(np.median(r["batch_ms"])) for r in rs])
        e["load_s"] = summarize([r["load_s"] for r in rs])
        e["peak_rss_bytes"] = summarize([r["peak_rss_bytes"] for r in rs])
        e["model_rss_bytes"] = summarize([r["peak_rss_bytes"] - r["rss_before_load_bytes"] for r in rs])
        e["quality"] = evaluate(open_encoder(e["path"], "onnxruntime", settings.threads), text, dense)
        progress(f"{e['name']}: recall@10 {e['quality']['recall@10']:.3f}, cosine {e['quality']['cosine']:.4f}")
    base = entries[0]
    for e in entries:
        e["ratios"] = {"speedup": base["latency_ms"]["median"] / e["latency_ms"]["median"],
                       "size_reduction": base["bytes"] / e["bytes"],
                       "memory_reduction": base["peak_rss_bytes"]["median"] / e["peak_rss_bytes"]["median"]}
    return {"kind": KIND, "schema_version": SCHEMA_VERSION,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "environment": environment.capture(settings.threads),
            "settings": {"threads": settings.threads, "cpu_affinity": spec["affinity"], "batch": batch,
                         "seq_tokens": seq_tokens, "repeats": repeats, "iters": iters, "warmup": warmup,
                         "text": {"source": str(text_file), "sha256": hashlib.sha256(text.encode()).hexdigest()}},
            "artifacts": entries}


def markdown(doc: dict) -> str:
    s = doc["settings"]
    head = (f"| artifact | ONNX MiB | ms / batch of {s['batch']}×{s['seq_tokens']} (p10–p90) | speed-up | peak RSS MiB "
            "| recall@10 | cosine to dense |\n|---|---|---|---|---|---|---|\n")
    rows = []
    for e in doc["artifacts"]:
        lat, q = e["latency_ms"], e["quality"]
        rows.append(f"| {e['name']} | {e['bytes'] / MIB:.1f} | {lat['median']:.1f} ({lat['p10']:.1f}–{lat['p90']:.1f}) "
                    f"| {e['ratios']['speedup']:.2f}× | {e['peak_rss_bytes']['median'] / MIB:.0f} "
                    f"| {q['recall@10']:.3f} | {q['cosine']:.4f} |")
    return head + "\n".join(rows) + "\n"
