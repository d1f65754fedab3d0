"""liar-eval --tasks: lm-evaluation-harness's own harness on a liar-export checkpoint (PyTorch) and its
F32 GGUF (llama.cpp), with the bundled offline task. Skipped without the `lmeval` extra."""

from __future__ import annotations

import json

import pytest

from toolchain.cli import eval_command
from toolchain.lmeval import BUNDLED_TASK, CHOICES, legal_items

pytest.importorskip("lm_eval")


def _tasks(capsys, *argv) -> dict:
    assert eval_command([*argv, "--tasks", BUNDLED_TASK, "--limit", "12", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_bundled_items_are_deterministic_and_well_formed():
    items = legal_items()
    assert items == legal_items() and len(items) > 100
    for item in items[:20]:
        assert len(item["choices"]) == CHOICES == len(set(item["choices"])) and 0 <= item["label"] < CHOICES


def test_checkpoint_and_its_gguf_score_alike(tiny_artifacts, capsys):
    d = tiny_artifacts["pruned"]["dir"]
    torch_run = _tasks(capsys, str(d / "ckpt"))
    gguf_run = _tasks(capsys, str(d / "model-f32.gguf"))
    t, g = torch_run["tasks"][BUNDLED_TASK], gguf_run["tasks"][BUNDLED_TASK]
    assert t["samples"] == g["samples"] == 12
    # F32 GGUF logits are PyTorch's within float rounding: lm-eval picks the same answers
    assert t["metrics"]["acc,none"] == g["metrics"]["acc,none"]
    assert t["metrics"]["acc_norm,none"] == g["metrics"]["acc_norm,none"]
    assert torch_run["revision"].startswith("sha256:") and gguf_run["revision"].startswith("sha256:")
    assert torch_run["revision"] != gguf_run["revision"] and torch_run["lm_eval"] and t["task_revision"]


@pytest.mark.parametrize("argv, message", [
    (["--tasks", "no_such_task"], "unknown lm-eval task"),
    (["--tasks", ","], "--tasks needs task names"),
    (["--tasks", BUNDLED_TASK, "--limit", "0"], "--limit must be"),
])
def test_bad_task_options_are_user_errors(tiny_artifacts, capsys, argv, message):
    from toolchain.cliutil import run_main

    rc = run_main("liar-eval", eval_command, [str(tiny_artifacts["pruned"]["dir"] / "ckpt"), *argv])
    assert rc == 2 and message in capsys.readouterr().err
