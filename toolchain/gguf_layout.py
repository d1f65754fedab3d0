"""A fast, read-only scan of a GGUF file's header: metadata and tensor table.

`gguf.GGUFReader` builds a numpy memmap view per token string and takes ~14 s
on a 49k-token vocabulary; this scan reads the same bytes with `struct` in well
under a second. It backs the pre-flight check before llama.cpp opens a file
(llama.cpp can abort the process on a truncated one), the per-tensor type
report, and the copy of a source file's tokenizer keys.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType as V

GGUF_MAGIC = b"GGUF"
_FMT = {V.UINT8: "B", V.INT8: "b", V.UINT16: "H", V.INT16: "h", V.UINT32: "I", V.INT32: "i",
        V.FLOAT32: "f", V.BOOL: "?", V.UINT64: "Q", V.INT64: "q", V.FLOAT64: "d"}


@dataclass
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # ggml order: shape[0] is the row length
    type: GGMLQuantizationType
    offset: int  # relative to the start of the data section
    nbytes: int


@dataclass
class GGUFLayout:
    version: int
    fields: dict[str, tuple[V, V | None, Any]] = field(default_factory=dict)  # key -> (type, sub, value)
    tensors: list[TensorInfo] = field(default_factory=list)
    data_start: int = 0
    file_size: int = 0

    @property
    def data_end(self) -> int:
        return self.data_start + max((t.offset + t.nbytes for t in self.tensors), default=0)


class _Cursor:
    def __init__(self, buf) -> None:
        self.buf, self.pos = buf, 0

    def unpack(self, fmt: str) -> tuple:
        values = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return values

    def string(self) -> str:
        (n,) = self.unpack("Q")
        raw = self.buf[self.pos:self.pos + n]
        if len(raw) != n:
            raise ValueError("string runs past the end of the file")
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def value(self, vtype: V, keep: bool) -> tuple[V | None, Any]:
        if vtype in _FMT:
            return None, self.unpack(_FMT[vtype])[0]
        if vtype == V.STRING:
            return None, self.string()
        if vtype != V.ARRAY:
            raise ValueError(f"unknown metadata value type {int(vtype)}")
        sub, n = self.unpack("IQ")
        sub = V(sub)
        if sub in _FMT:
            if not keep:
                self.pos += n * struct.calcsize(_FMT[sub])
                return sub, None
            return sub, list(self.unpack(f"{n}{_FMT[sub]}"))
        items = [self.value(sub, keep)[1] for _ in range(n)]
        return sub, items if keep else None


def read_layout(path: str | Path, keep: Callable[[str], bool] = lambda key: True) -> GGUFLayout:
    """Parse header, metadata (values kept where `keep(key)`) and tensor table.

    Raises ValueError (or struct.error) on anything that is not a well-formed GGUF header.
    """
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        if buf[:4] != GGUF_MAGIC:
            raise ValueError("bad magic (not a GGUF file)")
        cur = _Cursor(buf)
        cur.pos = 4
        version, n_tensors, n_kv = cur.unpack("IQQ")
        layout = GGUFLayout(version=version, file_size=len(buf))
        for _ in range(n_kv):
            key = cur.string()
            (vtype,) = cur.unpack("I")
            sub, value = cur.value(V(vtype), keep(key) or key == "general.alignment")
            layout.fields[key] = (V(vtype), sub, value)
        for _ in range(n_tensors):
            name = cur.string()
            (n_dims,) = cur.unpack("I")
            shape = cur.unpack(f"{n_dims}Q")
            qtype, offset = cur.unpack("IQ")
            qtype = GGMLQuantizationType(qtype)
            block, type_size = GGML_QUANT_SIZES[qtype]
            n = 1
            for d in shape:
                n *= d
            layout.tensors.append(TensorInfo(name, tuple(shape), qtype, offset, n // block * type_size))
        align_field = layout.fields.get("general.alignment")
        align = int(align_field[2]) if align_field else 32
        layout.data_start = (cur.pos + align - 1) // align * align
    return layout
