"""Where a result was measured: CPU, GPU, library versions, liar-export commit.

A latency number is meaningless without the machine and the runtime versions
behind it, so every results file carries this block.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

# CPU features that decide which kernels llama.cpp / onnxruntime / torch pick.
_SIMD_FLAG = re.compile(r"^(sse\d.*|ssse3|avx.*|fma|f16c|amx.*|.*vnni.*|.*bf16.*|asimd.*|neon|sve.*|fphp)$")
PACKAGES = ("torch", "transformers", "llama_cpp_python", "onnxruntime", "onnxruntime_gpu", "gguf",
            "onnx", "numpy")
REPO_ROOT = Path(__file__).resolve().parents[1]


def cpu_info() -> dict:
    """Model name, SIMD flags and core counts (logical, physical, usable)."""
    model, flags = platform.processor() or platform.machine(), []
    try:
        text = Path("/proc/cpuinfo").read_text()
        if m := re.search(r"^model name\s*:\s*(.+)$", text, re.M):
            model = m.group(1).strip()
        if m := re.search(r"^(?:flags|Features)\s*:\s*(.+)$", text, re.M):
            flags = sorted(f for f in m.group(1).split() if _SIMD_FLAG.match(f))
    except OSError:
        pass
    import psutil

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"model": model, "arch": platform.machine(), "simd_flags": flags,
            "logical_cores": os.cpu_count(), "physical_cores": psutil.cpu_count(logical=False),
            "usable_cores": usable, "memory_bytes": psutil.virtual_memory().total}


def gpu_info() -> list[dict]:
    """GPUs as nvidia-smi sees them (empty without an NVIDIA driver)."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True,
                             timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        name, mem, driver = (s.strip() for s in line.split(","))
        gpus.append({"name": name, "memory_bytes": int(float(mem)) * 1024 * 1024, "driver": driver})
    return gpus


def package_versions() -> dict:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit(root: Path = REPO_ROOT) -> dict:
    """The liar-export commit (and whether the tree had local changes), if run from git."""
    from toolchain import __version__

    info: dict = {"version": __version__, "commit": None, "dirty": None}
    if not (root / ".git").exists() or not shutil.which("git"):
        return info
    try:
        run = lambda *a: subprocess.run(["git", "-C", str(root), *a], capture_output=True,  # noqa: E731
                                        text=True, timeout=20, check=True).stdout.strip()
        info["commit"] = run("rev-parse", "HEAD")
        info["dirty"] = bool(run("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def llama_cpp_system_info() -> str | None:
    """The ggml backend/feature line llama.cpp prints (which SIMD paths it compiled)."""
    try:
        import llama_cpp

        return llama_cpp.llama_print_system_info().decode().strip()
    except Exception:  # noqa: BLE001 - an optional, informational field
        return None


def capture(threads: int) -> dict:
    return {"cpu": cpu_info(), "gpus": gpu_info(), "platform": platform.platform(),
            "python": platform.python_version(), "packages": package_versions(),
            "llama_cpp_system_info": llama_cpp_system_info(), "liar_export": git_commit(),
            "threads": threads}
