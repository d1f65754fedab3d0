"""The widths record: what every layer of a (pruned) model keeps, in one shape.

Allocation produces it (through the plan), reconstruction fills in the biases
it adds, and the checkpoint config (`liar_layers`), the GGUF writer (per-layer
arrays), the ONNX `io.json` and the remote-code modeling file all read it.
Nothing downstream re-derives widths from module shapes; `widths_of` exists
only to check that a model agrees with its record (docs/DESIGN.md §3).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from .errors import UserError


@dataclass(frozen=True)
class LayerWidths:
    """One decoder (or encoder) layer after pruning."""

    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    o_proj_bias: bool = False  # a bias on the attention output projection (LIAR / FLAP add one)
    down_proj_bias: bool = False  # a bias on the FFN down projection

    @property
    def group_size(self) -> int:
        """Query heads per KV head in this layer."""
        return self.num_attention_heads // self.num_key_value_heads

    def check(self, where: str) -> None:
        """Refuse widths no runtime can represent (docs/DESIGN.md §5)."""
        if min(self.num_attention_heads, self.num_key_value_heads, self.intermediate_size, self.head_dim) < 1:
            raise UserError(f"{where} keeps {self.num_attention_heads} heads, {self.num_key_value_heads} KV "
                            f"heads and {self.intermediate_size} FFN channels: every layer needs at least "
                            "one of each (lower --sparsity)")
        if self.num_attention_heads % self.num_key_value_heads:
            raise UserError(f"{where} has {self.num_attention_heads} query heads for "
                            f"{self.num_key_value_heads} KV heads: GQA needs n_head % n_head_kv == 0")


@dataclass(frozen=True)
class Widths:
    """Per-layer widths of a whole model."""

    layers: tuple[LayerWidths, ...]

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def __getitem__(self, i: int) -> LayerWidths:
        return self.layers[i]

    @property
    def is_uniform(self) -> bool:
        """Every layer has the same head counts and FFN width (biases may differ)."""
        return len({(w.num_attention_heads, w.num_key_value_heads, w.intermediate_size)
                    for w in self.layers}) == 1

    def column(self, name: str) -> list[int]:
        """One field across layers as plain ints (the gguf writer rejects numpy ints)."""
        return [int(getattr(w, name)) for w in self.layers]

    def check(self) -> None:
        for i, w in enumerate(self.layers):
            w.check(f"layer {i}")

    def to_json(self) -> list[dict]:
        return [asdict(w) for w in self.layers]

    @classmethod
    def from_json(cls, data: list[dict], head_dim: int | None = None) -> "Widths":
        """Read `config.liar_layers` (also records written before head_dim was part of it)."""
        names = {f.name for f in fields(LayerWidths)}
        try:
            layers = tuple(LayerWidths(**{"head_dim": head_dim, **{k: v for k, v in d.items() if k in names}})
                           for d in data)
        except TypeError as e:
            raise UserError(f"per-layer widths (liar_layers) are malformed: {e}") from None
        return cls(layers)

    @classmethod
    def dense(cls, num_layers: int, heads: int, kv_heads: int, head_dim: int, ffn: int,
              o_bias: bool = False, down_bias: bool = False) -> "Widths":
        return cls(tuple(LayerWidths(heads, kv_heads, head_dim, ffn, o_bias, down_bias)
                         for _ in range(num_layers)))
