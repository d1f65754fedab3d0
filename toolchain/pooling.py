"""Sentence embeddings from an encoder's last hidden state, as sentence-transformers computes them.

A sentence-transformers directory is a transformers model plus `modules.json` naming its
pipeline — `Transformer` (the encoder itself), `Pooling` (`1_Pooling/config.json`: which
pooling) and optionally `Normalize` — and `sentence_bert_config.json` (`max_seq_length`).
A plain transformers encoder directory gets sentence-transformers' own default: mean pooling.
The pruned checkpoint carries the same files, so the pooling travels with the model
(docs/DESIGN.md §2, "Encoders"). Any other module (a Dense projection, …) is refused: the
exported embedding would silently differ from the model's.

`pool` is written with tensor operations only, so the ONNX encoder graph traces it.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import UserError

MODULES_FILE = "modules.json"
ST_CONFIG = "sentence_bert_config.json"
ST_FILES = (MODULES_FILE, ST_CONFIG, "config_sentence_transformers.json")
ST_MODULE = "sentence_transformers.models."
KNOWN_MODULES = ("Transformer", "Pooling", "Normalize")
# sentence-transformers' pooling_mode_* keys → our names (one mode per model)
MODES = {"pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean", "pooling_mode_max_tokens": "max",
         "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len", "pooling_mode_lasttoken": "last"}


@dataclass(frozen=True)
class Pooling:
    """How a sequence of hidden states becomes one sentence embedding."""

    mode: str = "mean"  # cls | mean | max | mean_sqrt_len | last
    normalize: bool = False  # the model ends in a Normalize module (the ONNX output is normalised anyway)
    max_seq_length: int | None = None  # sentence-transformers truncates inputs to this many tokens
    source: str | None = None  # the directory whose modules.json said so (None: the default)

    def to_json(self) -> dict:
        return {"mode": self.mode, "normalize": self.normalize, "max_seq_length": self.max_seq_length,
                "source": self.source}


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path}: {e}") from None


def read_pooling(directory: str | Path) -> Pooling:
    """The pooling a model directory declares (sentence-transformers layout), or the default."""
    d = Path(directory)
    if not (d / MODULES_FILE).is_file():
        return Pooling()
    modules = _read_json(d / MODULES_FILE)
    if not isinstance(modules, list):
        raise UserError(f"{d / MODULES_FILE} is not a sentence-transformers module list")
    kinds = {}
    for m in modules:
        kind = str(m.get("type", "")).removeprefix(ST_MODULE)
        if kind not in KNOWN_MODULES:
            raise UserError(f"{d}: sentence-transformers module {m.get('type')!r} is not supported (only "
                            f"{', '.join(KNOWN_MODULES)}): the exported embedding would differ from the model's")
        kinds[kind] = d / str(m.get("path", ""))
    if kinds.get("Transformer") != d:
        raise UserError(f"{d}: the encoder must be the directory itself (modules.json puts it in "
                        f"{kinds.get('Transformer')}): pass that directory")
    mode = "mean"
    if "Pooling" in kinds:
        config = _read_json(kinds["Pooling"] / "config.json")
        on = [name for key, name in MODES.items() if config.get(key)]
        other = [k for k, v in config.items() if k.startswith("pooling_mode_") and v and k not in MODES]
        if len(on) != 1 or other:
            raise UserError(f"{kinds['Pooling']}: pooling must be exactly one of {', '.join(MODES.values())} "
                            f"(got {', '.join(on + other) or 'none'})")
        mode = on[0]
    st = _read_json(d / ST_CONFIG) if (d / ST_CONFIG).is_file() else {}
    length = st.get("max_seq_length")
    return Pooling(mode, "Normalize" in kinds, int(length) if length else None, str(d))


def pooling_of(model) -> Pooling:
    """The pooling of a `toolchain.models.Model` (a checkpoint carries its source's files)."""
    src = model.source
    path = src.get("path")
    if src.get("kind") in ("dir", "checkpoint") and path:
        return read_pooling(path)
    return Pooling()


def copy_sentence_transformers(src: str | Path | None, out_dir: Path) -> None:
    """Put a sentence-transformers directory's pipeline files next to a checkpoint written from it."""
    if src is None or not (Path(src) / MODULES_FILE).is_file():
        return
    src = Path(src)
    for name in ST_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, out_dir / name)
    for m in _read_json(src / MODULES_FILE):
        sub = str(m.get("path", ""))
        if sub and (src / sub).is_dir():
            shutil.copytree(src / sub, out_dir / sub, dirs_exist_ok=True)


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """[b, L, h] hidden states and [b, L] mask (1 = real) → [b, h] sentence embeddings."""
    m = mask.to(hidden.dtype).unsqueeze(-1)
    if mode == "cls":
        return hidden[:, 0]
    if mode == "max":
        return hidden.masked_fill(m == 0, torch.finfo(hidden.dtype).min).amax(1)
    if mode == "last":  # the last real token (right padding)
        last = (mask.sum(1) - 1).clamp_min(0).long()
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    total, count = (hidden * m).sum(1), m.sum(1).clamp_min(1e-9)
    if mode == "mean":
        return total / count
    if mode == "mean_sqrt_len":
        return total / count.sqrt()
    raise UserError(f"unknown pooling mode {mode!r}")


def normalize(x: torch.Tensor) -> torch.Tensor:
    """L2-normalised rows, as sentence-transformers' Normalize (torch.nn.functional.normalize)."""
    return torch.nn.functional.normalize(x, p=2, dim=-1)
