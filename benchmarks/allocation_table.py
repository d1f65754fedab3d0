"""Heads against FFN channels: what global allocation removes, and what it costs (issue 16).

SmolLM2-135M-Instruct, LIAR, one shared dense statistics pass: at each sparsity, the plan
restricted to FFN channels (`--prune ffn`), to heads (`--prune heads`), and both with each
pricing of the global allocation — FLAP's standardised scores (`score`) and each unit's
estimated output error after reconstruction per parameter removed (`error`,
toolchain/pricing.py). Held-out perplexity on the bundled legal prose.

    python -m benchmarks.allocation_table -o benchmarks/results/allocation_smollm2
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch

from toolchain.compress import dense_statistics
from toolchain.recipe import CompressOptions

from .compression_table import block_sparsity, run
from .tablekit import add_setup_arguments, dense_line, markdown_table, setup_from, setup_record, write_table


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--output", required=True, help="output prefix (.json and .md are written)")
    p.add_argument("--sparsities", default="0.2,0.5")
    p.add_argument("--criterion", default="flap")
    p.add_argument("--prune", default="heads,ffn;ffn;heads", help="';'-separated --prune values")
    p.add_argument("--pricings", default="balanced,score,error")
    add_setup_arguments(p)
    args = p.parse_args(argv)
    dense, ids, ppl = setup_from(args)
    dense_ppl = ppl(dense)["perplexity"]
    print(f"dense perplexity {dense_ppl:.3f}", flush=True)
    start = time.perf_counter()
    stats = dense_statistics(dense, ids, torch.device("cpu"), progress=False)
    shared_s = time.perf_counter() - start
    rows: list[dict] = []
    for sparsity, prune in itertools.product([float(s) for s in args.sparsities.split(",")], args.prune.split(";")):
        pricings = args.pricings.split(",") if prune == "heads,ffn" else ["score"]  # one kind: pricing is moot
        for pricing in pricings:
            opts = CompressOptions(sparsity=sparsity, criterion=args.criterion, allocation="global", prune=prune,
                                   pricing=pricing)
            model, seconds = run(dense, ids, opts, dense_stats=stats)
            plan = json.loads(json.dumps(model.meta["plan"]))
            heads = sum(len(lp["heads"]) for lp in plan["layers"])
            ffn = sum(len(lp["channels"]) for lp in plan["layers"])
            rows.append({"sparsity": sparsity, "prune": prune, "pricing": pricing,
                         "achieved_sparsity": block_sparsity(model, dense), "perplexity": ppl(model)["perplexity"],
                         "heads_kept": heads / (plan["num_heads"] * len(plan["layers"])),
                         "ffn_kept": ffn / (plan["intermediate_size"] * len(plan["layers"])),
                         "seconds": sum(seconds.values())})
            print(json.dumps(rows[-1]), flush=True)
            write_table(Path(args.output), doc(args, dense_ppl, shared_s, rows), markdown, echo=False)
    write_table(Path(args.output), doc(args, dense_ppl, shared_s, rows), markdown)


def doc(args, dense_ppl: float, shared_s: float, rows: list[dict]) -> dict:
    return {"model": "SmolLM2-135M-Instruct", "criterion": args.criterion, "dense_perplexity": dense_ppl,
            "shared_statistics_seconds": shared_s, "rows": rows, **setup_record(args)}


def markdown(result: dict) -> str:
    intro = (f"{dense_line(result)}; {result['criterion']} criterion, LIAR, global allocation, calibration "
             f"{result['calibration']['samples']}×{result['calibration']['seqlen']} pydoc tokens.")
    header = ["sparsity", "may remove", "pricing", "achieved", "heads kept", "FFN kept", "perplexity", "× dense"]
    rows = [[str(r["sparsity"]), r["prune"], r["pricing"] if r["prune"] == "heads,ffn" else "–",
             f"{r['achieved_sparsity']:.3f}", f"{r['heads_kept']:.0%}", f"{r['ffn_kept']:.0%}",
             f"{r['perplexity']:.2f}", f"{r['perplexity'] / result['dense_perplexity']:.2f}"] for r in result["rows"]]
    return markdown_table(intro, header, rows)


if __name__ == "__main__":
    main()
