"""The supported model families, one small module each (docs/DESIGN.md §2).

Adding a family: a module with `FAMILY = Family(...)` (a subclass where its
forward differs), listed in `_MODULES`.
"""

from __future__ import annotations

import importlib

from ..errors import UserError
from .base import Family, GGUFArch

__all__ = ["Family", "GGUFArch", "SUPPORTED_MODEL_TYPES", "family_for", "family_of"]

_MODULES = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "qwen3": "qwen3",
            "gemma3_text": "gemma3", "phi3": "phi3", "bert": "bert"}
SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(_MODULES)


def family_of(model_type: str) -> Family:
    if model_type not in _MODULES:
        raise UserError(f"unsupported architecture {model_type!r}: supported model types are "
                        f"{', '.join(SUPPORTED_MODEL_TYPES)}")
    return importlib.import_module(f".{_MODULES[model_type]}", __name__).FAMILY


def family_for(config) -> Family:
    """The family of a transformers config, or one clear line naming the supported types."""
    model_type = getattr(config, "model_type", None)
    if model_type not in _MODULES:
        archs = ", ".join(getattr(config, "architectures", None) or [])
        raise UserError(f"unsupported architecture {model_type!r}{f' ({archs})' if archs else ''}: "
                        f"supported model types are {', '.join(SUPPORTED_MODEL_TYPES)}")
    family = family_of(model_type)
    if family.encoder:
        family.check_config(config)  # a task head (cross-encoder, classifier) is refused here
    return family
