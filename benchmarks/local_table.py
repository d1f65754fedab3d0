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
import itertools
import json
import time
from pathlib import Path

import torch

from toolchain.compress import compress, dense_statistics
from toolchain.local import default_steps
from toolchain.recipe import LOCAL_INPUTS, PRICINGS, CompressOptions, LocalOptions
from toolchain.sinks import MemorySink

from .compression_table import block_sparsity, run
from .tablekit import add_setup_arguments, dense_line, setup_from, setup_record, write_table


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--output", required=True, help="output prefix (.json and .md are written)")
    p.add_argument("--sparsities", default="0.5,0.2")
    p.add_argument("--criteria", default="flap,wanda-sp")
    p.add_argument("--granularities", default="module,block")
    p.add_argument("--methods", default="liar,liar+local,local", help="subset of liar, liar+local, local")
    p.add_argument("--steps", type=int, default=None, help="local steps per submodel (default one epoch)")
    p.add_argument("--lr", type=float, default=LocalOptions.lr)
    p.add_argument("--batch-size", type=int, default=LocalOptions.batch_size)
    p.add_argument("--inputs", default=LocalOptions.inputs, choices=LOCAL_INPUTS)
    p.add_argument("--pricing", default=CompressOptions.pricing, choices=PRICINGS, help="global allocation's pricing")
    add_setup_arguments(p)
    args = p.parse_args(argv)
    device = torch.device("cpu")

    dense, ids, ppl = setup_from(args)
    dense_ppl = ppl(dense)["perplexity"]
    print(f"dense perplexity {dense_ppl:.3f}", flush=True)

    start = time.perf_counter()
    stats = dense_statistics(dense, ids, device, CompressOptions().batch_size, progress=False)
    shared_s = time.perf_counter() - start
    methods = args.methods.split(",")
    rows: list[dict] = []

    def record(row: dict, model) -> None:
        row["achieved_sparsity"] = block_sparsity(model, dense)
        row["perplexity"] = ppl(model)["perplexity"]
        rows.append(row)
        print(json.dumps(row), flush=True)

    for sparsity, criterion in itertools.product([float(s) for s in args.sparsities.split(",")],
                                                 args.criteria.split(",")):
        common = {"sparsity": sparsity, "criterion": criterion}
        if "liar" in methods:
            model, seconds = run(dense, ids, CompressOptions(sparsity=sparsity, criterion=criterion, pricing=args.pricing),
                                stats)
            record({**common, "method": "liar", "granularity": None, "seconds": sum(seconds.values()),
                    "local": None}, model)
        for method, gran in itertools.product([m for m in methods if m != "liar"], args.granularities.split(",")):
            opts = CompressOptions(sparsity=sparsity, criterion=criterion, pricing=args.pricing,
                                   reconstruct="liar" if method == "liar+local" else "none")
            lopts = LocalOptions(granularity=gran, inputs=args.inputs, steps=args.steps, lr=args.lr,
                                 batch_size=args.batch_size)
            sink = MemorySink(dense)
            res = compress(dense, ids, opts, device, sink, local=lopts, progress=False, dense_stats=stats)
            report = res.local
            summary = {"loss_before": sum(r["loss_before"] for r in report),
                       "loss_after": sum(r["loss_after"] for r in report),
                       "seconds": sum(r["seconds"] for r in report), "submodels": report}
            record({**common, "method": method, "granularity": gran, "seconds": sum(res.seconds.values()),
                    "local": summary}, sink.close(res.widths, {}))

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
