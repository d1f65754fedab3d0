"""`genai_config.json`: what onnxruntime-genai needs to run an export (docs/DESIGN.md §9).

    import onnxruntime_genai as og
    model = og.Model("out/s50/onnx")          # reads genai_config.json next to model.onnx

The graph already has genai's names (iospec: `past_key_values.N.key`, `present.N.key`),
is float32 with a concatenating KV cache (so `past_present_share_buffer` is off) and
computes its own masks and rotary embeddings, so the config only names the files, the
inputs and outputs, and the sizes. genai's `DefaultKeyValueCache` reads each layer's KV
head count from the graph's inputs (onnxruntime-genai ≥ 0.15, microsoft/onnxruntime-genai
#2214), so the config states layer 0's and per-layer exports run unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

GENAI_FILE = "genai_config.json"
GENAI_TYPES = {"llama", "mistral", "qwen2", "qwen3", "gemma3_text", "phi3"}  # else genai's generic "decoder"


def genai_config(io: dict) -> dict:
    """The config for an export described by its io.json."""
    first = io["layers"][0]
    eos = io["eos_token_id"]
    pad = io.get("pad_token_id")
    context = int(io.get("max_position_embeddings") or 4096)
    return {
        "model": {
            "type": io["model_type"] if io["model_type"] in GENAI_TYPES else "decoder",
            "bos_token_id": io["bos_token_id"] if io["bos_token_id"] is not None else 1,
            "eos_token_id": eos,
            "pad_token_id": pad if pad is not None else (eos[0] if isinstance(eos, list) else eos),
            "vocab_size": io["vocab_size"],
            "context_length": context,
            "decoder": {
                "filename": io["model_file"],
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "head_size": io["head_dim"],
                "hidden_size": io["hidden_size"],
                "num_attention_heads": first["num_attention_heads"],
                "num_key_value_heads": first["num_key_value_heads"],
                "num_hidden_layers": io["num_layers"],
                "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask",
                           "position_ids": "position_ids", "past_key_names": "past_key_values.%d.key",
                           "past_value_names": "past_key_values.%d.value"},
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value"},
            },
        },
        "search": {"do_sample": False, "num_beams": 1, "num_return_sequences": 1, "max_length": context,
                   "min_length": 0, "past_present_share_buffer": False, "early_stopping": True,
                   "top_k": 50, "top_p": 1.0, "temperature": 1.0, "repetition_penalty": 1.0},
    }


def write_genai_config(out_dir: Path, io: dict) -> None:
    """genai_config.json next to the model file."""
    (out_dir / GENAI_FILE).write_text(json.dumps(genai_config(io), indent=1) + "\n")


def generate(path: str | Path, ids: Sequence[int], max_new_tokens: int) -> list[int]:
    """Greedy continuation (the new tokens only) by onnxruntime-genai from an export directory
    (or its .onnx file)."""
    import onnxruntime_genai as og

    path = Path(path)
    model = og.Model(str(path.parent if path.suffix == ".onnx" else path))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + max_new_tokens, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(list(ids))
    out: list[int] = []
    while not generator.is_done():
        generator.generate_next_token()
        out.append(int(generator.get_next_tokens()[0]))
    return out
