"""Opt-in (marker `docker`, long): build the release image from the Dockerfile and
smoke-test it (entrypoint, non-root, labels, --help/--version, a tiny verified export).

    pytest -m docker tests/test_docker.py

Uses docker when an engine answers, else buildah (chroot isolation, vfs). Without a
docker engine and without BASE_IMAGE set, a local Debian base is made with
debootstrap first (docker/make-base-image.sh), as on air-gapped builders. Build
arguments come from the environment (see docker/build.sh), e.g. on a machine where
the PyTorch CPU index is unreachable: LOCAL_WHEELS=/dir/with/torch-cpu-wheel TORCH_INDEX_URL=
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.docker
ROOT = Path(__file__).resolve().parents[1]
TAG = "localhost/liar-export:pytest"
LOCAL_BASE = "localhost/debian:bookworm"


def _docker_engine() -> bool:
    return shutil.which("docker") is not None and subprocess.run(
        ["docker", "info"], capture_output=True).returncode == 0


def _run(cmd: list[str], env: dict[str, str], timeout: int) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    print(proc.stdout[-4000:], proc.stderr[-4000:])
    return proc


def test_image_builds_and_passes_smoke_test():
    env = dict(os.environ)
    if not _docker_engine():
        assert shutil.which("buildah"), "neither a docker engine nor buildah: apt-get install -y buildah debootstrap"
        env["ENGINE"] = "buildah"
        if "BASE_IMAGE" not in env:
            base = _run(["bash", "docker/make-base-image.sh", LOCAL_BASE], env, timeout=900)
            assert base.returncode == 0, "could not make the debootstrap base image"
            env["BASE_IMAGE"] = LOCAL_BASE
    build = _run(["bash", "docker/build.sh", TAG], env, timeout=5400)
    assert build.returncode == 0, "image build failed"
    assert "image size" in build.stdout
    smoke = _run(["bash", "docker/smoke-test.sh", TAG], env, timeout=1800)
    assert smoke.returncode == 0, "smoke test failed"
    assert f"smoke: PASS {TAG}" in smoke.stdout
