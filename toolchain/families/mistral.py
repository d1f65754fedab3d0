"""Mistral: Llama's layout; with `sliding_window` set every layer attends within the window.

convert_hf_to_gguf writes Mistral as llama.cpp's `llama`, which has no sliding window: the
GGUF agrees with PyTorch on windows up to `sliding_window` tokens (4096 for Mistral 7B v0.1).
"""

from .base import Family
from .llama import DECI, LLAMA


class Mistral(Family):
    def layer_type(self, config, i: int) -> str:
        return "sliding_attention" if getattr(config, "sliding_window", None) else "full_attention"


FAMILY = Mistral("mistral", gguf=(LLAMA, DECI), gguf_native=LLAMA)
