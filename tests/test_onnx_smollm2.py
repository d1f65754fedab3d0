"""SmolLM2-135M-Instruct through the ONNX exporter (slow: real model, minutes).

Dense and pruned fp32 exports must reproduce PyTorch perplexity within 0.5% on
held-out text; int8 / int4 perplexities are printed (their own tolerances are
enforced by export_onnx's verification).
"""

from __future__ import annotations

import pytest

from exporters.onnx import export_onnx
from toolchain.models import open_model

pytestmark = pytest.mark.slow
SEQLEN, WINDOWS = 256, 3  # 3 windows of held-out text keep each verification well under a minute


@pytest.fixture(scope="module")
def dense(smollm2_dense):
    return smollm2_dense


def pruned_model(smollm2_s50):
    """The real pipeline's output: `liar-export --sparsity 0.5 --allocation global --to hf`
    (per-layer head counts and FFN widths; per-layer KV heads are covered by the tiny tests)."""
    return open_model(smollm2_s50["artifacts"]["hf"])


def _export(loaded, out, quant, float_onnx=None):
    s = export_onnx(loaded, out, quant=quant, verify_seqlen=SEQLEN, verify_windows=WINDOWS,
                    progress=False, float_onnx=float_onnx)
    v = s["verification"]
    print(f"\n{out.name}: {s['model_bytes'] / 1e6:.1f} MB, perplexity PyTorch {v['perplexity_torch']:.3f} "
          f"ONNX {v['perplexity_onnx']:.3f} (ratio {v['perplexity_ratio']:.4f}), "
          f"max |dlogit| {v['max_abs_dlogit']:.2e} / {v['max_abs_dlogit_kv']:.2e}, top-1 {v['top1_agreement']:.3f}")
    return s


def test_dense_fp32_reproduces_pytorch(dense, tmp_path):
    s = _export(dense, tmp_path / "dense-fp32", "none")
    assert s["verification"]["perplexity_ratio"] == pytest.approx(1.0, abs=0.005)
    assert s["verification"]["top1_agreement"] >= 0.99


def test_pruned_fp32_int8_int4(smollm2_s50, tmp_path):
    pruned = pruned_model(smollm2_s50)
    assert len(set(pruned.widths.column("num_attention_heads"))) > 1
    assert len(set(pruned.widths.column("intermediate_size"))) > 1
    sizes = {}
    for quant in ("none", "int8", "int4"):
        # tracing is the slow part: int8 / int4 quantise the fp32 export made first
        s = _export(pruned, tmp_path / f"pruned-{quant}", quant,
                    float_onnx=None if quant == "none" else tmp_path / "pruned-none")
        sizes[quant] = s["model_bytes"]
        if quant == "none":
            assert s["verification"]["perplexity_ratio"] == pytest.approx(1.0, abs=0.005)
    assert sizes["int4"] < sizes["int8"] < sizes["none"]
