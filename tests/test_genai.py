"""onnxruntime-genai runs the ONNX exports from their genai_config.json, with the greedy tokens of
liar-export's own onnxruntime decoder (exporters.onnx.runtime.OnnxDecoder): dense, per-layer
query heads and FFN widths, and per-layer KV heads (genai sizes each layer's cache from the
graph). Skipped without the `genai` extra."""

from __future__ import annotations

import json

import pytest

from exporters.onnx.genai import GENAI_FILE, generate
from exporters.onnx.runtime import OnnxDecoder
from tests.conftest import TINY_KINDS

pytest.importorskip("onnxruntime_genai")

PROMPT = [5, 17, 33, 8, 99, 120, 7]


def _same_tokens(onnx_dir, prompt: list[int], n: int, eos: int | None) -> tuple[list[int], list[int]]:
    return generate(onnx_dir, prompt, n), OnnxDecoder(onnx_dir).generate(prompt, n, eos_token_id=eos)


@pytest.mark.parametrize("kind", TINY_KINDS)
def test_genai_generates_what_the_onnx_decoder_does(tiny_artifacts, kind):
    onnx_dir = tiny_artifacts[kind]["dir"] / "onnx"
    config = json.loads((onnx_dir / GENAI_FILE).read_text())
    io = json.loads((onnx_dir / "io.json").read_text())
    assert config["model"]["decoder"]["num_hidden_layers"] == len(io["layers"])
    if kind == "groups":  # the case genai has to read from the graph
        assert len({layer["num_key_value_heads"] for layer in io["layers"]}) > 1
    genai, ours = _same_tokens(onnx_dir, PROMPT, 24, io["eos_token_id"])
    assert len(genai) == 24 and genai == ours


@pytest.mark.slow
@pytest.mark.parametrize("allocation", ["dense", "uniform", "global"])
def test_smollm2_exports_in_genai(allocation, tmp_path):
    """SmolLM2 dense, 50% uniform and 50% per-layer (global) ONNX exports: same greedy tokens."""
    from tests.conftest import SMOLLM2_S50_ARGS, liar_export
    from toolchain.models import open_model
    from toolchain.perplexity import encode

    args = ["--sparsity", "0"] if allocation == "dense" else [a if a != "global" else allocation
                                                             for a in SMOLLM2_S50_ARGS]
    summary = liar_export(tmp_path / "out", "--to", "onnx", *args)
    onnx_dir = tmp_path / "out" / "onnx"
    tokenizer = open_model(None).tokenizer
    prompt = encode(tokenizer, "The parties agree that the contract shall be governed by")
    genai, ours = _same_tokens(onnx_dir, prompt, 32, tokenizer.eos_token_id)
    print(f"{allocation}: widths uniform {len({tuple(w.values()) for w in summary['widths']}) == 1}, "
          f"genai {tokenizer.decode(genai)!r}")
    assert genai == ours
