"""Synthetic liar-bench results for the fast tests (no model is run)."""

from __future__ import annotations

import copy

from benchmarks.schema import new_results


def summary(median: float, spread: float = 0.05) -> dict:
    return {"median": median, "p10": median * (1 - spread), "p90": median * (1 + spread),
            "min": median * (1 - 2 * spread), "max": median * (1 + 2 * spread), "n": 5}


def artifact(name: str, role: str, latency_ms: float, rss_mib: float, ppl: float, block_params: int,
             baseline: str | None = None) -> dict:
    return {
        "name": name, "path": f"/x/{name}.gguf", "role": role, "baseline": baseline,
        "backend": "llama.cpp", "format": "gguf", "weight_type": "F16", "recipe": None,
        "size": {"artifact_bytes": block_params * 2 + 1000, "parameters": block_params + 500,
                 "block_parameters": block_params, "bytes_per_token": block_params * 2 + 100},
        "load_s": summary(0.2),
        "prefill": {"128": {"tokens_per_s": summary(1000 / latency_ms * 8)}},
        "decode": {"latency_ms": summary(latency_ms), "tokens_per_s": summary(1000 / latency_ms),
                   "prompt_tokens": 128, "gen_tokens": 64},
        "memory": {"peak_rss_bytes": summary(rss_mib * 2**20, 0), "model_rss_bytes": summary(rss_mib * 2**19, 0),
                   "peak_gpu_bytes": None},
        "quality": {"perplexity": ppl, "nll": 3.0, "tokens": 1000, "windows": 4, "seqlen": 256},
        "ratios": None,
    }


def results(latency_scale: float = 1.0, rss_scale: float = 1.0, ppl_scale: float = 1.0,
            created: str = "2025-01-01T00:00:00+00:00") -> dict:
    """A dense baseline and a 50%-pruned candidate with consistent same-run ratios."""
    env = {"cpu": {"model": "Test CPU", "usable_cores": 2}, "gpus": [], "packages": {},
           "liar_export": {"commit": "abc1234", "version": "0.1.0"}}
    settings = {"device": "cpu", "threads": 2, "cpu_affinity": [0, 1], "prompt_tokens": [128],
                "gen_tokens": 64, "repeats": 5, "warmup": 1,
                "perplexity": {"seqlen": 256, "max_windows": 4},
                "text": {"source": "test", "sha256": "0" * 64, "chars": 10}}
    doc = new_results(env, settings, created)
    dense = artifact("dense-f16", "baseline", 20.0, 400, 20.0, 1_000_000)
    pruned = artifact("s50-f16", "candidate", 11.0 * latency_scale, 250 * rss_scale, 30.0 * ppl_scale,
                      500_000, baseline="dense-f16")
    pruned["ratios"] = {"prefill_speedup": {"128": 20.0 / pruned["decode"]["latency_ms"]["median"]},
                        "decode_speedup": 20.0 / pruned["decode"]["latency_ms"]["median"],
                        "ideal_decode_speedup": 2.0, "decode_efficiency": 0.9,
                        "memory_reduction": 400 / (250 * rss_scale), "model_memory_reduction": 1.6,
                        "size_reduction": 2.0, "perplexity_ratio": 1.5 * ppl_scale, "block_sparsity": 0.5}
    doc["artifacts"] = [dense, pruned]
    return copy.deepcopy(doc)
