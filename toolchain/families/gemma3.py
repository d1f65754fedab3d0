"""Gemma 3 (text): explicit head_dim, attention scale query_pre_attn_scalar^-1/2, sliding-window
and global layers with their own rope, sandwich norms around attention and MLP, q/k norms,
embeddings scaled by sqrt(hidden), RMSNorm as x·(1 + w), GELU-tanh MLP.

llama.cpp's `gemma3` builds every layer from layer 0's widths, loads no attn_output /
ffn_down bias and stores norm weights as 1 + w.
"""

from .base import Family, GGUFArch
from .llama import LLAMA_TENSORS

GEMMA3_TENSORS = {
    **{k: v for k, v in LLAMA_TENSORS.items() if k != "post_attention_layernorm"},
    "post_attention_layernorm": "post_attention_norm", "pre_feedforward_layernorm": "ffn_norm",
    "post_feedforward_layernorm": "post_ffw_norm", "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
}
GEMMA3 = GGUFArch("gemma3", GEMMA3_TENSORS, biases=False, norm_offset=1.0)


class Gemma3(Family):
    def position_embeddings(self, rotary, x, pos, layer_type: str):
        return rotary(x, pos, layer_type)


FAMILY = Gemma3(
    "gemma3_text",
    norms=("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm"),
    head_norms=("self_attn.q_norm", "self_attn.k_norm"),
    attn_norm_out="post_attention_layernorm", mlp_norm_in="pre_feedforward_layernorm",
    mlp_norm_out="post_feedforward_layernorm", gguf=(GEMMA3,), gguf_native=GEMMA3,
)
