"""`run_export(request) -> summary`: the one in-process entry point of liar-export.

The CLI, the benchmark scripts and the end-to-end tests all call this. It
checks everything it can before the long work (options, output directory,
memory and disk from the model's shapes, what the requested formats can
represent), then

    open the model lazily → calibration tokens → compress (layer walk; every
    finished layer is written into a checkpoint and freed) → export each format
    from that checkpoint, verified against PyTorch → plan, recipe, summary,
    manifest

inside a temporary sibling of the output directory that is renamed into place
only when everything succeeded (docs/DESIGN.md §3).
"""

from __future__ import annotations

import json
import platform
from dataclasses import replace
import shutil
import sys
import time
from pathlib import Path

import psutil
import torch

from . import __version__
from .atomic import atomic_path
from .calibration import calibration_tokens
from .checkpoint import save_checkpoint
from .compress import compress, dense_plan
from .errors import UserError
from .manifest import write_manifest
from .models import Model, open_model
from .plan import PruningPlan
from .recipe import ExportRequest
from .sinks import CheckpointSink
from .texts import heldout_text, read_text_file
from .unstructured import sparsify

GIB = 2**30
BASELINE_BYTES = GIB  # interpreter, torch, transformers, llama.cpp and onnxruntime libraries
GGUF_BYTES_PER_WEIGHT = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32,
                         "q4_k_m": 0.62, "q5_k_m": 0.72, "q6_k": 0.82}  # upper bounds, norms aside
ONNX_BYTES_PER_WEIGHT = {"none": 4.0, "int8": 1.2, "int4": 0.7}


def _log(req: ExportRequest, msg: str) -> None:
    if req.progress:
        print(f"liar-export: {msg}", file=sys.stderr, flush=True)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda but no CUDA device is available: use --device cpu or auto")
    return torch.device(name)


def check_output(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"output {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UserError(f"output directory {out} is not empty: choose another -o or pass --force")


# -- what the run needs, from shapes alone --------------------------------------------------

def _layer_numel(model: Model, i: int) -> int:
    return _numel(model, model.layer_prefix(i))


def _numel(model: Model, prefix: str) -> int:
    """Weights whose names start with `prefix`."""
    total = 0
    for name in model.weights.names():
        if name.startswith(prefix):
            n = 1
            for s in model.weights.shape(name):
                n *= s
            total += n
    return total


def memory_needed(model: Model, req: ExportRequest) -> dict[str, int]:
    """Peak resident bytes of each phase, estimated from the shapes (docs/DESIGN.md §8)."""
    d = model.dims
    widest = max(d["intermediate_size"], d["num_heads"] * d["head_dim"], d["hidden_size"])
    layer = max(_layer_numel(model, i) for i in range(model.num_layers)) * 4  # float32 while worked on
    stream = req.calib.samples * req.calib.seqlen * d["hidden_size"] * 4
    embed_numel = _numel(model, f"{model.family.embed}.")  # an encoder's embeddings: tokens, positions, types
    vocab = embed_numel // d["hidden_size"]
    embed = embed_numel * torch.finfo(model.dtype).bits // 8
    structured = req.pattern == "structured"
    copies = 1
    stats = 0
    if req.compresses and structured:
        sequential = req.structured.mode == "sequential"
        copies += 1 if sequential else 0
        if req.local is not None:
            copies += 5  # dense copy, starting state, AdamW's two moments, gradients
        if req.structured.reconstruct == "liar" or sequential:
            stats = int((3.0 if sequential else 2.25) * widest * widest * 8)
    elif req.compresses:
        sp = req.sparse
        solves = sp.reconstruct in ("fista", "refit")
        copies += 1 if (solves and sp.target == "dense") or sp.within_layer == "at-once" else 0
        stats = 5 * widest * widest * 8 if solves else 0
    compress_peak = embed + layer * copies + stats + 4 * stream if req.compresses else 0
    total = model.param_summary()["total"]
    verify = (vocab * d["hidden_size"] * 4 + 2 * layer) if req.verify else 0
    gguf = int(total * GGUF_BYTES_PER_WEIGHT[req.quant]) + verify if "gguf" in req.formats else 0
    onnx = 3 * total * 4 if "onnx" in req.formats else 0  # the whole float32 model, traced
    return {"compress": compress_peak + BASELINE_BYTES, "gguf": gguf + BASELINE_BYTES,
            "onnx": onnx + BASELINE_BYTES}


def disk_needed(model: Model, req: ExportRequest) -> int:
    """Bytes the output directory may hold at its fullest (dense sizes: upper bounds)."""
    total = model.param_summary()["total"]
    need = total * torch.finfo(model.dtype).bits // 8 if (req.compresses or "hf" in req.formats) else 0
    if "gguf" in req.formats:
        need += int(total * GGUF_BYTES_PER_WEIGHT[req.quant])
        need += total * 4 if req.quant not in ("f32", "f16", "bf16", "q8_0") else 0  # F32 intermediate
    if "onnx" in req.formats:
        need += total * 4 + (int(total * ONNX_BYTES_PER_WEIGHT[req.onnx_quant]) if req.onnx_quant != "none" else 0)
    return int(need * 1.05)


def check_resources(model: Model, req: ExportRequest, out: Path) -> dict:
    """One clear line, before any long work, when memory or disk cannot hold the job."""
    mem = memory_needed(model, req)
    available = psutil.virtual_memory().available
    names = {"compress": "compression", "gguf": "GGUF export and verification", "onnx": "ONNX export"}
    for phase, need in mem.items():
        if need > available:
            hint = {"onnx": "ONNX export holds the whole float32 model; export GGUF or use a bigger machine",
                    "compress": "use fewer --calib-samples, --device cuda, or a machine with more memory",
                    "gguf": "use --no-verify or a machine with more memory"}[phase]
            raise UserError(f"not enough memory for {names[phase]}: about {need / GIB:.1f} GiB needed, "
                            f"{available / GIB:.1f} GiB available ({hint})")
    disk = disk_needed(model, req)
    parent = out.resolve().parent
    while not parent.exists():
        parent = parent.parent
    free = shutil.disk_usage(parent).free
    if disk > free:
        raise UserError(f"not enough disk space in {parent}: the artifacts need up to {disk / GIB:.2f} GiB, "
                        f"{free / GIB:.2f} GiB free; free space or choose another -o")
    return {"memory_bytes": mem, "disk_bytes": disk}


def check_formats(model: Model, req: ExportRequest, plan: PruningPlan | None) -> ExportRequest:
    """Before any work: fit the compression to what the requested GGUF can hold.

    A llama.cpp architecture that builds every layer from layer 0's widths gets uniform
    widths (`--allocation auto`; an explicit `global` is refused with one line), and
    reconstruction adds no bias where the architecture loads none (LIAR without
    intercept). Returns the request as it will run (what recipe.json records).
    """
    structured = req.compresses and req.pattern == "structured"
    if "gguf" in req.formats and model.family.encoder:
        from exporters.gguf.bert import check_encoder

        check_encoder(model)  # pooling, activation and positions llama.cpp's bert can run
    if structured and "gguf" in req.formats:
        from .gguf_names import choose_arch

        if plan is None and req.structured.allocation == "auto":
            per_layer = any(a.per_layer for a in model.family.gguf_candidates(model.config))
            if not per_layer:
                _log(req, f"llama.cpp's {model.family.model_type} architecture reads one width for all layers: "
                          "allocating uniform widths (--allocation uniform)")
            req = replace(req, structured=replace(req.structured, allocation="global" if per_layer else "uniform"))
        uniform = plan.widths().is_uniform if plan is not None else req.structured.allocation == "uniform"
        arch = choose_arch(model.family, model.config, uniform)
        if not arch.biases:
            req = replace(req, structured=replace(req.structured, biases=False))
            req.structured.validate()
        if not arch.heads and plan is None and "heads" in req.structured.prune.split(","):
            if req.structured.prune == "heads":
                raise UserError(f"llama.cpp's {arch.name} architecture keeps every query head: use --prune ffn")
            _log(req, f"llama.cpp's {arch.name} architecture keeps every query head: pruning FFN channels only "
                      "(--prune ffn)")
            req = replace(req, structured=replace(req.structured, prune="ffn"))
    elif "gguf" in req.formats:
        from .gguf_names import choose_arch

        choose_arch(model.family, model.config, model.widths.is_uniform)
    if structured and req.structured.allocation == "auto":
        req = replace(req, structured=replace(req.structured, allocation="global"))
    return req


# -- the run ----------------------------------------------------------------------------

def _versions() -> dict:
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__}


def _compress(model: Model, req: ExportRequest, plan: PruningPlan | None, work: Path, device: torch.device,
              recipe: dict, timings: dict) -> tuple[Model, PruningPlan, dict]:
    """Calibrate and compress into the checkpoint directory `work`; returns the compressed model."""
    t = time.perf_counter()
    _log(req, f"calibrating on {req.calib.source} ({req.calib.samples}×{req.calib.seqlen} tokens)")
    ids, tokens = calibration_tokens(model, req.calib)  # tokens: encoders' real-token mask
    timings["calibration_data"] = time.perf_counter() - t
    sink = CheckpointSink(model, work)
    info: dict = {}
    if req.pattern == "structured":
        _log(req, f"structured pruning {req.structured.sparsity} ({req.structured.criterion}, "
                  f"{req.structured.allocation}, {req.reconstruct})")
        result = compress(model, ids, req.structured, device, sink, plan=plan, local=req.local,
                          progress=req.progress, tokens=tokens)
        timings.update(result.seconds)
        plan, widths = result.plan, result.widths
        info = {"reconstruction": result.methods_used, "local_reconstruction": result.local}
    else:
        _log(req, f"{req.pattern} sparsity {req.sparse.sparsity} ({req.sparse.criterion} + {req.sparse.reconstruct})")
        report = sparsify(model, ids, req.sparse, device, sink, progress=req.progress)
        timings["compress_pass"] = report["seconds"]
        plan, widths = dense_plan(model), model.widths
        info = {"unstructured": report}
    compressed = sink.close(widths, {"plan": plan.to_json(), "recipe": recipe})
    _copy_pooling(model, work)
    return compressed, plan, info


def _copy_pooling(model: Model, work: Path) -> None:
    """An encoder's checkpoint keeps its sentence-transformers pipeline (pooling) files."""
    if model.family.encoder:
        from .pooling import copy_sentence_transformers, pooling_of

        copy_sentence_transformers(pooling_of(model).source, work)


def _exports(model: Model, req: ExportRequest, tmp: Path, recipe: dict) -> tuple[dict, dict]:
    artifacts, reports = {}, {}
    verify_text = read_text_file(req.verify_text) if req.verify_text else heldout_text()
    for fmt in dict.fromkeys(req.formats):
        if fmt == "gguf":
            from exporters.gguf import export_gguf
            name = f"model-{req.quant}.gguf"
            _log(req, f"writing GGUF ({req.quant})")
            reports["gguf"] = export_gguf(model, tmp / name, quant=req.quant, recipe=recipe, verify=req.verify,
                                          verify_text=verify_text, progress=req.progress)
            artifacts["gguf"] = name
        elif fmt == "onnx":
            if model.family.encoder:
                from exporters.onnx.encoder import export_encoder_onnx as export_onnx
            else:
                from exporters.onnx import export_onnx
            _log(req, f"writing ONNX ({req.onnx_quant})")
            reports["onnx"] = export_onnx(model, tmp / "onnx" / "model.onnx", quant=req.onnx_quant, recipe=recipe,
                                          verify=req.verify, verify_text=verify_text, progress=req.progress)
            artifacts["onnx"] = "onnx/model.onnx"
        elif fmt == "hf":
            # every run writes the checkpoint (it is what the exporters read); only a user who asked for
            # it needs to hear that transformers cannot load it alone
            from .hf_remote import layout
            if note := layout(model.config, model.family, model.widths).note:
                print(f"liar-export: {note}", file=sys.stderr, flush=True)
            artifacts["hf"] = "hf"
    return artifacts, reports


def _relocated(report: dict, tmp: Path, out: Path) -> dict:
    """Exporters report paths inside the temporary directory; name the final ones."""
    old, new = json.dumps(str(tmp))[1:-1], json.dumps(str(out))[1:-1]
    return json.loads(json.dumps(report, default=str).replace(old, new))


def run_export(req: ExportRequest) -> dict:
    """Run one export request end to end; returns the summary (also written as summary.json)."""
    req.validate()
    out = Path(req.output)
    check_output(out, req.force)
    plan = PruningPlan.load(req.plan) if req.plan else None
    device = resolve_device(req.device)
    t0 = time.perf_counter()
    _log(req, "opening model")
    model = open_model(req.model, dtype=req.dtype, trust_remote_code=req.trust_remote_code)
    if model.source["kind"] == "checkpoint" and req.compresses:
        raise UserError("the input is already a pruned checkpoint: prune the dense model instead "
                        "(or pass --sparsity 0 to re-export it)")
    if model.family.encoder:
        req = req.for_encoder()  # the encoder recipe for what the command line left unset
    req = check_formats(model, req, plan)
    resources = check_resources(model, req, out)
    timings = {"load": time.perf_counter() - t0}
    recipe = {"tool": f"liar-export {__version__}", "source": model.source, **req.recipe(),
              "versions": _versions()}
    info: dict = {}
    with atomic_path(out, is_dir=True) as tmp:
        work = tmp / "hf" if "hf" in req.formats else tmp / ".work" / "hf"
        if req.compresses:
            compressed, plan, info = _compress(model, req, plan, work, device, recipe, timings)
        else:
            compressed = model
            plan = PruningPlan.from_json(model.meta["plan"]) if "plan" in model.meta else dense_plan(model)
            if "hf" in req.formats:
                save_checkpoint(model, work, {"plan": plan.to_json(), "recipe": recipe})
                _copy_pooling(model, work)
        t = time.perf_counter()
        artifacts, reports = _exports(compressed, req, tmp, recipe)
        timings["export"] = time.perf_counter() - t
        shutil.rmtree(tmp / ".work", ignore_errors=True)
        plan.save(tmp / "plan.json")
        (tmp / "recipe.json").write_text(json.dumps(recipe, indent=1, default=str) + "\n")
        dense_params, pruned_params = model.param_summary(), compressed.param_summary()
        timings["total"] = time.perf_counter() - t0
        sparse = info.get("unstructured")
        summary = {
            "artifacts": {k: str(out / v) for k, v in artifacts.items()},
            "params": {"dense": dense_params, "pruned": pruned_params},
            # structured: block parameters removed; unstructured / 2:4: fraction of zeroed block weights
            "sparsity": sparse["sparsity"] if sparse else 1 - pruned_params["block"] / dense_params["block"],
            "total_sparsity": 1 - pruned_params["total"] / dense_params["total"],
            "widths": compressed.widths.to_json(),
            "reconstruction": info.get("reconstruction", []),
            "local_reconstruction": info.get("local_reconstruction"),
            "unstructured": sparse,
            "exports": _relocated(reports, tmp, out),
            "resources": resources,
            "seconds": timings,
            "recipe": recipe,
        }
        (tmp / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
        write_manifest(tmp, recipe)
    return summary
