"""Save / load a pruned model as a directory.

Layout: `model.safetensors`, `config.json` (a normal transformers config plus
`liar_layers`, the per-layer widths), tokenizer files, and `liar.json`
(source, plan, recipe). Load it in your own code with::

    from toolchain.checkpoint import load_checkpoint
    model = load_checkpoint("out/pruned").model
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import UserError
from .models import CHECKPOINT_MARKER, LoadedModel, check_architecture
from .surgery import record_widths, resize_to_widths

WEIGHTS_NAME = "model.safetensors"


def save_checkpoint(loaded: LoadedModel, out_dir: str | Path, meta: dict) -> None:
    """Write the checkpoint files into an existing (temporary) directory."""
    out_dir = Path(out_dir)
    model = loaded.model
    record_widths(model)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)  # tied: stored once, re-tied on load
    save_file(state, str(out_dir / WEIGHTS_NAME), metadata={"format": "pt"})
    config = model.config
    config.quantization_config = None
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the GGUF loader leaves a marker that is no longer true
    config.save_pretrained(out_dir)
    loaded.tokenizer.save_pretrained(out_dir)
    (out_dir / CHECKPOINT_MARKER).write_text(json.dumps(
        {"source": loaded.source, **meta}, indent=1, default=str) + "\n")


def load_checkpoint(path: str | Path, dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Rebuild the pruned model: dense skeleton on `meta`, resized, weights loaded."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    try:
        meta = json.loads((path / CHECKPOINT_MARKER).read_text())
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is not a readable liar-export checkpoint: {e}") from None
    check_architecture(config)
    widths = getattr(config, "liar_layers", None)
    if not widths or len(widths) != config.num_hidden_layers:
        raise UserError(f"{path}/config.json lacks per-layer widths (liar_layers)")
    with torch.device("meta"):
        model: nn.Module = AutoModelForCausalLM.from_config(config, dtype=dtype)
    resize_to_widths(model, widths)
    try:
        state = load_file(str(path / WEIGHTS_NAME))
    except (OSError, Exception) as e:  # safetensors raises its own error types
        raise UserError(f"cannot read {path / WEIGHTS_NAME}: {e}") from None
    if getattr(config, "tie_word_embeddings", False):
        state.setdefault("lm_head.weight", state["model.embed_tokens.weight"])
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if not k.endswith("rotary_emb.inv_freq")]
    if missing or unexpected:
        raise UserError(f"{path}: weights do not match the recorded widths "
                        f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    # non-persistent rotary buffers were built on `meta`: rebuild them for real
    model.model.rotary_emb = type(model.model.rotary_emb)(config=model.config)
    model.to(dtype)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    record_widths(model)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    source = {"kind": "checkpoint", "path": str(path.resolve()), "base": meta.get("source")}
    return LoadedModel(model, tokenizer, source, meta)
