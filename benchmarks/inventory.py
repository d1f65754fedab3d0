"""What an artifact holds, read from the file itself: format, weight type,
parameters, bytes on disk, and the bytes a decode step must read.

The ideal decode speed-up (docs/DESIGN.md §8) is the ratio of bytes read per
token: every block weight, the LM head and the final norm are read in full
for each generated token, the token embedding only one row. With tied
embeddings the LM head *is* the embedding matrix, so it is read in full.
Nothing here runs a model; the counts come from tensor headers.
"""

from __future__ import annotations

import json
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from toolchain.errors import UserError

# roles: "embedding" (one row read per token), "embedding_tied" (also the LM head:
# read in full), "head" (LM head), "body" (blocks and norms: read in full)
FULL_READ = ("embedding_tied", "head", "body")

@dataclass(frozen=True)
class Tensor:
    name: str
    role: str
    elements: int
    nbytes: int
    rows: int  # rows of the matrix as the runtime indexes it (for one-row embedding reads)


def resolve(path: str | Path) -> Path:
    """The file a backend opens: an ONNX export directory means its model.onnx."""
    path = Path(path).expanduser().resolve()
    if path.is_dir() and (path / "model.onnx").is_file():
        return path / "model.onnx"
    return path


def backend_of(path: Path) -> tuple[str, str]:
    """(format, backend) chosen from the (resolved) artifact path; UserError if unsupported."""
    if path.suffix == ".gguf" and path.is_file():
        return "gguf", "llama.cpp"
    if path.suffix == ".onnx" and path.is_file():
        return "onnx", "onnxruntime"
    if path.is_dir() and (path / "liar.json").is_file():
        return "checkpoint", "pytorch"
    if path.is_dir() and (path / "config.json").is_file():
        return "hf", "pytorch"
    if not path.exists():
        raise UserError(f"artifact {path} does not exist")
    raise UserError(f"cannot benchmark {path}: pass a .gguf file, a .onnx file, "
                    "a liar-export checkpoint directory or a Hugging Face model directory")


def bytes_per_token(tensors: list[Tensor]) -> int:
    """Weight bytes one decode step reads (docs/DESIGN.md §8)."""
    full = sum(t.nbytes for t in tensors if t.role in FULL_READ)
    rows = sum(t.nbytes // max(t.rows, 1) for t in tensors if t.role == "embedding")
    return int(full + rows)


# ---------------------------------------------------------------- GGUF
def _gguf_tensors(path: Path) -> tuple[list[Tensor], object]:
    from gguf import GGUFReader

    from exporters.llamacpp import check_gguf_file

    check_gguf_file(path)  # missing, junk or truncated -> one clear UserError
    reader = GGUFReader(str(path))
    names = {t.name for t in reader.tensors}
    tied = "output.weight" not in names
    out = []
    for t in reader.tensors:
        if t.name == "token_embd.weight":
            role = "embedding_tied" if tied else "embedding"
        elif t.name == "output.weight":
            role = "head"
        else:
            role = "body"
        # GGUF shapes list the contiguous dimension first: rows are the last entry
        out.append(Tensor(t.name, role, int(t.n_elements), int(t.n_bytes), int(t.shape[-1])))
    return out, reader


def _gguf_weight_type(reader, tensors: list[Tensor]) -> str:
    from gguf import GGMLQuantizationType, LlamaFileType

    field = reader.fields.get("general.file_type")
    if field is not None:
        try:
            return LlamaFileType(int(field.contents())).name.removeprefix("MOSTLY_")
        except ValueError:
            pass
    types = Counter(GGMLQuantizationType(t.tensor_type).name for t in reader.tensors
                    if t.name.endswith(("ffn_down.weight", "attn_q.weight")))
    return types.most_common(1)[0][0] if types else "unknown"


def _gguf_recipe(reader) -> dict | None:
    """The recipe liar-export writes as JSON (exporters.gguf.metadata.RECIPE_KEY)."""
    for key, field in reader.fields.items():
        if "liar" in key and key.endswith(".recipe"):
            try:
                return json.loads(field.contents())
            except (json.JSONDecodeError, TypeError):
                return {"raw": str(field.contents())}
    return None


# ---------------------------------------------------------------- ONNX
def _onnx_model(path: Path):
    import onnx

    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf decode errors have many types
        raise UserError(f"{path} is not a readable ONNX model: {e}") from None


def _onnx_tensors(model) -> list[Tensor]:
    import numpy as np
    from onnx import TensorProto, helper

    consumers: dict[str, set[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, set()).add(node.op_type)
    nibble = {getattr(TensorProto, n) for n in ("INT4", "UINT4") if hasattr(TensorProto, n)}
    inits = list(model.graph.initializer)
    vocab = {int(i.dims[0]) for i in inits if consumers.get(i.name) == {"Gather"} and len(i.dims) == 2}
    out = []
    for init in inits:
        elements = int(np.prod(init.dims)) if init.dims else 1
        if init.data_type in nibble:
            nbytes = (elements + 1) // 2
        else:
            nbytes = elements * np.dtype(helper.tensor_dtype_to_np_dtype(init.data_type)).itemsize
        ops = consumers.get(init.name, set())
        if "Gather" in ops and len(init.dims) == 2:
            role = "embedding" if ops == {"Gather"} else "embedding_tied"
        elif len(init.dims) == 2 and vocab & {int(d) for d in init.dims}:
            role = "head"
        else:
            role = "body"
        out.append(Tensor(init.name, role, elements, int(nbytes), int(init.dims[0]) if init.dims else 1))
    return out


def _onnx_weight_type(model) -> str:
    from onnx import helper

    ops = {n.op_type for n in model.graph.node}
    if "MatMulNBits" in ops:
        bits = {a.i for n in model.graph.node if n.op_type == "MatMulNBits" for a in n.attribute
                if a.name == "bits"}
        return f"int{min(bits) if bits else 4}-weight-only"
    if "DynamicQuantizeLinear" in ops or "MatMulInteger" in ops:
        return "int8-dynamic"
    types = Counter(helper.tensor_dtype_to_np_dtype(i.data_type).name for i in model.graph.initializer
                    if len(i.dims) == 2)
    return types.most_common(1)[0][0] if types else "unknown"


def _onnx_bytes(path: Path, model) -> int:
    files = {path}
    for init in model.graph.initializer:
        for entry in init.external_data:
            if entry.key == "location":
                files.add(path.parent / entry.value)
    return sum(f.stat().st_size for f in files if f.is_file())


# ---------------------------------------------------------------- safetensors (PyTorch dirs)
def _safetensors_header(path: Path) -> dict:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header


def _dir_tensors(path: Path) -> tuple[list[Tensor], str]:
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise UserError(f"{path} has no *.safetensors weights to benchmark")
    config = json.loads((path / "config.json").read_text())
    tie = bool(config.get("tie_word_embeddings", False))
    out, dtypes = [], Counter()
    for f in files:
        for name, h in _safetensors_header(f).items():
            elements = 1
            for d in h["shape"]:
                elements *= d
            nbytes = h["data_offsets"][1] - h["data_offsets"][0]
            if "embed_tokens" in name:
                role = "embedding_tied" if tie else "embedding"
            elif name.startswith("lm_head"):
                role = "head"
            else:
                role = "body"
            dtypes[h["dtype"]] += elements
            out.append(Tensor(name, role, elements, nbytes, h["shape"][0] if h["shape"] else 1))
    return out, dtypes.most_common(1)[0][0].lower() if dtypes else "unknown"


def _sidecar_recipe(path: Path) -> dict | None:
    """The recipe in a checkpoint's liar.json, an ONNX export's io.json, or a
    liar.json next to an exported file."""
    for candidate in (path / "liar.json", path.parent / "io.json", path.parent / "liar.json"):
        if candidate.is_file():
            try:
                meta = json.loads(candidate.read_text())
            except (OSError, json.JSONDecodeError):
                return None
            return meta.get("recipe") if isinstance(meta, dict) else None
    return None


def describe(path: str | Path) -> dict:
    """{"path", "format", "backend", "weight_type", "recipe", "size": {...}} of one artifact."""
    path = resolve(path)
    fmt, backend = backend_of(path)
    if fmt == "gguf":
        tensors, reader = _gguf_tensors(path)
        weight_type, recipe, nbytes = _gguf_weight_type(reader, tensors), _gguf_recipe(reader), path.stat().st_size
    elif fmt == "onnx":
        model = _onnx_model(path)
        tensors = _onnx_tensors(model)
        weight_type, recipe, nbytes = _onnx_weight_type(model), None, _onnx_bytes(path, model)
    else:
        tensors, weight_type = _dir_tensors(path)
        recipe, nbytes = None, sum(f.stat().st_size for f in path.glob("*.safetensors"))
    recipe = recipe or _sidecar_recipe(path)
    return {
        "path": str(path), "format": fmt, "backend": backend, "weight_type": weight_type,
        "recipe": recipe,
        "size": {"artifact_bytes": int(nbytes),
                 "parameters": int(sum(t.elements for t in tensors)),
                 "block_parameters": int(sum(t.elements for t in tensors if t.role == "body")),
                 "bytes_per_token": bytes_per_token(tensors)},
    }
