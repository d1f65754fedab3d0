"""A pruned model as a directory, written and read one tensor at a time.

Layout: safetensors shards (`model.safetensors`, or `model-0000k-of-0000n.safetensors`
with `model.safetensors.index.json`), `config.json` (a transformers config plus
`liar_layers`, the widths record), tokenizer files, `liar.json` (source, plan,
recipe) and, where transformers' own classes cannot hold the widths, `modeling_liar.py`
(toolchain/hf_remote.py). Read it back with `toolchain.models.open_model(dir)` — the
widths record is the authority there — or with transformers alone::

    AutoModelForCausalLM.from_pretrained("out/pruned/hf")                           # uniform widths
    AutoModelForCausalLM.from_pretrained("out/pruned/hf", trust_remote_code=True)   # per-layer widths
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from torch import nn

from .errors import LiarError, VerificationError
from .hf_remote import REMOTE_FILE, Layout, layout
from .models import CHECKPOINT_MARKER
from .weights import INDEX_NAME, SINGLE_NAME
from .widths import Widths

SHARD_BYTES = 1 << 29  # a shard is held in memory until it is written: this bounds that


class CheckpointWriter:
    """Collects tensors and writes them in shards of at most `shard_bytes` as they come."""

    def __init__(self, out_dir: str | Path, shard_bytes: int = SHARD_BYTES, skip: tuple[str, ...] = ()):
        self.dir, self.shard_bytes, self.skip = Path(out_dir), shard_bytes, set(skip)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._shards: list[tuple[Path, list[str]]] = []
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if name in self.skip:
            return
        t = tensor.detach().to("cpu").contiguous()
        if t.is_floating_point() and not torch.isfinite(t).all():  # never write NaN/Inf into an artifact
            raise VerificationError(f"weight {name} is not finite after compression: try a larger --ridge, "
                                    "--reconstruct bias, or other calibration text")
        self._pending[name] = t
        self._pending_bytes += t.numel() * t.element_size()
        if self._pending_bytes >= self.shard_bytes:
            self._flush()

    @property
    def names(self) -> set[str]:
        """Every tensor added so far (written or pending)."""
        return {n for _, names in self._shards for n in names} | set(self._pending)

    def add_module(self, prefix: str, module: nn.Module) -> None:
        for name, t in module.state_dict().items():
            self.add(prefix + name, t)

    def _flush(self) -> None:
        from safetensors.torch import save_file

        if not self._pending:
            return
        path = self.dir / f".shard-{len(self._shards):05d}.safetensors"
        save_file(self._pending, str(path), metadata={"format": "pt"})
        self._shards.append((path, list(self._pending)))
        self.total_bytes += self._pending_bytes
        self._pending, self._pending_bytes = {}, 0

    def close(self) -> list[str]:
        """Name the shards as transformers expects and write the index; returns the file names."""
        self._flush()
        n = len(self._shards)
        if n == 1:
            self._shards[0][0].rename(self.dir / SINGLE_NAME)
            return [SINGLE_NAME]
        weight_map, names = {}, []
        for k, (path, tensors) in enumerate(self._shards, 1):
            name = f"model-{k:05d}-of-{n:05d}.safetensors"
            path.rename(self.dir / name)
            names.append(name)
            weight_map.update({t: name for t in tensors})
        (self.dir / INDEX_NAME).write_text(json.dumps(
            {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}, indent=1) + "\n")
        return names


def write_config(config, family, widths: Widths, dtype: torch.dtype, out_dir: Path) -> Layout:
    """config.json (the widths record as `liar_layers`) and, where needed, modeling_liar.py: the
    family's standard config for uniform widths, the source config and a modeling file otherwise."""
    config = copy.deepcopy(config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the GGUF loader leaves a marker that is no longer true
    plan = layout(config, family, widths)
    plan.config.liar_layers = plan.widths.to_json()
    plan.config.dtype = str(dtype).removeprefix("torch.")
    plan.config.save_pretrained(out_dir)
    if plan.remote is not None:
        (out_dir / REMOTE_FILE).write_text(plan.remote)
    return plan


def zero_biases(config, family, dtype: torch.dtype, have: set[str]) -> dict[str, torch.Tensor]:
    """The biases a standard config switches on but the model lacks, as zeros (a flag such as Llama's
    `attention_bias` switches q, k, v and o together)."""
    from .hf_remote import skeleton_params

    zeros = {name: torch.zeros(shape, dtype=dtype) for name, shape in skeleton_params(config, family).items()
             if name not in have}
    if any(not name.endswith(".bias") for name in zeros):
        raise LiarError(f"the checkpoint lacks weights its config describes: {sorted(zeros)[:3]}")
    return zeros


def finish(writer: CheckpointWriter, model, widths: Widths, meta: dict) -> None:
    """Everything but the layers' weights, then close `writer`: config (+ modeling file, or the zero
    biases a standard config needs, added before the last shard is written), tokenizer, liar.json."""
    plan = write_config(model.config, model.family, widths, model.dtype, writer.dir)
    if plan.standard:
        for name, zero in zero_biases(plan.config, model.family, model.dtype, writer.names).items():
            writer.add(name, zero)
    writer.close()
    model.tokenizer.save_pretrained(writer.dir)
    (writer.dir / CHECKPOINT_MARKER).write_text(json.dumps({"source": model.source, **meta}, indent=1,
                                                           default=str) + "\n")


def save_checkpoint(model, out_dir: str | Path, meta: dict) -> None:
    """Write `model` (a toolchain.models.Model) as a checkpoint, streaming its weights unchanged."""
    out_dir = Path(out_dir)
    skip = (f"{model.family.lm_head}.weight",) if model.tied() else ()
    writer = CheckpointWriter(out_dir, skip=skip)
    for name in model.weights.names():
        if not name.endswith("rotary_emb.inv_freq"):
            writer.add(name, model.weights.get(name).to(model.dtype))
    finish(writer, model, model.widths, meta)
