"""The quantisation types `--quant` accepts, how each is produced, and how
closely each must reproduce the PyTorch model to pass verification.

Production: f32/f16/bf16/q8_0 are written directly by the `gguf` package
(every 2-D weight gets the type; 1-D norms, biases and rope factors stay F32).
q4_0 and the k-quants go through llama.cpp's own quantiser
(`llama_model_quantize`) on an F32 intermediate, because at four to six bits
llama.cpp's per-tensor mix (e.g. a higher-precision output matrix) is part of
what the type means to users.

Tolerances (checked on held-out text, F32 KV cache, same token ids):
- f32: max |Δlogit| ≤ 1e-3 — only float summation order differs.
- f16 / bf16 / q8_0: perplexity within 1% / 2% / 3% of PyTorch; top-1 ≥ 95/90/90%.
- q6_k / q5_k_m / q4_k_m / q4_0: perplexity within 6 / 12 / 25 / 40%; top-1 ≥ 85/80/70/60%.
Encoders (sentence embeddings): the mean cosine of llama.cpp's pooled embeddings to PyTorch's on
held-out passages must reach `min_embed_cosine` (measured on all-MiniLM-L6-v2: see
tests/test_encoders_minilm.py).
These are bounds meant to catch a broken export (wrong permutation, wrong
widths, lost bias — all of which move perplexity by far more), not to grade
quantisation quality; the measured numbers are always in the summary.
"""

from __future__ import annotations

from dataclasses import dataclass

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T, LlamaFileType as F

from toolchain.errors import UserError
from toolchain.recipe import DEFAULT_GGUF_QUANT, GGUF_QUANTS


@dataclass(frozen=True)
class QuantSpec:
    """One `--quant` choice."""

    name: str
    ggml_type: T  # what every 2-D weight is asked to become
    file_type: F  # general.file_type, and llama_model_quantize's ftype
    via_llama: bool  # quantised by llama.cpp's quantiser rather than written directly
    max_ppl_rel: float  # |ppl_gguf / ppl_torch - 1| allowed
    min_top1: float  # fraction of positions whose arg-max token agrees
    max_dlogit: float | None = None  # × max(1, largest |logit|); only where the weights are exact
    min_embed_cosine: float = 0.0  # encoders: mean cosine of llama.cpp's sentence embeddings to PyTorch's

    @property
    def block(self) -> int:
        """Row-length granularity of the requested type (1 for float types)."""
        return GGML_QUANT_SIZES[self.ggml_type][0]


_SPECS = (
    QuantSpec("f32", T.F32, F.ALL_F32, False, 1e-3, 0.99, max_dlogit=1e-3, min_embed_cosine=0.9999),
    QuantSpec("f16", T.F16, F.MOSTLY_F16, False, 0.01, 0.95, min_embed_cosine=0.999),
    QuantSpec("bf16", T.BF16, F.MOSTLY_BF16, False, 0.02, 0.90, min_embed_cosine=0.99),
    QuantSpec("q8_0", T.Q8_0, F.MOSTLY_Q8_0, False, 0.03, 0.90, min_embed_cosine=0.99),
    QuantSpec("q4_0", T.Q4_0, F.MOSTLY_Q4_0, True, 0.40, 0.60, min_embed_cosine=0.90),
    QuantSpec("q4_k_m", T.Q4_K, F.MOSTLY_Q4_K_M, True, 0.25, 0.70, min_embed_cosine=0.93),
    QuantSpec("q5_k_m", T.Q5_K, F.MOSTLY_Q5_K_M, True, 0.12, 0.80, min_embed_cosine=0.96),
    QuantSpec("q6_k", T.Q6_K, F.MOSTLY_Q6_K, True, 0.06, 0.85, min_embed_cosine=0.98),
)
QUANT_SPECS: dict[str, QuantSpec] = {s.name: s for s in _SPECS}
QUANTS: tuple[str, ...] = GGUF_QUANTS  # the names are the recipe's (toolchain.recipe); their meaning is here
assert set(QUANT_SPECS) == set(QUANTS), "every --quant name needs a QuantSpec"

DEFAULT_QUANT = DEFAULT_GGUF_QUANT
"""What a user shipping to a CPU device picks: llama.cpp's recommended size /
quality trade-off (~4.9 bits per weight). CPU decode is memory-bandwidth bound,
so a file ~3x smaller than f16 decodes correspondingly faster, and Q4_K_M keeps
the most sensitive tensors (parts of attn_v / ffn_down, the output matrix) at
Q6_K. Rows that are not a multiple of 256 fall back to Q5_0/Q8_0 (reported);
a model with hidden size 576 such as SmolLM2-135M is mostly Q5_0 for that
reason. Use f16 or q8_0 when quality matters more than size."""


def quant_spec(name: str) -> QuantSpec:
    """The spec for `name`, or a UserError listing the valid choices."""
    spec = QUANT_SPECS.get(name.lower())
    if spec is None:
        raise UserError(f"unknown GGUF quantisation {name!r}: choose one of {', '.join(QUANTS)}")
    return spec


# BERT's type and position embeddings: llama.cpp adds their rows to the token embeddings
# (ggml_add has no quantised operand) — convert_hf_to_gguf and llama.cpp's quantiser keep them F32
FLOAT_ONLY = ("token_types.weight", "position_embd.weight")


def direct_type(spec: QuantSpec, shape: tuple[int, ...], name: str = "") -> T:
    """The type the direct writer gives a tensor `name` of numpy `shape` (rows last).

    1-D tensors stay F32 (llama.cpp requires it for norms and biases), as do FLOAT_ONLY
    tensors; a 2-D weight whose row length is not a multiple of the type's block falls back to
    F16, as llama.cpp's own quantiser does.
    """
    if len(shape) < 2 or name in FLOAT_ONLY:
        return T.F32
    if shape[-1] % spec.block:
        return T.F16
    return spec.ggml_type
