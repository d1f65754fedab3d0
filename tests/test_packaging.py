"""Packaging: the wheel carries every module and data file, the console scripts
are installed and answer --version / --help, and the pins the file formats rely
on are the ones installed."""

from __future__ import annotations

import importlib.metadata as md
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("toolchain", "exporters", "benchmarks")


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


SCRIPTS = _pyproject()["project"]["scripts"]  # the wheel and the installed entry points must match these


def _pin(name: str) -> str:
    for req in _pyproject()["project"]["dependencies"]:
        m = re.fullmatch(rf"{re.escape(name)}==([\w.]+)", req)
        if m:
            return m.group(1)
    raise AssertionError(f"{name} is not pinned with == in pyproject.toml")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[zipfile.ZipFile, Path]:
    """Build the wheel from a copy of the sources (the checkout stays clean)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                           "-w", str(out), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (whl,) = out.glob("liar_export-*.whl")
    return zipfile.ZipFile(whl), src


@pytest.fixture(scope="module")
def wheel(built) -> zipfile.ZipFile:
    return built[0]


def test_wheel_holds_every_module_and_data_file(built):
    wheel, src = built
    names = set(wheel.namelist())
    expected = {p.relative_to(src).as_posix()
                for pkg in PACKAGES for p in (src / pkg).rglob("*")
                if p.is_file() and "__pycache__" not in p.parts
                and (p.suffix == ".py" or (p.parent.name == "data" and p.suffix in (".txt", ".md")))}
    assert expected, "no package sources found"
    missing = sorted(expected - names)
    assert not missing, f"not in the wheel: {missing}"
    assert "toolchain/data/heldout_legal.txt" in names
    assert not any(n.startswith("tests/") for n in names)


def test_wheel_metadata_declares_scripts_pins_and_extras(wheel):
    meta_dir = next(n.split("/")[0] for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    entry_points = wheel.read(f"{meta_dir}/entry_points.txt").decode()
    for script, target in SCRIPTS.items():
        assert f"{script} = {target}" in entry_points
    metadata = wheel.read(f"{meta_dir}/METADATA").decode()
    assert f"Requires-Dist: gguf=={_pin('gguf')}" in metadata
    assert f"Requires-Dist: llama-cpp-python=={_pin('llama-cpp-python')}" in metadata
    assert "Provides-Extra: test" in metadata and "Provides-Extra: gpu" in metadata
    import toolchain
    assert f"Version: {toolchain.__version__}" in metadata


@pytest.mark.parametrize("name", ["gguf", "llama-cpp-python"])
def test_installed_versions_match_pins(name):
    assert md.version(name) == _pin(name)


@pytest.mark.parametrize("expr, version", [
    (r's/.*"llama-cpp-python==\([^"]*\)".*/\1/p', lambda: _pin("llama-cpp-python")),
    (r's/^torch = "\([^"]*\)".*/\1/p', lambda: _pyproject()["tool"]["liar-export"]["torch"]),
])
def test_ci_reads_its_pins_from_pyproject(expr, version):
    """Each version lives in pyproject only; .ci/install's sed must find it there."""
    found = subprocess.run(["sed", "-n", expr, str(ROOT / "pyproject.toml")],
                           capture_output=True, text=True, check=True).stdout.split()
    assert found == [version()]
    text = (ROOT / ".ci" / "install").read_text()
    assert expr.split("/")[1] in text.replace("\\\\", "\\"), ".ci/install does not read the pin"
    assert f"=={version()}" not in text and f"={version()}\n" not in text, f".ci/install hard-codes {version()}"


@pytest.mark.parametrize("name, version", [
    ("llama-cpp-python", lambda: _pin("llama-cpp-python")),
    ("torch", lambda: _pyproject()["tool"]["liar-export"]["torch"]),
])
def test_docker_reads_its_pins_from_pyproject(name, version):
    """The Dockerfile asks docker/pins.py (run here as the image runs it) and never restates a version."""
    found = subprocess.run([sys.executable, "docker/pins.py", name], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert found == version()
    text = (ROOT / "Dockerfile").read_text()
    assert f"python3 docker/pins.py {name}" in text, f"the Dockerfile does not read the {name} pin"
    assert f"=={version()}" not in text and f"={version()}\n" not in text, f"the Dockerfile hard-codes {version()}"


def _script(name: str) -> str:
    path = Path(sys.executable).parent / name
    assert path.exists(), f"console script {name} not installed next to {sys.executable} (pip install -e .)"
    return str(path)


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_console_script_installed_and_resolves(name):
    eps = {ep.name: ep for ep in md.distribution("liar-export").entry_points if ep.group == "console_scripts"}
    assert eps[name].value == SCRIPTS[name]
    _script(name)
    assert callable(eps[name].load())


def test_liar_export_version():
    import toolchain
    proc = subprocess.run([_script("liar-export"), "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert toolchain.__version__ in proc.stdout + proc.stderr


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_help_has_usage_examples_and_working_subcommands(name):
    proc = subprocess.run([_script(name), "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    usage = proc.stdout.lower()
    assert usage.startswith(f"usage: {name}")
    assert "example" in usage, f"{name} --help shows no examples"
    # argparse subcommands render as "{run,compare} ..."; option choices as "[--to {a,b}]".
    m = re.search(r"\{([\w,-]+)\} \.\.\.(?!\])", usage.split("\n\n")[0])
    for sub in m.group(1).split(",") if m else []:
        sp = subprocess.run([_script(name), sub, "--help"], capture_output=True, text=True, timeout=120)
        assert sp.returncode == 0 and f"usage: {name} {sub}" in sp.stdout.lower(), f"{name} {sub} --help: {sp.stderr}"


def test_help_and_usage_errors_do_not_load_torch():
    """`--help` and a mistyped option answer at once: no torch, transformers or runtime import."""
    code = ("import sys, toolchain.cli, benchmarks.cli; "
            "print(sorted(m for m in ('torch', 'transformers', 'onnxruntime', 'llama_cpp') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr


@pytest.mark.parametrize("argv", [["liar-export", "--to", "gguf", "--onnx-quant", "int3", "-o", "o"],
                                  ["liar-export", "--quant", "q3_k", "-o", "o"],
                                  ["liar-export", "--sparsity", "0.2"],
                                  ["liar-eval", "--seqlen", "many"],
                                  ["liar-bench", "compare", "one.json"]])
def test_usage_errors_are_one_line_and_exit_2(argv, tmp_path):
    proc = subprocess.run([_script(argv[0]), *argv[1:]], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{argv[0]}: error: ") and "--help" in lines[0], proc.stderr
    assert not list(tmp_path.iterdir())  # nothing written
