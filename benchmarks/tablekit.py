"""What the README-table scripts share: the SmolLM2 setup and writing a table.

compression_table, local_table and sparsity_table all measure SmolLM2-135M-
Instruct the same way — pydoc calibration windows, perplexity on the bundled
held-out legal prose — and write RESULT.json + RESULT.md atomically.
"""

from __future__ import annotations

import json
import platform
import shlex
import time
from pathlib import Path
from typing import Callable

import psutil
import torch

from toolchain.atomic import atomic_path
from toolchain.calibration import calibration_ids
from toolchain.models import Model, open_model
from toolchain.perplexity import encode, perplexity, torch_logits_fn
from toolchain.recipe import CalibOptions
from toolchain.texts import heldout_text


def smollm2_setup(calib_samples: int, calib_seqlen: int, eval_seqlen: int,
                  eval_windows: int) -> tuple[Model, torch.Tensor, Callable[[Model], dict]]:
    """(dense SmolLM2, calibration ids, perplexity function of a Model on the held-out text).

    The model is the lazily read `Model`; compress into a `toolchain.sinks.MemorySink` to
    evaluate many recipes in one process."""
    model = open_model(None)
    ids = calibration_ids(model, CalibOptions("pydoc", calib_samples, calib_seqlen, 0))
    eval_ids = encode(model.tokenizer, heldout_text())
    return model, ids, lambda m: perplexity(torch_logits_fn(m.module()), eval_ids, eval_seqlen, eval_windows)


def add_setup_arguments(p, calib_samples: int = 64, eval_windows: int = 32) -> None:
    """The calibration / evaluation / thread options every SmolLM2 table script takes."""
    p.add_argument("--calib-samples", type=int, default=calib_samples)
    p.add_argument("--calib-seqlen", type=int, default=256)
    p.add_argument("--eval-seqlen", type=int, default=256)
    p.add_argument("--eval-windows", type=int, default=eval_windows)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")


def setup_from(args) -> tuple[Model, torch.Tensor, Callable[[Model], dict]]:
    """`smollm2_setup` for parsed `add_setup_arguments` options (threads applied first)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    return smollm2_setup(args.calib_samples, args.calib_seqlen, args.eval_seqlen, args.eval_windows)


def setup_record(args) -> dict:
    """The eval / calibration / machine block every table's JSON carries (from smollm2_setup's args)."""
    return {"eval": {"text": "heldout_legal.txt", "seqlen": args.eval_seqlen, "windows": args.eval_windows},
            "calibration": {"source": "pydoc", "samples": args.calib_samples, "seqlen": args.calib_seqlen},
            "machine": {"cpu_count": psutil.cpu_count(), "python": platform.python_version(),
                        "torch": torch.__version__, "threads": torch.get_num_threads()}}


def dense_line(result: dict) -> str:
    """The table's opening words: the dense model's perplexity and what it was measured on."""
    return (f"Dense perplexity: **{result['dense_perplexity']:.2f}** (held-out legal prose, "
            f"{result['eval']['windows']}×{result['eval']['seqlen']} tokens)")


def write_table(out: Path, result: dict, markdown: Callable[[dict], str], echo: bool = True) -> None:
    """OUT.json (the numbers) and OUT.md (the README table), each written atomically; `echo` prints the table.

    OUT is a prefix: "results/s0.5" gives s0.5.json (not s0.json); a trailing .json or .md is dropped.
    """
    if out.suffix in (".json", ".md"):
        out = out.with_suffix("")
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out.with_name(out.name + ".json")) as tmp:
        tmp.write_text(json.dumps(result, indent=1) + "\n")
    table = markdown(result)
    with atomic_path(out.with_name(out.name + ".md")) as tmp:
        tmp.write_text(table)
    if echo:
        print(table)


def markdown_table(intro: str, header: list[str], rows: list[list[str]], align: str = "") -> str:
    """A README table: `intro`, a blank line, then the header and one line per row; `align` has an
    "r" for every right-aligned column (default: all left)."""
    rule = ["---:" if align[i:i + 1] == "r" else "---" for i in range(len(header))]
    lines = [intro, "", "| " + " | ".join(header) + " |", "|" + "|".join(rule) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def run_cli(model: Path | None, out: Path, args: list[str]) -> dict:
    """`liar-export [MODEL] ARGS -o OUT --force` in this process (run_export, exactly what the CLI
    runs): {"command", "seconds", "summary"}. MODEL None: the default model."""
    from toolchain.cli import export_parser, request_from_args
    from toolchain.export import run_export

    argv = ([str(model)] if model else []) + [*args, "-o", str(out), "--force"]
    start = time.perf_counter()
    summary = run_export(request_from_args(export_parser().parse_args(argv)))
    shown = (["MODEL"] if model else []) + args
    return {"command": "liar-export " + shlex.join(shown), "seconds": time.perf_counter() - start,
            "summary": summary}
