"""Compression-stage results table for the README (issue 2).

SmolLM2-135M-Instruct, pruned at each sparsity for every criterion ×
reconstruction × allocation, perplexity on the bundled held-out legal prose
(never used for calibration). One dense statistics pass is shared by all
one-shot recipes (the statistics do not depend on the recipe), so each row's
time is its own plan + reconstruction; the end-to-end cost of the default
recipe is measured separately against one plain forward pass over the same
calibration tokens, in the same process.

    python -m benchmarks.compression_table -o benchmarks/results/compression_smollm2
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

import psutil
import torch

from toolchain.atomic import atomic_path
from toolchain.compress import compress, dense_statistics
from toolchain.criteria import CRITERIA
from toolchain.models import Model
from toolchain.recipe import PRICINGS, CompressOptions
from toolchain.sinks import MemorySink

from .tablekit import add_setup_arguments, dense_line, setup_from, setup_record, write_table


class PeakRSS:
    """Peak resident memory of this process while the block runs (sampled every 20 ms)."""

    def __init__(self) -> None:
        self.proc, self.peak, self._stop = psutil.Process(), 0, threading.Event()

    def __enter__(self) -> "PeakRSS":
        self.base = self.peak = self.proc.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def extra_mb(self) -> float:
        return (self.peak - self.base) / 2**20


def timed_forward(model: Model, ids: torch.Tensor, batch: int) -> float:
    """Seconds of one plain forward pass of the whole model over `ids` (the cost yardstick)."""
    module = model.module()
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(ids), batch):
            module(ids[i:i + batch])
    return time.perf_counter() - start


def run(dense: Model, ids: torch.Tensor, opts: CompressOptions, dense_stats=None, local=None) -> tuple[Model, dict]:
    """One recipe on `dense` in memory: (compressed model, seconds per pass)."""
    sink = MemorySink(dense)
    res = compress(dense, ids, opts, torch.device("cpu"), sink, local=local, progress=False, dense_stats=dense_stats)
    return sink.close(res.widths, {"plan": res.plan.to_json()}), res.seconds


def block_sparsity(model: Model, dense: Model) -> float:
    return 1 - model.param_summary()["block"] / dense.param_summary()["block"]


def measure_cost(dense: Model, ids: torch.Tensor, opts: CompressOptions) -> dict:
    """End-to-end compression vs one plain forward pass, same process, same tokens."""
    forward_s = timed_forward(dense, ids, opts.batch_size)
    with PeakRSS() as mem:
        _, seconds = run(dense, ids, opts)
    total = sum(seconds.values())
    cost = {"forward_seconds": forward_s, "compress_seconds": total, "passes": seconds, "ratio": total / forward_s,
            "peak_rss_mb": mem.peak / 2**20, "extra_rss_mb": mem.extra_mb, "recipe": vars(opts)}
    print(f"cost: compress {total:.1f}s vs forward {forward_s:.1f}s (×{cost['ratio']:.2f})", flush=True)
    return cost


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--output", required=True, help="output prefix (.json and .md are written)")
    p.add_argument("--sparsities", default="0.2,0.5")
    p.add_argument("--criteria", default=",".join(sorted(CRITERIA)))
    p.add_argument("--reconstruct", default="none,bias,liar")
    p.add_argument("--allocations", default="uniform,global")
    p.add_argument("--pricing", default=CompressOptions.pricing, choices=PRICINGS, help="global allocation's pricing")
    add_setup_arguments(p)
    p.add_argument("--global-only-criteria", default="",
                   help="criteria run with global allocation only (to bound the grid's cost)")
    p.add_argument("--sequential", action="store_true", help="also run the default recipe in sequential mode")
    p.add_argument("--skip-cost", action="store_true", help="skip the end-to-end cost measurement")
    p.add_argument("--cost-only", action="store_true", help="only the end-to-end cost measurement (OUTPUT-cost.json)")
    args = p.parse_args(argv)
    dense, ids, ppl = setup_from(args)
    dense_ppl = ppl(dense)["perplexity"]
    print(f"dense perplexity {dense_ppl:.3f}", flush=True)
    rows: list[dict] = []

    default = CompressOptions()
    cost = None if args.skip_cost else measure_cost(dense, ids, default)
    if args.cost_only:
        with atomic_path(Path(args.output + "-cost.json")) as tmp:
            tmp.write_text(json.dumps({"dense_perplexity": dense_ppl, "cost": cost,
                                       "machine": setup_record(args)["machine"]}, indent=1))
        return

    start = time.perf_counter()
    with PeakRSS() as mem:
        stats = dense_statistics(dense, ids, torch.device("cpu"), default.batch_size, progress=False)
    shared = {"seconds": time.perf_counter() - start, "extra_rss_mb": mem.extra_mb}
    sparsities = [float(s) for s in args.sparsities.split(",")]
    methods = args.reconstruct.split(",")
    # most informative first (a partial run still answers liar vs bias at both sparsities)
    grid = [(s, c, m, a) for c in args.criteria.split(",") for a in args.allocations.split(",")
            for s in sparsities for m in methods]
    grid += [(s, c, m, "global") for c in args.global_only_criteria.split(",") if c
             for s in sparsities for m in methods]
    for sparsity, criterion, method, allocation in grid:
        opts = CompressOptions(sparsity=sparsity, criterion=criterion, reconstruct=method, allocation=allocation,
                                   pricing=args.pricing)
        with PeakRSS() as mem:
            model, seconds = run(dense, ids, opts, dense_stats=stats)
        row = {"sparsity": sparsity, "criterion": criterion, "reconstruct": method, "allocation": allocation,
               "mode": "oneshot", "achieved_sparsity": block_sparsity(model, dense),
               "perplexity": ppl(model)["perplexity"], "seconds": sum(seconds.values()), "extra_rss_mb": mem.extra_mb}
        rows.append(row)
        print(json.dumps(row), flush=True)
        write_table(Path(args.output), result_doc(args, dense_ppl, cost, shared, rows), markdown,
                    echo=False)  # partial results survive
        del model
    if args.sequential:
        for sparsity in [float(s) for s in args.sparsities.split(",")]:
            opts = CompressOptions(sparsity=sparsity, mode="sequential", pricing=args.pricing)
            with PeakRSS() as mem:
                model, seconds = run(dense, ids, opts)
            row = {**{k: getattr(opts, k) for k in ("sparsity", "criterion", "reconstruct", "allocation", "mode")},
                   "achieved_sparsity": block_sparsity(model, dense),
                   "perplexity": ppl(model)["perplexity"], "seconds": sum(seconds.values()), "extra_rss_mb": mem.extra_mb}
            rows.append(row)
            print(json.dumps(row), flush=True)
    write_table(Path(args.output), result_doc(args, dense_ppl, cost, shared, rows), markdown)


def result_doc(args, dense_ppl: float, cost: dict | None, shared: dict, rows: list[dict]) -> dict:
    return {"model": "SmolLM2-135M-Instruct", "dense_perplexity": dense_ppl, "cost": cost,
            "shared_statistics": shared, "rows": rows,
            **setup_record(args)}


def markdown(result: dict) -> str:
    lines = [f"{dense_line(result)}.", "",
             "| sparsity | criterion | allocation | none | bias | liar | liar/bias | liar time (s) | liar extra RSS (MB) |",
             "|---|---|---|---|---|---|---|---|---|"]
    by = {(r["sparsity"], r["criterion"], r["allocation"], r["reconstruct"]): r
          for r in result["rows"] if r["mode"] == "oneshot"}
    for (s, c, a) in sorted({k[:3] for k in by}):
        cell = lambda m: by.get((s, c, a, m))  # noqa: E731
        fmt = lambda r: f"{r['perplexity']:.1f}" if r else "–"  # noqa: E731
        ratio = (f"{cell('liar')['perplexity'] / cell('bias')['perplexity']:.2f}"
                 if cell("liar") and cell("bias") else "–")
        liar = cell("liar")
        lines.append(f"| {s} | {c} | {a} | {fmt(cell('none'))} | {fmt(cell('bias'))} | {fmt(liar)} | {ratio} | "
                     f"{liar['seconds']:.1f} | {liar['extra_rss_mb']:.0f} |" if liar else "")
    seq = [r for r in result["rows"] if r["mode"] == "sequential"]
    if seq:
        lines += ["", "| sparsity | mode | perplexity | time (s) |", "|---|---|---|---|"]
        lines += [f"| {r['sparsity']} | sequential | {r['perplexity']:.1f} | {r['seconds']:.1f} |" for r in seq]
    c = result["cost"]
    if c is None:
        return "\n".join(lines + [""])
    lines += ["", f"Cost of the default recipe end to end (one-shot, flap, liar, global, "
              f"{result['calibration']['samples']}×{result['calibration']['seqlen']} pydoc tokens): "
              f"{c['compress_seconds']:.1f} s vs {c['forward_seconds']:.1f} s for one plain forward pass over the "
              f"same tokens = **×{c['ratio']:.2f}**; peak RSS {c['peak_rss_mb']:.0f} MB "
              f"(+{c['extra_rss_mb']:.0f} MB over the loaded model).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
