"""Qwen2 / Qwen2.5: Llama's layout with biases on q/k/v (not on o).

llama.cpp's own `qwen2` architecture loads no attn_output / ffn_down bias and only uniform
widths; written as `llama` / `deci` instead (q/k rows and biases permuted to llama.cpp's
NORM rope, exact), a Qwen2 keeps LIAR's biases and per-layer widths.
"""

from .base import Family, GGUFArch
from .llama import DECI, LLAMA, LLAMA_TENSORS

QWEN2 = GGUFArch("qwen2", LLAMA_TENSORS, biases=False, heads=False)

FAMILY = Family("qwen2", gguf=(LLAMA, DECI), gguf_native=QWEN2)
