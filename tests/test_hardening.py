"""Hardening (issue 9): interruption, numerical faults, untrusted and corrupt inputs."""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.tiny import compressed, tiny_model
from toolchain.allocation import allocate
from toolchain.cli import eval_command, export_command
from toolchain.cliutil import run_main
from toolchain.compress import dense_plan
from toolchain.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_VERIFY_FAILED, UserError
from toolchain.models import Model
from toolchain.reconstruct import reconstruct_oneshot
from toolchain.stats import StatsAccumulator

FAST = ["--calib-samples", "4", "--calib-seqlen", "32", "--round-to", "16"]
CLI = [sys.executable, "-c", "from toolchain.cli import export_main; export_main()"]


# -- numerical faults -------------------------------------------------------------------------

def test_nan_activations_are_a_clear_error():
    module = tiny_model(seed=1).module()
    with torch.no_grad():
        module.model.layers[1].mlp.up_proj.weight[0, 0] = float("nan")
    with pytest.raises(UserError, match="NaN/Inf"):
        compressed(Model.from_module(module, tiny_model().tokenizer), sparsity=0.3)


def test_rank_deficient_gram_gives_finite_deterministic_liar():
    """Duplicated and constant input channels make C_SS singular; the ridge copes."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 8, generator=g)
    x = torch.cat([x, x[:, :4], torch.full((400, 2), 3.0)], 1)  # 4 duplicates + 2 constants
    lin = torch.nn.Linear(14, 5)
    acc = StatsAccumulator()
    acc.add(x)
    keep = list(range(12))  # keeps duplicated pairs and one constant channel
    a, used = reconstruct_oneshot(lin, keep, acc.result(), "liar", ridge=0.0)
    assert used == "liar"  # the ridge retries found a solution instead of falling back
    assert torch.isfinite(a.weight).all() and torch.isfinite(a.bias).all()
    y = x @ lin.weight.T + lin.bias
    err_liar = (a(x[:, keep]) - y).pow(2).mean()
    none, _ = reconstruct_oneshot(lin, keep, acc.result(), "none")
    assert err_liar <= (none(x[:, keep]) - y).pow(2).mean()


def test_equal_scores_break_ties_by_index():
    dense = dense_plan(tiny_model())
    flat_a = [torch.ones(dense.num_heads * dense.head_dim) for _ in dense.layers]
    flat_f = [torch.ones(dense.intermediate_size) for _ in dense.layers]
    plan = allocate(dense, flat_a, flat_f, 0.4, "global", 16)
    removed = [c for c in range(dense.intermediate_size) if c not in plan.layers[0].channels]
    assert removed and removed == list(range(len(removed)))  # lowest indices go first among equals


def test_extreme_sparsity_never_removes_a_whole_attention():
    plan = compressed(tiny_model(seed=2), sparsity=0.95, allocation="global")[1].plan
    for lp in plan.layers:
        assert lp.num_heads >= 1 and lp.num_kv_heads >= 1 and lp.intermediate_size >= 16


def test_non_finite_weights_never_reach_an_artifact(tmp_path, capsys):
    bad = tmp_path / "bad_hf"
    model = tiny_model(seed=0)
    with torch.no_grad():
        model.module().lm_head.weight[3, 3] = float("inf")  # not on the calibration path
    model.module().save_pretrained(bad)
    model.tokenizer.save_pretrained(bad)
    out = tmp_path / "out"
    code = run_main("liar-export", export_command, [str(bad), "--to", "hf", "-o", str(out), *FAST])
    assert code == EXIT_VERIFY_FAILED
    assert "not finite" in capsys.readouterr().err
    assert not out.exists()


# -- untrusted input --------------------------------------------------------------------------

def test_pickle_checkpoints_are_refused(tiny_dir, tmp_path, capsys):
    d = tmp_path / "pickled"
    d.mkdir()
    (d / "config.json").write_text((tiny_dir / "config.json").read_text())
    torch.save({"x": torch.zeros(1)}, d / "pytorch_model.bin")
    code = run_main("liar-export", export_command, [str(d), "--to", "hf", "-o", str(tmp_path / "o"), *FAST])
    assert code == EXIT_BAD_INPUT
    assert "safetensors" in capsys.readouterr().err


def test_manifest_paths_cannot_escape(tmp_path, capsys):
    (tmp_path / "secret").write_text("x")
    d = tmp_path / "out"
    d.mkdir()
    (d / "manifest.json").write_text(json.dumps({"version": 1, "files": {"../secret": {"sha256": "0", "bytes": 1}}}))
    assert run_main("liar-export", export_command, ["verify-manifest", str(d)]) == EXIT_BAD_INPUT
    assert "escapes" in capsys.readouterr().err


# -- resources --------------------------------------------------------------------------------

def test_disk_space_checked_before_work(tiny_dir, tmp_path, monkeypatch, capsys):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**6, 10**6 - 1000, 1000))
    out = tmp_path / "out"
    assert run_main("liar-export", export_command, [str(tiny_dir), "--to", "hf", "-o", str(out), *FAST]) == 2
    assert "disk space" in capsys.readouterr().err and not out.exists()


def test_memory_checked_before_work(tiny_dir, tmp_path, monkeypatch, capsys):
    """Estimated from the shapes: a job that will not fit says so in one line, before any work."""
    import psutil

    real = psutil.virtual_memory()
    monkeypatch.setattr(psutil, "virtual_memory", lambda: real._replace(available=10 * 2**20))
    out = tmp_path / "out"
    assert run_main("liar-export", export_command, [str(tiny_dir), "--to", "hf", "-o", str(out), *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert [e for e in err if "error" in e] == err[-1:] and "not enough memory" in err[-1] and "GiB needed" in err[-1]
    assert "Traceback" not in "\n".join(err)
    assert not out.exists() and not list(tmp_path.glob(".out.tmp-*"))


# -- interruption -----------------------------------------------------------------------------

def _start_export(tiny_dir: Path, out: Path) -> subprocess.Popen:
    # hf + gguf + onnx: the ONNX trace keeps the export inside its temporary directory for
    # seconds even on a fast idle machine, so the signal lands mid-write
    # Ctrl-C as in a terminal: a test run started in the background of a non-interactive shell ignores
    # SIGINT, a child inherits that (Python then installs no KeyboardInterrupt handler): reset it here
    return subprocess.Popen([*CLI, str(tiny_dir), "--to", "hf", "--to", "gguf", "--to", "onnx", "--quant", "f32",
                             "-o", str(out), *FAST], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for_export_phase(proc: subprocess.Popen, parent: Path, timeout: float = 300) -> None:
    """Until the checkpoint is complete inside the temporary output and the GGUF has been
    written: the process is then in its ONNX export, which takes seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        tmp = list(parent.glob(".out.tmp-*"))
        if tmp and (tmp[0] / "hf" / "liar.json").is_file() and (tmp[0] / "model-f32.gguf").is_file():
            return
        time.sleep(0.01)
    pytest.fail("the export never reached its ONNX phase")


def test_a_swallowed_interrupt_still_stops_the_commit(tmp_path):
    """Python drops a KeyboardInterrupt raised inside a finaliser; the handler's flag still keeps
    the half-done output from being published."""
    from toolchain import atomic

    target = tmp_path / "out"
    try:
        with pytest.raises(KeyboardInterrupt):
            with atomic.atomic_path(target, is_dir=True) as tmp:
                (tmp / "f").write_text("x")
                try:
                    atomic.interrupt(signal.SIGINT, None)
                except KeyboardInterrupt:
                    pass  # what a finaliser's caller does with it
        assert not target.exists() and not list(tmp_path.iterdir())
    finally:
        atomic.reset_interrupt()
    with atomic.atomic_path(target, is_dir=True) as tmp:
        (tmp / "f").write_text("x")
    assert (target / "f").read_text() == "x"


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_interrupted_export_leaves_no_finished_artifact(sig, tiny_dir, tmp_path):
    out = tmp_path / "out"
    proc = _start_export(tiny_dir, out)
    _wait_for_export_phase(proc, tmp_path)
    # SIGSTOP freezes it at once, even when this process was descheduled on a loaded machine: the
    # interrupt then lands mid-ONNX, not after the export finished in the meantime
    proc.send_signal(signal.SIGSTOP)
    assert proc.poll() is None and not out.exists(), "the export finished before it could be interrupted"
    proc.send_signal(sig)
    proc.send_signal(signal.SIGCONT)
    _, err = proc.communicate(timeout=120)
    assert not out.exists(), (proc.returncode, err)  # nothing at the path a pipeline would pick up
    assert not list(tmp_path.rglob("manifest.json"))  # no manifest claims completion
    if sig == signal.SIGINT:
        assert proc.returncode == EXIT_INTERRUPTED, err
        assert not list(tmp_path.glob(".out.tmp-*"))  # cleaned up on Ctrl-C
    else:
        assert proc.returncode == -signal.SIGKILL


# -- corrupt / foreign inputs -----------------------------------------------------------------

def _mutations(data: bytes, n: int, seed: int) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    cuts = [0, 3, 8, 24, 100, len(data) // 2, len(data) - 1]
    out = [(f"truncated@{c}", data[:c]) for c in cuts]
    header = min(len(data), 4096)  # flips in the header/metadata are the dangerous ones
    for i in range(n):
        pos = rng.randrange(header) if i % 2 == 0 else rng.randrange(len(data))
        buf = bytearray(data)
        buf[pos] ^= 1 << rng.randrange(8)
        out.append((f"bitflip@{pos}", bytes(buf)))
    return out


FUZZ_DRIVER = """
import json, sys
from toolchain.cli import eval_command
from toolchain.cliutil import run_main
codes = {}
for victim, name in json.loads(sys.argv[1]):
    codes[name] = run_main("liar-eval", eval_command, [victim, "--text", sys.argv[2], "--seqlen", "16", "--json"])
print("FUZZ-RESULT " + json.dumps(codes))
"""


@pytest.mark.parametrize("kind", ["gguf", "onnx"])
def test_fuzzed_artifacts_give_documented_errors(kind, tiny_artifacts, tmp_path):
    """Truncated or bit-flipped files: liar-eval answers 0 (still a valid model) or 2 and never
    crashes. All variants run in one child process, so a crash in native code fails the test
    instead of killing pytest."""
    d = tiny_artifacts["pruned"]["dir"]
    src = d / "model-f32.gguf" if kind == "gguf" else d / "onnx" / "model.onnx"
    text = tmp_path / "t.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 20)
    jobs = []
    for i, (name, data) in enumerate(_mutations(src.read_bytes(), n=8, seed=1)):
        # an ONNX graph's external data / io.json sit beside it: mutate in place, one copy per variant
        folder = tmp_path / f"v{i}"
        if kind == "onnx":
            shutil.copytree(src.parent, folder)
        else:
            folder.mkdir()
        victim = folder / src.name
        victim.write_bytes(data)
        jobs.append((str(victim), name))
    proc = subprocess.run([sys.executable, "-c", FUZZ_DRIVER, json.dumps(jobs), str(text)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"liar-eval crashed (rc={proc.returncode}): {proc.stderr[-1500:]}"
    codes = json.loads(proc.stdout.split("FUZZ-RESULT ", 1)[1])
    assert set(codes.values()) <= {0, EXIT_BAD_INPUT}, codes
    assert "Traceback" not in proc.stderr
    assert codes["truncated@0"] == EXIT_BAD_INPUT and codes["truncated@100"] == EXIT_BAD_INPUT


def test_foreign_onnx_is_rejected(tmp_path, capsys):
    """An ONNX graph that is not a liar-export decoder (wrong inputs) → exit 2."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    path = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph), path)
    text = tmp_path / "t.txt"
    text.write_text("hello world " * 50)
    assert run_main("liar-eval", eval_command, [str(path), "--text", str(text), "--seqlen", "8"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("liar-eval: error:"), err
