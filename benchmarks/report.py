"""`liar-bench report`: PNG plots and one self-contained HTML page.

The page embeds the plots as base64 and inlines its CSS, so it can be
attached to a CI run or mailed as a single file. Plots: decode latency and
memory dense vs pruned (latest run), quality vs sparsity (all runs), and the
history of decode latency / speed-up across the runs given (oldest first).
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from toolchain.atomic import atomic_path

from .tables import MIB, artifact_rows

PLOTS = ("latency.png", "memory.png", "quality.png", "history.png")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on build machines
    import matplotlib.pyplot as plt

    return plt


def _bars(ax, doc: dict, values, errors=None, ylabel: str = "") -> None:
    arts = doc["artifacts"]
    colors = ["#555555" if a["role"] == "baseline" else "#d9534f" for a in arts]
    x = range(len(arts))
    ax.bar(x, values, color=colors, yerr=errors, capsize=3)
    ax.set_xticks(list(x), [a["name"] for a in arts], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)


def plot_latency(doc: dict, path: Path) -> None:
    plt = _pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    lat = [a["decode"]["latency_ms"] for a in doc["artifacts"]]
    _bars(a1, doc, [s["median"] for s in lat],
          [[s["median"] - s["p10"] for s in lat], [s["p90"] - s["median"] for s in lat]],
          "decode latency, ms/token (median, p10–p90)")
    n = str(max(doc["settings"]["prompt_tokens"]))
    _bars(a2, doc, [a["prefill"][n]["tokens_per_s"]["median"] for a in doc["artifacts"]],
          ylabel=f"prefill throughput at {n} tokens, tokens/s")
    fig.suptitle("Latency: dense (grey) vs pruned (red)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_memory(doc: dict, path: Path) -> None:
    plt = _pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    _bars(a1, doc, [a["memory"]["peak_rss_bytes"]["median"] / MIB for a in doc["artifacts"]],
          ylabel="peak RSS, MiB")
    _bars(a2, doc, [a["size"]["artifact_bytes"] / MIB for a in doc["artifacts"]], ylabel="artifact size, MiB")
    fig.suptitle("Memory: dense (grey) vs pruned (red)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_quality(docs: list[dict], path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    series: dict[str, list[tuple[float, float]]] = {}
    for doc in docs:
        for a in doc["artifacts"]:
            if a.get("quality"):
                sparsity = (a["ratios"] or {}).get("block_sparsity", 0.0)
                series.setdefault(f"{a['backend']} {a['weight_type']}", []).append(
                    (sparsity * 100, a["quality"]["perplexity"]))
    for label, pts in sorted(series.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=label)
    ax.set_xlabel("block parameters removed, %")
    ax.set_ylabel("perplexity (held-out text)")
    ax.set_title("Quality vs sparsity")
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_history(docs: list[dict], path: Path) -> None:
    plt = _pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    labels = [d["created"][:16].replace("T", " ") for d in docs]
    names = sorted({a["name"] for d in docs for a in d["artifacts"]})
    for name in names:
        lat, speed = [], []
        for i, d in enumerate(docs):
            for a in d["artifacts"]:
                if a["name"] == name:
                    lat.append((i, a["decode"]["latency_ms"]["median"]))
                    if a.get("ratios"):
                        speed.append((i, a["ratios"]["decode_speedup"]))
        a1.plot([p[0] for p in lat], [p[1] for p in lat], "o-", label=name)
        if speed:
            a2.plot([p[0] for p in speed], [p[1] for p in speed], "o-", label=name)
    for ax, ylabel in ((a1, "decode latency, ms/token (median)"), (a2, "decode speed-up vs baseline")):
        ax.set_xticks(range(len(docs)), labels, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.suptitle("History across runs (oldest first)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _history_rows(docs: list[dict]) -> tuple[list[str], list[list[str]]]:
    header = ["run (UTC)", "commit", "device", "threads", "artifact", "decode ms/token", "decode speed-up",
              "peak RSS MiB", "perplexity"]
    rows = []
    for d in docs:
        commit = (d["environment"].get("liar_export") or {}).get("commit") or "?"
        for a in d["artifacts"]:
            r = a.get("ratios") or {}
            rows.append([d["created"], commit[:10], d["settings"]["device"], str(d["settings"]["threads"]),
                         a["name"], f"{a['decode']['latency_ms']['median']:.2f}",
                         f"{r['decode_speedup']:.2f}×" if r else "baseline",
                         f"{a['memory']['peak_rss_bytes']['median'] / MIB:.0f}",
                         f"{a['quality']['perplexity']:.2f}" if a.get("quality") else "–"])
    return header, rows


CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;font-size:13px;margin:1em 0}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}img{max-width:100%;margin:1em 0}
.env{font-size:13px;color:#555}"""


def render_html(docs: list[dict], images: dict[str, bytes]) -> str:
    latest = docs[-1]
    env, s = latest["environment"], latest["settings"]
    cpu = env["cpu"]
    gpus = ", ".join(g["name"] for g in env.get("gpus") or []) or "none"
    pk = env.get("packages", {})
    env_line = (f"{html.escape(cpu['model'])} ({cpu['usable_cores']} usable cores), GPU: {html.escape(gpus)}; "
                f"{s['device']}, {s['threads']} threads; llama-cpp-python {pk.get('llama_cpp_python')}, "
                f"onnxruntime {pk.get('onnxruntime')}, torch {pk.get('torch')}; liar-export "
                f"{html.escape(str((env.get('liar_export') or {}).get('commit')))}")
    imgs = "".join(f'<img alt="{name}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'
                   for name, data in images.items())
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>liar-bench report</title>"
            f"<style>{CSS}</style></head><body><h1>liar-bench report</h1>"
            f"<p class='env'>Latest run {html.escape(latest['created'])}: {env_line}</p>"
            f"<h2>Latest run</h2>{_table(*artifact_rows(latest))}"
            f"<p class='env'>Ideal speed-up = dense / pruned weight bytes read per decoded token; "
            f"efficiency = measured / ideal. Medians over {s['repeats']} worker processes.</p>"
            f"<h2>Plots</h2>{imgs}<h2>History</h2>{_table(*_history_rows(docs))}</body></html>\n")


def write_report(docs: list[dict], out_dir: str | Path) -> Path:
    """Write PLOTS and index.html into `out_dir` (atomically); return the page's path."""
    out_dir = Path(out_dir)
    with atomic_path(out_dir, is_dir=True) as tmp:
        plot_latency(docs[-1], tmp / "latency.png")
        plot_memory(docs[-1], tmp / "memory.png")
        plot_quality(docs, tmp / "quality.png")
        plot_history(docs, tmp / "history.png")
        images = {name: (tmp / name).read_bytes() for name in PLOTS}
        (tmp / "index.html").write_text(render_html(docs, images), encoding="utf-8")
    return out_dir / "index.html"
