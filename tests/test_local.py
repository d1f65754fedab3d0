import copy

import pytest
import torch

from tests.tiny import random_plan, sample_ids, tiny_model
from toolchain.errors import UserError
from toolchain.local import default_steps, local_reconstruct, lr_factor, submodels
from toolchain.pipeline import Compressor
from toolchain.recipe import CompressOptions, LocalOptions
from toolchain.plan import LayerPlan
from toolchain.surgery import apply_plan, ensure_bias, layer_widths

CALIB = sample_ids(n=32, seed=7, batch=12)
CPU = torch.device("cpu")
FAST = dict(lr=1e-3, steps=12, batch_size=4)


@pytest.fixture(autouse=True)
def one_thread():
    """Two shared cores: OpenMP spinning makes tiny ops ~100× slower with 2 threads."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _pruned_pair(seed: int = 5):
    """(dense copy, pruned model with random widths and a random o_proj / down_proj bias)."""
    loaded = tiny_model(seed=seed)
    dense = copy.deepcopy(loaded.model)
    plan = random_plan(loaded.model, seed=seed)
    for i, lp in enumerate(plan.layers):  # every attention and MLP must lose something
        if lp.num_heads == plan.num_heads:
            plan.layers[i] = LayerPlan([h for h in lp.heads if h % plan.group_size == 0], lp.kv_heads, lp.channels)
    apply_plan(loaded.model, plan)
    g = torch.Generator().manual_seed(seed)
    layer = loaded.model.model.layers[1]
    layer.self_attn.o_proj = ensure_bias(layer.self_attn.o_proj)
    layer.mlp.down_proj = ensure_bias(layer.mlp.down_proj)
    with torch.no_grad():
        layer.self_attn.o_proj.bias.copy_(torch.randn(64, generator=g) * 0.05)
        layer.mlp.down_proj.bias.copy_(torch.randn(64, generator=g) * 0.05)
    loaded.model.config.liar_layers = layer_widths(loaded.model)
    return dense, loaded.model


def _shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("granularity", ["module", "block", "blocks:2"])
def test_every_submodel_improves_and_structure_is_kept(granularity):
    dense, pruned = _pruned_pair()
    dense_state = copy.deepcopy(dense.state_dict())
    shapes, widths = _shapes(pruned), copy.deepcopy(pruned.config.liar_layers)
    frozen = {k: v.clone() for k, v in pruned.state_dict().items() if "layers." not in k}
    report = local_reconstruct(dense, pruned, CALIB, LocalOptions(granularity=granularity, **FAST), CPU,
                               progress=False)
    assert [(r["layers"], r["part"]) for r in report] == \
        [(list(s.layers), s.part) for s in submodels(granularity, 3)]
    covered = [i for r in report for i in r["layers"] if r["part"] != "mlp"]
    assert covered == [0, 1, 2]
    for r in report:
        assert r["steps"] == 12 and r["seconds"] > 0
        assert r["loss_after"] < 0.95 * r["loss_before"] and not r["reverted"], r
    assert _shapes(pruned) == shapes and pruned.config.liar_layers == widths
    for k, v in frozen.items():  # embeddings, final norm, lm_head do not train
        assert torch.equal(pruned.state_dict()[k], v), k
    for k, v in dense.state_dict().items():  # the dense reference is untouched
        assert torch.equal(v, dense_state[k]) and v.device.type == "cpu", k
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in pruned.parameters())


def _dense_boundaries(model, ids):
    """Inputs and outputs of every decoder layer of `model` on `ids`, via hooks."""
    ins, outs = [], []
    hooks = [h for layer in model.model.layers for h in (
        layer.register_forward_pre_hook(lambda m, a, kw: ins.append(a[0].detach().clone()), with_kwargs=True),
        layer.register_forward_hook(lambda m, a, o: outs.append((o[0] if isinstance(o, tuple) else o).detach())))]
    with torch.no_grad():
        model(ids)
    for h in hooks:
        h.remove()
    return ins, outs


def _layer_mse_on_dense_inputs(pruned, dense, ids):
    """MSE of each pruned layer fed the dense layer input, vs the dense layer output.

    Computed through the model's own forward (HF's mask and rotary path), independently of
    the local-reconstruction code.
    """
    ins, outs = _dense_boundaries(dense, ids)
    errs = []
    for i, layer in enumerate(pruned.model.layers):
        got = []
        pre = layer.register_forward_pre_hook(lambda m, a, kw, x=ins[i]: ((x, *a[1:]), kw), with_kwargs=True)
        post = layer.register_forward_hook(lambda m, a, o: got.append(o[0] if isinstance(o, tuple) else o))
        with torch.no_grad():
            pruned(ids)
        pre.remove()
        post.remove()
        errs.append(torch.nn.functional.mse_loss(got[0].double(), outs[i].double()).item())
    return errs


def test_liar_plus_local_starts_from_the_liar_weights():
    loaded = tiny_model(seed=6)
    dense = copy.deepcopy(loaded.model)
    Compressor(loaded.model, CALIB, CompressOptions(sparsity=0.5, reconstruct="liar", round_to=16),
               CPU, progress=False).run()
    liar = loaded.model
    assert liar.model.layers[0].mlp.down_proj.bias is not None  # LIAR really ran
    expected = _layer_mse_on_dense_inputs(liar, dense, CALIB)
    shapes, widths = _shapes(liar), copy.deepcopy(liar.config.liar_layers)
    report = local_reconstruct(dense, liar, CALIB, LocalOptions(granularity="block", inputs="dense", **FAST),
                               CPU, progress=False)
    for r, want in zip(report, expected, strict=True):
        assert r["loss_before"] == pytest.approx(want, rel=1e-4)
        assert r["loss_after"] < r["loss_before"]
    assert _shapes(liar) == shapes and liar.config.liar_layers == widths
    # the refined weights are what the report says: re-measure independently
    after = _layer_mse_on_dense_inputs(liar, dense, CALIB)
    for r, got in zip(report, after):
        assert r["loss_after"] == pytest.approx(got, rel=1e-4)


@pytest.fixture(scope="module")
def refined_tiny():
    """A tiny model pruned at 0.5 with LIAR, then refined locally (module granularity)."""
    loaded = tiny_model(seed=2)
    dense = copy.deepcopy(loaded.model)
    Compressor(loaded.model, CALIB, CompressOptions(sparsity=0.5, round_to=16), CPU, progress=False).run()
    n = torch.get_num_threads()  # module scope: set up before the per-test one_thread fixture
    torch.set_num_threads(1)
    try:
        report = local_reconstruct(dense, loaded.model, CALIB, LocalOptions(granularity="module", **FAST), CPU,
                                   progress=False)
    finally:
        torch.set_num_threads(n)
    assert all(r["loss_after"] < r["loss_before"] for r in report)  # it really changed the weights
    return loaded


def test_refined_model_exports_to_gguf_and_passes_verification(refined_tiny, tmp_path):
    """Local refinement changes values only: the exporter's llama.cpp parity check still holds."""
    pytest.importorskip("llama_cpp")
    from exporters.gguf import export_gguf
    from tests.tiny import SAMPLE_TEXT

    summary = export_gguf(refined_tiny, tmp_path / "m.gguf", quant="f32", verify_text=SAMPLE_TEXT * 3,
                          verify_seqlen=64, verify_windows=2, progress=False)
    assert summary["passed"], summary["failures"]
    assert summary["max_abs_dlogit"] <= 1e-3


def test_refined_model_exports_to_onnx_and_passes_verification(refined_tiny, tmp_path):
    """Same for onnxruntime, with and without the KV cache."""
    from exporters.onnx import export_onnx

    verification = export_onnx(refined_tiny, tmp_path / "onnx", progress=False)["verification"]
    assert verification["passed"], verification["failures"]
    assert verification["max_abs_dlogit"] <= 1e-3 and verification["max_abs_dlogit_kv"] <= 1e-3


def test_deterministic_for_a_seed_on_cpu():
    def once(seed):
        dense, pruned = _pruned_pair(seed=8)
        opts = LocalOptions(granularity="module", seed=seed, **FAST)
        report = local_reconstruct(dense, pruned, CALIB, opts, CPU, progress=False)
        return report, pruned.state_dict()

    (ra, sa), (rb, sb), (_, sc) = once(0), once(0), once(1)
    assert [r["loss_after"] for r in ra] == [r["loss_after"] for r in rb]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)  # the seed orders the batches


def _logit_error(model, dense):
    ids = sample_ids(n=32, seed=11, batch=4)
    with torch.no_grad():
        return (model(ids).logits - dense(ids).logits).pow(2).mean().item()


def test_pruned_inputs():
    dense, pruned = _pruned_pair(seed=9)
    start_err = _logit_error(pruned, dense)
    ref_dense, ref_pruned = copy.deepcopy(dense), copy.deepcopy(pruned)
    report = local_reconstruct(dense, pruned, CALIB, LocalOptions(inputs="pruned", **FAST), CPU, progress=False)
    ref = local_reconstruct(ref_dense, ref_pruned, CALIB, LocalOptions(inputs="dense", **FAST), CPU,
                            progress=False)
    assert report[0]["loss_before"] == ref[0]["loss_before"]  # same input at the first block
    assert report[1]["loss_before"] > ref[1]["loss_before"]  # upstream error reaches later blocks
    assert all(r["loss_after"] < r["loss_before"] for r in report)
    assert _logit_error(pruned, dense) < start_err


def test_a_diverging_submodel_gets_its_starting_weights_back():
    dense, pruned = _pruned_pair(seed=3)
    start = copy.deepcopy(pruned.state_dict())
    report = local_reconstruct(dense, pruned, CALIB, LocalOptions(lr=10.0, steps=4), CPU, progress=False)
    assert all(r["reverted"] and r["loss_after"] == r["loss_before"] for r in report)
    assert all(torch.equal(v, start[k]) for k, v in pruned.state_dict().items())


def test_schedule_and_steps():
    assert default_steps(12, 4) == 3 and default_steps(13, 4) == 4
    f = [lr_factor(s, 10, 0.2) for s in range(10)]
    assert f[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert all(a > b for a, b in zip(f[2:], f[3:])) and f[-1] == pytest.approx(1 / 8)
    assert min(f) > 0 and [lr_factor(s, 4, 0.0) for s in range(4)] == [1.0, 0.75, 0.5, 0.25]


@pytest.mark.parametrize("bad", [dict(granularity="blocks:0"), dict(granularity="layer"),
                                 dict(granularity="blocks:x"), dict(inputs="teacher"), dict(steps=0),
                                 dict(lr=0.0), dict(warmup=1.0), dict(batch_size=0), dict(weight_decay=-1)])
def test_bad_options(bad):
    dense, pruned = _pruned_pair()
    with pytest.raises(UserError):
        local_reconstruct(dense, pruned, CALIB, LocalOptions(**bad), CPU, progress=False)


def test_mismatched_models():
    dense, pruned = _pruned_pair()
    other = tiny_model(seed=1, num_hidden_layers=2).model
    with pytest.raises(UserError):
        local_reconstruct(other, pruned, CALIB, LocalOptions(**FAST), CPU, progress=False)
