"""manifest.json: SHA-256 of every artifact in an output directory, plus the recipe.

Written last, inside the temporary directory that is renamed into place, so a
manifest only exists for a complete output. `verify_manifest` re-hashes the
files and refuses paths that would escape the directory.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .errors import UserError, VerificationError

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(directory: Path, recipe: dict) -> Path:
    files = {}
    for p in sorted(directory.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            files[p.relative_to(directory).as_posix()] = {"sha256": sha256(p), "bytes": p.stat().st_size}
    path = directory / MANIFEST
    path.write_text(json.dumps({"version": MANIFEST_VERSION, "recipe": recipe, "files": files},
                               indent=1, default=str) + "\n")
    return path


def safe_child(directory: Path, rel: str) -> Path:
    """`directory/rel`, refusing absolute paths and anything that resolves outside."""
    root = directory.resolve()
    target = (root / rel).resolve()
    if Path(rel).is_absolute() or not target.is_relative_to(root):
        raise UserError(f"{directory / MANIFEST}: path {rel!r} escapes the output directory")
    return target


def verify_manifest(directory: Path) -> int:
    """Check every listed file; return how many were checked."""
    try:
        data = json.loads((directory / MANIFEST).read_text())
        files = data["files"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise UserError(f"no readable {MANIFEST} in {directory}: {e}") from None
    if data.get("version") != MANIFEST_VERSION:
        raise UserError(f"{directory / MANIFEST}: version {data.get('version')!r} is not supported")
    for rel, entry in files.items():
        path = safe_child(directory, rel)
        if not path.is_file():
            raise VerificationError(f"{rel} is listed in the manifest but missing")
        if path.stat().st_size != entry["bytes"] or sha256(path) != entry["sha256"]:
            raise VerificationError(f"{rel} does not match its SHA-256 in the manifest (modified or truncated)")
    return len(files)
