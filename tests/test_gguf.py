"""GGUF exporter on tiny random Llama models: every width pattern the
compression stage can produce, exported, loaded by llama-cpp-python and
compared with PyTorch (F32 weights + F32 KV cache: max |Δlogit| ≤ 1e-3)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from exporters.gguf import export_gguf
from exporters.gguf import export as export_module
from toolchain.gguf_layout import read_layout
from exporters.gguf.metadata import RECIPE_KEY
from exporters.gguf.verify import compare_logits
from exporters.llamacpp import check_gguf_file, gguf_perplexity
from tests.tiny import SAMPLE_TEXT, plan_of, pruned, random_plan, tiny_model, with_random_biases
from toolchain.errors import UserError, VerificationError
from toolchain.models import Model
from toolchain.perplexity import encode, perplexity, torch_logits_fn
from toolchain.plan import LayerPlan
from toolchain.surgery import prune_layer

TEXT = SAMPLE_TEXT * 3
PARITY = 1e-3


def export(model: Model, tmp_path, quant="f32", name="m.gguf", **kw) -> dict:
    kw.setdefault("verify_text", TEXT)
    return export_gguf(model, tmp_path / name, quant=quant, verify_seqlen=64, verify_windows=2,
                       progress=False, **kw)


def cut(seed: int, layers, **overrides) -> Model:
    """A tiny model cut to (heads, kv_heads, n_channels) per layer."""
    model = tiny_model(seed, **overrides)
    return pruned(model, plan_of(model, layers))


def file_widths(path) -> dict:
    """The width keys as the file holds them (scalar or per-layer array)."""
    fields = read_layout(path).fields
    arch = fields["general.architecture"][2]
    keys = {"head_count": "attention.head_count", "head_count_kv": "attention.head_count_kv",
            "feed_forward_length": "feed_forward_length"}
    return {k: fields[f"{arch}.{v}"][2] for k, v in keys.items()}


def assert_parity(summary: dict) -> None:
    assert summary["passed"], summary["failures"]
    assert summary["max_abs_dlogit"] <= PARITY
    assert summary["top1_agreement"] == 1.0
    assert summary["tokenizer_match"]


def field(layout, key):
    return layout.fields[key]


# ---------------------------------------------------------------- architectures

def test_dense_is_llama_with_scalar_widths(tmp_path):
    s = export(tiny_model(0), tmp_path)
    assert_parity(s)
    assert s["architecture"] == "llama" and not s["pruned"]
    layout = read_layout(tmp_path / "m.gguf")
    vtype, _, value = field(layout, "llama.attention.head_count")
    assert vtype.name == "UINT32" and value == 4
    assert field(layout, "llama.feed_forward_length")[2] == 128
    assert "output.weight" in {t.name for t in layout.tensors}  # tiny models are untied
    assert (tmp_path / "m.gguf").stat().st_mode & 0o044  # not the 0600 of a temp file


def test_uniform_pruned_widths_stay_llama(tmp_path):
    lm = cut(1, [([0, 2], [0, 1], 48)] * 3)
    s = export(lm, tmp_path)
    assert_parity(s)
    assert s["architecture"] == "llama" and s["pruned"]
    layout = read_layout(tmp_path / "m.gguf")
    assert field(layout, "llama.attention.head_count")[2] == 2
    assert field(layout, "llama.feed_forward_length")[2] == 48


@pytest.mark.parametrize("seed", [0, 3])
def test_per_layer_widths_are_deci_with_arrays(tmp_path, seed):
    lm = tiny_model(seed)
    plan = random_plan(lm, seed=seed)
    s = export(pruned(lm, plan), tmp_path)
    assert_parity(s)
    assert s["architecture"] == "deci"
    layout = read_layout(tmp_path / "m.gguf")
    assert field(layout, "deci.attention.head_count")[2] == [lp.num_heads for lp in plan.layers]
    assert field(layout, "deci.attention.head_count_kv")[2] == [lp.num_kv_heads for lp in plan.layers]
    assert field(layout, "deci.feed_forward_length")[2] == [lp.intermediate_size for lp in plan.layers]
    for key in ("deci.attention.key_length", "deci.attention.value_length", "deci.rope.dimension_count"):
        assert field(layout, key)[2] == 16


def test_gqa_with_whole_groups_removed(tmp_path):
    # layer 0 drops KV group 0, layer 2 drops KV group 1, layer 1 keeps both
    lm = cut(2, [([2, 3], [1], 64), ([0, 1, 2, 3], [0, 1], 96), ([0, 1], [0], 32)])
    s = export(lm, tmp_path)
    assert_parity(s)
    assert file_widths(tmp_path / "m.gguf")["head_count_kv"] == [1, 2, 1]


def test_gqa_one_query_head_per_group(tmp_path):
    lm = cut(3, [([1, 3], [0, 1], 40), ([0, 2], [0, 1], 64), ([0, 1, 2, 3], [0, 1], 8)])
    assert_parity(export(lm, tmp_path))


def test_reconstruction_biases_are_exported(tmp_path):
    lm = tiny_model(4)
    lm = with_random_biases(pruned(lm, random_plan(lm, seed=4)), 4)
    s = export(lm, tmp_path)
    assert_parity(s)
    names = {t.name for t in read_layout(tmp_path / "m.gguf").tensors}
    assert {f"blk.{i}.{n}.bias" for i in range(3) for n in ("attn_output", "ffn_down")} <= names


def test_dropping_the_biases_would_be_caught(tmp_path):
    """The biases above matter: the same model without them differs from the file."""
    lm = tiny_model(4)
    lm = with_random_biases(pruned(lm, random_plan(lm, seed=4)), 4)
    export(lm, tmp_path, verify=False)
    ids = encode(lm.tokenizer, TEXT)[:64]
    from exporters.llamacpp import llama_logits_fn, open_llama
    llm = open_llama(tmp_path / "m.gguf", n_ctx=64)
    with_biases = np.abs(llama_logits_fn(llm)(ids) - torch_logits_fn(lm.module())(ids)).max()
    for layer in lm.module().model.layers:
        layer.mlp.down_proj.bias = None
    without = np.abs(llama_logits_fn(llm)(ids) - torch_logits_fn(lm.module())(ids)).max()
    llm.close()
    assert with_biases <= PARITY < 0.1 < without


def test_qkv_biases_are_permuted_like_the_weights(tmp_path):
    lm = tiny_model(5, attention_bias=True)
    with torch.no_grad():
        for layer in lm.module().model.layers:
            for lin in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                lin.bias.normal_(0, 0.5)
    assert_parity(export(pruned(lm, random_plan(lm, seed=5)), tmp_path))


@pytest.mark.parametrize("tied", [True, False])
def test_tied_and_untied_embeddings(tmp_path, tied):
    lm = tiny_model(6, tie_word_embeddings=tied)
    assert (lm.module().lm_head.weight is lm.module().model.embed_tokens.weight) == tied
    assert_parity(export(pruned(lm, random_plan(lm, seed=6)), tmp_path))
    names = {t.name for t in read_layout(tmp_path / "m.gguf").tensors}
    assert ("output.weight" in names) == (not tied)


@pytest.mark.parametrize("rope", [
    {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
     "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
    {"rope_type": "linear", "rope_theta": 50000.0, "factor": 4.0},
])
def test_rope_scaling_is_carried(tmp_path, rope):
    lm = tiny_model(7, rope_parameters=rope)
    assert_parity(export(pruned(lm, random_plan(lm, seed=7)), tmp_path))
    names = {t.name for t in read_layout(tmp_path / "m.gguf").tensors}
    assert ("rope_freqs.weight" in names) == (rope["rope_type"] == "llama3")


def test_unsupported_rope_type_is_a_user_error(tmp_path):
    lm = tiny_model(7, rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0})
    with pytest.raises(UserError, match="rope type"):
        export(lm, tmp_path)
    assert not (tmp_path / "m.gguf").exists()


# ---------------------------------------------------------------- docs/DESIGN.md §5 traps

@pytest.mark.parametrize("layer", [
    LayerPlan([], [], list(range(8))),          # no heads: would lose attn_output.bias
    LayerPlan([0, 1, 2, 3], [0, 1], []),        # attention but n_ff = 0: output silently dropped
    LayerPlan([], [], []),                      # a no-op layer (llama.cpp runs it, we never emit it)
])
@pytest.mark.parametrize("where", [0, 2])
def test_plan_validate_rejects_empty_layers(layer, where):
    lm = tiny_model(8)
    plan = plan_of(lm, [([0, 1, 2, 3], [0, 1], 64)] * 3)
    plan.layers[where] = layer
    with pytest.raises(UserError, match="at least one"):
        plan.validate()


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors:UserWarning")  # the empty layer is the point
def test_exporter_refuses_a_hand_made_empty_layer(tmp_path):
    """A model shrunk without PruningPlan.validate (e.g. an edited checkpoint) is refused."""
    lm = tiny_model(8)
    module = lm.module()
    prune_layer(module.model.layers[2], lm.family, LayerPlan([0, 1, 2, 3], [0, 1], []), lm.dims)
    with pytest.raises(UserError, match="layer 2 keeps"):
        export(Model.from_module(module, lm.tokenizer), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_smallest_allowed_widths_export_and_match(tmp_path):
    """One query head, its KV head and one FFN channel in every layer (layer 0 included)."""
    lm = with_random_biases(cut(9, [([3], [1], 1), ([0], [0], 1), ([2], [1], 1)]), 9)
    s = export(lm, tmp_path)
    assert_parity(s)
    assert file_widths(tmp_path / "m.gguf") == {"head_count": 1, "head_count_kv": 1, "feed_forward_length": 1}
    assert s["architecture"] == "llama"  # uniform, even when minimal


def test_smallest_widths_in_one_layer_only_is_deci(tmp_path):
    lm = with_random_biases(cut(9, [([3], [1], 1), ([0, 1, 2, 3], [0, 1], 128), ([2], [1], 1)]), 10)
    s = export(lm, tmp_path)
    assert_parity(s)
    assert s["architecture"] == "deci"


# ---------------------------------------------------------------- quantisation

def test_bad_quant_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="q4_k_m"):
        export(tiny_model(0), tmp_path, quant="q3_x")
    assert list(tmp_path.iterdir()) == []


def test_output_directory_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="directory"):
        export_gguf(tiny_model(0), tmp_path, quant="f32", progress=False)


def test_q8_0_reports_fallbacks_for_odd_rows(tmp_path, capfd):
    lm = cut(11, [([0, 1, 2, 3], [0, 1], 48), ([0, 2], [0, 1], 64), ([1], [0], 40)])
    s = export(lm, tmp_path, quant="q8_0")
    assert s["passed"], s["failures"]
    fell = {f["tensor"]: f for f in s["fallbacks"]}
    # ffn_down rows are the kept FFN width (48, 64, 40), attn_output rows kept heads x 16
    assert set(fell) == {"blk.0.ffn_down.weight", "blk.2.ffn_down.weight", "blk.2.attn_output.weight"}
    assert all(f["requested"] == "Q8_0" and f["used"] == "F16" for f in fell.values())
    assert s["tensor_types"]["Q8_0"] > 0
    err = capfd.readouterr().err
    assert "quantisation fallback" in err and "rows of 48" in err and "rows of 16" in err


def test_k_quant_uses_llama_cpp_quantiser_and_reports_fallbacks(tmp_path, capfd):
    # hidden 256 so that q/k/v/gate/up rows can take Q4_K; pruned rows of 128 / 96 cannot
    lm = cut(12, [([0, 1, 2, 3], [0, 1], 256), ([0, 2], [0, 1], 96), ([0, 1, 2, 3], [0, 1], 256)],
             hidden_size=256, intermediate_size=256, head_dim=64, num_attention_heads=4, num_key_value_heads=2)
    # a random model's logits are near-ties, so top-1 agreement says nothing at 4 bits:
    # judge the file by perplexity here (the SmolLM2 slow test applies the full verdict)
    s = export(lm, tmp_path, quant="q4_k_m", verify=False)
    v = compare_logits(lm, tmp_path / "m.gguf", TEXT, 64, 2)
    assert abs(v["ppl_ratio"] - 1) < 0.05 and v["max_abs_dlogit"] > PARITY  # really quantised
    assert s["tensor_types"].get("Q4_K", 0) > 0
    fell = {f["tensor"]: f["used"] for f in s["fallbacks"]}
    assert set(fell) == {"blk.1.attn_output.weight", "blk.1.ffn_down.weight"}
    assert all(used in ("Q5_0", "Q5_1", "Q8_0", "F16") for used in fell.values())
    assert "instead of Q4_K" in capfd.readouterr().err
    assert not list(tmp_path.glob(".*"))  # the F32 intermediate is gone


# ---------------------------------------------------------------- verification & files

def test_verification_failure_keeps_failed_file_and_previous_artifact(tmp_path, monkeypatch):
    """A writer bug (one weight row negated after writing) must be caught, not shipped."""
    lm = tiny_model(13)
    lm = pruned(lm, random_plan(lm, seed=13))
    real_write = export_module.write_gguf

    def corrupting_write(model, path, spec, recipe, progress=False):
        info = real_write(model, path, spec, recipe, progress)
        layout = read_layout(path, keep=lambda k: False)
        t = next(t for t in layout.tensors if t.name == "blk.1.ffn_down.weight")
        with open(path, "r+b") as f:
            f.seek(layout.data_start + t.offset)
            row = np.frombuffer(f.read(t.shape[0] * 4), dtype=np.float32)
            f.seek(layout.data_start + t.offset)
            f.write((-4 * row).astype(np.float32).tobytes())
        return info

    monkeypatch.setattr(export_module, "write_gguf", corrupting_write)
    (tmp_path / "m.gguf").write_bytes(b"previous good artifact")
    with pytest.raises(VerificationError, match="verification failed") as err:
        export(lm, tmp_path)
    assert (tmp_path / "m.gguf").read_bytes() == b"previous good artifact"
    assert (tmp_path / "m.gguf.failed").is_file()
    assert err.value.summary["passed"] is False
    assert err.value.summary["max_abs_dlogit"] > PARITY
    assert len(list(tmp_path.iterdir())) == 2


def test_truncated_and_foreign_files_are_user_errors(tmp_path):
    export(tiny_model(0), tmp_path, verify=False)
    data = (tmp_path / "m.gguf").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[: len(data) - 1000])
    (tmp_path / "head.gguf").write_bytes(data[:100])
    (tmp_path / "text.gguf").write_text("not a model")
    with pytest.raises(UserError, match="truncated"):
        gguf_perplexity(tmp_path / "cut.gguf", TEXT, 32)
    for name in ("head.gguf", "text.gguf"):
        with pytest.raises(UserError, match="not a readable GGUF"):
            check_gguf_file(tmp_path / name)
    with pytest.raises(UserError, match="does not exist"):
        check_gguf_file(tmp_path / "missing.gguf")


def test_gguf_perplexity_matches_pytorch(tmp_path):
    lm = tiny_model(14)
    lm = pruned(lm, random_plan(lm, seed=14))
    export(lm, tmp_path, verify=False)
    got = gguf_perplexity(tmp_path / "m.gguf", TEXT, 64, max_windows=4)
    want = perplexity(torch_logits_fn(lm.module()), encode(lm.tokenizer, TEXT), 64, max_windows=4)
    assert got["backend"] == "llama.cpp"
    assert got["tokens"] == want["tokens"] and got["windows"] == want["windows"]
    assert got["perplexity"] == pytest.approx(want["perplexity"], rel=1e-5)


def test_metadata_names_base_and_records_recipe(tmp_path):
    lm = tiny_model(15)
    lm = pruned(lm, random_plan(lm, seed=15))
    lm.source = {"kind": "tiny", "path": "tiny-seed15"}
    recipe = {"sparsity": 0.5, "criterion": "flap", "reconstruct": "liar"}
    export(lm, tmp_path, recipe=recipe, verify=False)
    layout = read_layout(tmp_path / "m.gguf")
    assert json.loads(field(layout, RECIPE_KEY)[2]) == recipe
    assert field(layout, "general.base_model.0.name")[2] == "tiny-seed15"
    assert field(layout, "general.name")[2] == "tiny-seed15 (pruned)"
    assert field(layout, "tokenizer.ggml.pre")[2] == "gpt-2"
    assert field(layout, "tokenizer.ggml.add_bos_token")[2] is False


@pytest.mark.parametrize("kind", ["gguf", "checkpoint"])
def test_tokenizer_keys_are_copied_from_a_source_gguf(tmp_path, kind):
    lm = tiny_model(16)
    export(lm, tmp_path, name="source.gguf", verify=False)
    src = {"kind": "gguf", "path": str(tmp_path / "source.gguf")}
    lm = pruned(lm, random_plan(lm, seed=16))
    lm.source = src if kind == "gguf" else {"kind": "checkpoint", "path": "x", "base": src}
    s = export(lm, tmp_path)
    assert_parity(s)
    assert s["tokenizer_source"] == "gguf"
    a, b = read_layout(tmp_path / "source.gguf"), read_layout(tmp_path / "m.gguf")
    tok = lambda layout: {k: v for k, v in layout.fields.items() if k.startswith("tokenizer.")}  # noqa: E731
    assert tok(a) == tok(b) and len(tok(a)) >= 8


def test_json_summary_counts_fallbacks_per_type_and_row(tmp_path):
    """stdout's --json keeps one line per (requested → used, row); summary.json keeps every tensor."""
    from toolchain.cli import readable

    lm = cut(11, [([0, 1, 2, 3], [0, 1], 48), ([0, 2], [0, 1], 48), ([1], [0], 40)])
    s = export(lm, tmp_path, quant="q8_0", verify=False)
    full = {"exports": {"gguf": s}, "sparsity": 0.5}
    out = readable(full, tmp_path / "summary.json")
    groups = {(g["used"], g["row"]): g["count"] for g in out["exports"]["gguf"]["fallbacks"]}
    assert groups == {("F16", 48): 2, ("F16", 40): 1, ("F16", 16): 1}  # 2 heads × 16 = 32 rows fit Q8_0
    assert out["exports"]["gguf"]["fallbacks_listed_in"] == str(tmp_path / "summary.json")
    assert len(full["exports"]["gguf"]["fallbacks"]) == 4 and out["sparsity"] == 0.5  # the input is untouched
