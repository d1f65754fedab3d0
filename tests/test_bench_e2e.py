"""liar-bench on real runtimes: tiny dense and pruned models exported to GGUF
(llama.cpp) and ONNX (onnxruntime), benchmarked end to end on the CPU.

Numbers are checked for sanity and for consistency between formats, never
for speed: the build machines are shared.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from benchmarks.cli import main
from benchmarks.gpu import cuda_available
from benchmarks.inventory import describe
from benchmarks.schema import load_results
from toolchain.errors import EXIT_BAD_INPUT, EXIT_OK

FAST = ["--threads", "1", "--prompt-tokens", "8,16", "--gen-tokens", "4", "--repeats", "1",
        "--ppl-seqlen", "16", "--ppl-windows", "2"]


@pytest.fixture
def artifacts(tiny_artifacts):
    """dense/ and pruned/ each with model-f32.gguf, onnx/ and ckpt/ of the same weights."""
    root = tiny_artifacts["dense"]["dir"].parent
    assert tiny_artifacts["pruned"]["dir"].parent == root
    return root


def test_bytes_per_token_agree_across_formats(artifacts):
    for name in ("dense", "pruned"):
        gguf, ckpt = describe(artifacts / name / "model-f32.gguf"), describe(artifacts / name / "ckpt")
        onnx = describe(artifacts / name / "onnx")
        assert gguf["size"]["bytes_per_token"] == ckpt["size"]["bytes_per_token"]
        assert gguf["size"]["block_parameters"] == ckpt["size"]["block_parameters"]
        # the ONNX exporter folds identical constants (the tiny model's unit norms)
        assert onnx["size"]["bytes_per_token"] == pytest.approx(gguf["size"]["bytes_per_token"], rel=0.01)
        # untied embeddings: one row (hidden 64 × f32) per token, the LM head in full
        cfg = json.loads((artifacts / name / "ckpt" / "config.json").read_text())
        weights = 4 * ckpt["size"]["parameters"]
        assert ckpt["size"]["bytes_per_token"] == weights - 4 * cfg["vocab_size"] * 64 + 4 * 64
    assert describe(artifacts / "pruned" / "ckpt")["size"]["bytes_per_token"] < \
        describe(artifacts / "dense" / "ckpt")["size"]["bytes_per_token"]


def test_backends_agree_with_pytorch(artifacts):
    """Greedy tokens and logits through llama.cpp and onnxruntime match PyTorch eager."""
    from benchmarks.backends import open_backend

    path = artifacts / "pruned"
    torch_b = open_backend(path / "ckpt", "checkpoint", "cpu", 1, 64, for_logits=True)
    onnx_b = open_backend(path / "onnx" / "model.onnx", "onnx", "cpu", 1, 64)
    gguf_b = open_backend(path / "model-f32.gguf", "gguf", "cpu", 1, 64, for_logits=True)
    for b in (torch_b, onnx_b, gguf_b):
        b.load()
    ids = torch_b.tokenize("The quick brown fox jumps over the lazy dog.")
    assert ids == onnx_b.tokenize("The quick brown fox jumps over the lazy dog.")
    ref = torch_b.logits(ids)
    assert np.abs(onnx_b.logits(ids) - ref).max() < 1e-3
    assert np.abs(gguf_b.logits(ids) - ref).max() < 1e-3
    seq = [torch_b.prefill(ids)]
    onnx_seq = [onnx_b.prefill(ids)]
    for _ in range(3):
        seq.append(torch_b.step(seq[-1]))
        onnx_seq.append(onnx_b.step(onnx_seq[-1]))
    assert seq == onnx_seq


def test_run_gguf_and_onnx_end_to_end(artifacts, tmp_path, capsys):
    d, p = artifacts / "dense", artifacts / "pruned"
    out = tmp_path / "results.json"
    rc = main(["run", str(p / "model-f32.gguf"), str(p / "onnx"),
               "--baseline", str(d / "model-f32.gguf"), "--baseline", str(d / "onnx"), *FAST, "-o", str(out)])
    captured = capsys.readouterr()
    assert rc == EXIT_OK, captured.err
    assert "[liar-bench] repeat 1/1" in captured.err  # progress on stderr
    assert "| pruned/model-f32 |" in captured.out  # Markdown table on stdout
    doc = load_results(out)
    by = {a["name"]: a for a in doc["artifacts"]}
    assert set(by) == {"dense/model-f32", "dense/onnx", "pruned/model-f32", "pruned/onnx"}
    assert by["pruned/model-f32"]["baseline"] == "dense/model-f32"
    assert by["pruned/onnx"]["baseline"] == "dense/onnx"
    assert {a["backend"] for a in by.values()} == {"llama.cpp", "onnxruntime"}
    assert doc["settings"]["threads"] == 1 and doc["environment"]["threads"] == 1
    assert doc["environment"]["packages"]["llama_cpp_python"]
    for a in by.values():
        assert a["load_s"]["median"] > 0
        assert a["decode"]["latency_ms"]["n"] == 4 and a["decode"]["latency_ms"]["median"] > 0
        assert set(a["prefill"]) == {"8", "16"} and a["prefill"]["16"]["tokens_per_s"]["median"] > 0
        assert 10 * 2**20 < a["memory"]["peak_rss_bytes"]["median"] < 8 * 2**30
        assert a["memory"]["peak_gpu_bytes"] is None
        assert 1 < a["quality"]["perplexity"] < 1e4 and a["quality"]["tokens"] == 30
    for name in ("pruned/model-f32", "pruned/onnx"):
        r = by[name]["ratios"]
        assert r["ideal_decode_speedup"] > 1.2 and 0.3 < r["block_sparsity"] < 0.9
        assert r["size_reduction"] > 1.2
        assert all(math.isfinite(v) and v > 0 for v in (r["decode_speedup"], r["memory_reduction"],
                                                         r["perplexity_ratio"]))
    # the same weights give the same perplexity in both runtimes
    assert by["pruned/onnx"]["quality"]["perplexity"] == pytest.approx(
        by["pruned/model-f32"]["quality"]["perplexity"], rel=1e-3)


def test_mismatched_baselines_are_rejected(artifacts, tmp_path, capsys):
    d, p = artifacts / "dense", artifacts / "pruned"
    rc = main(["run", str(p / "ckpt"), "--baseline", str(d / "model-f32.gguf"),
               "--baseline", str(d / "onnx"), *FAST, "-o", str(tmp_path / "r.json")])
    assert rc == EXIT_BAD_INPUT
    assert "baselines of the same format" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


@pytest.mark.skipif(cuda_available(), reason="checks the no-CUDA error")
def test_cuda_without_gpu_is_a_user_error(artifacts, tmp_path, capsys):
    d, p = artifacts / "dense", artifacts / "pruned"
    rc = main(["run", str(p / "model-f32.gguf"), "--baseline", str(d / "model-f32.gguf"), "--device", "cuda",
               *FAST, "-o", str(tmp_path / "r.json")])
    assert rc == EXIT_BAD_INPUT and "no CUDA GPU" in capsys.readouterr().err


@pytest.mark.cuda
@pytest.mark.skipif(not cuda_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("artifact", ["ckpt", "onnx", "model-f32.gguf"])
def test_cuda_paths(artifacts, tmp_path, artifact):
    """PyTorch, onnxruntime CUDA EP and llama.cpp offload; skipped when the runtime lacks CUDA."""
    import importlib

    if artifact == "ckpt" and not importlib.import_module("torch").cuda.is_available():
        pytest.skip("this PyTorch build has no CUDA")
    if artifact == "onnx" and "CUDAExecutionProvider" not in importlib.import_module(
            "onnxruntime").get_available_providers():
        pytest.skip("this onnxruntime has no CUDAExecutionProvider")
    if artifact.endswith(".gguf") and not importlib.import_module("llama_cpp").llama_supports_gpu_offload():
        pytest.skip("this llama-cpp-python was built without GPU offload")
    d, p = artifacts / "dense", artifacts / "pruned"
    out = tmp_path / "r.json"
    assert main(["run", str(p / artifact), "--baseline", str(d / artifact), "--device", "cuda", *FAST,
                 "-o", str(out)]) == EXIT_OK
    doc = load_results(out)
    assert doc["settings"]["device"] == "cuda"
    assert all(a["memory"]["peak_gpu_bytes"]["median"] > 0 for a in doc["artifacts"])
