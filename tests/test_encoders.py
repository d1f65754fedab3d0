"""BERT-family encoders on tiny random models: the walk on padded batches, pruning and repair, the
sentence-transformers layout, ONNX and GGUF exports against PyTorch, the embedding metrics and every
bad-input case. Random weights say nothing about quality (tests/test_encoders_minilm.py does)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertModel, BertTokenizerFast

from tests.tiny import SAMPLE_TEXT
from toolchain.cli import eval_command, export_command, export_parser, request_from_args
from toolchain.cliutil import run_main
from toolchain.errors import EXIT_BAD_INPUT
from toolchain.models import Model, open_model
from toolchain.pooling import MODES

TEXT = SAMPLE_TEXT * 4
FAST = ["--calib-samples", "12", "--calib-seqlen", "24", "--round-to", "16", "--mode", "oneshot",
        "--reconstruct", "liar", "--verify-text"]
ST_MODULES = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
              {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
              {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]


@functools.lru_cache(maxsize=1)
def wordpiece() -> BertTokenizerFast:
    """A ~160-token uncased WordPiece vocabulary trained on SAMPLE_TEXT."""
    import tempfile

    from tokenizers import BertWordPieceTokenizer

    trainer = BertWordPieceTokenizer(lowercase=True)
    trainer.train_from_iterator([SAMPLE_TEXT], vocab_size=200,
                                special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    with tempfile.TemporaryDirectory() as d:
        trainer.save_model(d)
        return BertTokenizerFast(f"{d}/vocab.txt")


def tiny_bert(seed: int = 0, pooler: bool = False, **overrides) -> BertModel:
    config = BertConfig(**{"vocab_size": len(wordpiece()), "hidden_size": 64, "intermediate_size": 128,
                           "num_hidden_layers": 3, "num_attention_heads": 4, "max_position_embeddings": 96,
                           "pad_token_id": 0, "architectures": ["BertModel"], **overrides})
    torch.manual_seed(seed)
    model = BertModel(config, add_pooling_layer=pooler).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.08)
    return model


def save_encoder(out: Path, pooling: str | None = "mean", **overrides) -> Path:
    """A tiny BERT as sentence-transformers saves one (with the pooler, as BertModel has it)."""
    tiny_bert(pooler=True, **overrides).save_pretrained(out)
    wordpiece().save_pretrained(out)
    if pooling is not None:
        (out / "modules.json").write_text(json.dumps(ST_MODULES))
        (out / "1_Pooling").mkdir()
        (out / "1_Pooling" / "config.json").write_text(json.dumps(
            {"word_embedding_dimension": 64, **{key: mode == pooling for key, mode in MODES.items()}}))
        (out / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 48}))
    return out


def in_memory(seed: int = 0) -> Model:
    return Model.from_module(tiny_bert(seed), wordpiece(), {"kind": "tiny", "path": "tiny-bert"})


@pytest.fixture(scope="session")
def encoder_dir(tmp_path_factory) -> Path:
    return save_encoder(tmp_path_factory.mktemp("encoder") / "tiny")


@pytest.fixture(scope="session")
def text_file(tmp_path_factory) -> Path:
    f = tmp_path_factory.mktemp("text") / "t.txt"
    f.write_text(TEXT)
    return f


def export(*argv) -> int:
    return run_main("liar-export", export_command, list(argv))


@pytest.fixture(scope="session")
def pruned_export(encoder_dir, text_file, tmp_path_factory) -> dict:
    """The tiny encoder at --sparsity 0.4 (heads and FFN, global), to HF and ONNX: its summary."""
    from tests.conftest import liar_export

    out = tmp_path_factory.mktemp("pruned") / "s40"
    return liar_export(out, str(encoder_dir), "--sparsity", "0.4", "--to", "hf", "--to", "onnx", "--calib",
                       str(text_file), *FAST, str(text_file))


# -- the walk on padded batches -------------------------------------------------------------

def padded_batch(tokenizer, seed: int = 0):
    from toolchain.passages import calibration_batch

    return calibration_batch(tokenizer, TEXT, 8, 96, seed)


def test_streamed_layers_reproduce_the_transformers_forward_on_padded_batches():
    from toolchain.walk import Runner

    model = in_memory()
    ids, mask = padded_batch(model.tokenizer)
    assert (mask == 0).any(), "the batch must hold padding"
    runner = Runner(model, ids, torch.device("cpu"), batch_size=4, tokens=mask)
    hidden = runner.hidden
    for i in range(model.num_layers):
        hidden = runner.run(i, model.layer(i), hidden)
    with torch.no_grad():
        want = model.module()(input_ids=ids, attention_mask=mask).last_hidden_state
    real = mask.bool()
    torch.testing.assert_close(hidden[real], want[real], atol=1e-5, rtol=1e-5)


def test_padding_never_reaches_statistics_or_the_local_loss():
    """Other ids in the padding positions change nothing: statistics and local refinement see real tokens."""
    from toolchain.compress import compress
    from toolchain.recipe import CompressOptions, LocalOptions
    from toolchain.sinks import MemorySink

    model = in_memory()
    ids, mask = padded_batch(model.tokenizer)
    noisy = torch.where(mask.bool(), ids, torch.randint(5, len(model.tokenizer), ids.shape))
    results = []
    for batch in (ids, noisy):
        sink = MemorySink(model)
        res = compress(model, batch, CompressOptions(sparsity=0.4, round_to=16, mode="sequential"),
                       torch.device("cpu"), sink, local=LocalOptions(steps=3), progress=False, tokens=mask)
        results.append((sink.close(res.widths, {}).module().state_dict(), res.local))
    (a, local_a), (b, local_b) = results
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    assert [r["loss_before"] for r in local_a] == pytest.approx([r["loss_before"] for r in local_b], rel=1e-4)


@pytest.mark.parametrize("options", [dict(allocation="global"), dict(allocation="uniform", mode="sequential"),
                                     dict(reconstruct="bias"), dict(reconstruct="none", prune="heads")])
def test_pruned_encoder_runs_with_its_widths(options):
    model = in_memory()
    ids, mask = padded_batch(model.tokenizer)
    pruned, result = _compressed(model, ids, mask, sparsity=0.4, **options)
    assert pruned.is_pruned and pruned.widths == result.widths
    with torch.no_grad():
        out = pruned.module()(input_ids=ids, attention_mask=mask).last_hidden_state
    assert out.shape == (*ids.shape, 64) and torch.isfinite(out).all()
    for layer, w in zip(pruned.module().encoder.layer, result.widths):
        assert layer.attention.self.query.out_features == w.num_attention_heads * 16
        assert layer.intermediate.dense.out_features == w.intermediate_size


def _compressed(model, ids, mask, local=None, **options):
    from toolchain.compress import compress
    from toolchain.recipe import CompressOptions
    from toolchain.sinks import MemorySink

    sink = MemorySink(model)
    result = compress(model, ids, CompressOptions(round_to=16, **options), torch.device("cpu"), sink,
                      local=local, progress=False, tokens=mask)
    return sink.close(result.widths, {"plan": result.plan.to_json()}), result


def test_liar_reduces_the_output_error_against_plain_pruning():
    """On the calibration batch, LIAR's repaired layers reproduce the dense output better than cutting."""
    model = in_memory(seed=3)
    ids, mask = padded_batch(model.tokenizer)
    with torch.no_grad():
        dense = model.module()(input_ids=ids, attention_mask=mask).last_hidden_state[mask.bool()]
    errors = {}
    for method in ("none", "liar"):
        pruned, _ = _compressed(model, ids, mask, sparsity=0.4, reconstruct=method, allocation="uniform")
        with torch.no_grad():
            out = pruned.module()(input_ids=ids, attention_mask=mask).last_hidden_state[mask.bool()]
        errors[method] = (out - dense).pow(2).mean().item()
    assert errors["liar"] < errors["none"]


# -- sentence-transformers layout and pooling --------------------------------------------------

@pytest.mark.parametrize("mode", ["cls", "mean", "max"])
def test_pooling_is_read_and_applied(tmp_path, mode):
    from toolchain.pooling import pool, read_pooling

    d = save_encoder(tmp_path / "m", pooling=mode)
    p = read_pooling(d)
    assert (p.mode, p.normalize, p.max_seq_length) == (mode, True, 48)
    h = torch.arange(24.0).view(2, 3, 4)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    want = {"cls": h[:, 0], "mean": torch.stack([h[0, :2].mean(0), h[1].mean(0)]),
            "max": torch.stack([h[0, :2].amax(0), h[1].amax(0)])}[mode]
    torch.testing.assert_close(pool(h, mask, mode), want)


def test_plain_bert_directory_gets_mean_pooling(tmp_path):
    from toolchain.pooling import read_pooling

    assert read_pooling(save_encoder(tmp_path / "m", pooling=None)).mode == "mean"


@pytest.mark.parametrize("module", ["sentence_transformers.models.Dense", "sentence_transformers.models.LayerNorm"])
def test_unknown_sentence_transformers_modules_are_refused(encoder_dir, tmp_path, capsys, module):
    d = save_encoder(tmp_path / "m")
    (d / "modules.json").write_text(json.dumps(ST_MODULES + [{"idx": 3, "name": "3", "path": "3_X", "type": module}]))
    assert module in _bad(capsys, tmp_path / "out", str(d), "--to", "onnx", "--sparsity", "0")


# -- liar-export end to end -----------------------------------------------------------------

def test_export_keeps_pooling_and_verifies_onnx(pruned_export):
    s = pruned_export
    assert 0.2 < s["sparsity"] < 0.6 and s["params"]["pruned"]["block"] < s["params"]["dense"]["block"]
    hf = Path(s["artifacts"]["hf"])
    assert (hf / "modules.json").is_file() and (hf / "1_Pooling" / "config.json").is_file()
    from toolchain.pooling import pooling_of

    assert pooling_of(open_model(str(hf))).mode == "mean"
    v = s["exports"]["onnx"]["verification"]
    assert v["passed"] and v["max_abs_dhidden"] < 1e-3 and v["mean_cosine"] > 0.99999
    recipe = s["recipe"]
    assert recipe["structured"]["mode"] == "oneshot" and recipe["calibration"]["samples"] == 12


def test_per_layer_ffn_checkpoint_is_reopened(encoder_dir, text_file, tmp_path):
    """FFN-only per-layer widths are written as a remote-code checkpoint (LiarBertModel); liar-export
    reads it back with those widths instead of taking it for a model with a task head."""
    from tests.conftest import liar_export

    summary = liar_export(tmp_path / "ffn", str(encoder_dir), "--sparsity", "0.4", "--prune", "ffn", "--to", "hf",
                          "--calib", str(text_file), *FAST, str(text_file))
    ckpt = Path(summary["artifacts"]["hf"])
    assert json.loads((ckpt / "config.json").read_text())["architectures"] == ["LiarBertModel"]
    ffn = [w.intermediate_size for w in open_model(str(ckpt)).widths.layers]
    plan = json.loads((ckpt.parent / "plan.json").read_text())
    assert len(set(ffn)) > 1 and ffn == [len(lp["channels"]) for lp in plan["layers"]]


def test_checkpoint_note_only_where_a_checkpoint_is_asked_for(encoder_dir, text_file, tmp_path, capsys):
    """Per-layer head widths: transformers cannot load the checkpoint alone, which matters to a user
    of --to hf only (every run writes a checkpoint internally for its exporters)."""
    args = [str(encoder_dir), "--sparsity", "0.4", "--calib", str(text_file), *FAST, str(text_file)]
    note = "cannot be given these per-layer widths"
    assert export(*args, "--to", "onnx", "-o", str(tmp_path / "onnx")) == 0
    assert note not in capsys.readouterr().err
    assert export(*args, "--to", "hf", "-o", str(tmp_path / "hf")) == 0
    assert note in capsys.readouterr().err


def test_onnx_encoder_graph_matches_pytorch_on_any_batch(pruned_export):
    """Dynamic batch and sequence; the pooled, normalised embedding is the model's."""
    from exporters.onnx.encoder import INPUTS, OUTPUTS, OnnxEncoder
    from toolchain.embeddings import TorchEncoder

    onnx = OnnxEncoder(pruned_export["artifacts"]["onnx"])
    assert [i.name for i in onnx.session.get_inputs()] == list(INPUTS)
    assert [o.name for o in onnx.session.get_outputs()] == list(OUTPUTS)
    io = onnx.io
    assert io["kind"] == "encoder" and io["pooling"]["mode"] == "mean" and io["layers"] == pruned_export["widths"]
    torch_enc = TorchEncoder(open_model(pruned_export["artifacts"]["hf"]))
    for texts in (["the quick brown fox"], SAMPLE_TEXT.split(". ")[:7]):
        ours, ref = onnx(texts), torch_enc(texts)
        assert ours.shape == (len(texts), 64)
        np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1, atol=1e-5)
        np.testing.assert_allclose(ours, ref, atol=1e-4)
        ids, hf = onnx.encode(texts), wordpiece()(texts, padding=True, truncation=True, max_length=48)
        assert ids["input_ids"].tolist() == hf["input_ids"] and ids["attention_mask"].tolist() == hf["attention_mask"]


def test_liar_eval_scores_encoders_against_a_reference(pruned_export, encoder_dir, text_file, tmp_path, capsys):
    dense = tmp_path / "dense"
    assert export(str(encoder_dir), "--sparsity", "0", "--to", "onnx", "-o", str(dense), "--verify-text",
                  str(text_file)) == 0
    capsys.readouterr()
    onnx = pruned_export["artifacts"]["onnx"]
    assert run_main("liar-eval", eval_command, [onnx, "--reference", str(dense / "onnx" / "model.onnx"),
                                                "--text", str(text_file), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["backend"] == "onnxruntime" and r["pairs"] >= 2 and 0 <= r["recall@10"] <= 1
    assert -1 <= r["cosine_min"] <= r["cosine"] < 0.99999  # pruned: not the dense embeddings
    assert run_main("liar-eval", eval_command, [str(dense / "onnx" / "model.onnx"), "--reference", str(encoder_dir),
                                                "--text", str(text_file), "--json"]) == 0
    same = json.loads(capsys.readouterr().out)  # the dense export against the dense model in PyTorch
    assert same["cosine"] > 0.99999 and same["relative_recall@10"] == 1.0


def test_gguf_export_is_uniform_ffn_only_and_verified(encoder_dir, text_file, tmp_path, capsys):
    out = tmp_path / "g"
    assert export(str(encoder_dir), "--sparsity", "0.3", "--to", "gguf", "--quant", "f32", "-o", str(out), "--json",
                  *FAST, str(text_file)) == 0
    s = json.loads(capsys.readouterr().out)
    widths = s["widths"]
    assert {(w["num_attention_heads"], w["intermediate_size"]) for w in widths} == {(4, widths[0]["intermediate_size"])}
    assert widths[0]["intermediate_size"] < 128
    g = s["exports"]["gguf"]
    assert g["architecture"] == "bert" and g["passed"] and g["tokenizer_match"] and g["mean_cosine"] > 0.9999
    assert s["recipe"]["structured"]["allocation"] == "uniform" and s["recipe"]["structured"]["prune"] == "ffn"
    assert run_main("liar-eval", eval_command, [s["artifacts"]["gguf"], "--text", str(text_file), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["backend"] == "llama.cpp" and r["pairs"] >= 2 and 0 <= r["recall@1"] <= r["recall@10"] <= 1


def test_encoder_defaults_fill_only_unset_options():
    from toolchain.recipe import ENCODER_DEFAULTS, CompressOptions

    unset = request_from_args(export_parser().parse_args(["m", "-o", "x"]))
    assert (unset.structured.mode, unset.calib.samples, unset.calib.seqlen, unset.local) == ("oneshot", 64, 256, None)
    assert unset.structured.pricing == CompressOptions.pricing  # encoder values only once the model is known
    enc = unset.for_encoder()
    assert enc.structured.mode == ENCODER_DEFAULTS["mode"] and enc.calib.samples == ENCODER_DEFAULTS["calib_samples"]
    assert enc.structured.pricing == ENCODER_DEFAULTS["pricing"] and enc.local.epochs == ENCODER_DEFAULTS["local_epochs"]
    assert enc.reconstruct == ENCODER_DEFAULTS["reconstruct"] and enc.encoder_defaults == {}
    given = request_from_args(export_parser().parse_args(
        ["m", "-o", "x", "--mode", "sequential", "--reconstruct", "bias", "--pricing", "score",
         "--calib-samples", "8", "--calib-seqlen", "16"])).for_encoder()
    assert (given.structured.mode, given.reconstruct, given.structured.pricing, given.calib.samples,
            given.calib.seqlen) == ("sequential", "bias", "score", 8, 16)
    local = request_from_args(export_parser().parse_args(["m", "-o", "x", "--reconstruct", "liar+local",
                                                         "--local-epochs", "2"])).for_encoder()
    assert local.local.epochs == 2
    assert "encoder_defaults" not in json.dumps(enc.recipe())


# -- bad input: one line, exit 2, nothing written --------------------------------------------

def _bad(capsys, out: Path, *argv) -> str:
    """The error line of a refused run (progress lines may precede it)."""
    assert export(*argv, "-o", str(out)) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("liar-export: error:")]
    assert errors == err[-1:] and "Traceback" not in "\n".join(err) and not out.exists(), err
    return err[-1]


def test_bert_directory_without_weights(tmp_path, capsys):
    d = save_encoder(tmp_path / "m")
    (d / "model.safetensors").unlink()
    assert "safetensors" in _bad(capsys, tmp_path / "out", str(d), "--to", "onnx")


def test_cross_encoder_with_a_classification_head(tmp_path, capsys):
    from transformers import BertForSequenceClassification

    d = tmp_path / "ce"
    BertForSequenceClassification(tiny_bert().config).save_pretrained(d)
    wordpiece().save_pretrained(d)
    assert "BertForSequenceClassification" in _bad(capsys, tmp_path / "out", str(d), "--to", "onnx")


def test_non_bert_encoder(tmp_path, capsys):
    from transformers import DistilBertConfig, DistilBertModel

    d = tmp_path / "distil"
    DistilBertModel(DistilBertConfig(vocab_size=200, dim=32, n_layers=1, n_heads=2, hidden_dim=64)).save_pretrained(d)
    wordpiece().save_pretrained(d)
    assert "distilbert" in _bad(capsys, tmp_path / "out", str(d), "--to", "onnx")


def test_unstructured_sparsity_is_refused_for_encoders(encoder_dir, tmp_path, capsys):
    assert "structured" in _bad(capsys, tmp_path / "out", str(encoder_dir), "--pattern", "unstructured", "--to", "hf")


def test_gguf_refuses_what_llamacpp_cannot_pool_before_any_work(tmp_path, capsys):
    d = save_encoder(tmp_path / "m", pooling="max")
    assert "max pooling" in _bad(capsys, tmp_path / "out", str(d), "--to", "gguf", "--quant", "f32")


def test_gguf_refuses_head_pruning(encoder_dir, tmp_path, capsys):
    assert "--prune ffn" in _bad(capsys, tmp_path / "out", str(encoder_dir), "--to", "gguf", "--prune", "heads")


# -- embedding metrics ------------------------------------------------------------------------

def test_recall_and_cosine_are_what_they_say():
    from toolchain.embeddings import cosines, recall_at_k

    q = np.eye(4, dtype=np.float32)
    d = np.eye(4, dtype=np.float32)[[0, 1, 3, 2]]  # documents 2 and 3 swapped
    assert recall_at_k(q, d, (1, 2)) == {"recall@1": 0.5, "recall@2": 1.0}
    np.testing.assert_allclose(cosines(q, 2 * q), 1.0)
    np.testing.assert_allclose(cosines(q, d), [1, 1, 0, 0])


def test_retrieval_pairs_split_passages_in_halves():
    from toolchain.passages import retrieval_pairs

    words = " ".join(f"w{i}" for i in range(200))
    queries, documents = retrieval_pairs(words, half=10)
    assert len(queries) == len(documents) == 10
    assert queries[1].split() == [f"w{i}" for i in range(20, 30)]
    assert documents[1].split() == [f"w{i}" for i in range(30, 40)]


def test_encoder_table_rows_parse_before_any_work(tmp_path, capsys):
    """benchmarks.encoder_table: every default row is a known recipe (row names have no commas, so
    the default --recipes splits back into them) and an unknown row is refused before any export."""
    from benchmarks.encoder_table import RECIPES, main

    assert not any("," in name for name in RECIPES)
    with pytest.raises(SystemExit) as exc:
        main(["-o", str(tmp_path / "t"), "--work", str(tmp_path / "w"), "--recipes", "default,no-such-row"])
    assert exc.value.code == 2 and "no-such-row" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()
