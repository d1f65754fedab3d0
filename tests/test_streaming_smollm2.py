"""Real model (slow): layer streaming reproduces the pre-streaming results on SmolLM2-135M-Instruct.

tests/data/golden/smollm2.* hold, for six liar-export runs made with the in-memory code of
commit 4ea101d, the plan's SHA-256 and per-layer widths, weight fingerprints of four layers
(tests/golden.py) and the held-out perplexity (4 windows × 256 tokens). Each run is repeated
here through run_export, streaming the GGUF source layer by layer."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import liar_export
from tests.golden import DATA, fingerprints, index, max_relative_difference, weight_limit
from toolchain.models import open_model
from toolchain.perplexity import encode, perplexity, token_windows
from toolchain.reference import ReferenceLogits
from toolchain.texts import heldout_text

pytestmark = pytest.mark.slow
GOLDEN = index("smollm2")
RUNS = {  # the arguments each golden run was made with (besides --to hf); the default pricing was "score" then
    "s20-default": ["--pricing", "score"],
    "s50-uniform": ["--sparsity", "0.5", "--allocation", "uniform", "--calib-samples", "32"],
    "s50-sequential": ["--sparsity", "0.5", "--mode", "sequential", "--calib-samples", "32", "--pricing", "score"],
    "s50-unstructured-wanda": ["--pattern", "unstructured", "--sparsity", "0.5", "--criterion", "wanda",
                               "--reconstruct", "none", "--within-layer", "sequential", "--calib-samples", "16"],
}
# Another CPU's BLAS rounding (tests/golden.py) moves some runs further than weight_limit allows. Measured on
# an AMD EPYC (AVX-512) and an Intel Xeon (CI): local refinement's Adam steps carry the solves' rounding into
# the weights (3.2e-3 relative on the Xeon) and the perplexity (6.7e-5 on the EPYC); sequential statistics
# move the perplexity by 1.6e-5; wanda with sequential within-layer inputs flips mask ties (0.12 relative
# weight difference, perplexity 1.8e-3), so only its exact sparsity is compared. The rest agree to
# weight_limit and 1e-5.
PERPLEXITY_LIMIT = {"s50-liar-local": 1e-3, "s50-sequential": 1e-4, "s50-unstructured-wanda": 1e-2}
WEIGHT_LIMIT = {"s50-liar-local": 1e-2, "s50-unstructured-wanda": None}


def _check(name: str, summary: dict) -> None:
    want = GOLDEN["runs"][name]
    ckpt = Path(summary["artifacts"]["hf"])
    layers = json.loads((ckpt.parent / "plan.json").read_text())["layers"]
    reconstruct = json.loads((ckpt.parent / "recipe.json").read_text())["reconstruct"]
    assert [[len(lp["heads"]), len(lp["kv_heads"]), len(lp["channels"])] for lp in layers] == want["widths"]
    assert hashlib.sha256(json.dumps(layers).encode()).hexdigest() == want["plan_sha256"]
    model = open_model(str(ckpt))
    kept = tuple(f".layers.{i}." for i in GOLDEN["fingerprinted_layers"])
    state = {k: model.weights.get(k) for k in model.weights.names() if any(p in k for p in kept)}
    got = {k: v for k, v in fingerprints(state).items() if not k.endswith(":s")}
    prefix = f"{name}/"
    gold = {k[len(prefix):]: v for k, v in load_file(str(DATA / "smollm2.safetensors")).items()
            if k.startswith(prefix)}
    diff = max_relative_difference(got, gold)
    ids = encode(model.tokenizer, heldout_text())
    windows = token_windows(ids, 256, 4)
    ppl = perplexity(ReferenceLogits(model, windows), ids, 256, 4)["perplexity"]
    print(f"{name}: weights {diff:.3g} relative, perplexity {ppl:.4f} (golden {want['perplexity']:.4f})")
    limit = WEIGHT_LIMIT.get(name, weight_limit(reconstruct))
    if limit is None:
        assert summary["sparsity"] == pytest.approx(0.5, abs=1e-3)
    else:
        assert diff <= limit
    assert ppl == pytest.approx(want["perplexity"], rel=PERPLEXITY_LIMIT.get(name, 1e-5))


def test_global_allocation_matches(smollm2_s50):
    _check("s50-global", smollm2_s50)


def test_liar_plus_local_matches(smollm2_s50_local):
    _check("s50-liar-local", smollm2_s50_local)


@pytest.mark.parametrize("name", sorted(RUNS))
def test_run_matches(name, tmp_path):
    _check(name, liar_export(tmp_path / name, "--to", "hf", "--no-verify", *RUNS[name]))


def test_the_gguf_source_reads_what_transformers_reads():
    """Streaming a .gguf (one dequantised tensor at a time) gives transformers' own weights."""
    from transformers import AutoModelForCausalLM

    model = open_model(None)
    path = Path(model.source["path"])
    ref = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).state_dict()
    names = set(model.weights.names())
    assert names == {k for k in ref if k != "lm_head.weight"}  # tied: the head is the embedding
    for k in names:
        assert torch.equal(model.weights.get(k), ref[k]), k
