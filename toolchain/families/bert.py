"""BERT encoders (sentence-transformers models such as all-MiniLM-L6-v2 are bare `BertModel`s).

What differs from the decoders (docs/DESIGN.md §2, "Encoders"):

- the layer is post-LayerNorm: attention → `attention.output.dense` (o) → LayerNorm(x + ·),
  then `intermediate.dense` (up, GELU, no gate) → `output.dense` (down) → LayerNorm(· + ·);
  there is no final norm, no LM head and no rotary module (positions are embeddings);
- attention is bidirectional: a micro-batch's mask comes from its real tokens (padding
  masked as keys), never the causal mask;
- pruning removes whole heads (q/k/v rows with their biases, o columns) and FFN channels
  (up rows with their biases, down columns), with one KV head per query head;
- local refinement's submodels are `attention` (self-attention + output dense + LayerNorm:
  what goes in is the residual stream, what comes out is the normed stream) and the FFN
  (`intermediate` + `output`).

RoBERTa / XLM-R share this layout exactly (other embeddings aside): a module with
`FAMILY = Bert("roberta")` or `("xlm-roberta")` and the registry entry are the addition.

GGUF: llama.cpp's `bert` (src/models/bert.cpp) fixes q and attn_output at n_embd × n_embd and
reads one n_ff for every layer, so only uniform FFN pruning is representable (heads=False);
it loads and uses attn_output / ffn_down biases.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import UserError
from .base import Family, GGUFArch, remote_class

BERT_TENSORS = {
    "attention.self.query": "attn_q", "attention.self.key": "attn_k", "attention.self.value": "attn_v",
    "attention.output.dense": "attn_output", "attention.output.LayerNorm": "attn_output_norm",
    "intermediate.dense": "ffn_up", "output.dense": "ffn_down", "output.LayerNorm": "layer_output_norm",
}
BERT = GGUFArch("bert", BERT_TENSORS, heads=False)

# A bare encoder is saved as "<Type>Model" (by liar-export with per-layer widths: its remote class);
# anything else carries a task head (a cross-encoder's classifier, an MLM head) whose weights live
# under a prefix and would be dropped unnoticed.
BARE_ARCHITECTURES = ("BertModel",)
OWN_ARCHITECTURES = BARE_ARCHITECTURES + tuple(remote_class(a) for a in BARE_ARCHITECTURES)


class Bert(Family):
    def fixed_layer_params(self, config) -> int:
        """LayerNorms carry a weight and a bias each."""
        return 2 * len(self.norms) * config.hidden_size

    def check_config(self, config) -> None:
        """Refuse encoders with a task head: pruning statistics would ignore the head."""
        archs = list(getattr(config, "architectures", None) or [])
        heads = [a for a in archs if a not in OWN_ARCHITECTURES]
        if heads:
            raise UserError(f"{heads[0]} is a {self.model_type} model with a task head (a cross-encoder or "
                            f"classifier): only bare encoders ({', '.join(BARE_ARCHITECTURES)}, as "
                            "sentence-transformers saves them) can be pruned and exported")
        if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
            raise UserError(f"this {self.model_type} config is a decoder (is_decoder / add_cross_attention): "
                            "only bidirectional encoders are supported")

    def set_widths(self, layer: nn.Module, heads: int, kv_heads: int, ffn: int) -> None:
        attn = layer.get_submodule(self.attention)
        attn.num_attention_heads = heads
        attn.all_head_size = heads * attn.attention_head_size

    def batch_mask(self, mask: torch.Tensor, tokens: torch.Tensor | None) -> torch.Tensor | None:
        """Additive [b, 1, 1, L] mask: every query sees the real tokens of its own sequence
        (None without a real-token mask: unpadded batches attend everywhere)."""
        if tokens is None:
            return None
        return torch.zeros(tokens.shape, device=tokens.device).masked_fill(
            tokens == 0, torch.finfo(torch.float32).min)[:, None, None, :]

    def call_layer(self, layer: nn.Module, x: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor,
                   pos_emb) -> torch.Tensor:
        return layer(x, attention_mask=mask)

    def attention_forward(self, layer: nn.Module, x: torch.Tensor, mask, pos, pos_emb) -> torch.Tensor:
        """Post-LN: LayerNorm(x + o(attn(x))) — the residual is inside the submodel."""
        return layer.attention(x, attention_mask=mask)[0]

    def mlp_forward(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return layer.output(layer.intermediate(x), x)

    def attention_modules(self, layer: nn.Module) -> list[nn.Module]:
        return [layer.attention]

    def mlp_modules(self, layer: nn.Module) -> list[nn.Module]:
        return [layer.intermediate, layer.output]


FAMILY = Bert("bert", auto_class="AutoModel", layers="encoder.layer", embed="embeddings", final_norm=None,
              lm_head=None, rotary=None, attention="attention.self", q="attention.self.query",
              k="attention.self.key", v="attention.self.value", o="attention.output.dense", mlp="intermediate",
              gate=None, up="intermediate.dense", down="output.dense",
              norms=("attention.output.LayerNorm", "output.LayerNorm"),
              attn_norm_in="attention.output.LayerNorm", mlp_norm_in="output.LayerNorm",
              gguf=(BERT,), encoder=True)
