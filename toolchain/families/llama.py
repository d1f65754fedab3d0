"""Llama (incl. Llama 3.x with `llama3` rope scaling; SmolLM2 is one)."""

from .base import Family, GGUFArch

LLAMA_TENSORS = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
}
# llama.cpp's `llama` reads layer 0's widths for every layer; `deci` (Nemotron-51B) reads each
# layer's own, with the same tensors and graph. Both load q/k/v, attn_output and ffn biases.
LLAMA = GGUFArch("llama", LLAMA_TENSORS, rope_permute=True)
DECI = GGUFArch("deci", LLAMA_TENSORS, per_layer=True, rope_permute=True)

FAMILY = Family("llama", gguf=(LLAMA, DECI), gguf_native=LLAMA)
