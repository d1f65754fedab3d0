"""GGUF sizes and verification table for the README.

The dense SmolLM2-135M-Instruct and a pruned checkpoint (`liar-export --to hf`)
exported to each GGUF type with `export_gguf` and verified against PyTorch in
llama.cpp (F32 KV cache) on the bundled held-out legal prose: file size,
architecture, both perplexities, top-1 agreement, max |Δlogit| and the number
of tensors that fell back to another type (rows not a multiple of the block).

    liar-export --sparsity 0.5 --allocation global --to hf -o out/s50
    python -m benchmarks.gguf_table -o benchmarks/results/gguf_smollm2 --pruned out/s50/hf
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from exporters.gguf import export_gguf
from toolchain.models import open_model
from toolchain.texts import heldout_text

from .tablekit import markdown_table, write_table


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--output", required=True, help="output prefix (.json and .md are written)")
    p.add_argument("--pruned", required=True, help="pruned checkpoint directory (liar-export --to hf)")
    p.add_argument("--quants", default="f32,f16,q8_0,q4_k_m")
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--windows", type=int, default=4)
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, source in (("dense", None), ("pruned", args.pruned)):
            model = open_model(source)
            for quant in args.quants.split(","):
                s = export_gguf(model, Path(tmp) / f"{label}-{quant}.gguf", quant=quant, verify_text=heldout_text(),
                                verify_seqlen=args.seqlen, verify_windows=args.windows, progress=False)
                rows.append({"model": label, "quant": quant, "fallbacks": len(s["fallbacks"]),
                             **{k: s[k] for k in ("bytes", "architecture", "perplexity_torch", "perplexity_llamacpp",
                                                  "ppl_ratio", "top1_agreement", "max_abs_dlogit", "passed")}})
                print(rows[-1], flush=True)
    write_table(Path(args.output), {"pruned": args.pruned, "seqlen": args.seqlen, "windows": args.windows,
                                    "rows": rows}, markdown)


def markdown(result: dict) -> str:
    intro = (f"SmolLM2-135M-Instruct, held-out legal prose {result['windows']}×{result['seqlen']} tokens, "
             f"llama.cpp with F32 KV cache; pruned = `{result['pruned']}`.")
    header = ["file", "bytes", "arch", "ppl PyTorch", "ppl llama.cpp", "ratio", "top-1", "max \\|Δlogit\\|",
              "fallbacks", "passed"]
    rows = [[f"{r['model']} {r['quant']}", f"{r['bytes']:,}", r["architecture"], f"{r['perplexity_torch']:.3f}",
             f"{r['perplexity_llamacpp']:.3f}", f"{r['ppl_ratio']:.4f}", f"{r['top1_agreement']:.3f}",
             f"{r['max_abs_dlogit']:.2g}", str(r["fallbacks"]), "yes" if r["passed"] else "no"]
            for r in result["rows"]]
    return markdown_table(intro, header, rows, align="lrlrrrrrrl")


if __name__ == "__main__":
    main()
