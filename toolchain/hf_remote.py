"""How plain transformers reads a liar-export checkpoint (docs/DESIGN.md §9).

Uniform widths become the family's own model type: the config's head counts, head size
and FFN width are the widths, and the o / down biases that LIAR adds are switched on by
the config's own flags (`attention_bias`, `mlp_bias`). A flag switches several biases at
once (Llama's `attention_bias`: q, k, v and o), so the others are written as zeros. Which
flag switches which bias is read from transformers itself — a skeleton is built on the
meta device with the flag on and its shapes read back — so nothing here lists a family's
flags, and a family whose classes cannot express the widths (Qwen2's o_proj has no flag)
falls through to the modeling file.

Per-layer widths (or a bias no flag switches) get `modeling_liar.py`, named in the
config's `auto_map`: a subclass of the family's transformers class that rebuilds each
decoder layer from a copy of the config carrying that layer's widths
(`config.liar_layers`), the convention of NVIDIA's per-layer DeciLM / Nemotron
checkpoints. It imports only torch and transformers, so
`AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)` needs no liar-export.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

from .families import Family
from .families.base import remote_class
from .widths import Widths

REMOTE_FILE = "modeling_liar.py"
BIAS_FLAGS = ("attention_bias", "mlp_bias")  # transformers' config switches for projection biases
WIDTH_KEYS = ("num_attention_heads", "num_key_value_heads", "head_dim", "intermediate_size")

_TEMPLATE = '''"""{model_type} with per-layer widths, as written by liar-export (needs only torch and transformers).

Every decoder layer is rebuilt from a copy of the config that carries its own head counts,
head size and FFN width (`liar_layers` in config.json), with an o_proj / down_proj bias
where the record names one. Load it with
AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=True).
"""

import copy

from torch import nn
from transformers import {base}

LAYERS, O_PROJ, DOWN_PROJ = {layers!r}, {o!r}, {down!r}
WIDTH_KEYS = {width_keys!r}


def layer_config(config, widths):
    """A shallow copy of `config` with one layer's widths (attention and MLP read them at build time)."""
    c = copy.copy(config)
    for key in WIDTH_KEYS:
        setattr(c, key, widths[key])
    return c


def set_bias(layer, path, bias):
    """Give the Linear at `path` a bias, or take it away, as the widths record says."""
    parent, _, name = path.rpartition(".")
    owner = layer.get_submodule(parent)
    old = getattr(owner, name)
    if (old.bias is not None) != bias:
        setattr(owner, name, nn.Linear(old.in_features, old.out_features, bias=bias,
                                       device=old.weight.device, dtype=old.weight.dtype))


class {cls}({base}):
    def __init__(self, config):
        super().__init__(config)
        layers = self.get_submodule(LAYERS)
        if len(config.liar_layers) != len(layers):
            raise ValueError(f"liar_layers describes {{len(config.liar_layers)}} layers, the config {{len(layers)}}")
        for i, widths in enumerate(config.liar_layers):
            layer = type(layers[i])(layer_config(config, widths), i)
            set_bias(layer, O_PROJ, widths["o_proj_bias"])
            set_bias(layer, DOWN_PROJ, widths["down_proj_bias"])
            layers[i] = layer
'''


@dataclass
class Layout:
    """What a checkpoint directory holds for transformers: the config to write, the widths record
    as stored (biases a flag switched on included), and the modeling file, if one is needed."""

    config: object
    widths: Widths
    standard: bool = True
    remote: str | None = None  # the source of modeling_liar.py
    note: str | None = None  # why transformers alone cannot load it, when it cannot


def layout(config, family: Family, widths: Widths) -> Layout:
    """The standard config when transformers' own classes hold `widths`, else config + modeling file
    (checked: the file's class must build exactly these widths, or none is written)."""
    config = _without_remote_code(config)
    standard = _standard(config, family, widths) if widths.is_uniform else None
    if standard is not None:
        return Layout(*standard)
    source = modeling_source(family, config)
    remote = _remote_config(copy.deepcopy(config), family, widths)
    if _builds(source, remote, family) != widths:
        return Layout(config, widths, standard=False,
                      note=f"transformers' {family.model_type} classes cannot be given these per-layer widths by "
                           f"{REMOTE_FILE}: the checkpoint loads with liar-export's open_model only")
    return Layout(remote, widths, standard=False, remote=source)


def modeling_source(family: Family, config) -> str:
    """modeling_liar.py for `family`: its paths filled into one template (no family logic copied)."""
    base = _base_class(family, config)
    return _TEMPLATE.format(model_type=config.model_type, base=base, cls=remote_class(base), layers=family.layers,
                            o=family.o, down=family.down, width_keys=WIDTH_KEYS)


def skeleton_widths(config, family: Family) -> Widths:
    """The widths transformers' own classes build from `config` (a meta-device skeleton: no memory)."""
    from .models import build_skeleton
    from .surgery import widths_of

    return widths_of(family.layer_list(build_skeleton(config, family)), family, family.dims(config)["head_dim"])


def skeleton_params(config, family: Family) -> dict[str, tuple[int, ...]]:
    """Name → shape of every layer parameter transformers' own classes build from `config`."""
    from .models import build_skeleton

    prefix = family.layers + "."
    return {name: tuple(p.shape) for name, p in build_skeleton(config, family).named_parameters()
            if name.startswith(prefix)}


def _builds(source: str, config, family: Family) -> Widths | None:
    """The widths the generated modeling file's class builds from `config` (on the meta device),
    None where the family's classes refuse them (BERT derives its head size from the head count)."""
    from accelerate import init_empty_weights

    from .surgery import widths_of

    namespace: dict = {}
    exec(compile(source, REMOTE_FILE, "exec"), namespace)
    try:
        with init_empty_weights(include_buffers=False):
            model = namespace[remote_class(_base_class(family, config))](config)
    except (ValueError, TypeError, RuntimeError):
        return None
    return widths_of(family.layer_list(model), family, family.dims(config)["head_dim"])


def _base_class(family: Family, config) -> str:
    from transformers.models.auto import modeling_auto

    mapping = {"AutoModelForCausalLM": modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
               "AutoModel": modeling_auto.MODEL_MAPPING_NAMES}[family.auto_class]
    return mapping[config.model_type]


def _without_remote_code(config):
    """A copy without the source's `auto_map`: its modeling files are not in the checkpoint, and every
    supported family is native to transformers."""
    config = copy.deepcopy(config)
    if hasattr(config, "auto_map"):
        del config.auto_map
    return config


def _standard(config, family: Family, widths: Widths) -> tuple[object, Widths] | None:
    """(config, widths as stored): the family's own config with these uniform widths and the bias
    flags that cover every o / down bias, or None where transformers' classes cannot express them
    (a config validator refuses the head count, or no flag switches a bias)."""
    from huggingface_hub.errors import StrictDataclassError

    config = copy.deepcopy(config)
    for key in WIDTH_KEYS:
        setattr(config, key, getattr(widths[0], key))
    try:
        getattr(config, "validate", lambda: None)()  # e.g. Llama's: hidden_size must be a multiple of num_attention_heads
    except (StrictDataclassError, ValueError):
        return None
    want = {"o_proj_bias": any(w.o_proj_bias for w in widths), "down_proj_bias": any(w.down_proj_bias for w in widths)}
    built = skeleton_widths(config, family)[0]
    for flag in BIAS_FLAGS:
        missing = [k for k, v in want.items() if v and not getattr(built, k)]
        if not missing or getattr(config, flag, None) is not False:  # absent, or already on
            continue
        trial = copy.deepcopy(config)
        setattr(trial, flag, True)
        trial_built = skeleton_widths(trial, family)[0]
        if any(getattr(trial_built, k) for k in missing):
            config, built = trial, trial_built
    target = replace(widths[0], o_proj_bias=built.o_proj_bias, down_proj_bias=built.down_proj_bias)
    if built != target or any(v and not getattr(built, k) for k, v in want.items()):
        return None
    config.architectures = [_base_class(family, config)]
    return config, Widths((built,) * len(widths))


def _remote_config(config, family: Family, widths: Widths):
    base = _base_class(family, config)
    config.liar_layers = widths.to_json()  # what the modeling file builds the layers from
    config.auto_map = {family.auto_class: f"{REMOTE_FILE.removesuffix('.py')}.{remote_class(base)}"}
    config.architectures = [remote_class(base)]
    return config
