"""`--recipe fast|balanced|best` on SmolLM2-135M-Instruct: quality against time (issue 16).

Every row is `liar-export --recipe PRESET --sparsity S --to hf` run in this process through
run_export (exactly what the CLI does), then its checkpoint's perplexity on the bundled
held-out legal prose (the protocol of the other README tables). Time is the run's
calibration + compression passes (not opening the model, not writing files), also as a
multiple of one plain dense forward pass over the same calibration tokens, measured in
the same process:

    python -m benchmarks.presets_table -o benchmarks/results/presets/smollm2 --work /tmp/presets --threads 1
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from toolchain.calibration import calibration_ids
from toolchain.models import open_model
from toolchain.recipe import PRESETS, CalibOptions

from .compression_table import block_sparsity, timed_forward
from .tablekit import add_setup_arguments, dense_line, markdown_table, run_cli, setup_from, setup_record, write_table

PASSES = ("calibration_data", "plan_pass", "compress_pass")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--output", required=True, help="output prefix (.json and .md are written)")
    p.add_argument("--work", required=True, help="directory for the checkpoints")
    p.add_argument("--sparsities", default="0.2,0.5")
    p.add_argument("--presets", default=",".join(PRESETS))
    add_setup_arguments(p)
    args = p.parse_args(argv)
    dense, _, ppl = setup_from(args)
    dense_ppl = ppl(dense)["perplexity"]
    print(f"dense perplexity {dense_ppl:.3f}", flush=True)
    forward: dict[int, float] = {}  # calibration sequences → one dense forward pass over them (s)
    rows: list[dict] = []
    for sparsity in args.sparsities.split(","):
        for preset in args.presets.split(","):
            cli = ["--recipe", preset, "--sparsity", sparsity]
            run = run_cli(None, Path(args.work) / f"{preset}-s{sparsity}", [*cli, "--to", "hf"])
            summary = run["summary"]
            calib = summary["recipe"]["calibration"]
            if calib["samples"] not in forward:
                ids = calibration_ids(dense, CalibOptions(**calib))
                forward[calib["samples"]] = timed_forward(dense, ids, 8)
            model = open_model(summary["artifacts"]["hf"])
            seconds = sum(summary["seconds"].get(k, 0.0) for k in PASSES)
            rows.append({"preset": preset, "sparsity": float(sparsity), "command": "liar-export " + shlex.join(cli),
                         "options": PRESETS[preset], "calibration": calib,
                         "achieved_sparsity": block_sparsity(model, dense), "perplexity": ppl(model)["perplexity"],
                         "seconds": seconds, "passes": {k: summary["seconds"].get(k) for k in PASSES},
                         "forward_seconds": forward[calib["samples"]],
                         "time_ratio": seconds / forward[calib["samples"]]})
            print(rows[-1], flush=True)
            write_table(Path(args.output), doc(args, dense_ppl, rows), markdown, echo=False)
    write_table(Path(args.output), doc(args, dense_ppl, rows), markdown)


def doc(args, dense_ppl: float, rows: list[dict]) -> dict:
    return {"model": "SmolLM2-135M-Instruct", "dense_perplexity": dense_ppl, "rows": rows, **setup_record(args)}


def markdown(result: dict) -> str:
    intro = (f"{dense_line(result)}; time = calibration + compression passes, and as a multiple of one dense "
             f"forward pass over the same calibration tokens (same process, {result['machine']['threads']} "
             "thread).")
    header = ["sparsity", "`--recipe`", "what it sets", "calibration", "achieved", "perplexity", "× dense",
              "time (s)", "× one dense forward"]
    rows = [[str(r["sparsity"]), r["preset"], ", ".join(f"{k}={v}" for k, v in r["options"].items()) or "the defaults",
             f"{r['calibration']['samples']}×{r['calibration']['seqlen']}", f"{r['achieved_sparsity']:.3f}",
             f"{r['perplexity']:.2f}", f"{r['perplexity'] / result['dense_perplexity']:.2f}", f"{r['seconds']:.0f}",
             f"{r['time_ratio']:.1f}"] for r in result["rows"]]
    return markdown_table(intro, header, rows)


if __name__ == "__main__":
    main()
