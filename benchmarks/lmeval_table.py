"""lm-evaluation-harness accuracy of dense and pruned SmolLM2-135M-Instruct (the README's lm-eval table).

    python -m benchmarks.lmeval_table [-o benchmarks/results/lmeval/smollm2] [--work out/lmeval]
        [--sparsity 0.2,0.5] [--tasks liar_legal_mc] [--limit N] [--threads 0]

Each sparsity is one default `liar-export --sparsity S --to hf --to gguf --quant q8_0` run
(existing outputs in --work are reused); every model is scored by `liar-eval --tasks` itself
(toolchain.lmeval.evaluate): the dense model and the checkpoints through lm-eval's HFLM, the
GGUF files through llama.cpp. Needs the `lmeval` extra. Writes OUT.json and OUT.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Sequence

from benchmarks.tablekit import write_table
from toolchain.cli import export_parser, request_from_args
from toolchain.cliutil import run_main
from toolchain.export import run_export
from toolchain.lmeval import BUNDLED_TASK, evaluate, parse_tasks


def _export(work: Path, sparsity: str, threads: int) -> dict[str, str]:
    """The default-recipe run at `sparsity`: its checkpoint and q8_0 GGUF (reused when present)."""
    out = work / f"s{sparsity}"
    if not (out / "summary.json").exists():
        argv = ["--sparsity", sparsity, "--to", "hf", "--to", "gguf", "--quant", "q8_0", "-o", str(out)]
        if threads:
            argv += ["--threads", str(threads)]
        run_export(request_from_args(export_parser().parse_args(argv)))
    return {"torch": str(out / "hf"), "llama.cpp": str(next(out.glob("*.gguf")))}


def _markdown(result: dict) -> str:
    metrics = result["metrics"]
    head = "| model | backend | " + " | ".join(f"{t} {m}" for t in result["tasks"] for m in metrics) + " | seconds |"
    lines = [f"lm-evaluation-harness {result['lm_eval']}, {result['samples']} items per task "
             f"(`liar-eval MODEL --tasks {','.join(result['tasks'])}`).", "",
             head, "|" + "---|" * (head.count("|") - 1)]
    for row in result["rows"]:
        cells = [f"{row['tasks'][t]['metrics'][m + ',none']:.3f}" for t in result["tasks"] for m in metrics]
        lines.append(f"| {row['model']} | {row['backend']} | " + " | ".join(cells) + f" | {row['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-o", "--out", type=Path, default=Path("benchmarks/results/lmeval/smollm2"))
    p.add_argument("--work", type=Path, default=Path("out/lmeval"))
    p.add_argument("--sparsity", default="0.2,0.5")
    p.add_argument("--tasks", default=BUNDLED_TASK)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    tasks = parse_tasks(args.tasks)
    models = [("dense", {"torch": None})]
    models += [(f"--sparsity {s}", _export(args.work, s, args.threads)) for s in args.sparsity.split(",")]
    rows, version, samples = [], None, None
    for name, paths in models:
        for backend, path in paths.items():
            start = time.perf_counter()
            r = evaluate(path, tasks, args.limit, backend, args.threads or None)
            version, samples = r["lm_eval"], r["tasks"][tasks[0]]["samples"]
            rows.append({"model": name, "backend": backend, "path": path, "revision": r["revision"],
                         "tasks": r["tasks"], "seconds": time.perf_counter() - start})
            print(f"{name} [{backend}]: {r['tasks']}", flush=True)
    write_table(args.out, {"lm_eval": version, "tasks": tasks, "samples": samples, "metrics": ["acc", "acc_norm"],
                           "rows": rows}, _markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main("lmeval_table", main, None))
