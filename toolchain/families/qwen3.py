"""Qwen3: Llama's layout with an explicit head_dim and per-head RMSNorms on q and k
(q_norm / k_norm act on head_dim and are shared by all heads, so pruning heads leaves them alone).

llama.cpp's `qwen3` builds every layer from layer 0's widths and loads no attn_output /
ffn_down bias: GGUF export needs uniform widths, and reconstruction then adds no bias.
"""

from .base import Family, GGUFArch
from .llama import LLAMA_TENSORS

QWEN3 = GGUFArch("qwen3", {**LLAMA_TENSORS, "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm"},
                 biases=False)

FAMILY = Family("qwen3", head_norms=("self_attn.q_norm", "self_attn.k_norm"), gguf=(QWEN3,), gguf_native=QWEN3)
