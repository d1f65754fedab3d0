"""Check an exported decoder against the PyTorch model it came from.

Three views of the same held-out tokens: full-window logits, a prefill +
step-by-step decode through present -> past (what generation does), and
perplexity over a few windows. Float exports must reproduce PyTorch; quantised
ones are judged by how much perplexity and top-1 predictions move.
"""

from __future__ import annotations

import numpy as np
import torch

from toolchain.errors import VerificationError
from toolchain.perplexity import perplexity, token_windows, torch_logits_fn

from .runtime import OnnxDecoder

# Documented acceptance thresholds. fp32: logits within 1e-3 of the logit scale
# (tiny random models: 1e-3 absolute), perplexity within 0.5%. Quantised: the
# perplexity may grow by at most the given fraction and top-1 must mostly agree
# (measured on SmolLM2-135M, 4x256 legal-prose tokens: int8 -0.1% / 0.96+, int4
# +22% / 0.68 dense and 0.64 on a 50%-pruned model whose flatter predictions agree less).
FP32_DLOGIT_REL = 1e-3
TOLERANCES = {
    "none": {"max_ppl_increase": 0.005, "min_top1": 0.99},
    "int8": {"max_ppl_increase": 0.02, "min_top1": 0.90},  # top-1 as GGUF q8_0 (same 8-bit weights)
    "int4": {"max_ppl_increase": 0.35, "min_top1": 0.60},
}
DECODE_STEPS = 8


def compare_logits(model: torch.nn.Module, dec: OnnxDecoder, ids: list[int],
                   decode_steps: int = DECODE_STEPS) -> dict:
    """max |Δlogit| for a full window and for prefill + `decode_steps` cached steps."""
    ref = torch_logits_fn(model)(ids)
    full = dec.logits(ids)
    k = max(1, len(ids) - decode_steps)
    pre, cache = dec.prefill(ids[:k])
    steps = [pre]
    for t in ids[k:]:
        row, cache = dec.decode(t, cache)
        steps.append(row[None])
    cached = np.concatenate(steps)
    return {"max_abs_dlogit": float(np.abs(full - ref).max()),
            "max_abs_dlogit_kv": float(np.abs(cached - ref).max()),
            "top1_agreement": float((full.argmax(-1) == ref.argmax(-1)).mean()),
            "logit_scale": float(np.abs(ref).max()),
            "tokens": len(ids), "decode_steps": len(ids) - k}


def judge(stats: dict, quant: str) -> list[str]:
    """Reasons the export fails its tolerances (empty: it passes)."""
    tol, bad = TOLERANCES[quant], []
    increase = stats["perplexity_onnx"] / stats["perplexity_torch"] - 1
    if quant == "none":
        limit = FP32_DLOGIT_REL * max(1.0, stats["logit_scale"])
        for key in ("max_abs_dlogit", "max_abs_dlogit_kv"):
            if not stats[key] <= limit:
                bad.append(f"{key} {stats[key]:.2e} > {limit:.2e}")
        increase = abs(increase)
    if not increase <= tol["max_ppl_increase"]:
        bad.append(f"perplexity {stats['perplexity_onnx']:.4g} vs PyTorch {stats['perplexity_torch']:.4g} "
                   f"({increase:+.2%}, allowed {tol['max_ppl_increase']:.1%})")
    if not stats["top1_agreement"] >= tol["min_top1"]:
        bad.append(f"top-1 agreement {stats['top1_agreement']:.3f} < {tol['min_top1']}")
    return bad


def measure(model: torch.nn.Module, dec: OnnxDecoder, ids: list[int], quant: str,
            seqlen: int, windows: int) -> dict:
    """All verification numbers and whether they are within the tolerances for `quant`."""
    first = token_windows(ids, seqlen, 1)[0]
    stats = compare_logits(model, dec, first)
    pt = perplexity(torch_logits_fn(model), ids, seqlen, max_windows=windows)
    ox = perplexity(dec.logits_fn(), ids, seqlen, max_windows=windows)
    stats.update(perplexity_torch=pt["perplexity"], perplexity_onnx=ox["perplexity"],
                 perplexity_ratio=ox["perplexity"] / pt["perplexity"],
                 perplexity_tokens=pt["tokens"], seqlen=seqlen, tolerances=TOLERANCES[quant])
    stats["failures"] = judge(stats, quant)
    stats["passed"] = not stats["failures"]
    return stats


def verify(model: torch.nn.Module, dec: OnnxDecoder, ids: list[int], quant: str,
           seqlen: int, windows: int) -> dict:
    """`measure`, raising VerificationError (one line) when the export fails its tolerances."""
    stats = measure(model, dec, ids, quant, seqlen, windows)
    if not stats["passed"]:
        raise VerificationError(f"ONNX export ({quant}) disagrees with PyTorch: "
                                + "; ".join(stats["failures"]))
    return stats
