"""Local-reconstruction results table for the README (issue 7).

SmolLM2-135M-Instruct pruned at each sparsity with each criterion (global
allocation, one-shot), then repaired by `liar`, `liar+local` (LIAR, then local
refinement) and `local` alone (no closed-form repair, then local refinement),
for each local granularity. Perplexity on the bundled held-out legal prose
(never used for calibration); LIAR and local reconstruction use the same pydoc
calibration sequences. One dense statistics pass is shared by all recipes (it
does not depend on the recipe), so a row's time is its own plan +
reconstruction (+ local refinement).

    python -m benchmarks.local_table -o benchmarks/results/local/grid_s05 --sparsities 0.5 \
        --calib-samples 32 --eval-windows 16 --lr 1e-3 --inputs pruned --threads 1
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import time
from pathlib import Path

import torch

from toolchain.local import default_steps, local_reconstruct
from toolchain.params import param_summary
from toolchain.pipeline import Compressor
from toolchain.recipe import LOCAL_INPUTS, CompressOptions, LocalOptions

from .tablekit import dense_line, setup_record, smollm2_setup, write_table


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--output", required=True, help="output prefix (.json and .md are written)")
    p.add_argument("--sparsities", default="0.5,0.2")
    p.add_argument("--criteria", default="flap,wanda-sp")
    p.add_argument("--granularities", default="module,block")
    p.add_argument("--methods", default="liar,liar+local,local", help="subset of liar, liar+local, local")
    p.add_argument("--calib-samples", type=int, default=64)
    p.add_argument("--calib-seqlen", type=int, default=256)
    p.add_argument("--steps", type=int, default=None, help="local steps per submodel (default one epoch)")
    p.add_argument("--lr", type=float, default=LocalOptions.lr)
    p.add_argument("--batch-size", type=int, default=LocalOptions.batch_size)
    p.add_argument("--inputs", default=LocalOptions.inputs, choices=LOCAL_INPUTS)
    p.add_argument("--eval-seqlen", type=int, default=256)
    p.add_argument("--eval-windows", type=int, default=32)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device("cpu")

    loaded, ids, ppl = smollm2_setup(args.calib_samples, args.calib_seqlen, args.eval_seqlen, args.eval_windows)
    dense = loaded.model
    dense_ppl = ppl(dense)["perplexity"]
    print(f"dense perplexity {dense_ppl:.3f}", flush=True)

    start = time.perf_counter()
    stats = Compressor(dense, ids, CompressOptions(), device, progress=False).collect_stats(full=True)
    shared_s = time.perf_counter() - start
    methods = args.methods.split(",")
    granularities = args.granularities.split(",")
    rows: list[dict] = []
    dense_block = param_summary(dense)["block"]

    def record(row: dict, model) -> None:
        row["achieved_sparsity"] = 1 - param_summary(model)["block"] / dense_block
        row["perplexity"] = ppl(model)["perplexity"]
        rows.append(row)
        print(json.dumps(row), flush=True)

    for sparsity, criterion in itertools.product([float(s) for s in args.sparsities.split(",")],
                                                 args.criteria.split(",")):
        for base in ("liar", "none"):
            wanted = [m for m in methods if m in ({"liar", "liar+local"} if base == "liar" else {"local"})]
            if not wanted:
                continue
            opts = CompressOptions(sparsity=sparsity, criterion=criterion, reconstruct=base)
            start_model = copy.deepcopy(dense)
            res = Compressor(start_model, ids, opts, device, progress=False).run(dense_stats=stats)
            common = {"sparsity": sparsity, "criterion": criterion}
            if "liar" in wanted:
                record({**common, "method": "liar", "granularity": None, "seconds": res.seconds,
                        "local": None}, start_model)
            refined = [m for m in wanted if m != "liar"]
            for gran in granularities if refined else []:
                model = copy.deepcopy(start_model)
                lopts = LocalOptions(granularity=gran, inputs=args.inputs, steps=args.steps, lr=args.lr,
                                     batch_size=args.batch_size)
                t = time.perf_counter()
                report = local_reconstruct(dense, model, ids, lopts, device, progress=False)
                local_s = time.perf_counter() - t
                summary = {"loss_before": sum(r["loss_before"] for r in report),
                           "loss_after": sum(r["loss_after"] for r in report), "seconds": local_s,
                           "submodels": report}
                record({**common, "method": "liar+local" if base == "liar" else "local", "granularity": gran,
                        "seconds": res.seconds + local_s, "local": summary}, model)
                del model
            del start_model

    result = {"model": "SmolLM2-135M-Instruct", "dense_perplexity": dense_ppl, "rows": rows,
              "shared_statistics_seconds": shared_s,
              "local": {"lr": args.lr, "batch_size": args.batch_size, "inputs": args.inputs,
                        "steps": args.steps or default_steps(args.calib_samples, args.batch_size),
                        "warmup": LocalOptions.warmup, "weight_decay": LocalOptions.weight_decay},
              **setup_record(args)}
    write_table(Path(args.output), result, markdown)


def markdown(result: dict) -> str:
    loc = result["local"]
    lines = [f"{dense_line(result)}. Calibration: "
             f"{result['calibration']['samples']}×{result['calibration']['seqlen']} pydoc tokens; local: "
             f"AdamW lr {loc['lr']:g}, batch {loc['batch_size']}, {loc['steps']} steps per submodel, "
             f"{loc['inputs']} inputs.", "",
             "| sparsity | criterion | method | granularity | perplexity | vs liar | Σ MSE before → after | time (s) |",
             "|---|---|---|---|---|---|---|---|"]
    liar = {(r["sparsity"], r["criterion"]): r["perplexity"] for r in result["rows"] if r["method"] == "liar"}
    for r in result["rows"]:
        ref = liar.get((r["sparsity"], r["criterion"]))
        rel = f"{100 * (r['perplexity'] / ref - 1):+.1f}%" if ref and r["method"] != "liar" else "–"
        mse = (f"{r['local']['loss_before']:.3g} → {r['local']['loss_after']:.3g}" if r["local"] else "–")
        lines.append(f"| {r['sparsity']} | {r['criterion']} | {r['method']} | {r['granularity'] or '–'} | "
                     f"{r['perplexity']:.2f} | {rel} | {mse} | {r['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
