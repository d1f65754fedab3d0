"""Memory and time of liar-export on large-model shapes (issue 13).

Writes random-weight models with the layer shapes of real large models (bf16 safetensors
shards, the SmolLM2 tokenizer) at a chosen depth, runs `liar-export` on each in its own
process, and records the peak resident memory of that process (getrusage of a wrapper
whose only child it is, what `/usr/bin/time -v` reports), wall time and the seconds of
each pass per layer. Random weights say nothing about quality; the point is memory
against depth and width, and time per layer.

    python -m benchmarks.scale -o benchmarks/results/scale/cpu --shapes llama-3.1-8b --layers 4,8 \\
        --work /tmp/scale -- --sparsity 0.5 --to hf --to gguf --quant q8_0 --calib-samples 8

Arguments after `--` go to liar-export unchanged (its output directory is added).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from toolchain.checkpoint import CheckpointWriter

from .tablekit import write_table

# Layer shapes of real models (their config.json), vocabulary from the SmolLM2 tokenizer.
SHAPES: dict[str, dict] = {
    "llama-3.1-8b": dict(model_type="llama", max_position_embeddings=131072, hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-5, tie_word_embeddings=False,
                         rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                          "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                          "original_max_position_embeddings": 8192}),
    "llama-3.2-1b": dict(model_type="llama", max_position_embeddings=131072, hidden_size=2048, intermediate_size=8192, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=64, rms_norm_eps=1e-5, tie_word_embeddings=True,
                         rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
                                          "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                          "original_max_position_embeddings": 8192}),
    "qwen2.5-7b": dict(model_type="qwen2", max_position_embeddings=32768, hidden_size=3584, intermediate_size=18944, num_attention_heads=28,
                       num_key_value_heads=4, rms_norm_eps=1e-6, tie_word_embeddings=False,
                       rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
}
# Wrapper process: its only child is liar-export, so RUSAGE_CHILDREN's ru_maxrss is that run's peak.
MEASURE = ("import json, resource, subprocess, sys, time; t = time.perf_counter(); "
           "rc = subprocess.run(sys.argv[1:]).returncode; "
           "print(json.dumps({'rc': rc, 'wall_s': time.perf_counter() - t, "
           "'peak_rss_bytes': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}))")


def write_random_model(shape: str, layers: int, out: Path, tokenizer, seed: int = 0) -> Path:
    """A random-weight model of `shape` with `layers` layers, written tensor by tensor in bf16."""
    from transformers import AutoConfig

    from toolchain.families import family_for
    from toolchain.models import build_skeleton

    spec = dict(SHAPES[shape])
    config = AutoConfig.for_model(spec.pop("model_type"), num_hidden_layers=layers, vocab_size=len(tokenizer),
                                  bos_token_id=tokenizer.bos_token_id,
                                  eos_token_id=tokenizer.eos_token_id, dtype="bfloat16", **spec)
    skeleton = build_skeleton(config, family_for(config))
    gen = torch.Generator().manual_seed(seed)
    writer = CheckpointWriter(out)
    for name, p in skeleton.state_dict().items():
        if name.endswith("rotary_emb.inv_freq") or (config.tie_word_embeddings and name == "lm_head.weight"):
            continue
        if p.dim() == 1:  # norms 1, biases small
            t = torch.ones(p.shape) if "norm" in name else torch.randn(p.shape, generator=gen) * 0.02
        else:  # peaked logits that 8-bit weights do not reorder: the embedding dominates the residual stream
            std = 1.0 if "embed_tokens" in name else 0.05 if name.startswith("lm_head") else 0.005
            t = torch.randn(p.shape, generator=gen) * std
        writer.add(name, t.to(torch.bfloat16))
    writer.close()
    config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def measure(model_dir: Path, out: Path, liar_args: list[str]) -> dict:
    """One liar-export run in its own process: exit code, wall time, peak RSS, its --json summary."""
    cmd = [sys.executable, "-c", MEASURE, str(Path(sys.executable).parent / "liar-export"), str(model_dir),
           *liar_args, "-o", str(out), "--force", "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines()
    if not lines:
        raise RuntimeError(f"the measuring wrapper failed: {proc.stderr.strip()[-500:]}")
    result = json.loads(lines[-1])
    summary = json.loads(lines[-2]) if result["rc"] == 0 and len(lines) > 1 else None
    result["error"] = None if result["rc"] == 0 else proc.stderr.strip().splitlines()[-1]
    return {**result, "summary": summary}


def row_of(shape: str, layers: int, model_dir: Path, run: dict) -> dict:
    s = run["summary"] or {}
    sec = s.get("seconds", {})
    gguf = (s.get("exports") or {}).get("gguf") or {}
    return {"shape": shape, "layers": layers, "source_bytes": sum(f.stat().st_size for f in model_dir.glob("*.safetensors")),
            "rc": run["rc"], "error": run["error"], "wall_s": run["wall_s"], "peak_rss_bytes": run["peak_rss_bytes"],
            "params": s.get("params"), "sparsity": s.get("sparsity"), "seconds": sec,
            "plan_pass_s_per_layer": sec.get("plan_pass", 0) / layers,
            "compress_pass_s_per_layer": sec.get("compress_pass", 0) / layers,
            "gguf": {k: gguf.get(k) for k in ("architecture", "bytes", "passed", "ppl_ratio", "top1_agreement")},
            "resources_estimate": s.get("resources")}


def markdown(result: dict) -> str:
    lines = [f"liar-export {' '.join(result['liar_args'])}; {result['machine']}.", "",
             "| shape | layers | source GB | params dense → pruned (B) | peak RSS GB | wall s | plan pass s/layer | "
             "compress pass s/layer | export s | GGUF | verified |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if r["rc"]:
            lines.append(f"| {r['shape']} | {r['layers']} | {r['source_bytes'] / 1e9:.1f} | – | "
                         f"{r['peak_rss_bytes'] / 2**30:.2f} | {r['wall_s']:.0f} | – | – | – | exit {r['rc']} | "
                         f"{r['error']} |")
            continue
        p = r["params"]
        lines.append(f"| {r['shape']} | {r['layers']} | {r['source_bytes'] / 1e9:.1f} | "
                     f"{p['dense']['total'] / 1e9:.2f} → {p['pruned']['total'] / 1e9:.2f} | "
                     f"{r['peak_rss_bytes'] / 2**30:.2f} | {r['wall_s']:.0f} | {r['plan_pass_s_per_layer']:.1f} | "
                     f"{r['compress_pass_s_per_layer']:.1f} | {r['seconds'].get('export', 0):.0f} | "
                     f"{r['gguf'].get('architecture') or '–'} {(r['gguf'].get('bytes') or 0) / 1e9:.2f} GB | "
                     f"{'yes' if r['gguf'].get('passed') else '–'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    liar_args = argv[argv.index("--") + 1:] if "--" in argv else ["--sparsity", "0.5", "--to", "hf", "--to", "gguf",
                                                                   "--quant", "q8_0", "--calib-samples", "8"]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--output", required=True, help="output prefix (.json and .md are written)")
    p.add_argument("--shapes", default="llama-3.1-8b", help=f"comma-separated, of {', '.join(SHAPES)}")
    p.add_argument("--layers", default="4,8", help="depths to run, comma-separated")
    p.add_argument("--work", type=Path, required=True, help="scratch directory for models and outputs")
    p.add_argument("--keep", action="store_true", help="keep the written models and outputs")
    args = p.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    from toolchain.models import open_model

    tokenizer = open_model(None).tokenizer
    rows = []
    result = {"liar_args": liar_args, "rows": rows,
              "machine": f"{os.cpu_count()} CPU cores, torch {torch.__version__}"}
    for shape in args.shapes.split(","):
        for layers in (int(n) for n in args.layers.split(",")):
            model_dir, out = args.work / f"{shape}-{layers}", args.work / f"{shape}-{layers}-out"
            if not (model_dir / "config.json").is_file():
                t = time.perf_counter()
                write_random_model(shape, layers, model_dir, tokenizer)
                print(f"wrote {model_dir} in {time.perf_counter() - t:.0f}s", flush=True)
            run = measure(model_dir, out, liar_args)
            rows.append(row_of(shape, layers, model_dir, run))
            print(json.dumps(rows[-1], default=str), flush=True)
            write_table(Path(args.output), result, markdown, echo=False)
            if not args.keep:
                shutil.rmtree(out, ignore_errors=True)
                shutil.rmtree(model_dir, ignore_errors=True)
    write_table(Path(args.output), result, markdown)


if __name__ == "__main__":
    main()
