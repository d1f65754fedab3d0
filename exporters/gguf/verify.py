"""Check a written GGUF against the PyTorch model it came from.

Both backends see the *same token ids* (the HF tokenizer's), window by window,
with llama.cpp's KV cache in F32, so any difference comes from the file
(weights, widths, permutation, biases) and not from tokenisation or cache
precision. Tokenisation is checked separately: llama.cpp tokenising the same
text with the file's own tokenizer must give the same ids.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from toolchain.models import Model
from toolchain.perplexity import encode, token_windows, window_nll
from toolchain.reference import ReferenceLogits

from ..llamacpp import llama_logits_fn, llama_tokenize, open_llama
from .quants import QuantSpec


def compare_logits(model: Model, path: Path, text: str, seqlen: int, max_windows: int,
                   n_threads: int | None = None) -> dict:
    """max |Δlogit|, top-1 agreement and both perplexities on `text`."""
    ids = encode(model.tokenizer, text)
    windows = token_windows(ids, seqlen, max_windows)
    torch_fn = ReferenceLogits(model, windows)
    llm = open_llama(path, n_ctx=seqlen, n_threads=n_threads)
    try:
        llama_fn = llama_logits_fn(llm)
        max_d, scale, agree, positions, nll_t, nll_l, scored = 0.0, 0.0, 0, 0, 0.0, 0.0, 0
        for w in windows:
            a, b = torch_fn(w), llama_fn(w)
            max_d = max(max_d, float(np.abs(a - b).max()))
            scale = max(scale, float(np.abs(a).max()))
            agree += int((a.argmax(-1) == b.argmax(-1)).sum())
            positions += len(w)
            nll_t += window_nll(a, w)
            nll_l += window_nll(b, w)
            scored += len(w) - 1
        llama_ids = llama_tokenize(llm, text)
    finally:
        llm.close()
    ppl_t, ppl_l = float(np.exp(nll_t / scored)), float(np.exp(nll_l / scored))
    return {"max_abs_dlogit": max_d, "logit_scale": scale, "top1_agreement": agree / positions,
            "perplexity_torch": ppl_t, "perplexity_llamacpp": ppl_l,
            "ppl_ratio": ppl_l / ppl_t, "tokenizer_match": llama_ids == ids,
            "tokens_hf": len(ids), "tokens_llamacpp": len(llama_ids),
            "verify_tokens": scored, "verify_windows": len(windows), "verify_seqlen": seqlen}


def judge(result: dict, spec: QuantSpec, tokenizer_built: bool) -> list[str]:
    """Reasons the result fails the tolerances of `spec` (empty when it passes).

    A tokenisation difference fails only when this exporter built the
    tokenizer metadata; keys copied from the source GGUF are what llama.cpp
    already ran for the original model, and a difference there lies in the
    HF tokenizer transformers derived from that GGUF (reported, not failed).
    """
    reasons = []
    if not np.isfinite([result["max_abs_dlogit"], result["ppl_ratio"]]).all():
        reasons.append("llama.cpp produced non-finite logits")
        return reasons
    if spec.max_dlogit is not None:  # float32 rounding grows with the logits: relative to their scale
        limit = spec.max_dlogit * max(1.0, result["logit_scale"])
        if result["max_abs_dlogit"] > limit:
            reasons.append(f"max |Δlogit| {result['max_abs_dlogit']:.3g} > {limit:.3g}")
    if abs(result["ppl_ratio"] - 1) > spec.max_ppl_rel:
        reasons.append(f"perplexity ratio {result['ppl_ratio']:.4f} outside 1±{spec.max_ppl_rel:g}")
    if result["top1_agreement"] < spec.min_top1:
        reasons.append(f"top-1 agreement {result['top1_agreement']:.3f} < {spec.min_top1:g}")
    if tokenizer_built and not result["tokenizer_match"]:
        reasons.append("llama.cpp tokenises the verification text differently from the HF tokenizer")
    return reasons


def verify_gguf(model: Model, path: Path, spec: QuantSpec, text: str, seqlen: int, max_windows: int,
                tokenizer_built: bool, n_threads: int | None = None) -> dict:
    """compare_logits + the verdict: adds `passed`, `failures` and the tolerances used."""
    result = compare_logits(model, path, text, seqlen, max_windows, n_threads)
    failures = judge(result, spec, tokenizer_built)
    if not result["tokenizer_match"] and not tokenizer_built:
        print(f"note: llama.cpp tokenises the verification text into {result['tokens_llamacpp']} "
              f"tokens, the HF tokenizer into {result['tokens_hf']}: the tokenizer transformers "
              "derived from the source GGUF differs from the GGUF's own (logits are compared on "
              "the same ids, so this does not affect verification)", file=sys.stderr)
    return {**result, "passed": not failures, "failures": failures,
            "tolerance": {"max_ppl_rel": spec.max_ppl_rel, "min_top1": spec.min_top1,
                          "max_abs_dlogit_rel": spec.max_dlogit}}
