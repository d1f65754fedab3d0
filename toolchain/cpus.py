"""How many threads a runtime should start by default."""

from __future__ import annotations

import os


def usable_cpus() -> int:
    """The cores this process may run on (its affinity mask: taskset, a container's cpuset, a test
    worker's share). llama.cpp's and onnxruntime's own defaults count the machine's cores instead,
    and their spinning threads slow each other down when there are more of them than cores."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
