"""Opt-in (marker `tools`, long: compiling llama.cpp's tools takes many minutes on 2 cores, the
pruned export more): benchmarks/llamacpp_tools.py's checks of llama.cpp's own tools on liar-export
GGUF files, and its liar-bench vs llama-bench decode speed-up comparison.

    pytest -m tools tests/test_llamacpp_tools.py

The tools are built once into the cache (${XDG_CACHE_HOME:-~/.cache}/liar-export/llamacpp-tools)
and reused; the two SmolLM2 exports are made fresh in a temporary directory. Set
LIAR_TOOLS_WORK=DIR to keep (and reuse) them there instead.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.tools
ROOT = Path(__file__).resolve().parents[1]


def _script(out: Path, work: Path, stages: str, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "benchmarks.llamacpp_tools", "-o", str(out), "--work", str(work),
           "--stages", stages, *extra]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=4 * 3600)
    print(proc.stdout[-6000:], proc.stderr[-4000:])
    return proc


@pytest.fixture(scope="module")
def checked(tmp_path_factory):
    out = tmp_path_factory.mktemp("tools-results")
    work = Path(os.environ["LIAR_TOOLS_WORK"]) if os.environ.get("LIAR_TOOLS_WORK") else out / "work"
    proc = _script(out, work, "build,export,check")
    doc = json.loads((out / "results.json").read_text())
    return proc, doc, out, work


def test_files_are_dense_llama_and_pruned_deci(checked):
    _, doc, _, _ = checked
    models = doc["models"]
    assert models["dense"]["architecture"] == "llama"
    assert models["pruned"]["architecture"] == "deci"
    assert models["pruned"]["bytes"] < models["dense"]["bytes"]


def test_proposed_commands_work_on_dense_and_pruned(checked):
    proc, doc, _, _ = checked
    rows = [r for r in doc["check"]["rows"] if r["source"] == "proposed"]
    failed = [f"{r['model']}: {r['command']} -> {r['detail']}" for r in rows if not r["ok"]]
    assert not failed, "\n".join(failed)
    assert proc.returncode == 0
    tools = {(r["tool"], r["model"]) for r in rows}
    for model in ("dense", "pruned"):
        for tool in ("llama-completion", "llama-cli", "llama-server", "curl", "llama-perplexity"):
            assert (tool, model) in tools, f"{tool} was not run on the {model} file"
    assert ("llama-bench", "dense+pruned") in tools
    server = [r for r in rows if r["tool"] == "llama-server"]
    assert any(r["detail"].startswith("/health 200") for r in server)
    assert all("SIGTERM" not in r["command"] or r["ok"] for r in server), "llama-server did not shut down"
    assert doc["check"]["perplexity"]["pruned_higher"], "llama-perplexity ranks the 50% pruned file above dense"


def test_readme_commands_were_checked(checked):
    _, doc, _, _ = checked
    rows = [r for r in doc["check"]["rows"] if r["source"] == "README.md"]
    assert rows and len(doc["check"]["readme_commands"]) >= 1
    # not asserted to pass: a README command that fails is the finding the results record


def test_decode_speedups_agree_with_llama_bench(checked):
    _, _, out, work = checked
    proc = _script(out, work, "speed", "--threads", "1", "--repeats", "5")
    assert proc.returncode == 0
    speed = json.loads((out / "results.json").read_text())["speed"]
    acc = speed["acceptance"]
    assert acc["met"], (f"liar-bench {speed['liar_bench']['decode_speedup']:.3f}x vs llama-bench "
                        f"{speed['llama_bench']['decode_speedup']:.3f}x: {acc['relative_difference']:+.1%}")
