"""Unstructured / 2:4 sparsity table for the README (issues 8 and 16).

SmolLM2-135M-Instruct at 50% unstructured and 2:4 sparsity (every decoder-layer
Linear; embeddings and LM head stay dense): held-out perplexity (bundled legal
prose, never used for calibration), wall time (also as a multiple of one dense
forward pass over the same calibration tokens, measured in the same process)
and zeros counted in the result, for each recipe, all from the same dense
model in one process. A recipe is a preset (`default` is SparsityOptions()'s,
what liar-export runs without --criterion / --reconstruct) with optional
SparsityOptions overrides, so FISTA variants are measured with the same script:

    python -m benchmarks.sparsity_table -o benchmarks/results/sparsity_unstructured --patterns unstructured \
        --threads 1 --recipes "wanda,sparsegpt,wanda+fista,default,sparsegpt+fista:damp=0"

`semi_structured_timing` measures dense vs 2:4 semi-structured sparse matmul
with torch.sparse.to_sparse_semi_structured; it needs CUDA (sparse tensor cores)
and is only run with --cuda-matmul on a machine that has one.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from dataclasses import asdict, fields
from pathlib import Path

import torch

from toolchain.recipe import SparsityOptions
from toolchain.sinks import MemorySink
from toolchain.unstructured import sparsify

from .peers import ids_sha256
from .tablekit import dense_line, setup_record, smollm2_setup, write_table


def semi_structured_timing(m: int = 4096, k: int = 4096, n: int = 4096, reps: int = 50) -> dict:
    """Median seconds of fp16 W @ X, dense vs 2:4 semi-structured W [m, k], X [k, n] (CUDA only)."""
    if not torch.cuda.is_available():
        raise RuntimeError("2:4 semi-structured matmul needs a CUDA GPU")
    from torch.sparse import to_sparse_semi_structured

    dev = torch.device("cuda")
    w = torch.randn(m, k, dtype=torch.float16, device=dev)
    w = w * (torch.arange(k, device=dev) % 4 < 2)  # a valid 2:4 pattern
    x = torch.randn(k, n, dtype=torch.float16, device=dev)
    ws = to_sparse_semi_structured(w)
    err = float((ws @ x - w @ x).abs().max() / (w @ x).abs().max())

    def timed(fn) -> float:
        for _ in range(5):
            fn()
        times = []
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        return sorted(times)[len(times) // 2]

    dense_s, sparse_s = timed(lambda: w @ x), timed(lambda: ws @ x)
    return {"shape": [m, k, n], "dense_s": dense_s, "sparse_s": sparse_s, "speedup": dense_s / sparse_s,
            "max_rel_diff": err, "device": torch.cuda.get_device_name()}


PRESETS = {  # recipe name -> SparsityOptions overrides (anything not named: SparsityOptions' defaults)
    "default": {},
    "magnitude": {"criterion": "magnitude", "reconstruct": "none"},
    "wanda": {"criterion": "wanda", "reconstruct": "none"},
    "sparsegpt": {"criterion": "sparsegpt", "reconstruct": "none"},
    "wanda+fista": {"criterion": "wanda", "reconstruct": "fista"},
    "sparsegpt+fista": {"criterion": "sparsegpt", "reconstruct": "fista"},
}
DEFAULT_RECIPES = "magnitude,wanda,sparsegpt,wanda+fista,default"


def recipe_options(spec: str, pattern: str, sparsity: float) -> SparsityOptions:
    """SparsityOptions of a recipe: a preset name, optionally `:key=value,...` overrides
    (e.g. `sparsegpt+fista:damp=0,steps=0`)."""
    name, _, rest = spec.partition(":")
    if name not in PRESETS:
        raise SystemExit(f"unknown recipe {name!r}: one of {', '.join(PRESETS)} (+ :key=value,...)")
    kw = dict(PRESETS[name], pattern=pattern, sparsity=sparsity)
    types = {f.name: f.type for f in fields(SparsityOptions)}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        if key not in types:
            raise SystemExit(f"recipe {spec!r}: {key!r} is not a SparsityOptions field")
        kw[key] = {"int": int, "float": float}.get(types[key], str)(value)
    opts = SparsityOptions(**kw)
    opts.validate()
    return opts


def count_sparsity(module: torch.nn.Module, pattern: str) -> dict:
    """Zeros counted in every decoder-layer Linear's weight (not the LM head): the fraction of
    zeros, whether every row has the same count, the least and most zeros of a row (as fractions)
    and, for 2:4, whether every group of 4 consecutive inputs has ≥ 2 zeros."""
    zeros = numel = 0
    rows_equal = groups_ok = True
    row_min, row_max = 1.0, 0.0
    for name, lin in module.named_modules():
        if not isinstance(lin, torch.nn.Linear) or "layers." not in name:
            continue
        w = lin.weight.detach()
        z = w == 0
        zeros, numel = zeros + int(z.sum()), numel + w.numel()
        per_row = z.sum(1)
        rows_equal &= bool((per_row == per_row[0]).all())
        row_min, row_max = min(row_min, int(per_row.min()) / w.shape[1]), max(row_max, int(per_row.max()) / w.shape[1])
        if pattern == "2:4":
            groups_ok &= w.shape[1] % 4 == 0 and bool((z.reshape(w.shape[0], -1, 4).sum(-1) >= 2).all())
    out = {"zeros": zeros, "numel": numel, "sparsity": zeros / max(numel, 1), "rows_equal": rows_equal,
           "row_min": row_min, "row_max": row_max}
    if pattern == "2:4":
        out["two_of_four"] = groups_ok
    return out


def dense_forward_seconds(model: torch.nn.Module, ids: torch.Tensor, batch_size: int = 8) -> float:
    """Wall time of one forward pass of `model` over the calibration ids (the time unit of the table)."""
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, ids.shape[0], batch_size):
            model(ids[i:i + batch_size])
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--output", required=True, help="output prefix (.json and .md are written)")
    p.add_argument("--patterns", default="unstructured,2:4")
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--recipes", default=DEFAULT_RECIPES,
                   help=f"comma-separated recipes, each a preset ({', '.join(PRESETS)}) with optional "
                        "`:key=value;...` SparsityOptions overrides, e.g. sparsegpt+fista:damp=0;steps=0 "
                        f"(default {DEFAULT_RECIPES})")
    p.add_argument("--calib-samples", type=int, default=32)
    p.add_argument("--calib-seqlen", type=int, default=256)
    p.add_argument("--eval-seqlen", type=int, default=256)
    p.add_argument("--eval-windows", type=int, default=32)
    p.add_argument("--threads", type=int, default=torch.get_num_threads(),
                   help="torch threads (1 is fastest on a shared, oversubscribed machine)")
    p.add_argument("--cuda-matmul", action="store_true", help="also time 2:4 semi-structured matmul (CUDA)")
    p.add_argument("--from-log", help="write the result files from the printed rows of a run that was stopped "
                   "(its log; pass the run's own --calib-*/--eval-*/--threads), measuring nothing")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.from_log:
        return write_table(Path(args.output), from_log(Path(args.from_log), args), markdown)
    torch.manual_seed(0)
    specs = _join_overrides(args.recipes)
    for pattern in args.patterns.split(","):
        for spec in specs:
            recipe_options(spec, pattern, args.sparsity)  # fail on a typo before any work

    dense, ids, ppl = smollm2_setup(args.calib_samples, args.calib_seqlen, args.eval_seqlen, args.eval_windows)
    module = dense.module()
    forward_s = dense_forward_seconds(module, ids)
    start = time.perf_counter()
    dense_ppl = ppl(dense)["perplexity"]
    eval_s = time.perf_counter() - start
    del module
    print(f"dense perplexity {dense_ppl:.3f} ({eval_s:.0f} s); dense forward over the calibration "
          f"tokens {forward_s:.1f} s", flush=True)
    rows = []
    for pattern in args.patterns.split(","):
        for spec in specs:
            opts = recipe_options(spec, pattern, args.sparsity)
            sink = MemorySink(dense)
            report = sparsify(dense, ids, opts, torch.device("cpu"), sink, progress=False)
            model = sink.close(dense.widths, {})
            stages = [s for lay in report["layers"] for s in lay["stages"]]
            row = {"pattern": pattern, "recipe": spec, "options": report["options"],
                   "is_default": report["options"] == asdict(SparsityOptions(pattern=pattern, sparsity=args.sparsity)),
                   "achieved_sparsity": report["sparsity"], "seconds": report["seconds"],
                   "time_vs_dense_forward": report["seconds"] / forward_s,
                   "perplexity": ppl(model)["perplexity"], "counted": count_sparsity(model.module(), pattern),
                   "finite": all(bool(torch.isfinite(p).all()) for p in model.module().parameters())}
            if stages and "err_after" in stages[0]:
                row["mean_err_before"] = sum(s["err_before"] for s in stages) / len(stages)
                row["mean_err_after"] = sum(s["err_after"] for s in stages) / len(stages)
                row["warm_start_rows"] = sum(s["warm_start_rows"] for s in stages) / sum(s["rows"] for s in stages)
            elif stages and "err" in stages[0]:
                row["mean_err"] = sum(s["err"] for s in stages) / len(stages)
            rows.append(row)
            print(json.dumps(row), flush=True)
            del model, sink
            # written after every row, so that a long run that is stopped keeps what it measured
            result = {"model": "SmolLM2-135M-Instruct", "dense_perplexity": dense_ppl, "dense_eval_seconds": eval_s,
                      "dense_forward_seconds": forward_s, "calibration_sha256": ids_sha256(ids.numpy()),
                      "rows": rows, **setup_record(args)}
            write_table(Path(args.output), result, markdown, echo=False)
    if args.cuda_matmul:
        result["semi_structured_matmul"] = semi_structured_timing()
    write_table(Path(args.output), result, markdown)


def from_log(log: Path, args) -> dict:
    """A result from a run's stdout: its header line and one JSON line per finished row."""
    rows, head = [], None
    for line in log.read_text().splitlines():
        if line.startswith("dense perplexity "):
            head = re.match(r"dense perplexity ([0-9.]+) \(([0-9.]+) s\); dense forward over the calibration "
                            r"tokens ([0-9.]+) s", line)
        elif line.startswith("{"):
            rows.append(json.loads(line))
    if head is None or not rows:
        raise SystemExit(f"{log}: no header line or no finished row")
    dense_ppl, eval_s, forward_s = (float(g) for g in head.groups())
    return {"model": "SmolLM2-135M-Instruct", "dense_perplexity": dense_ppl, "dense_eval_seconds": eval_s,
            "dense_forward_seconds": forward_s, "rows": rows, "from_log": log.name, **setup_record(args)}


def _join_overrides(recipes: str) -> list[str]:
    """Split `a,b:k=v;k2=v2,c` into recipes (overrides are `;`-separated inside one recipe)."""
    return [r.replace(";", ",") for r in recipes.split(",") if r]


def markdown(result: dict) -> str:
    cal = result["calibration"]
    lines = [f"{dense_line(result)}; calibration "
             f"{cal['samples']}×{cal['seqlen']} {cal['source']} tokens; {result['machine']['threads']} CPU thread(s); "
             f"one dense forward pass over the calibration tokens: {result['dense_forward_seconds']:.1f} s.", "",
             "| pattern | recipe | perplexity | time (s) | × dense forward | zeros | mean rel. layer error |",
             "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if "mean_err_after" in r:
            err = f"{r['mean_err_before']:.4f} → {r['mean_err_after']:.4f} ({r['options'].get('target', 'dense')} target)"
        elif "mean_err" in r:
            err = f"{r['mean_err']:.4f} (own inputs)"
        else:
            err = "–"
        c = r["counted"]
        lines.append(f"| {r['pattern']} | {r['recipe']} | {r['perplexity']:.2f} | {r['seconds']:.1f} | "
                     f"{r['time_vs_dense_forward']:.1f} | {100 * c['sparsity']:.2f}% | {err} |")
    mm = result.get("semi_structured_matmul")
    if mm:
        lines += ["", f"2:4 semi-structured fp16 matmul {mm['shape']} on {mm['device']}: dense {mm['dense_s'] * 1e3:.3f} ms, "
                  f"sparse {mm['sparse_s'] * 1e3:.3f} ms (×{mm['speedup']:.2f})."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
