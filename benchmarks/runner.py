"""`liar-bench run`: measure artifacts against their dense baselines.

Every measurement runs in its own worker process (benchmarks.worker). Repeats
are interleaved (baseline, candidates, baseline, candidates, ...) so a noisy
neighbour on a shared machine slows both sides of a ratio alike; ratios are
then taken between medians of the same run.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from toolchain.errors import EXIT_BAD_INPUT, LiarError, UserError

from . import environment, inventory
from .schema import new_results
from .stats import summarize

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass
class Settings:
    device: str = "cpu"
    threads: int = 0  # 0: every usable core
    prompt_tokens: list[int] = field(default_factory=lambda: [128, 512])
    gen_tokens: int = 128
    repeats: int = 5
    warmup: int = 1
    text_path: str | None = None  # None: toolchain.texts.heldout_text()
    ppl_seqlen: int = 256
    ppl_windows: int = 8  # 0: every window of the text
    quality: bool = True
    pin: bool = True

    def check(self) -> None:
        if self.device not in ("cpu", "cuda"):
            raise UserError(f"--device must be cpu or cuda (got {self.device!r})")
        usable = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(
            range(os.cpu_count() or 1))
        if self.threads < 0:
            raise UserError(f"--threads must be positive (got {self.threads})")
        self.threads = self.threads or len(usable)
        if not self.prompt_tokens or min(self.prompt_tokens) < 1:
            raise UserError("--prompt-tokens must be a comma-separated list of positive integers")
        if self.gen_tokens < 1 or self.repeats < 1 or self.warmup < 0:
            raise UserError("--gen-tokens and --repeats must be >= 1 and --warmup >= 0")
        if self.device == "cuda":
            from .gpu import cuda_available

            if not cuda_available():
                raise UserError("--device cuda but no CUDA GPU is visible (nvidia-smi finds none): "
                                "use --device cpu")

    def affinity(self) -> list[int] | None:
        """Pin workers to the first `threads` usable cores (recorded in the results)."""
        if not self.pin or not hasattr(os, "sched_getaffinity"):
            return None
        usable = sorted(os.sched_getaffinity(0))
        return usable[: self.threads] if self.threads <= len(usable) else None


def text_info(settings: Settings) -> tuple[str, dict]:
    """The text file workers read, and its identity for the results."""
    from toolchain.texts import HELDOUT_PATH, read_text_file

    path = Path(settings.text_path) if settings.text_path else HELDOUT_PATH
    text = read_text_file(path)
    if not text.strip():
        raise UserError(f"--text {path} is empty")
    source = str(path) if settings.text_path else "toolchain.texts.heldout_text()"
    return str(path), {"source": source, "sha256": hashlib.sha256(text.encode()).hexdigest(),
                       "chars": len(text)}


def artifact_names(paths: list[Path]) -> list[str]:
    """Short unique names: the file (or export directory) name, plus parents until unique."""
    def label(p: Path, depth: int) -> str:
        base = p.parent if p.name == "model.onnx" else p
        parts = base.parts[-depth:]
        return "/".join(parts).removesuffix(".gguf")

    depth = 1
    while True:
        names = [label(p, depth) for p in paths]
        if len(set(names)) == len(names) or depth > 8:
            return names
        depth += 1


def pair_baselines(cands: list[dict], bases: list[dict]) -> None:
    """Give each candidate its baseline: the only one, or the one of the same format and weight type."""
    for c in cands:
        if len(bases) == 1:
            c["baseline"] = bases[0]["name"]
            continue
        same = [b for b in bases if (b["format"], b["weight_type"]) == (c["format"], c["weight_type"])]
        if len(same) != 1:
            kinds = ", ".join(f"{b['name']} ({b['format']} {b['weight_type']})" for b in bases)
            raise UserError(f"{c['name']} ({c['format']} {c['weight_type']}) has {len(same)} baselines of "
                            f"the same format and weight type among: {kinds}; pass exactly one each")
        c["baseline"] = same[0]["name"]


def progress(msg: str) -> None:
    print(f"[liar-bench] {msg}", file=sys.stderr, flush=True)


def run_worker(spec: dict, workdir: Path) -> dict:
    """Run one measurement in a fresh process; re-raise its error in this one."""
    n = len(list(workdir.iterdir()))
    spec_file, result_file = workdir / f"spec{n}.json", workdir / f"result{n}.json"
    spec_file.write_text(json.dumps(spec))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(PACKAGE_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.update({k: str(spec["threads"]) for k in THREAD_ENV})
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.worker", str(spec_file), str(result_file)],
                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        result = json.loads(result_file.read_text())
    except (OSError, json.JSONDecodeError):
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        raise LiarError(f"benchmark worker for {spec['path']} died with exit code {proc.returncode}"
                        f"{': ' + tail if tail else ''}") from None
    if "error" in result:
        err = UserError if result["exit_code"] == EXIT_BAD_INPUT else LiarError
        raise err(result["error"])
    return result


def aggregate(runs: list[dict], prompt_tokens: list[int], gen_tokens: int, decode_prompt: int) -> dict:
    """Medians and spreads over repeats for the schema's per-artifact fields."""
    decode = [ms for r in runs for ms in r["decode_ms"]]
    gpu = [r["peak_gpu_bytes"] for r in runs if r["peak_gpu_bytes"] is not None]
    return {
        "load_s": summarize([r["load_s"] for r in runs]),
        "prefill": {str(n): {"tokens_per_s": summarize([n / r["prefill_s"][str(n)] for r in runs])}
                    for n in prompt_tokens},
        "decode": {"latency_ms": summarize(decode),
                   "tokens_per_s": summarize([1000 * len(r["decode_ms"]) / sum(r["decode_ms"]) for r in runs]),
                   "prompt_tokens": decode_prompt, "gen_tokens": gen_tokens},
        "memory": {"peak_rss_bytes": summarize([r["peak_rss_bytes"] for r in runs]),
                   "model_rss_bytes": summarize([r["peak_rss_bytes"] - r["rss_before_load_bytes"]
                                                 for r in runs]),
                   "peak_gpu_bytes": summarize(gpu) if gpu else None},
    }


def ratios(c: dict, b: dict) -> dict:
    """Same-run ratios of a candidate against its baseline (>1 = better, except perplexity)."""
    med = lambda a, *keys: _dig(a, *keys)["median"]  # noqa: E731
    decode = med(b, "decode", "latency_ms") / med(c, "decode", "latency_ms")
    ideal = b["size"]["bytes_per_token"] / c["size"]["bytes_per_token"]
    out = {
        "prefill_speedup": {n: v["tokens_per_s"]["median"] / b["prefill"][n]["tokens_per_s"]["median"]
                            for n, v in c["prefill"].items()},
        "decode_speedup": decode, "ideal_decode_speedup": ideal, "decode_efficiency": decode / ideal,
        "memory_reduction": med(b, "memory", "peak_rss_bytes") / med(c, "memory", "peak_rss_bytes"),
        "model_memory_reduction": med(b, "memory", "model_rss_bytes") / med(c, "memory", "model_rss_bytes"),
        "size_reduction": b["size"]["artifact_bytes"] / c["size"]["artifact_bytes"],
        "perplexity_ratio": (c["quality"]["perplexity"] / b["quality"]["perplexity"]
                             if c.get("quality") and b.get("quality") else None),
        "block_sparsity": 1 - c["size"]["block_parameters"] / b["size"]["block_parameters"],
    }
    if c["memory"]["peak_gpu_bytes"] and b["memory"]["peak_gpu_bytes"]:
        out["gpu_memory_reduction"] = (b["memory"]["peak_gpu_bytes"]["median"]
                                       / c["memory"]["peak_gpu_bytes"]["median"])
    return out


def _dig(d: dict, *keys: str) -> dict:
    for k in keys:
        d = d[k]
    return d


def run_benchmark(artifacts: list[str], baselines: list[str], settings: Settings) -> dict:
    """Measure every artifact and baseline; return a results document (schema v1)."""
    settings.check()
    if not baselines:
        raise UserError("--baseline is required: the dense model exported the same way "
                        "(e.g. `liar-export --sparsity 0` with the same --to and --quant)")
    text_path, text_meta = text_info(settings)
    base_paths = [inventory.resolve(p) for p in baselines]
    cand_paths = [p for p in (inventory.resolve(a) for a in artifacts) if p not in base_paths]
    if not cand_paths:
        raise UserError("no artifact to compare: pass at least one artifact besides the baseline")
    paths = base_paths + cand_paths
    entries = []
    for name, p, role in zip(artifact_names(paths), paths,
                             ["baseline"] * len(base_paths) + ["candidate"] * len(cand_paths)):
        progress(f"reading {p}")
        entries.append({"name": name, "role": role, "baseline": None, **inventory.describe(p)})
    pair_baselines([e for e in entries if e["role"] == "candidate"],
                   [e for e in entries if e["role"] == "baseline"])
    if settings.device == "cuda" and any(e["format"] == "gguf" for e in entries):
        progress("note: GGUF perplexity is measured on the CPU (F32 KV cache, as verification does)")

    decode_prompt = min(settings.prompt_tokens)
    base_spec = {"device": settings.device, "threads": settings.threads, "affinity": settings.affinity(),
                 "text_path": text_path, "prompt_tokens": settings.prompt_tokens,
                 "gen_tokens": settings.gen_tokens, "warmup": settings.warmup,
                 "decode_prompt_tokens": decode_prompt, "seqlen": settings.ppl_seqlen,
                 "max_windows": settings.ppl_windows}
    runs: dict[str, list[dict]] = {e["name"]: [] for e in entries}
    with tempfile.TemporaryDirectory(prefix="liar-bench-") as tmp:
        work = Path(tmp)
        for r in range(settings.repeats):
            for e in entries:
                spec = {**base_spec, "mode": "speed", "path": e["path"], "format": e["format"]}
                res = run_worker(spec, work)
                runs[e["name"]].append(res)
                med = sorted(res["decode_ms"])[len(res["decode_ms"]) // 2]
                progress(f"repeat {r + 1}/{settings.repeats} {e['name']}: load {res['load_s']:.2f}s, "
                         f"decode {med:.2f} ms/token, peak RSS {res['peak_rss_bytes'] / 2**20:.0f} MiB")
        for e in entries:
            e.update(aggregate(runs[e["name"]], settings.prompt_tokens, settings.gen_tokens, decode_prompt))
            e["quality"] = None
            if settings.quality:
                spec = {**base_spec, "mode": "perplexity", "path": e["path"], "format": e["format"]}
                e["quality"] = run_worker(spec, work)
                progress(f"{e['name']}: perplexity {e['quality']['perplexity']:.3f} "
                         f"({e['quality']['tokens']} tokens, seqlen {settings.ppl_seqlen})")
    by_name = {e["name"]: e for e in entries}
    for e in entries:
        e["ratios"] = ratios(e, by_name[e["baseline"]]) if e["role"] == "candidate" else None
    settings_doc = {"device": settings.device, "threads": settings.threads,
                    "cpu_affinity": base_spec["affinity"], "prompt_tokens": settings.prompt_tokens,
                    "gen_tokens": settings.gen_tokens, "repeats": settings.repeats,
                    "warmup": settings.warmup,
                    "perplexity": {"seqlen": settings.ppl_seqlen,
                                   "max_windows": settings.ppl_windows or None} if settings.quality else None,
                    "text": text_meta}
    doc = new_results(environment.capture(settings.threads), settings_doc,
                      datetime.now(timezone.utc).isoformat(timespec="seconds"))
    order = ("name", "path", "role", "baseline", "backend", "format", "weight_type", "recipe", "size",
             "load_s", "prefill", "decode", "memory", "quality", "ratios")
    doc["artifacts"] = [{k: e[k] for k in order} for e in entries]
    return doc
