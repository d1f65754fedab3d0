"""ONNX export of tiny per-layer-pruned Llamas, run in onnxruntime, against PyTorch."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from exporters.onnx import export, export_onnx, onnx_perplexity, verify
from exporters.onnx.runtime import OnnxDecoder
from tests.conftest import TINY_KINDS, tiny_kind
from tests.tiny import sample_ids, tiny_model
from toolchain.errors import UserError, VerificationError
from toolchain.perplexity import encode, perplexity, torch_logits_fn

TOL = 1e-3


@pytest.fixture(params=TINY_KINDS)
def exported(request, tiny_artifacts):
    art = tiny_artifacts[request.param]
    return art["model"], art["dir"] / "onnx", art["onnx"]


def _torch_logits(model, ids) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(ids)).logits.numpy()


def test_widths_are_really_per_layer():
    widths, kv = tiny_kind("pruned").widths, tiny_kind("groups").widths.column("num_key_value_heads")
    assert len(set(widths.column("num_attention_heads"))) > 1 and len(set(kv)) > 1
    assert len(set(widths.column("intermediate_size"))) > 1
    assert all(w.o_proj_bias and w.down_proj_bias for w in widths)


def test_export_summary_and_verification(exported):
    loaded, out, summary = exported
    v = summary["verification"]
    assert v["passed"] and v["max_abs_dlogit"] <= TOL and v["max_abs_dlogit_kv"] <= TOL
    assert v["top1_agreement"] == 1.0
    assert abs(v["perplexity_onnx"] / v["perplexity_torch"] - 1) < 1e-4
    assert summary["path"] == str(out / "model.onnx") and summary["quant"] == "none"
    assert (out / "tokenizer.json").is_file() and not list(out.glob(".*"))


def test_io_json_matches_graph(exported):
    loaded, out, _ = exported
    io = json.loads((out / "io.json").read_text())
    dec = OnnxDecoder(out)
    kv = [w["num_key_value_heads"] for w in io["layers"]]
    assert dec.kv_heads == kv and dec.head_dim == io["head_dim"] == 16
    shapes = {i.name: i.shape for i in dec.session.get_inputs()}
    for i, h in enumerate(kv):
        assert shapes[f"past_key_values.{i}.key"][1:2] + shapes[f"past_key_values.{i}.key"][3:] == [h, 16]
        assert all(isinstance(d, str) for d in (shapes[f"past_key_values.{i}.value"][0],
                                               shapes[f"past_key_values.{i}.value"][2]))
    assert [o.name for o in dec.session.get_outputs()] == \
        ["logits"] + [f"present.{i}.{t}" for i in range(len(kv)) for t in ("key", "value")]


def test_full_sequence_and_prefill_decode_parity(exported):
    loaded, out, _ = exported
    dec = OnnxDecoder(out)
    ids = sample_ids(20, seed=5)[0].tolist()
    ref = _torch_logits(loaded.module(), [ids])[0]
    assert np.abs(dec.logits(ids) - ref).max() <= TOL
    pre, cache = dec.prefill(ids[:17])
    assert np.abs(pre - ref[:17]).max() <= TOL
    for j in range(17, 20):  # 3 decode steps through present -> past
        row, cache = dec.decode(ids[j], cache)
        assert cache.length == j + 1 and cache.past[0].shape[2] == j + 1
        assert np.abs(row - ref[j]).max() <= TOL


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_matches_each_sequence_alone(exported, side):
    loaded, out, _ = exported
    dec = OnnxDecoder(out)
    a, b = sample_ids(12, seed=6)[0].tolist(), sample_ids(7, seed=7)[0].tolist()
    pad = [2] * (len(a) - len(b))
    ids = np.array([a, pad + b if side == "left" else b + pad])
    mask = np.ones_like(ids)
    if side == "left":
        mask[1, :len(pad)] = 0
    else:
        mask[1, len(b):] = 0
    logits, present = dec.forward(ids, mask)
    alone_a, alone_b = dec.logits(a), dec.logits(b)
    rows_b = slice(len(pad), None) if side == "left" else slice(0, len(b))
    assert np.isfinite(logits).all()
    assert np.abs(logits[0] - alone_a).max() <= TOL
    assert np.abs(logits[1, rows_b] - alone_b).max() <= TOL
    assert np.abs(alone_b - _torch_logits(loaded.module(), [b])[0]).max() <= TOL
    if side == "left":  # continue both sequences by one cached step each
        nxt = np.array([[a[0]], [b[0]]])
        step, _ = dec.forward(nxt, np.concatenate([mask, np.ones((2, 1), np.int64)], 1), past=present)
        assert np.abs(step[1, 0] - _torch_logits(loaded.module(), [b + [b[0]]])[0, -1]).max() <= TOL
        assert np.abs(step[0, 0] - _torch_logits(loaded.module(), [a + [a[0]]])[0, -1]).max() <= TOL


def test_greedy_generate_matches_torch(exported):
    loaded, out, _ = exported
    prompt = sample_ids(6, seed=8)[0].tolist()
    ids = list(prompt)
    for _ in range(6):
        ids.append(int(_torch_logits(loaded.module(), [ids])[0, -1].argmax()))
    assert OnnxDecoder(out).generate(prompt, 6) == ids[len(prompt):]


def test_onnx_perplexity_matches_torch(exported):
    loaded, out, _ = exported
    text = "Pruned decoders must still predict the next token. " * 20
    res = onnx_perplexity(out / "model.onnx", text, seqlen=32, threads=1)
    ref = perplexity(torch_logits_fn(loaded.module()), encode(loaded.tokenizer, text), 32)
    assert res["backend"] == "onnxruntime" and res["windows"] == ref["windows"] > 1
    assert res["perplexity"] == pytest.approx(ref["perplexity"], rel=1e-4)


@pytest.mark.parametrize("exported", ["pruned"], indirect=True)  # one pruned model is enough
@pytest.mark.parametrize("quant", ["int8", "int4"])
def test_quantised_exports_run(quant, tmp_path, monkeypatch, exported):
    loaded, fp32_dir, fp32_summary = exported
    if quant == "int4":  # also exercise the >2 GB external-data path on a small model
        monkeypatch.setattr(export, "EXTERNAL_DATA_ABOVE", 0)
    # both quantise the fp32 export already made (no second trace)
    s = export_onnx(loaded, tmp_path / quant, quant=quant, progress=False, float_onnx=fp32_dir)
    assert s["quant"] == quant and s["verification"]["passed"]
    assert s["model_bytes"] < fp32_summary["model_bytes"]
    dec = OnnxDecoder(tmp_path / quant)
    ops = {n.op_type for n in __import__("onnx").load(str(tmp_path / quant / "model.onnx"),
                                                      load_external_data=False).graph.node}
    assert "MatMulNBits" in ops and "MatMul" in ops  # weights quantised, attention scores float
    logits = dec.logits(sample_ids(16, seed=9)[0].tolist())
    assert logits.shape == (16, loaded.config.vocab_size) and np.isfinite(logits).all()
    assert s["external_data"] == (quant == "int4") and s["model_bytes"] == sum(
        f.stat().st_size for f in (tmp_path / quant).glob("model.onnx*"))
    assert (tmp_path / quant / "model.onnx.data").is_file() == (quant == "int4")


def test_corrupt_or_mismatched_files_are_user_errors(exported, tmp_path):
    _, out, _ = exported
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    onnx_file = bad / "model.onnx"
    data = onnx_file.read_bytes()
    onnx_file.write_bytes(data[: len(data) // 3])
    with pytest.raises(UserError, match="cannot load"):
        OnnxDecoder(bad)
    with pytest.raises(UserError):
        onnx_perplexity(bad, "some text " * 50, seqlen=8)
    onnx_file.write_bytes(data)
    io = json.loads((bad / "io.json").read_text())
    io["layers"][0]["num_key_value_heads"] += 1
    (bad / "io.json").write_text(json.dumps(io))
    with pytest.raises(UserError, match="do not belong together"):
        OnnxDecoder(bad)
    (bad / "io.json").write_text("{not json")
    with pytest.raises(UserError, match="io.json"):
        OnnxDecoder(bad)
    with pytest.raises(UserError, match="does not exist"):
        OnnxDecoder(tmp_path / "nowhere")


def test_bad_arguments_are_user_errors(tmp_path):
    loaded = tiny_model()
    with pytest.raises(UserError, match="int8"):
        export_onnx(loaded, tmp_path / "o", quant="int3", progress=False)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        export_onnx(loaded, tmp_path / "busy" / "model.onnx", progress=False)
    with pytest.raises(UserError, match="fewer than one window"):
        export_onnx(loaded, tmp_path / "o", verify_text="far too short", progress=False)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["busy", "notes.txt"]


@pytest.mark.parametrize("exported", ["pruned"], indirect=True)
def test_failed_verification_leaves_nothing(tmp_path, monkeypatch, exported):
    loaded, fp32_dir, _ = exported
    monkeypatch.setitem(verify.TOLERANCES, "int8", {"max_ppl_increase": 0.02, "min_top1": 1.01})
    with pytest.raises(VerificationError, match="top-1 agreement"):
        export_onnx(loaded, tmp_path / "o", quant="int8", float_onnx=fp32_dir, progress=False)
    assert not list(tmp_path.iterdir())
