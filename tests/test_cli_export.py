"""liar-export / liar-eval end to end on a tiny model directory, and every bad-input case."""

import json

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from toolchain.cli import eval_command, export_command
from toolchain.cliutil import run_main
from toolchain.errors import EXIT_BAD_INPUT, EXIT_VERIFY_FAILED
from toolchain.models import open_model
from toolchain.recipe import PRESETS, SparsityOptions

FAST = ["--calib-samples", "4", "--calib-seqlen", "32", "--round-to", "16"]


def export(*argv):
    return run_main("liar-export", export_command, list(argv))


def test_export_hf_roundtrip(tiny_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert export(str(tiny_dir), "--to", "hf", "-o", str(out), "--sparsity", "0.4", "--json", *FAST) == 0
    summary = json.loads(capsys.readouterr().out)
    assert set(summary) >= {"artifacts", "params", "sparsity", "seconds"}
    assert summary["params"]["pruned"]["block"] < summary["params"]["dense"]["block"]
    assert 0.2 < summary["sparsity"] < 0.6
    back = open_model(summary["artifacts"]["hf"])
    assert back.widths.to_json() == summary["widths"] == back.config.liar_layers
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        assert torch.isfinite(back.module()(ids).logits).all()
        generated = back.module().generate(ids, max_new_tokens=5, do_sample=False)
    assert generated.shape[1] == 11
    assert export("verify-manifest", str(out)) == 0
    (out / "plan.json").write_text((out / "plan.json").read_text() + " ")
    assert export("verify-manifest", str(out)) == EXIT_VERIFY_FAILED


def test_plan_replay_via_cli(tiny_dir, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert export(str(tiny_dir), "--to", "hf", "-o", str(a), "--sparsity", "0.5", *FAST) == 0
    assert export(str(tiny_dir), "--to", "hf", "-o", str(b), "--plan", str(a / "plan.json"), *FAST) == 0
    sa, sb = open_model(str(a / "hf")).module().state_dict(), open_model(str(b / "hf")).module().state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], atol=1e-6, rtol=1e-5)


def test_recipe_replay_via_cli(tiny_dir, tmp_path):
    """--recipe replays what ran (its compression options; outputs from the command line)."""
    a, b = tmp_path / "a", tmp_path / "b"
    assert export(str(tiny_dir), "--to", "hf", "-o", str(a), "--sparsity", "0.5", "--mode", "sequential",
                  "--criterion", "wanda-sp", *FAST) == 0
    assert export(str(tiny_dir), "--to", "hf", "-o", str(b), "--recipe", str(a / "recipe.json")) == 0
    ra, rb = (json.loads((d / "recipe.json").read_text()) for d in (a, b))
    assert ra["structured"] == rb["structured"] and ra["calibration"] == rb["calibration"]
    assert (a / "plan.json").read_text() == (b / "plan.json").read_text()
    sa, sb = open_model(str(a / "hf")).module().state_dict(), open_model(str(b / "hf")).module().state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("max_windows", [None, 2])
def test_eval_json(tiny_dir, tmp_path, capsys, max_windows):
    text = tmp_path / "t.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 40)
    extra = ["--max-windows", str(max_windows)] if max_windows else []
    assert run_main("liar-eval", eval_command, [str(tiny_dir), "--text", str(text), "--seqlen", "32", "--json",
                                                *extra]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["backend"] == "torch" and result["tokens"] > 0 and result["perplexity"] > 1
    assert result["windows"] == (max_windows or result["windows"]) and (max_windows or result["windows"] > 2)


@pytest.fixture
def gpt2_dir(tmp_path):
    d = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100)).save_pretrained(d)
    return d


@pytest.mark.parametrize("case", ["missing", "arch", "sparsity", "calib_missing", "calib_short",
                                  "nonempty", "bad_plan", "bad_device", "bad_local", "bad_recipe", "sparse_plan"])
def test_bad_input_exit_2_and_nothing_written(case, tiny_dir, gpt2_dir, tmp_path, capsys):
    out = tmp_path / "out"
    model, extra = str(tiny_dir), []
    if case == "missing":
        model = str(tmp_path / "nope")
    elif case == "arch":
        model = str(gpt2_dir)
    elif case == "sparsity":
        extra = ["--sparsity", "1.0"]
    elif case == "calib_missing":
        extra = ["--calib", str(tmp_path / "missing.txt")]
    elif case == "calib_short":
        (tmp_path / "short.txt").write_text("too short")
        extra = ["--calib", str(tmp_path / "short.txt")]
    elif case == "nonempty":
        out.mkdir()
        (out / "keep.txt").write_text("user data")
    elif case == "bad_plan":
        (tmp_path / "plan.json").write_text('{"version": 1, "layers": "x"}')
        extra = ["--plan", str(tmp_path / "plan.json")]
    elif case == "bad_device" and torch.cuda.is_available():
        pytest.skip("CUDA present: --device cuda is valid here")
    elif case == "bad_device":
        extra = ["--device", "cuda"]
    elif case == "bad_local":
        extra = ["--reconstruct", "liar+local", "--local-granularity", "layer"]
    elif case == "bad_recipe":
        (tmp_path / "recipe.json").write_text('{"pattern": "structured", "structured": {"colour": "red"}}')
        extra = ["--recipe", str(tmp_path / "recipe.json")]
    elif case == "sparse_plan":
        (tmp_path / "plan.json").write_text("{}")
        extra = ["--pattern", "2:4", "--sparsity", "0.5", "--plan", str(tmp_path / "plan.json")]
    code = export(model, "--to", "hf", "-o", str(out), *FAST, *extra)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == EXIT_BAD_INPUT
    assert err and err[-1].startswith("liar-export: error:") and "Traceback" not in "\n".join(err)
    if case == "arch":
        assert "'gpt2'" in err[-1] and "llama" in err[-1] and "qwen3" in err[-1]  # names the supported types
    if case == "nonempty":
        assert [p.name for p in out.iterdir()] == ["keep.txt"]
    else:
        assert not out.exists()
    assert not list(tmp_path.glob(".out.tmp-*"))


@pytest.mark.parametrize("method", ["liar+local", "local"])
def test_local_reconstruction_via_cli(method, tiny_dir, tmp_path, capsys):
    """Every submodel's loss before/after reaches the --json summary and the saved recipe."""
    out = tmp_path / "out"
    assert export(str(tiny_dir), "--to", "hf", "-o", str(out), "--sparsity", "0.5", "--reconstruct", method,
                  "--local-granularity", "block", "--local-steps", "3", "--json", *FAST) == 0
    summary = json.loads(capsys.readouterr().out)
    subs = summary["local_reconstruction"]
    assert [s["layers"] for s in subs] == [[i] for i in range(len(summary["widths"]))]
    assert all(s["part"] == "block" and s["steps"] == 3 and s["loss_after"] <= s["loss_before"] for s in subs)
    assert any(s["loss_after"] < s["loss_before"] for s in subs)
    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["reconstruct"] == method and recipe["local"]["granularity"] == "block"
    assert recipe["local"]["steps"] == 3
    assert recipe["structured"]["reconstruct"] == {"liar+local": "liar", "local": "none"}[method]
    assert open_model(str(out / "hf")).widths.to_json() == summary["widths"]


def test_export_2_4_pattern(tiny_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert export(str(tiny_dir), "--to", "hf", "-o", str(out), "--pattern", "2:4", "--sparsity", "0.5",
                  "--reconstruct", "fista", "--fista-iters", "2", "--fista-steps", "1", "--json", *FAST) == 0
    summary = json.loads(capsys.readouterr().out)
    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["pattern"] == "2:4" and recipe["reconstruct"] == "fista" and "structured" not in recipe
    assert recipe["sparse"]["pattern"] == "2:4" and recipe["sparse"]["criterion"] == SparsityOptions.criterion
    assert recipe["sparse"]["iters"] == 2 and recipe["sparse"]["steps"] == 1
    assert abs(summary["sparsity"] - 0.5) < 1e-6
    model = open_model(str(out / "hf")).module()
    w = model.model.layers[0].mlp.down_proj.weight
    assert ((w.reshape(w.shape[0], -1, 4) != 0).sum(-1) == 2).all()


def test_dense_baseline_through_the_same_path(tiny_dir, tmp_path, capsys):
    """--sparsity 0 on a dense model: no pruning, same exporters (the benchmark baseline)."""
    out = tmp_path / "dense"
    assert export(str(tiny_dir), "--to", "hf", "--to", "gguf", "--quant", "f32", "-o", str(out),
                  "--sparsity", "0", "--json", *FAST) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["sparsity"] == 0
    assert summary["exports"]["gguf"]["passed"] and summary["exports"]["gguf"]["architecture"] == "llama"
    assert {w["intermediate_size"] for w in summary["widths"]} == {128}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_a_preset_fills_only_the_options_left_unset(preset):
    """--recipe NAME: the preset's values where the command line is silent, the command line's own
    values where it is not; the run's recipe names the preset."""
    from toolchain.cli import export_parser, request_from_args

    def request(*argv):
        return request_from_args(export_parser().parse_args(["--recipe", preset, "-o", "out", *argv]))

    req, default = request(), request_from_args(export_parser().parse_args(["-o", "out"]))
    values = {"calib_samples": req.calib.samples, "pricing": req.structured.pricing, "reconstruct": req.reconstruct}
    defaults = {"calib_samples": default.calib.samples, "pricing": default.structured.pricing,
                "reconstruct": default.reconstruct}
    assert values == {**defaults, **PRESETS[preset]}
    assert req.recipe()["preset"] == preset and "preset" not in default.recipe()
    assert request("--calib-samples", "3", "--pricing", "error").calib.samples == 3
    assert request("--pricing", "error").structured.pricing == "error"


def test_a_preset_is_for_structured_pruning(tmp_path, capsys):
    assert export("--recipe", "best", "--pattern", "2:4", "--sparsity", "0.5", "-o", str(tmp_path / "x")) == EXIT_BAD_INPUT
    assert "structured-pruning preset" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
