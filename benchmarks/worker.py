"""One measurement of one artifact, in a fresh process (`python -m benchmarks.worker SPEC RESULT`).

A fresh process per measurement means peak RSS belongs to that artifact
alone, no allocator or page-cache state carries over from another model, and
a crash in a runtime cannot take the whole benchmark down. The spec and the
result are JSON files; progress goes to stderr.

Modes:
  speed       load, warm up, prefill each prompt length, decode greedily
              token by token; peak RSS and GPU memory.
  perplexity  toolchain.perplexity protocol through the same backend.
  encode      an encoder export: one fixed batch, timed (benchmarks.encoders).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

from toolchain.errors import EXIT_INTERNAL, LiarError, UserError

WARMUP_PROMPT = 32
WARMUP_STEPS = 4


def _rss_bytes() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def _reset_peak_rss() -> None:
    """Linux: writing 5 to clear_refs resets VmHWM, so the peak covers only what follows
    (not import-time spikes such as a tokenizer built by dequantising a source GGUF)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_rss_bytes() -> int:
    """Peak resident set since the last reset (VmHWM); ru_maxrss where /proc has none."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux: KiB


def _prompt_ids(ids: list[int], n: int) -> list[int]:
    """The first n tokens of the text, cycling it when it is shorter."""
    if not ids:
        raise UserError("the benchmark text tokenises to nothing: pass a longer --text")
    return (ids * (n // len(ids) + 1))[:n]


def measure_speed(backend, text: str, spec: dict) -> dict:
    rss_before = _rss_bytes()
    _reset_peak_rss()
    t0 = time.perf_counter()
    backend.load()
    load_s = time.perf_counter() - t0
    prompts = spec["prompt_tokens"]
    ids = _prompt_ids(backend.tokenize(text), max(prompts))
    for _ in range(spec["warmup"]):
        nxt = backend.prefill(ids[:min(WARMUP_PROMPT, len(ids))])
        for _ in range(WARMUP_STEPS):
            nxt = backend.step(nxt)
    prefill = {}
    for n in prompts:
        t0 = time.perf_counter()
        backend.prefill(ids[:n])
        prefill[str(n)] = time.perf_counter() - t0
    decode_ms = []
    nxt = backend.prefill(ids[:spec["decode_prompt_tokens"]])
    for _ in range(spec["gen_tokens"]):
        t0 = time.perf_counter()
        nxt = backend.step(nxt)
        decode_ms.append((time.perf_counter() - t0) * 1000)
    return {"load_s": load_s, "prefill_s": prefill, "decode_ms": decode_ms,
            "rss_before_load_bytes": rss_before, "peak_rss_bytes": _peak_rss_bytes(),
            "peak_gpu_bytes": backend.peak_gpu_bytes()}


def measure_perplexity(backend, text: str, spec: dict) -> dict:
    from toolchain.perplexity import perplexity

    backend.load()
    return perplexity(backend.logits, backend.tokenize(text), spec["seqlen"],
                      max_windows=spec.get("max_windows") or None)


def run(spec: dict) -> dict:
    from toolchain.texts import read_text_file

    from .backends import open_backend, preload

    if spec.get("affinity") and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, spec["affinity"])
    preload(spec["format"])
    if spec["mode"] == "encode":  # an encoder export: batch latency (benchmarks.encoders)
        from .encoders import measure_encode

        return measure_encode(spec)
    text = read_text_file(spec["text_path"])
    if spec["mode"] == "speed":
        n_ctx = max(spec["prompt_tokens"]) + spec["gen_tokens"] + WARMUP_PROMPT
        backend = open_backend(spec["path"], spec["format"], spec["device"], spec["threads"], n_ctx)
        return measure_speed(backend, text, spec)
    backend = open_backend(spec["path"], spec["format"], spec["device"], spec["threads"],
                           spec["seqlen"], for_logits=True)
    return measure_perplexity(backend, text, spec)


def main(argv: list[str]) -> int:
    spec_path, result_path = argv
    spec = json.loads(Path(spec_path).read_text())
    try:
        result, code = run(spec), 0
    except LiarError as e:
        result, code = {"error": str(e), "exit_code": e.exit_code}, e.exit_code
    except Exception as e:  # noqa: BLE001 - reported to the parent as an internal error
        result, code = {"error": f"{type(e).__name__}: {e}", "exit_code": EXIT_INTERNAL}, EXIT_INTERNAL
    Path(result_path).write_text(json.dumps(result))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
