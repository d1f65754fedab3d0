"""Results as tables: Markdown for the README / CI logs, rows for the HTML report."""

from __future__ import annotations

MIB = 1024 * 1024


def _f(x: float | None, fmt: str) -> str:
    return "–" if x is None else format(x, fmt)


def artifact_rows(doc: dict) -> tuple[list[str], list[list[str]]]:
    """Header and one row per artifact (baselines first, as measured)."""
    prompts = [str(n) for n in doc["settings"]["prompt_tokens"]]
    header = (["artifact", "role", "backend", "weights", "block sparsity", "size MiB", "read/token MiB",
               "decode ms/token (p10–p90)", "decode speed-up", "ideal speed-up", "efficiency"]
              + [f"prefill {n} tok/s" for n in prompts]
              + ["peak RSS MiB", "memory reduction", "perplexity", "ppl ratio"])
    rows = []
    for a in doc["artifacts"]:
        r = a.get("ratios") or {}
        lat = a["decode"]["latency_ms"]
        rows.append([
            a["name"], a["role"], a["backend"], a["weight_type"],
            _f(r.get("block_sparsity"), ".1%") if r else "0 (dense)",
            _f(a["size"]["artifact_bytes"] / MIB, ".1f"), _f(a["size"]["bytes_per_token"] / MIB, ".1f"),
            f"{lat['median']:.2f} ({lat['p10']:.2f}–{lat['p90']:.2f})",
            _f(r.get("decode_speedup"), ".2f") + ("×" if r else ""),
            _f(r.get("ideal_decode_speedup"), ".2f") + ("×" if r else ""),
            _f(r.get("decode_efficiency"), ".0%"),
            *[_f(a["prefill"][n]["tokens_per_s"]["median"], ".0f") for n in prompts],
            _f(a["memory"]["peak_rss_bytes"]["median"] / MIB, ".0f"),
            _f(r.get("memory_reduction"), ".2f") + ("×" if r else ""),
            _f(a["quality"]["perplexity"] if a.get("quality") else None, ".2f"),
            _f(r.get("perplexity_ratio"), ".2f"),
        ])
    return header, rows


def markdown_table(doc: dict) -> str:
    header, rows = artifact_rows(doc)
    s = doc["settings"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    cpu = doc["environment"]["cpu"]["model"]
    lines.append("")
    lines.append(f"{s['device']}, {s['threads']} threads, {cpu}; median of {s['repeats']} worker "
                 f"processes × {s['gen_tokens']} decoded tokens after a {min(s['prompt_tokens'])}-token "
                 f"prompt; perplexity at seqlen {(s.get('perplexity') or {}).get('seqlen', '–')}. "
                 "Ideal speed-up = dense / pruned weight bytes read per token (docs/DESIGN.md §8); "
                 "efficiency = measured / ideal.")
    return "\n".join(lines)
