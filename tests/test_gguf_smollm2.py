"""GGUF export of the real SmolLM2-135M-Instruct (slow; `pytest -m slow`).

Dense at f16 must reproduce PyTorch's perplexity within 1%; a model with
the pipeline's 50%-pruned model (per-layer widths: a `deci` file) within 1% at f16 and 3% at q8_0; at q4_k_m
it must load, generate text and report its perplexity. Verification uses
WINDOWS windows of SEQLEN held-out tokens to stay within minutes.
"""

from __future__ import annotations

import pytest

from exporters.gguf import export_gguf
from exporters.llamacpp import gguf_perplexity, open_llama
from toolchain.models import open_model
from toolchain.texts import heldout_text

pytestmark = pytest.mark.slow

WINDOWS, SEQLEN = 6, 256


@pytest.fixture(scope="module")
def dense(smollm2_dense):
    return smollm2_dense


@pytest.fixture(scope="module")
def pruned(smollm2_s50):
    """The real pipeline's output: `liar-export --sparsity 0.5 --allocation global --to hf`."""
    model = open_model(smollm2_s50["artifacts"]["hf"])
    assert not model.widths.is_uniform
    return model


def export(loaded, path, quant: str) -> dict:
    s = export_gguf(loaded, path, quant=quant, verify_seqlen=SEQLEN, verify_windows=WINDOWS,
                    progress=False)
    print(f"{quant}: {s['bytes']} bytes, {s['architecture']}, ppl torch {s['perplexity_torch']:.3f}"
          f" llama.cpp {s['perplexity_llamacpp']:.3f} (x{s['ppl_ratio']:.4f}), top-1 "
          f"{s['top1_agreement']:.3f}, max|dlogit| {s['max_abs_dlogit']:.3g}, "
          f"{len(s['fallbacks'])} fallbacks")
    return s


def test_dense_f16_reproduces_pytorch(dense, tmp_path):
    s = export(dense, tmp_path / "dense-f16.gguf", "f16")
    assert s["passed"] and s["architecture"] == "llama" and not s["pruned"]
    assert s["ppl_ratio"] == pytest.approx(1, abs=0.01)
    assert s["tokenizer_source"] == "gguf"


@pytest.mark.parametrize("quant,tol", [("f16", 0.01), ("q8_0", 0.03)])
def test_pruned_deci_reproduces_pytorch(pruned, tmp_path, quant, tol):
    s = export(pruned, tmp_path / f"pruned-{quant}.gguf", quant)
    assert s["passed"] and s["architecture"] == "deci" and s["pruned"]
    assert s["ppl_ratio"] == pytest.approx(1, abs=tol)


def test_pruned_q4_k_m_loads_generates_and_reports_perplexity(pruned, tmp_path):
    path = tmp_path / "pruned-q4_k_m.gguf"
    s = export(pruned, path, "q4_k_m")
    assert s["passed"] and s["tensor_types"].get("Q4_K", 0) + s["tensor_types"].get("Q6_K", 0) > 0
    ppl = gguf_perplexity(path, heldout_text(), SEQLEN, max_windows=WINDOWS)
    print(f"q4_k_m perplexity through llama.cpp (own tokenizer): {ppl['perplexity']:.2f}")
    assert ppl["perplexity"] < 1e4
    llm = open_llama(path, n_ctx=128, logits_all=False)
    text = llm("The licensee may", max_tokens=24, temperature=0.0)["choices"][0]["text"]
    llm.close()
    print(f"q4_k_m continuation: {text!r}")
    assert len(text.split()) >= 3
