"""`liar-bench`: run benchmarks, export dashboards, write reports, gate CI.

    liar-bench run ARTIFACT... --baseline DENSE [--device cpu|cuda] [--threads N]
                   [--prompt-tokens 128,512] [--gen-tokens 128] [--repeats N] [--text FILE]
                   -o RESULTS.json
    liar-bench encoders DENSE_ONNX PRUNED_ONNX... [--threads N] [--batch 32] [--seq-tokens 128] -o RESULTS.json
    liar-bench export-dashboard RESULTS.json --format github-action-benchmark|csv [-o FILE]
    liar-bench report RESULTS.json... -o DIR
    liar-bench compare OLD.json NEW.json [--threshold 0.10]

Exit codes (toolchain/errors.py): 0 ok, 1 internal error, 2 bad input,
4 regression beyond the threshold (compare), 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from toolchain.atomic import atomic_path
from toolchain.cliutil import Parser, quiet_libraries, run_main
from toolchain.errors import RegressionError

from .dashboard import DIRECTIONS, FORMATS


EXAMPLES = """examples:
  liar-bench run out/s50/model-q8_0.gguf --baseline out/dense/model-q8_0.gguf --threads 2 -o results.json
  liar-bench run out/s50/onnx --baseline out/dense/onnx --prompt-tokens 128,512 --gen-tokens 64 -o onnx.json
  liar-bench encoders out/enc-dense/onnx out/enc-s50/onnx --threads 1 -o enc.json   # encoder latency + quality
  liar-bench compare main.json results.json --threshold 0.10     # exit 4 on a regression
  liar-bench report results.json -o report/                        # PNG plots + report/index.html
  liar-bench export-dashboard results.json --format github-action-benchmark -o bench.json

exit codes: 0 ok, 1 internal error, 2 bad input, 4 benchmark regression, 130 interrupted
"""


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return sorted(set(values))


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="liar-bench", description="Latency, memory and quality of pruned vs dense "
                "artifacts in llama.cpp, onnxruntime and PyTorch.", epilog=EXAMPLES,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    r = sub.add_parser("run", help="benchmark artifacts against a dense baseline")
    r.add_argument("artifacts", nargs="+", metavar="ARTIFACT",
                   help=".gguf file, ONNX export directory or .onnx file, checkpoint or HF directory")
    r.add_argument("--baseline", action="append", required=True, metavar="DENSE",
                   help="the dense model exported the same way; repeat it to give one per format / "
                        "weight type (each artifact is paired with the matching one)")
    r.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    r.add_argument("--threads", type=int, default=0, help="threads per runtime (default: usable cores)")
    r.add_argument("--prompt-tokens", type=_int_list, default=[128, 512], metavar="N,N",
                   help="prefill lengths (default 128,512); decode starts after the smallest")
    r.add_argument("--gen-tokens", type=int, default=128, help="tokens decoded per repeat (default 128)")
    r.add_argument("--repeats", type=int, default=5, help="worker processes per artifact (default 5)")
    r.add_argument("--warmup", type=int, default=1, help="warm-up passes per worker (default 1)")
    r.add_argument("--text", metavar="FILE", help=".txt or .jsonl for prompts and perplexity "
                                                  "(default: the built-in held-out legal prose)")
    r.add_argument("--ppl-seqlen", type=int, default=256, help="perplexity window (default 256)")
    r.add_argument("--ppl-windows", type=int, default=8, help="perplexity windows, 0 = all (default 8)")
    r.add_argument("--no-quality", action="store_true", help="skip perplexity")
    r.add_argument("--no-pin", action="store_true", help="do not pin workers to the first N cores")
    r.add_argument("-o", "--output", required=True, metavar="RESULTS.json")

    e = sub.add_parser("encoders", help="onnxruntime latency, memory and embedding quality of encoder exports")
    e.add_argument("artifacts", nargs="+", metavar="ONNX",
                   help="encoder ONNX exports (directory or .onnx): the dense baseline first, then pruned ones")
    e.add_argument("--threads", type=int, default=0, help="onnxruntime threads (default: usable cores)")
    e.add_argument("--batch", type=int, default=32, help="texts per forward pass (default 32)")
    e.add_argument("--seq-tokens", type=int, default=128, help="tokens per text, no padding (default 128)")
    e.add_argument("--repeats", type=int, default=5, help="worker processes per artifact (default 5)")
    e.add_argument("--iters", type=int, default=10, help="timed forward passes per worker (default 10)")
    e.add_argument("--warmup", type=int, default=2, help="untimed passes per worker (default 2)")
    e.add_argument("--text", metavar="FILE", help="text for the batch and the retrieval test (default: the "
                                                  "built-in held-out legal prose)")
    e.add_argument("--no-pin", action="store_true", help="do not pin workers to the first N cores")
    e.add_argument("-o", "--output", required=True, metavar="RESULTS.json")

    d = sub.add_parser("export-dashboard", help="github-action-benchmark JSON or CSV")
    d.add_argument("results", metavar="RESULTS.json")
    d.add_argument("--format", choices=FORMATS, required=True)
    d.add_argument("--direction", choices=DIRECTIONS, default="smaller",
                   help="github-action-benchmark: customSmallerIsBetter (default) or customBiggerIsBetter")
    d.add_argument("-o", "--output", metavar="FILE", help="default: stdout")

    rep = sub.add_parser("report", help="PNG plots and a self-contained HTML page")
    rep.add_argument("results", nargs="+", metavar="RESULTS.json", help="oldest first for the history plot")
    rep.add_argument("-o", "--output", required=True, metavar="DIR")

    c = sub.add_parser("compare", help="CI gate: exit 4 when a gated metric regressed")
    c.add_argument("old", metavar="OLD.json")
    c.add_argument("new", metavar="NEW.json")
    c.add_argument("--threshold", type=float, default=0.10,
                   help="allowed relative worsening, e.g. 0.10 = 10%% (default)")
    return p


def _write_text(path: str, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def cmd_run(a: argparse.Namespace) -> int:
    from .runner import Settings, run_benchmark
    from .schema import save_results

    settings = Settings(device=a.device, threads=a.threads, prompt_tokens=a.prompt_tokens,
                        gen_tokens=a.gen_tokens, repeats=a.repeats, warmup=a.warmup, text_path=a.text,
                        ppl_seqlen=a.ppl_seqlen, ppl_windows=a.ppl_windows, quality=not a.no_quality,
                        pin=not a.no_pin)
    doc = run_benchmark(a.artifacts, a.baseline, settings)
    save_results(doc, a.output)
    from .tables import markdown_table

    print(markdown_table(doc))
    print(f"[liar-bench] wrote {a.output}", file=sys.stderr)
    return 0


def cmd_encoders(a: argparse.Namespace) -> int:
    import json

    from .encoders import markdown, run_encoders

    doc = run_encoders(a.artifacts, a.threads, a.batch, a.seq_tokens, a.repeats, a.iters, a.warmup, a.text,
                       pin=not a.no_pin)
    _write_text(a.output, json.dumps(doc, indent=1, default=str) + "\n")
    print(markdown(doc))
    print(f"[liar-bench] wrote {a.output}", file=sys.stderr)
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    from .dashboard import export
    from .schema import load_results

    text = export(load_results(a.results), a.format, a.direction)
    if a.output:
        _write_text(a.output, text)
    else:
        sys.stdout.write(text)
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    from .report import write_report
    from .schema import load_results

    docs = [load_results(p) for p in a.results]
    index = write_report(docs, a.output)
    print(f"[liar-bench] wrote {index}", file=sys.stderr)
    return 0


def cmd_compare(a: argparse.Namespace) -> int:
    from .compare import compare, format_table, regressions
    from .schema import load_results

    changes = compare(load_results(a.old), load_results(a.new), a.threshold)
    print(format_table(changes, a.threshold))
    bad = regressions(changes)
    if bad:
        worst = max(bad, key=lambda c: c.worse_by)
        raise RegressionError(f"{len(bad)} metric(s) regressed beyond {a.threshold:.0%}; worst: "
                              f"{worst.artifact} {worst.metric} {worst.worse_by:+.1%}")
    return 0


COMMANDS = {"run": cmd_run, "encoders": cmd_encoders, "export-dashboard": cmd_export, "report": cmd_report,
            "compare": cmd_compare}


def _main(argv: Sequence[str]) -> int:
    quiet_libraries()
    args = build_parser().parse_args(argv)
    return COMMANDS[args.command](args)


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("liar-bench", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
