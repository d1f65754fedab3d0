"""Atomic outputs: write next to the target, fsync, rename.

An interrupted run leaves either the previous state or nothing, never a
truncated artifact that looks finished.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

# Set by `interrupt` (the commands' SIGINT / SIGTERM handler). Python drops a KeyboardInterrupt raised
# while native code runs a finaliser or callback, and an ONNX export was seen to finish after Ctrl-C:
# a commit that finds this set refuses to publish.
_interrupted = False


def interrupt(signum: int, frame) -> None:
    """Signal handler: remember the interrupt, then raise it as Ctrl-C does."""
    global _interrupted
    _interrupted = True
    raise KeyboardInterrupt


def reset_interrupt() -> None:
    global _interrupted
    _interrupted = False


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    if path.is_file():
        with open(path, "rb") as f:
            os.fsync(f.fileno())
        return
    for root, _dirs, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(Path(root))


def _default_modes(path: Path) -> None:
    """mkstemp/mkdtemp create 0600/0700; give artifacts the modes a plain open() would."""
    umask = os.umask(0)
    os.umask(umask)
    if path.is_file():
        os.chmod(path, 0o666 & ~umask)
        return
    for root, dirs, files in os.walk(path):
        os.chmod(root, 0o777 & ~umask)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~umask)


def _temp_sibling(target: Path, is_dir: bool) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{target.name}.tmp-"
    if is_dir:
        return Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
    fd, name = tempfile.mkstemp(prefix=prefix, dir=target.parent)
    os.close(fd)
    return Path(name)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of `target`; on success it replaces `target`.

    On any exception (KeyboardInterrupt included) the temporary is removed and
    `target` is left as it was.
    """
    target = Path(target)
    tmp = _temp_sibling(target, is_dir)
    try:
        yield tmp
        if _interrupted:
            raise KeyboardInterrupt
        _default_modes(tmp)
        _fsync_tree(tmp)
        if is_dir and target.exists():
            _remove(target)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        _remove(tmp)
        raise
