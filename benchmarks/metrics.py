"""The named metrics of an artifact, with direction and whether they gate CI.

`compare` (the regression gate), `export-dashboard` and the report all walk
the same list, so a metric means the same thing everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1024 * 1024


@dataclass(frozen=True)
class Metric:
    name: str          # "decode latency median", "prefill 128 tok", ...
    value: float
    unit: str
    smaller_is_better: bool
    gate: bool         # regression beyond the threshold fails `liar-bench compare`
    spread: tuple[float, float] | None = None  # (p10, p90) when measured repeatedly


def _summary(name: str, s: dict | None, unit: str, smaller: bool, gate: bool,
             scale: float = 1.0) -> list[Metric]:
    if not s:
        return []
    return [Metric(name, s["median"] * scale, unit, smaller, gate, (s["p10"] * scale, s["p90"] * scale))]


def artifact_metrics(a: dict) -> list[Metric]:
    """Latency, throughput, memory, quality, size and same-run ratios of one artifact."""
    out: list[Metric] = []
    dec = a["decode"]
    out += _summary("decode latency median", dec.get("latency_ms"), "ms/token", True, True)
    if dec.get("latency_ms"):
        out.append(Metric("decode latency p90", dec["latency_ms"]["p90"], "ms/token", True, True))
    out += _summary("decode throughput", dec.get("tokens_per_s"), "tokens/s", False, False)
    for p, v in sorted(a.get("prefill", {}).items(), key=lambda kv: int(kv[0])):
        out += _summary(f"prefill {p} throughput", v["tokens_per_s"], "tokens/s", False, True)
    out += _summary("load time", a.get("load_s"), "s", True, False)
    mem = a["memory"]
    out += _summary("peak RSS", mem.get("peak_rss_bytes"), "MiB", True, True, 1 / MIB)
    out += _summary("peak GPU memory", mem.get("peak_gpu_bytes"), "MiB", True, True, 1 / MIB)
    if a.get("quality"):
        out.append(Metric("perplexity", a["quality"]["perplexity"], "ppl", True, True))
    out.append(Metric("artifact size", a["size"]["artifact_bytes"] / MIB, "MiB", True, False))
    r = a.get("ratios") or {}
    if r.get("decode_speedup") is not None:
        out.append(Metric("decode speed-up vs baseline", r["decode_speedup"], "x", False, True))
        out.append(Metric("ideal decode speed-up", r["ideal_decode_speedup"], "x", False, False))
    if r.get("memory_reduction") is not None:
        out.append(Metric("memory reduction vs baseline", r["memory_reduction"], "x", False, False))
    if r.get("perplexity_ratio") is not None:
        out.append(Metric("perplexity ratio vs baseline", r["perplexity_ratio"], "x", True, False))
    return out
