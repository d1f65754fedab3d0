"""`general.*` metadata: which base model this is, and how it was pruned.

The recipe travels inside the file as a JSON string
(`general.liar_export.recipe`) so a GGUF found on a device can be traced back
to the exact compression run that produced it.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf

from toolchain import __version__
from toolchain.models import Model

from toolchain.gguf_layout import GGUFLayout

RECIPE_KEY = "general.liar_export.recipe"
VERSION_KEY = "general.liar_export.version"


def _field(source: GGUFLayout | None, key: str) -> str | None:
    field = source.fields.get(key) if source is not None else None
    return str(field[2]) if field is not None else None


def base_model(model: Model, source: GGUFLayout | None) -> dict:
    """{"name", "organization"?, "repo_url"?} of the dense model this came from."""
    src = model.source
    if src.get("kind") == "checkpoint":
        src = src.get("base") or {}
    info: dict = {"name": _field(source, "general.name")}
    if org := _field(source, "general.organization"):
        info["organization"] = org
    if src.get("kind") == "hub":
        info["repo_url"] = f"https://huggingface.co/{src['path']}"
    if not info["name"]:
        path = src.get("path") or getattr(model.config, "_name_or_path", "") or "model"
        info["name"] = src["path"] if src.get("kind") == "hub" else Path(path).stem
    return info


def add_general(writer: gguf.GGUFWriter, base: dict, pruned: bool, recipe: dict | None,
                file_type: int) -> None:
    """Name the file after its base model and record the pruning recipe."""
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(f"{base['name']} (pruned)" if pruned else base["name"])
    writer.add_base_model_count(1)
    writer.add_base_model_name(0, base["name"])
    if "organization" in base:
        writer.add_base_model_organization(0, base["organization"])
    if "repo_url" in base:
        writer.add_base_model_repo_url(0, base["repo_url"])
    writer.add_string(VERSION_KEY, __version__)
    if recipe:
        writer.add_string(RECIPE_KEY, json.dumps(recipe, sort_keys=True, default=str))
    writer.add_file_type(int(file_type))
