"""GPU memory of this process as the driver reports it (llama.cpp, onnxruntime).

These runtimes allocate their weight, KV-cache and compute buffers up front,
so the memory held after the decode run is their peak; PyTorch reports its
own allocator peak instead (benchmarks.backends.torch_eager).
"""

from __future__ import annotations

import os
import shutil
import subprocess


def cuda_available() -> bool:
    """A usable NVIDIA GPU, checked without importing torch."""
    if not shutil.which("nvidia-smi"):
        return False
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and "GPU" in out.stdout


def process_gpu_bytes(pid: int | None = None) -> int | None:
    """Memory this process holds on the GPU(s), or None if the driver does not say."""
    pid = pid or os.getpid()
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True,
                             timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    used = [int(float(mem)) for p, mem in (line.split(",") for line in out.strip().splitlines() if "," in line)
            if int(p) == pid]
    return sum(used) * 1024 * 1024 if used else None
