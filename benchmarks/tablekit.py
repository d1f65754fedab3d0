"""What the README-table scripts share: the SmolLM2 setup and writing a table.

compression_table, local_table and sparsity_table all measure SmolLM2-135M-
Instruct the same way — pydoc calibration windows, perplexity on the bundled
held-out legal prose — and write RESULT.json + RESULT.md atomically.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Callable

import psutil
import torch

from toolchain.atomic import atomic_path
from toolchain.calibration import calibration_ids
from toolchain.models import LoadedModel, load_model
from toolchain.perplexity import encode, perplexity, torch_logits_fn
from toolchain.texts import heldout_text


def smollm2_setup(calib_samples: int, calib_seqlen: int, eval_seqlen: int,
                  eval_windows: int) -> tuple[LoadedModel, torch.Tensor, Callable[[torch.nn.Module], dict]]:
    """(dense SmolLM2, calibration ids, perplexity function on the held-out text)."""
    loaded = load_model(None)
    ids = calibration_ids(loaded.tokenizer, "pydoc", calib_samples, calib_seqlen, seed=0)
    eval_ids = encode(loaded.tokenizer, heldout_text())
    return loaded, ids, lambda m: perplexity(torch_logits_fn(m), eval_ids, eval_seqlen, eval_windows)


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
