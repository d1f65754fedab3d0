"""The pruning plan: which heads, KV heads and FFN channels each layer keeps.

Allocation produces it; surgery and reconstruction consume its indices; it is
saved next to every artifact so a result can be replayed on the dense model.
Indices always refer to the *dense* model the plan was made from. What the
exporters and checkpoints read is the widths record derived from it
(`PruningPlan.widths`, toolchain/widths.py).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import UserError
from .widths import LayerWidths, Widths

PLAN_VERSION = 1


@dataclass
class LayerPlan:
    """What one decoder layer keeps (sorted indices into the dense layer)."""

    heads: list[int]
    kv_heads: list[int]
    channels: list[int]

    @property
    def num_heads(self) -> int:
        return len(self.heads)

    @property
    def num_kv_heads(self) -> int:
        return len(self.kv_heads)

    @property
    def intermediate_size(self) -> int:
        return len(self.channels)


@dataclass
class PruningPlan:
    """Per-layer kept heads / KV heads / FFN channels of a Llama-family model."""

    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    intermediate_size: int
    layers: list[LayerPlan] = field(default_factory=list)
    version: int = PLAN_VERSION
    ffn_matrices: int = 3  # weight matrices per FFN channel: gate, up, down (2 without a gate)
    fixed_params: int | None = None  # per-layer weights pruning never touches (norms); None: 2 × hidden

    @classmethod
    def dense(cls, num_layers: int, num_heads: int, num_kv_heads: int, head_dim: int,
              hidden_size: int, intermediate_size: int, ffn_matrices: int = 3,
              fixed_params: int | None = None) -> "PruningPlan":
        """The identity plan: everything kept."""
        layer = lambda: LayerPlan(list(range(num_heads)), list(range(num_kv_heads)),  # noqa: E731
                                  list(range(intermediate_size)))
        return cls(num_heads, num_kv_heads, head_dim, hidden_size, intermediate_size,
                   [layer() for _ in range(num_layers)], ffn_matrices=ffn_matrices, fixed_params=fixed_params)

    def with_layers(self, layers: list[LayerPlan]) -> "PruningPlan":
        """The same dense shapes with other kept indices (validated)."""
        plan = PruningPlan(self.num_heads, self.num_kv_heads, self.head_dim, self.hidden_size,
                           self.intermediate_size, layers, ffn_matrices=self.ffn_matrices,
                           fixed_params=self.fixed_params)
        plan.validate()
        return plan

    @property
    def group_size(self) -> int:
        """Query heads per KV head in the dense model."""
        return self.num_heads // self.num_kv_heads

    def widths(self, o_bias: list[bool] | None = None, down_bias: list[bool] | None = None) -> Widths:
        """The widths record of this plan; biases per layer as reconstruction leaves them."""
        n = len(self.layers)
        o_bias, down_bias = o_bias or [False] * n, down_bias or [False] * n
        return Widths(tuple(LayerWidths(lp.num_heads, lp.num_kv_heads, self.head_dim, lp.intermediate_size,
                                        bool(ob), bool(db))
                            for lp, ob, db in zip(self.layers, o_bias, down_bias, strict=True)))

    def shapes(self) -> tuple:
        """The dense shapes this plan was made for (a replayed plan must match the model)."""
        return (self.num_heads, self.num_kv_heads, self.head_dim, self.hidden_size, self.intermediate_size,
                len(self.layers))

    def layer_params(self, lp: LayerPlan) -> int:
        """Weight parameters of one pruned layer (norms included, biases not)."""
        d, h = self.head_dim, self.hidden_size
        attn = (2 * lp.num_heads + 2 * lp.num_kv_heads) * d * h
        ffn = self.ffn_matrices * lp.intermediate_size * h
        return attn + ffn + (2 * h if self.fixed_params is None else self.fixed_params)

    def block_params(self) -> int:
        """Transformer-block parameters kept by this plan (embeddings/LM head excluded)."""
        return sum(self.layer_params(lp) for lp in self.layers)

    def validate(self) -> None:
        """Reject plans that a runtime cannot represent (docs/DESIGN.md §5).

        Every layer keeps at least one query head and one FFN channel, each kept
        KV head serves the same number of kept query heads, and each kept query
        head's KV head is kept (llama.cpp maps head h to KV head h // n_rep).
        """
        g = self.group_size
        for i, lp in enumerate(self.layers):
            where = f"pruning plan layer {i}"
            for name, idx, limit in (("heads", lp.heads, self.num_heads),
                                     ("kv_heads", lp.kv_heads, self.num_kv_heads),
                                     ("channels", lp.channels, self.intermediate_size)):
                if list(idx) != sorted(set(idx)) or any(not 0 <= j < limit for j in idx):
                    raise UserError(f"{where}: {name} must be sorted unique indices in [0, {limit})")
            if not lp.heads or not lp.channels:
                raise UserError(f"{where}: keeps no attention heads or no FFN channels; "
                                "every layer must keep at least one of each (lower --sparsity)")
            groups = {kv: sum(1 for h in lp.heads if h // g == kv) for kv in lp.kv_heads}
            if {h // g for h in lp.heads} - set(lp.kv_heads):
                raise UserError(f"{where}: a kept query head belongs to a removed KV head")
            if len(set(groups.values())) != 1:
                raise UserError(f"{where}: kept KV heads serve unequal numbers of query heads "
                                f"{sorted(groups.values())}; GQA needs n_head % n_head_kv == 0")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "PruningPlan":
        if data.get("version") != PLAN_VERSION:
            raise UserError(f"pruning plan version {data.get('version')!r} is not supported "
                            f"(expected {PLAN_VERSION})")
        try:
            layers = [LayerPlan(**lp) for lp in data["layers"]]
            fields = {k: int(data[k]) for k in ("num_heads", "num_kv_heads", "head_dim",
                                                "hidden_size", "intermediate_size")}
            fixed = data.get("fixed_params")
            extra = {"ffn_matrices": int(data.get("ffn_matrices", 3)),
                     "fixed_params": None if fixed is None else int(fixed)}
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"pruning plan is malformed: {e}") from None
        plan = cls(layers=layers, **fields, **extra)
        plan.validate()
        return plan

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "PruningPlan":
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"cannot read pruning plan {path}: {e}") from None
        return cls.from_json(data)
