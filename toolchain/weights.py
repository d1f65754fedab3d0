"""Weights read one tensor at a time, by Hugging Face parameter name.

Nothing here materialises a whole model: `get` opens the shard (or the GGUF),
copies out one tensor and closes it again — a file kept mapped for the whole run
would count every page ever read in the process's resident memory — and a
GGUF tensor is dequantised on request.
This is what lets liar-export prune a model larger than RAM (docs/DESIGN.md §3):
only the tensors of the layer being worked on are ever resident.

    SafetensorsWeights   a single .safetensors file, or the shards listed in
                         model.safetensors.index.json
    GGUFWeights          a .gguf file (names and rope order mapped back to HF)
    StateDictWeights     tensors already in memory (a model built in Python)
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Callable, Iterable, Protocol

import numpy as np
import torch

from .errors import UserError

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


class WeightSource(Protocol):
    def names(self) -> list[str]: ...

    def get(self, name: str) -> torch.Tensor:
        """A fresh CPU tensor (never a view the caller could modify in place)."""

    def shape(self, name: str) -> tuple[int, ...]: ...

    @property
    def dtype(self) -> torch.dtype:
        """The storage dtype of the floating-point weights."""


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


_SAFETENSORS_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64}


class SafetensorsWeights:
    """Lazily read tensors from one file or from the shards of an index."""

    def __init__(self, files: Iterable[Path]):
        self._where: dict[str, Path] = {}
        self._header: dict[str, dict] = {}
        for f in files:
            header = _safetensors_header(f)
            for name, info in header.items():
                self._where[name], self._header[name] = f, info
        if not self._where:
            raise UserError(f"no tensors in {', '.join(map(str, files))}")

    @classmethod
    def from_dir(cls, path: Path) -> "SafetensorsWeights":
        index = path / INDEX_NAME
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise UserError(f"{index} is not a readable safetensors index: {e}") from None
            files = sorted({path / f for f in weight_map.values()})
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise UserError(f"{path}: shard(s) {', '.join(missing[:3])} listed in {INDEX_NAME} are missing")
            return cls(files)
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise UserError(f"{path} has no .safetensors weights: liar-export never unpickles .bin/.pt "
                            "checkpoints (they can run code); convert the model to safetensors first")
        return cls(files)

    def names(self) -> list[str]:
        return list(self._where)

    def get(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        if name not in self._where:
            raise UserError(f"weight {name} is missing from the safetensors files")
        try:
            with safe_open(str(self._where[name]), framework="pt") as f:
                return f.get_tensor(name)
        except Exception as e:  # safetensors raises its own error types
            raise UserError(f"cannot read {name} from {self._where[name]}: {_first_line(e)}") from None

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._header[name]["shape"])

    @property
    def dtype(self) -> torch.dtype:
        for info in self._header.values():
            if info["dtype"] in _SAFETENSORS_DTYPES:
                return _SAFETENSORS_DTYPES[info["dtype"]]
        return torch.float32


def _safetensors_header(path: Path) -> dict[str, dict]:
    """{tensor name: {"dtype", "shape", "data_offsets"}} from a file's JSON header."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
    except (OSError, struct.error, ValueError) as e:
        raise UserError(f"cannot read {path}: not a safetensors file ({e})") from None
    header.pop("__metadata__", None)
    return header


class StateDictWeights:
    """Tensors already in memory; `get` returns copies, so the source stays untouched."""

    def __init__(self, state: dict[str, torch.Tensor]):
        self._state = state

    def names(self) -> list[str]:
        return list(self._state)

    def get(self, name: str) -> torch.Tensor:
        return self._state[name].detach().to("cpu", copy=True)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._state[name].shape)

    @property
    def dtype(self) -> torch.dtype:
        return next((t.dtype for t in self._state.values() if t.is_floating_point()), torch.float32)


class GGUFWeights:
    """Tensors of a GGUF file, dequantised to float32 one at a time, under HF names.

    `name_map` maps GGUF tensor names to HF names; `transform(hf_name, array)`
    undoes what the exporter of that file did (e.g. llama's rope row order).
    """

    def __init__(self, path: Path, name_map: dict[str, str],
                 transform: Callable[[str, np.ndarray], np.ndarray]):
        from .gguf_layout import read_layout

        self.path, self._transform = path, transform
        layout = read_layout(path, keep=lambda key: False)
        self._data_start = layout.data_start
        self._tensors = {name_map[t.name]: t for t in layout.tensors if t.name in name_map}

    def names(self) -> list[str]:
        return list(self._tensors)

    def get(self, name: str) -> torch.Tensor:
        from gguf import GGML_QUANT_SIZES
        from gguf.quants import dequantize

        t = self._tensors[name]
        block, type_size = GGML_QUANT_SIZES[t.type]
        with open(self.path, "rb") as f:
            f.seek(self._data_start + t.offset)
            raw = np.frombuffer(f.read(t.nbytes), dtype=np.uint8)
        rows = list(reversed(t.shape))  # numpy order: the last axis is the GGUF row
        raw = raw.reshape(*rows[:-1], rows[-1] // block * type_size)
        arr = self._transform(name, np.asarray(dequantize(raw, t.type), dtype=np.float32))
        return torch.from_numpy(np.array(arr, dtype=np.float32))

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(reversed(self._tensors[name].shape))

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32
