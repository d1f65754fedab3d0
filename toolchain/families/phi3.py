"""Phi-3 / Phi-4-mini: one fused qkv_proj ([q | k | v] rows) and one fused gate_up_proj
([gate | up] rows). Its attention reads the query width from the config, so each pruned
layer's attention gets a config copy with that layer's head counts.

GGUF: llama.cpp's `phi3` takes the fused tensors as they are, but only uniform widths, every
query head (q and attn_output are n_embd wide) and no attn_output / ffn_down bias. With full rotary and plain rope the same weights also run as
`deci` with q/k/v and gate/up split (q/k permuted): per-layer widths and biases.
"""

from .base import Family, GGUFArch

PHI3 = GGUFArch("phi3", {
    "self_attn.qkv_proj": "attn_qkv", "self_attn.o_proj": "attn_output", "mlp.gate_up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
}, biases=False, heads=False)
DECI_SPLIT = GGUFArch("deci", {
    "self_attn.qkv_proj": ("attn_q", "attn_k", "attn_v"), "self_attn.o_proj": "attn_output",
    "mlp.gate_up_proj": ("ffn_gate", "ffn_up"), "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
}, per_layer=True, rope_permute=True)


class Phi3(Family):
    def set_widths(self, layer, heads: int, kv_heads: int, ffn: int) -> None:
        super().set_widths(layer, heads, kv_heads, ffn)
        attn = layer.get_submodule(self.attention)
        attn.config = self.layer_config(attn.config, heads, kv_heads)
        attn.num_key_value_heads = kv_heads

    def gguf_candidates(self, config) -> tuple[GGUFArch, ...]:
        """deci needs the rope llama's graph has: all of head_dim rotated, no long-rope factors."""
        rope = getattr(config, "rope_parameters", None) or {}
        plain = rope.get("rope_type", "default") == "default" and rope.get("partial_rotary_factor", 1.0) == 1.0
        return self.gguf if plain else (PHI3,)


FAMILY = Phi3("phi3", q=None, k=None, v=None, qkv="self_attn.qkv_proj", gate=None, up=None,
              gate_up="mlp.gate_up_proj", gguf=(DECI_SPLIT, PHI3), gguf_native=PHI3)
