"""Unstructured / 2:4 sparsity table for the README (issue 8).

SmolLM2-135M-Instruct at 50% unstructured and 2:4 sparsity (every decoder-layer
Linear; embeddings and LM head stay dense): held-out perplexity (bundled legal
prose, never used for calibration) and wall time of magnitude, wanda and
wanda+fista, each from a fresh copy of the dense model, all in one process.
`--ablation` adds wanda + least-squares refit on Wanda's own mask (fista with
0 bisection steps), which separates what the λ search buys from what the refit
buys.

    python -m benchmarks.sparsity_table -o benchmarks/results/sparsity_smollm2

`semi_structured_timing` measures dense vs 2:4 semi-structured sparse matmul
with torch.sparse.to_sparse_semi_structured; it needs CUDA (sparse tensor cores)
and is only run with --cuda-matmul on a machine that has one.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from toolchain.recipe import SparsityOptions
from toolchain.unstructured import sparsify

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


RECIPES = {  # name -> (criterion, reconstruct, fista steps override)
    "magnitude": ("magnitude", "none", None),
    "wanda": ("wanda", "none", None),
    "wanda+refit": ("wanda", "fista", 0),
    "wanda+fista": ("wanda", "fista", None),
}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--output", required=True, help="output prefix (.json and .md are written)")
    p.add_argument("--patterns", default="unstructured,2:4")
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--calib-samples", type=int, default=32)
    p.add_argument("--calib-seqlen", type=int, default=256)
    p.add_argument("--eval-seqlen", type=int, default=256)
    p.add_argument("--eval-windows", type=int, default=32)
    p.add_argument("--fista-iters", type=int, default=SparsityOptions.iters)
    p.add_argument("--fista-steps", type=int, default=SparsityOptions.steps)
    p.add_argument("--fista-refit-iters", type=int, default=SparsityOptions.refit_iters)
    p.add_argument("--threads", type=int, default=torch.get_num_threads(),
                   help="torch threads (1 is fastest on a shared, oversubscribed machine)")
    p.add_argument("--ablation", action="store_true", help="also run wanda + refit on Wanda's mask")
    p.add_argument("--cuda-matmul", action="store_true", help="also time 2:4 semi-structured matmul (CUDA)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    loaded, ids, ppl = smollm2_setup(args.calib_samples, args.calib_seqlen, args.eval_seqlen, args.eval_windows)
    dense = loaded.model
    start = time.perf_counter()
    dense_ppl = ppl(dense)["perplexity"]
    eval_s = time.perf_counter() - start
    print(f"dense perplexity {dense_ppl:.3f} ({eval_s:.0f} s)", flush=True)
    names = [n for n in RECIPES if n != "wanda+refit" or args.ablation]
    rows = []
    for pattern in args.patterns.split(","):
        for name in names:
            criterion, method, steps = RECIPES[name]
            opts = SparsityOptions(pattern=pattern, sparsity=args.sparsity, criterion=criterion, reconstruct=method,
                                   iters=args.fista_iters, refit_iters=args.fista_refit_iters,
                                   steps=args.fista_steps if steps is None else steps)
            model = copy.deepcopy(dense)
            report = sparsify(model, ids, opts, torch.device("cpu"), progress=False)
            stages = [s for lay in report["layers"] for s in lay["stages"] if "err_after" in s]
            row = {"pattern": pattern, "recipe": name, "options": report["options"],
                   "achieved_sparsity": report["sparsity"], "seconds": report["seconds"],
                   "perplexity": ppl(model)["perplexity"],
                   "finite": all(bool(torch.isfinite(p).all()) for p in model.parameters())}
            if stages:
                row["mean_err_before"] = sum(s["err_before"] for s in stages) / len(stages)
                row["mean_err_after"] = sum(s["err_after"] for s in stages) / len(stages)
            rows.append(row)
            print(json.dumps(row), flush=True)
            del model
    result = {"model": "SmolLM2-135M-Instruct", "dense_perplexity": dense_ppl, "dense_eval_seconds": eval_s,
              "rows": rows, **setup_record(args)}
    if args.cuda_matmul:
        result["semi_structured_matmul"] = semi_structured_timing()
    write_table(Path(args.output), result, markdown)


def markdown(result: dict) -> str:
    cal = result["calibration"]
    lines = [f"{dense_line(result)}; calibration "
             f"{cal['samples']}×{cal['seqlen']} {cal['source']} tokens; {result['machine']['threads']} CPU thread(s).", "",
             "| pattern | recipe | perplexity | time (s) | mean rel. layer error before → after |",
             "|---|---|---|---|---|"]
    for r in result["rows"]:
        err = (f"{r['mean_err_before']:.4f} → {r['mean_err_after']:.4f}" if "mean_err_after" in r else "–")
        lines.append(f"| {r['pattern']} | {r['recipe']} | {r['perplexity']:.2f} | {r['seconds']:.1f} | {err} |")
    fista = next((r["options"] for r in result["rows"] if r["recipe"] == "wanda+fista"), None)
    if fista:
        lines += ["", f"FISTA: {fista['steps']} λ bisection steps × {fista['iters']} iterations, then "
                  f"{fista['refit_iters']} conjugate-gradient refit iterations on the final mask, per stage."]
    mm = result.get("semi_structured_matmul")
    if mm:
        lines += ["", f"2:4 semi-structured fp16 matmul {mm['shape']} on {mm['device']}: dense {mm['dense_s'] * 1e3:.3f} ms, "
                  f"sparse {mm['sparse_s'] * 1e3:.3f} ms (×{mm['speedup']:.2f})."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
