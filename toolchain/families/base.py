"""What a model family looks like to the pruning walk and the exporters.

A `Family` names where a transformers model of one `model_type` keeps its
layers, its attention projections (separate q/k/v or one fused qkv), its FFN
projections (gate/up/down, a fused gate_up, or up/down without a gate), its
norms, and how one layer is called. Everything else — statistics, criteria,
allocation, LIAR, local refinement, FISTA, checkpoints, GGUF and ONNX — is
written once against this description (docs/DESIGN.md §2).

Pruning removes whole query heads (rows of q, columns of o), whole KV heads
(rows of k and v) and FFN channels (rows of gate/up, columns of down). In a
fused projection those rows sit at offsets: qkv = [q | k | v], gate_up =
[gate | up]; `input_rows` resolves them, so a fused family prunes the fused
matrix directly and exports it fused where the target format wants that.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator

import torch
from torch import nn

if TYPE_CHECKING:
    from ..plan import LayerPlan
    from ..widths import LayerWidths


@dataclass(frozen=True)
class GGUFArch:
    """One llama.cpp architecture a family can be written as (exporters/gguf reads it).

    `tensors` maps a layer-relative module to its GGUF tensor name without `blk.N.`;
    a tuple splits a fused projection into its parts ([q | k | v], [gate | up]).
    `per_layer`: llama.cpp builds every layer from its own head counts and FFN width
    (deci); otherwise every layer from layer 0's, so only uniform widths load.
    `biases`: llama.cpp loads attn_output.bias / ffn_down.bias for this architecture
    (the ones LIAR and FLAP add); where it does not, a file holding them is refused.
    `heads`: query heads may be removed (phi3 and qwen2 fix q / attn_output at n_embd).
    """

    name: str
    tensors: dict[str, str | tuple[str, ...]]
    per_layer: bool = False
    biases: bool = True
    heads: bool = True
    rope_permute: bool = False  # llama.cpp's NORM rope: q/k rows reordered per head (convert_hf_to_gguf)
    norm_offset: float = 0.0  # added to every RMSNorm weight on export (Gemma stores w, runs 1 + w)


@dataclass(frozen=True)
class Family:
    """Where one transformers model type keeps what pruning touches."""

    model_type: str
    auto_class: str = "AutoModelForCausalLM"  # the transformers auto class that builds it
    # paths from the top module
    layers: str = "model.layers"
    embed: str = "model.embed_tokens"
    final_norm: str | None = "model.norm"
    lm_head: str | None = "lm_head"
    rotary: str | None = "model.rotary_emb"
    # paths inside one layer
    attention: str = "self_attn"
    q: str | None = "self_attn.q_proj"
    k: str | None = "self_attn.k_proj"
    v: str | None = "self_attn.v_proj"
    qkv: str | None = None
    o: str = "self_attn.o_proj"
    mlp: str = "mlp"
    gate: str | None = "mlp.gate_proj"
    up: str | None = "mlp.up_proj"
    gate_up: str | None = None
    down: str = "mlp.down_proj"
    norms: tuple[str, ...] = ("input_layernorm", "post_attention_layernorm")  # hidden-sized, per layer
    head_norms: tuple[str, ...] = ()  # per-head norms (head_dim-sized, shared by all heads: untouched)
    # what the local-refinement submodels of one layer are: (name, modules, input norm, output norm)
    attn_norm_in: str = "input_layernorm"
    attn_norm_out: str | None = None  # Gemma's sandwich norm after attention
    mlp_norm_in: str = "post_attention_layernorm"
    mlp_norm_out: str | None = None
    gguf: tuple[GGUFArch, ...] = ()  # what GGUF export may write, in order of preference
    gguf_native: GGUFArch | None = None  # what convert_hf_to_gguf writes (how GGUF inputs are read)
    encoder: bool = False
    notes: tuple[str, ...] = field(default=())

    # -- shapes ---------------------------------------------------------------------------
    def dims(self, config) -> dict[str, int]:
        """The dense shapes a pruning plan is expressed in."""
        heads = config.num_attention_heads
        return {"num_layers": config.num_hidden_layers, "num_heads": heads,
                "num_kv_heads": getattr(config, "num_key_value_heads", None) or heads,
                "head_dim": getattr(config, "head_dim", None) or config.hidden_size // heads,
                "hidden_size": config.hidden_size, "intermediate_size": config.intermediate_size}

    @property
    def ffn_matrices(self) -> int:
        """Weight matrices each FFN channel lives in (gate, up, down; 2 without a gate)."""
        return 3 if (self.gate or self.gate_up) else 2

    def fixed_layer_params(self, config) -> int:
        """Per-layer weights that pruning never touches (the norms)."""
        d = self.dims(config)
        return len(self.norms) * d["hidden_size"] + len(self.head_norms) * d["head_dim"]

    # -- module access ---------------------------------------------------------------------
    def layer_list(self, model: nn.Module) -> nn.ModuleList:
        return model.get_submodule(self.layers)

    def attention_inputs(self) -> tuple[str, ...]:
        """The projections that read the layer's (normed) hidden state for attention."""
        return (self.qkv,) if self.qkv else (self.q, self.k, self.v)

    def ffn_inputs(self) -> tuple[str, ...]:
        """The projections that read the (normed) hidden state for the FFN."""
        if self.gate_up:
            return (self.gate_up,)
        return tuple(p for p in (self.gate, self.up) if p)

    def stages(self) -> tuple[tuple[str, ...], ...]:
        """Linear operators in data-flow order, grouped by shared input (unstructured sparsity)."""
        return (self.attention_inputs(), (self.o,), self.ffn_inputs(), (self.down,))

    def linears(self) -> Iterator[str]:
        for stage in self.stages():
            yield from stage

    # -- surgery ---------------------------------------------------------------------------
    def input_rows(self, lp: "LayerPlan", dense: dict[str, int]) -> dict[str, torch.Tensor]:
        """Rows each input projection keeps under `lp` (indices into the dense layer)."""
        d, nq, nkv, ff = dense["head_dim"], dense["num_heads"], dense["num_kv_heads"], dense["intermediate_size"]
        q, kv = head_rows(lp.heads, d), head_rows(lp.kv_heads, d)
        ch = torch.tensor(lp.channels, dtype=torch.long)
        rows = ({self.qkv: torch.cat([q, nq * d + kv, (nq + nkv) * d + kv])} if self.qkv
                else {self.q: q, self.k: kv, self.v: kv})
        if self.gate_up:
            rows[self.gate_up] = torch.cat([ch, ff + ch])
        else:
            rows.update({p: ch for p in (self.gate, self.up) if p})
        return rows

    def output_shapes(self, w: "LayerWidths") -> dict[str, int]:
        """Output features of each input projection at widths `w`."""
        q, kv = w.num_attention_heads * w.head_dim, w.num_key_value_heads * w.head_dim
        shapes = {self.qkv: q + 2 * kv} if self.qkv else {self.q: q, self.k: kv, self.v: kv}
        if self.gate_up:
            shapes[self.gate_up] = 2 * w.intermediate_size
        else:
            shapes.update({p: w.intermediate_size for p in (self.gate, self.up) if p})
        return shapes

    def set_widths(self, layer: nn.Module, heads: int, kv_heads: int, ffn: int) -> None:
        """Per-layer attributes the family's forward reads (after its Linears changed size)."""
        attn = layer.get_submodule(self.attention)
        if hasattr(attn, "num_key_value_groups"):
            attn.num_key_value_groups = heads // kv_heads
        mlp = layer.get_submodule(self.mlp)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = ffn

    def layer_config(self, config, heads: int, kv_heads: int):
        """A shallow copy of `config` with this layer's head counts (for forwards that read them)."""
        c = copy.copy(config)
        c.num_attention_heads, c.num_key_value_heads = heads, kv_heads
        return c

    def gguf_candidates(self, config) -> tuple[GGUFArch, ...]:
        """The GGUF architectures this model's config can be written as (a family may rule some out)."""
        return self.gguf

    # -- running one layer -----------------------------------------------------------------
    def layer_type(self, config, i: int) -> str:
        """"full_attention" or "sliding_attention" (transformers' names)."""
        types = getattr(config, "layer_types", None)
        return types[i] if types else "full_attention"

    def sliding_window(self, config, i: int) -> int | None:
        if self.layer_type(config, i) != "sliding_attention":
            return None
        return getattr(config, "sliding_window", None)

    def position_embeddings(self, rotary: nn.Module, x: torch.Tensor, pos: torch.Tensor, layer_type: str):
        """(cos, sin) from the model's rotary module for one layer type."""
        return rotary(x, pos)

    def batch_mask(self, mask: torch.Tensor, tokens: torch.Tensor | None) -> torch.Tensor:
        """The attention mask for one micro-batch: decoders use the layer's causal mask as it is;
        encoders build theirs from the batch's real tokens (`tokens` [b, L], 1 = real)."""
        return mask

    def call_layer(self, layer: nn.Module, x: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor,
                   pos_emb) -> torch.Tensor:
        y = layer(x, attention_mask=mask, position_ids=pos, position_embeddings=pos_emb)
        return y[0] if isinstance(y, tuple) else y

    def final_logits(self, config, logits: torch.Tensor) -> torch.Tensor:
        """What the CausalLM does to the head's output (Gemma: soft-capping)."""
        cap = getattr(config, "final_logit_softcapping", None)
        return torch.tanh(logits / cap) * cap if cap else logits

    def attention_forward(self, layer: nn.Module, x: torch.Tensor, mask, pos, pos_emb) -> torch.Tensor:
        """Residual stream through the attention half of a layer (local refinement's `attn` submodel)."""
        h = layer.get_submodule(self.attn_norm_in)(x)
        out = layer.get_submodule(self.attention)(h, position_embeddings=pos_emb, attention_mask=mask,
                                                  position_ids=pos)[0]
        if self.attn_norm_out:
            out = layer.get_submodule(self.attn_norm_out)(out)
        return x + out

    def mlp_forward(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Residual stream through the FFN half of a layer."""
        out = layer.get_submodule(self.mlp)(layer.get_submodule(self.mlp_norm_in)(x))
        if self.mlp_norm_out:
            out = layer.get_submodule(self.mlp_norm_out)(out)
        return x + out

    def attention_modules(self, layer: nn.Module) -> list[nn.Module]:
        mods = [layer.get_submodule(self.attn_norm_in), layer.get_submodule(self.attention)]
        return mods + ([layer.get_submodule(self.attn_norm_out)] if self.attn_norm_out else [])

    def mlp_modules(self, layer: nn.Module) -> list[nn.Module]:
        mods = [layer.get_submodule(self.mlp_norm_in), layer.get_submodule(self.mlp)]
        return mods + ([layer.get_submodule(self.mlp_norm_out)] if self.mlp_norm_out else [])


def remote_class(base: str) -> str:
    """The class name of a family's per-layer model in the modeling file liar-export writes beside a
    checkpoint (toolchain.hf_remote): a checkpoint whose config names it is one of ours."""
    return f"Liar{base}"


def head_rows(heads: list[int], head_dim: int) -> torch.Tensor:
    """Row indices of whole heads in a [heads × head_dim, ...] projection."""
    return torch.tensor([h * head_dim + j for h in heads for j in range(head_dim)], dtype=torch.long)
