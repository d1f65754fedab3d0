"""The liar-bench results file: a versioned JSON document.

Dashboards, the CI gate (`liar-bench compare`) and the HTML report all read
this one format, so it is versioned: a reader refuses a file written with a
different `schema_version` instead of misreading it.

Schema version 1 (all times in seconds unless the key says `_ms`, all sizes
in bytes)::

    {
      "schema_version": 1,
      "kind": "liar-bench-results",
      "created": "2025-01-01T12:00:00+00:00",        # UTC, ISO 8601
      "environment": {...},                          # benchmarks.environment.capture()
      "settings": {
        "device": "cpu" | "cuda", "threads": int, "cpu_affinity": [int] | null,
        "prompt_tokens": [int], "gen_tokens": int, "repeats": int, "warmup": int,
        "perplexity": {"seqlen": int, "max_windows": int | null},
        "text": {"source": str, "sha256": str, "chars": int}
      },
      "artifacts": [
        {
          "name": str,                     # unique in the file; compare matches on it
          "path": str,
          "role": "baseline" | "candidate",
          "baseline": str | null,          # name of the baseline it is compared with
          "backend": "llama.cpp" | "onnxruntime" | "pytorch",
          "format": "gguf" | "onnx" | "checkpoint" | "hf",
          "weight_type": str,              # e.g. "F16", "Q8_0", "float32"
          "recipe": {...} | null,          # what liar-export recorded in the artifact
          "size": {
            "artifact_bytes": int, "parameters": int, "block_parameters": int,
            "bytes_per_token": int         # docs/DESIGN.md §8: blocks + LM head + one embedding row
          },
          "load_s": Summary,
          "prefill": {"<prompt tokens>": {"tokens_per_s": Summary}},
          "decode": {"latency_ms": Summary,  # per generated token, pooled over repeats
                     "tokens_per_s": Summary, "prompt_tokens": int, "gen_tokens": int},
          "memory": {"peak_rss_bytes": Summary,   # worker's VmHWM from the load on (reset after imports)
                     "model_rss_bytes": Summary,  # peak minus RSS after the runtime was imported
                     "peak_gpu_bytes": Summary | null},  # CUDA only (see benchmarks.gpu)
          "quality": {"perplexity": float, "nll": float, "tokens": int,
                      "windows": int, "seqlen": int} | null,
          "ratios": {                      # null for baselines; >1 means better than baseline
            "prefill_speedup": {"<prompt tokens>": float},
            "decode_speedup": float,       # baseline median latency / this median latency
            "ideal_decode_speedup": float, # baseline bytes_per_token / this bytes_per_token
            "decode_efficiency": float,    # decode_speedup / ideal_decode_speedup
            "memory_reduction": float,     # baseline peak RSS / this peak RSS
            "model_memory_reduction": float,  # same on model_rss_bytes
            "gpu_memory_reduction": float, # only when both have peak_gpu_bytes
            "size_reduction": float,       # baseline artifact bytes / this artifact bytes
            "perplexity_ratio": float | null,  # this / baseline (>1 means worse)
            "block_sparsity": float        # 1 - block parameters / baseline block parameters
          } | null
        }
      ]
    }

    Summary = {"median": float, "p10": float, "p90": float, "min": float,
               "max": float, "n": int}
"""

from __future__ import annotations

import json
from pathlib import Path

from toolchain.atomic import atomic_path
from toolchain.errors import UserError

SCHEMA_VERSION = 1
KIND = "liar-bench-results"
ROLES = ("baseline", "candidate")


def new_results(environment: dict, settings: dict, created: str) -> dict:
    """An empty results document of the current schema version."""
    return {"schema_version": SCHEMA_VERSION, "kind": KIND, "created": created,
            "environment": environment, "settings": settings, "artifacts": []}


def validate(doc: object, where: str = "results") -> dict:
    """Check the version and the keys every reader relies on; return the document."""
    if not isinstance(doc, dict) or doc.get("kind") != KIND:
        raise UserError(f"{where} is not a liar-bench results file (no \"kind\": \"{KIND}\")")
    version = doc.get("schema_version")
    if version != SCHEMA_VERSION:
        raise UserError(f"{where} has schema_version {version!r}, this liar-bench reads version "
                        f"{SCHEMA_VERSION}: rerun `liar-bench run` with this version")
    for key in ("created", "environment", "settings", "artifacts"):
        if key not in doc:
            raise UserError(f"{where} lacks the required key {key!r}")
    names = [a.get("name") for a in doc["artifacts"]]
    if len(set(names)) != len(names):
        raise UserError(f"{where} has duplicate artifact names")
    for a in doc["artifacts"]:
        for key in ("name", "role", "backend", "size", "decode", "memory"):
            if key not in a:
                raise UserError(f"{where}: artifact {a.get('name', '?')!r} lacks {key!r}")
        if a["role"] not in ROLES:
            raise UserError(f"{where}: artifact {a['name']!r} has unknown role {a['role']!r}")
    return doc


def load_results(path: str | Path) -> dict:
    """Read and validate a results file (UserError on anything unreadable)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise UserError(f"cannot read results file {path}: {e.strerror or e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON: {e}") from None
    return validate(doc, str(path))


def save_results(doc: dict, path: str | Path) -> None:
    """Validate, then write atomically (an interrupted run leaves no half file)."""
    validate(doc, str(path))
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n", encoding="utf-8")
