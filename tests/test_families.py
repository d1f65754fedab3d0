"""Every supported family end to end: prune → HF checkpoint → GGUF → ONNX, each checked against PyTorch.

Fast: tiny random models (tests/families.py) with the 300-token test tokenizer, compressed in
process and written to GGUF at F32 (llama.cpp, F32 KV cache: logits within float rounding).
Slow: issue 14's acceptance run per family — `liar-export MODEL --sparsity 0.3 --to hf --to gguf
--to onnx --quant f16` on the SmolLM2 tokenizer (vocabulary 49152), then the GGUF and the fp32
ONNX checked independently of the exporters' own verification.
"""

from __future__ import annotations

import pytest
import torch

from exporters.gguf import export_gguf
from tests.conftest import liar_export
from tests.families import FAMILY_CONFIGS, build, save, smollm2_tokenizer
from tests.tiny import SAMPLE_TEXT, compressed, tiny_tokenizer
from toolchain.checkpoint import save_checkpoint
from toolchain.families import SUPPORTED_MODEL_TYPES, family_of
from toolchain.gguf_layout import read_layout
from toolchain.models import Model, open_model
from toolchain.reference import ReferenceLogits

FAMILIES = sorted(FAMILY_CONFIGS)
TEXT = SAMPLE_TEXT * 4


def tiny(model_type: str, **overrides) -> Model:
    return Model.from_module(build(model_type, vocab_size=len(tiny_tokenizer()), **overrides), tiny_tokenizer(),
                             {"kind": "tiny", "path": f"random-{model_type.replace('phi3', 'phi')}"})


def test_every_decoder_family_has_a_tiny_model():
    """Decoders are tested here; the encoder families in tests/test_encoders.py."""
    assert sorted(t for t in SUPPORTED_MODEL_TYPES if not family_of(t).encoder) == FAMILIES


@pytest.mark.parametrize("model_type, overrides", [(m, {}) for m in FAMILIES] + [
    ("mistral", {"sliding_window": 8}), ("gemma3_text", {"sliding_window": 8})])
def test_streamed_layers_reproduce_the_transformers_forward(model_type, overrides):
    """The walk's own masks (sliding windows included) and rotary embeddings are transformers'."""
    model = tiny(model_type, **overrides)
    windows = [list(range(3, 40)), list(range(50, 87))]
    with torch.no_grad():
        want = model.module()(torch.tensor(windows)).logits
    got = ReferenceLogits(model, windows)
    for k, w in enumerate(windows):
        torch.testing.assert_close(torch.from_numpy(got(w)), want[k], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("model_type, overrides", [(m, {}) for m in FAMILIES] + [
    ("phi3", {"partial_rotary_factor": 0.5})])  # Phi-4-mini's partial rotary: llama.cpp's phi3, FFN only
def test_prune_checkpoint_and_gguf(model_type, overrides, tmp_path):
    family = family_of(model_type)
    dense = tiny(model_type, **overrides)
    per_layer = any(a.per_layer for a in family.gguf_candidates(dense.config))
    arch = next(a for a in family.gguf_candidates(dense.config) if a.per_layer or not per_layer)
    model, res = compressed(dense, sparsity=0.3, allocation="global" if per_layer else "uniform",
                            biases=arch.biases, prune="heads,ffn" if arch.heads else "ffn")
    if not arch.heads:
        assert all(w.num_attention_heads == dense.dims["num_heads"] for w in res.widths)
    save_checkpoint(model, tmp_path / "ckpt", {"plan": res.plan.to_json()})
    back = open_model(str(tmp_path / "ckpt"))
    ids = torch.tensor([list(range(3, 30))])
    with torch.no_grad():
        torch.testing.assert_close(back.module()(ids).logits, model.module()(ids).logits, atol=0, rtol=0)
    s = export_gguf(back, tmp_path / "m.gguf", quant="f32", verify_text=TEXT, verify_seqlen=64, verify_windows=2,
                    progress=False)
    assert s["passed"], s["failures"]
    assert s["architecture"] == arch.name and s["top1_agreement"] >= 0.99
    fields = read_layout(tmp_path / "m.gguf").fields
    assert fields["general.architecture"][2] == arch.name
    if not arch.biases:  # reconstruction added none, so llama.cpp can load the file
        assert not any(w.o_proj_bias or w.down_proj_bias for w in back.widths)


def test_per_layer_widths_are_refused_where_llama_cpp_reads_one_width(tmp_path, tiny_dir):
    """An explicit --allocation global for a family whose llama.cpp architecture builds every
    layer from layer 0's widths: one line naming --allocation uniform, nothing written."""
    from toolchain.cli import export_command
    from toolchain.cliutil import run_main

    d = tmp_path / "qwen3"
    save("qwen3", d, tiny_tokenizer(), vocab_size=len(tiny_tokenizer()))
    out = tmp_path / "out"
    code = run_main("liar-export", export_command, [str(d), "--to", "gguf", "--allocation", "global", "-o", str(out),
                                                    "--calib-samples", "4", "--calib-seqlen", "32"])
    assert code == 2 and not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize("model_type", FAMILIES)
def test_acceptance_run(model_type, tmp_path):
    from exporters.gguf.quants import QUANT_SPECS
    from exporters.gguf.verify import compare_logits
    from exporters.onnx.export import float32_module
    from exporters.onnx.runtime import OnnxDecoder
    from exporters.onnx.verify import measure
    from toolchain.perplexity import encode
    from toolchain.texts import heldout_text

    src = save(model_type, tmp_path / ("tiny-phi" if model_type == "phi3" else model_type), smollm2_tokenizer())
    s = liar_export(tmp_path / "out", str(src), "--sparsity", "0.3", "--to", "hf", "--to", "gguf", "--to", "onnx",
                    "--quant", "f16")
    pruned = open_model(s["artifacts"]["hf"])
    text = heldout_text()
    # GGUF at f16, independently of the exporter's verdict: llama.cpp (F32 KV cache) vs the checkpoint
    g = compare_logits(pruned, tmp_path / "out" / "model-f16.gguf", text, 256, 4)
    onnx = measure(float32_module(pruned), OnnxDecoder(tmp_path / "out" / "onnx"), encode(pruned.tokenizer, text),
                   "none", 256, 4)
    print(f"{model_type}: {s['exports']['gguf']['architecture']} top-1 {g['top1_agreement']:.3f}; ONNX top-1 "
          f"{onnx['top1_agreement']:.3f} max|Δlogit| {onnx['max_abs_dlogit']:.2e} (scale {onnx['logit_scale']:.1f})")
    assert g["top1_agreement"] >= 0.95 and abs(g["ppl_ratio"] - 1) <= QUANT_SPECS["f16"].max_ppl_rel
    assert onnx["top1_agreement"] >= 0.99
    assert max(onnx["max_abs_dlogit"], onnx["max_abs_dlogit_kv"]) <= 1e-3 * max(1.0, onnx["logit_scale"])
