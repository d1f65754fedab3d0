"""Where the walk's finished layers go: a checkpoint on disk, or a model in memory.

`CheckpointSink` is what liar-export uses: each layer is written the moment it
is finished and then freed, so memory never holds more than the layer being
worked on (plus one shard buffer). `MemorySink` keeps them, for small models
in tests and benchmark scripts that evaluate many recipes in one process.
Both end with `close(widths, meta)`, which returns the compressed `Model`.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from .checkpoint import SHARD_BYTES, CheckpointWriter, finish
from .errors import LiarError
from .models import Model, build_skeleton, open_checkpoint
from .widths import Widths


def _outside_layers(model: Model) -> list[str]:
    """The parts around the layers that a checkpoint stores (a tied head is stored once)."""
    parts = ["embed", "norm"] + ([] if model.tied() else ["head"])
    return [p for p in parts if p != "norm" or model.family.final_norm]


class CheckpointSink:
    """Finished layers go straight into a checkpoint directory, shard by shard."""

    def __init__(self, model: Model, out_dir: str | Path, shard_bytes: int = SHARD_BYTES):
        self.model, self.dir = model, Path(out_dir)
        self.writer = CheckpointWriter(self.dir, shard_bytes)
        paths = {"embed": model.family.embed, "norm": model.family.final_norm, "head": model.family.lm_head}
        for part in _outside_layers(model):
            self.writer.add_module(paths[part] + ".", model.part(part))

    def layer(self, i: int, layer: nn.Module) -> None:
        self.writer.add_module(self.model.layer_prefix(i), layer)

    def close(self, widths: Widths, meta: dict) -> Model:
        finish(self.writer, self.model, widths, meta)
        return open_checkpoint(self.dir, dtype=self.model.dtype)


class MemorySink:
    """Finished layers are kept; `close` assembles them into a model in memory."""

    def __init__(self, model: Model):
        self.model = model
        self.layers: dict[int, nn.Module] = {}

    def layer(self, i: int, layer: nn.Module) -> None:
        self.layers[i] = layer

    def close(self, widths: Widths, meta: dict) -> Model:
        m, family = self.model, self.model.family
        full = build_skeleton(m.config, family, widths)
        layers = family.layer_list(full)
        for i in range(len(layers)):
            layers[i] = self.layers[i]
        for part, path in (("embed", family.embed), ("norm", family.final_norm), ("head", family.lm_head)):
            if path:
                parent, _, name = path.rpartition(".")
                setattr(full.get_submodule(parent) if parent else full, name, m.part(part))
        if m.tied():
            full.tie_weights()
        if any(p.is_meta for p in full.parameters()):
            raise LiarError("assembling the compressed model left weights unset")
        return Model.from_module(full.to(m.dtype), m.tokenizer, m.source, meta)
