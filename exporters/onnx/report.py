"""Regenerate the README's ONNX table: SmolLM2 dense vs pruned, fp32 / int8 / int4.

    python -m exporters.onnx.report OUT [--pruned CHECKPOINT] [--models dense pruned]
                                        [--quants none int8 int4] [--reuse] [--seqlen 256] [--windows 4]

Every cell is measured: each model is exported, reloaded in onnxruntime (CPU)
and compared with PyTorch on the held-out legal text. Without --pruned the
pruned model is a stand-in with random per-layer widths (about half the FFN
channels and query heads, no reconstruction): its perplexity says nothing
about pruning quality, only about export fidelity.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

from toolchain.atomic import atomic_path
from toolchain.compress import apply_plan, dense_plan
from toolchain.models import Model, open_model
from toolchain.perplexity import encode
from toolchain.plan import LayerPlan, PruningPlan
from toolchain.texts import heldout_text

from .export import export_onnx, float32_module
from .quantize import ONNX_QUANTS
from .runtime import OnnxDecoder
from .verify import TOLERANCES, judge, measure


def random_widths_plan(model: Model, seed: int = 0, keep: float = 0.5, round_to: int = 32) -> PruningPlan:
    """Per-layer widths around `keep` of the dense ones: FFN channels in multiples of
    `round_to`, query heads per KV group varied, and whole KV groups dropped in some layers."""
    d = model.dims
    plan = dense_plan(model)
    rng, g, kv_all = random.Random(seed), plan.group_size, range(plan.num_kv_heads)
    for i in range(len(plan.layers)):
        target = keep * d["intermediate_size"] * rng.uniform(0.75, 1.25)
        n_ch = max(round_to, int(target) // round_to * round_to)
        channels = sorted(rng.sample(range(d["intermediate_size"]), n_ch))
        if i % 3 == 2 and plan.num_kv_heads > 1:  # whole groups: this layer has fewer KV heads
            kv = sorted(rng.sample(kv_all, max(1, round(keep * plan.num_kv_heads))))
            heads = [k * g + j for k in kv for j in range(g)]
        else:
            kv, per = list(kv_all), max(1, min(g, round(keep * g * rng.uniform(0.6, 1.4))))
            heads = sorted(k * g + j for k in kv for j in rng.sample(range(g), per))
        plan.layers[i] = LayerPlan(heads, kv, channels)
    return plan


def random_widths_model(dense: Model, seed: int = 0) -> Model:
    """`dense` cut to `random_widths_plan` (the stand-in pruned model)."""
    model = apply_plan(dense, random_widths_plan(dense, seed))
    model.source = {"kind": "stand-in", "base": dense.source, "plan": "random per-layer widths"}
    return model


def measure_exports(loaded: Model, label: str, out: Path, quants: tuple[str, ...],
                    seqlen: int, windows: int, reuse: bool, save) -> list[dict]:
    """Export `loaded` once per quantisation (tracing once: the quantised graphs are made
    from the fp32 one) and measure each against PyTorch; `save(rows)` after every row."""
    ids = encode(loaded.tokenizer, heldout_text())
    rows, float_dir = [], out / f"{label}-none"
    # an fp32 graph left in OUT by an earlier run may be of another model: quantise it only
    # when this call exported it, or when --reuse says the exports in OUT are this model's
    float_ok = reuse
    for quant in quants:
        target = out / f"{label}-{quant}"
        if not (reuse and (target / "io.json").is_file()):
            export_onnx(loaded, target, quant=quant, verify=False,
                        float_onnx=float_dir if float_ok and (float_dir / "io.json").is_file() else None)
        float_ok = float_ok or quant == "none"
        size = sum(f.stat().st_size for f in target.glob("model.onnx*"))
        stats = measure(float32_module(loaded), OnnxDecoder(target), ids, quant, seqlen, windows)
        rows.append({"model": label, "quant": quant, "model_bytes": size, **stats})
        print(json.dumps(rows[-1], default=str), file=sys.stderr, flush=True)
        save(rows)
    return rows


def rejudged(row: dict) -> dict:
    """A row kept from an earlier results.json, judged under today's tolerances (JSON and table agree)."""
    failures = judge(row, row["quant"])
    return {**row, "tolerances": TOLERANCES[row["quant"]], "failures": failures, "passed": not failures}


def markdown(rows: list[dict]) -> str:
    head = ("| model | ONNX weights | model file | PyTorch ppl | ONNX ppl | ratio | max abs Δlogit "
            "(full / prefill+decode) | top-1 agree | passed |\n|---|---|---:|---:|---:|---:|---|---:|---|")
    lines = [head]
    for r in rows:
        lines.append(f"| {r['model']} | {'fp32' if r['quant'] == 'none' else r['quant']} | "
                     f"{r['model_bytes'] / 1e6:.1f} MB | {r['perplexity_torch']:.3f} | "
                     f"{r['perplexity_onnx']:.3f} | {r['perplexity_ratio']:.4f} | "
                     f"{r['max_abs_dlogit']:.2e} / {r['max_abs_dlogit_kv']:.2e} | "
                     f"{r['top1_agreement']:.3f} | {'yes' if r['passed'] else 'no'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, help="directory for the exports and results.json")
    p.add_argument("--dense", default=None, help="dense model (default SmolLM2-135M-Instruct)")
    p.add_argument("--pruned", default=None, help="pruned checkpoint (liar-export --to hf); "
                   "default: random per-layer widths stand-in")
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--windows", type=int, default=4)
    p.add_argument("--reuse", action="store_true",
                   help="measure exports already in OUT instead of exporting them again")
    p.add_argument("--models", nargs="+", choices=("dense", "pruned"), default=["dense", "pruned"],
                   help="which rows to (re)measure; other rows in OUT/results.json are kept")
    p.add_argument("--quants", nargs="+", choices=ONNX_QUANTS, default=list(ONNX_QUANTS))
    args = p.parse_args(argv)
    old = args.out / "results.json"
    kept = [rejudged(r) for r in (json.loads(old.read_text()) if old.is_file() else [])
            if r["model"] not in args.models or r["quant"] not in args.quants]
    done: list[dict] = []

    def save(rows: list[dict]) -> None:
        merged = sorted(kept + done + rows, key=lambda r: (r["model"], ONNX_QUANTS.index(r["quant"])))
        for name, text in (("results.json", json.dumps(merged, indent=1, default=str)),
                           ("results.md", markdown(merged))):
            with atomic_path(args.out / name) as tmp:
                tmp.write_text(text + "\n")

    dense = open_model(args.dense) if "dense" in args.models or not args.pruned else None
    for label in args.models:
        loaded = dense if label == "dense" else (
            open_model(args.pruned) if args.pruned else random_widths_model(dense))
        done += measure_exports(loaded, label, args.out, tuple(args.quants), args.seqlen, args.windows,
                                args.reuse, save)
    table = (args.out / "results.md").read_text()
    print(table, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
