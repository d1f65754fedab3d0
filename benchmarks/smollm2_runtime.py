"""The README's runtime benchmark: SmolLM2-135M-Instruct dense vs 50% pruned.

    python -m benchmarks.smollm2_runtime -o out/smollm2-bench [--threads 2] [--repeats 5]

Exports with `liar-export` (global allocation, LIAR): dense and pruned GGUF in
f16 and q8_0 (llama.cpp) and ONNX fp32 (onnxruntime), then runs `liar-bench
run` with one baseline per format and writes OUT/results.json, OUT/results.md
(the table, plus the llama.cpp target: measured decode speed-up ≥ 0.85 × the
ideal bytes ratio, and peak memory reduced) and OUT/report/.
Existing export directories are reused, so a rerun only re-measures.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from toolchain.atomic import atomic_path
from toolchain.cliutil import run_main
from toolchain.errors import LiarError

TARGET_EFFICIENCY = 0.85
PRUNE = ["--sparsity", "0.5", "--allocation", "global"]
# (directory, model argument relative to OUT or None for the default model, liar-export options)
EXPORTS = [
    ("s50", None, [*PRUNE, "--to", "hf", "--to", "gguf", "--to", "onnx", "--quant", "q8_0"]),
    ("s50-f16", "s50/hf", ["--sparsity", "0", "--to", "gguf", "--quant", "f16"]),
    ("dense", None, ["--sparsity", "0", "--to", "gguf", "--to", "onnx", "--quant", "q8_0"]),
    ("dense-f16", None, ["--sparsity", "0", "--to", "gguf", "--quant", "f16"]),
]


def _tool(name: str) -> list[str]:
    """The console script installed next to this interpreter (or on PATH)."""
    local = Path(sys.executable).with_name(name)
    found = str(local) if local.exists() else shutil.which(name)
    if not found:
        raise LiarError(f"{name} is not installed: pip install liar-export")
    return [found]


def _log(msg: str) -> None:
    print(f"[smollm2] {msg}", file=sys.stderr, flush=True)


def export_all(out: Path) -> dict[str, dict]:
    """Run (or reuse) every export; return {dir: {format: artifact path}}."""
    artifacts = {}
    for name, model, opts in EXPORTS:
        summary_file = out / name / "summary.json"
        if not summary_file.is_file():
            cmd = _tool("liar-export") + ([str(out / model)] if model else []) + [*opts, "-o", str(out / name)]
            _log("$ " + " ".join(cmd))
            proc = subprocess.run(cmd)
            if proc.returncode:
                raise LiarError(f"liar-export failed (exit {proc.returncode}) for {name}")
        artifacts[name] = json.loads(summary_file.read_text())["artifacts"]
    return artifacts


def target_lines(doc: dict) -> list[str]:
    """The issue's acceptance target, stated per llama.cpp candidate with the measured numbers."""
    lines = []
    for a in doc["artifacts"]:
        r = a.get("ratios")
        if not r or a["backend"] != "llama.cpp":
            continue
        need = TARGET_EFFICIENCY * r["ideal_decode_speedup"]
        lines.append(f"- {a['name']} ({a['weight_type']}): decode speed-up {r['decode_speedup']:.2f}× vs target "
                     f"{TARGET_EFFICIENCY} × ideal {r['ideal_decode_speedup']:.2f}× = {need:.2f}× → "
                     f"{'met' if r['decode_speedup'] >= need else 'NOT met'}; peak RSS reduced "
                     f"{r['memory_reduction']:.2f}× → {'met' if r['memory_reduction'] > 1 else 'NOT met'}")
    return lines


def main_(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="smollm2_runtime", description=__doc__.split("\n\n")[0])
    p.add_argument("-o", "--output", default="out/smollm2-bench", help="working directory")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--gen-tokens", type=int, default=128)
    p.add_argument("--prompt-tokens", default="128,512")
    p.add_argument("--note", default="", help="a line added to results.md (e.g. machine load)")
    a = p.parse_args(argv)
    out = Path(a.output)
    arts = export_all(out)
    pairs = [("dense-f16", "s50-f16", "gguf"), ("dense", "s50", "gguf"), ("dense", "s50", "onnx")]
    baselines = [arts[d][fmt] for d, _, fmt in pairs]
    candidates = [arts[c][fmt] for _, c, fmt in pairs]
    results = out / "results.json"
    cmd = _tool("liar-bench") + ["run", *candidates, *(x for b in baselines for x in ("--baseline", b)),
                                 "--threads", str(a.threads), "--repeats", str(a.repeats),
                                 "--gen-tokens", str(a.gen_tokens), "--prompt-tokens", a.prompt_tokens,
                                 "-o", str(results)]
    _log("$ " + " ".join(cmd))
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL)
    if proc.returncode:
        raise LiarError(f"liar-bench run failed (exit {proc.returncode})")
    subprocess.run(_tool("liar-bench") + ["report", str(results), "-o", str(out / "report")], check=True)

    from .schema import load_results
    from .tables import markdown_table

    doc = load_results(results)
    md = ["## SmolLM2-135M-Instruct: dense vs 50% pruned (global allocation, LIAR)", "",
          markdown_table(doc), "", "Target (llama.cpp): decode speed-up ≥ 0.85 × ideal, peak memory reduced.",
          *target_lines(doc)]
    if a.note:
        md += ["", a.note]
    with atomic_path(out / "results.md") as tmp:
        tmp.write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("smollm2_runtime", main_, argv)


if __name__ == "__main__":
    sys.exit(main())
