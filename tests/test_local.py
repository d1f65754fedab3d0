import pytest
import torch

from tests.tiny import CALIB, compressed, random_plan, sample_ids, tiny_model
from toolchain.errors import UserError
from toolchain.local import default_steps, lr_factor
from toolchain.plan import LayerPlan
from toolchain.recipe import LocalOptions

FAST = dict(lr=1e-3, steps=12, batch_size=4)


@pytest.fixture(autouse=True)
def one_thread():
    """Two shared cores: OpenMP spinning makes tiny ops ~100× slower with 2 threads."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _plan(dense, seed: int):
    """Random per-layer widths where every attention and MLP loses something."""
    plan = random_plan(dense, seed=seed)
    for i, lp in enumerate(plan.layers):
        if lp.num_heads == plan.num_heads:
            plan.layers[i] = LayerPlan([h for h in lp.heads if h % plan.group_size == 0], lp.kv_heads, lp.channels)
    return plan


def _local(dense, plan_seed: int = 5, method: str = "none", **local):
    """`dense` cut to `_plan(plan_seed)`, closed form `method`, then refined: (model, per-submodel report)."""
    model, res = compressed(dense, plan=_plan(dense, plan_seed), reconstruct=method,
                            local=LocalOptions(**{**FAST, **local}))
    return model, res.local


def _state(model):
    return {k: v.clone() for k, v in model.module().state_dict().items()}


@pytest.mark.parametrize("granularity", ["module", "block", "blocks:2"])
def test_every_submodel_improves_and_structure_is_kept(granularity):
    dense = tiny_model(seed=5)
    dense_state = _state(dense)
    model, report = _local(dense, granularity=granularity)
    cut, _ = compressed(dense, plan=_plan(dense, 5), reconstruct="none")  # the same plan, not refined
    assert [(r["layers"], r["part"]) for r in report] == \
        [(list(s), p) for s, p in {"module": [([i], part) for i in range(3) for part in ("attn", "mlp")],
                                   "block": [([i], "block") for i in range(3)],
                                   "blocks:2": [([0, 1], "block"), ([2], "block")]}[granularity]]
    for r in report:
        assert r["steps"] == 12 and r["seconds"] > 0
        assert r["loss_after"] < 0.95 * r["loss_before"] and not r["reverted"], r
    assert model.widths == cut.widths == _plan(dense, 5).widths()
    got, start = _state(model), _state(cut)
    for k in got:
        assert got[k].shape == start[k].shape, k
        if "layers." not in k:  # embeddings, final norm, lm_head do not train
            assert torch.equal(got[k], start[k]), k
    assert any(not torch.equal(got[k], start[k]) for k in got if "layers." in k)
    assert all(torch.equal(v, dense_state[k]) for k, v in dense.module().state_dict().items())  # dense untouched
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in model.module().parameters())


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
    dense = tiny_model(seed=6)
    liar, _ = compressed(dense, sparsity=0.5, reconstruct="liar")
    assert liar.module().model.layers[0].mlp.down_proj.bias is not None  # LIAR really ran
    expected = _layer_mse_on_dense_inputs(liar.module(), dense.module(), CALIB)
    refined, res = compressed(dense, sparsity=0.5, reconstruct="liar",
                              local=LocalOptions(granularity="block", inputs="dense", **FAST))
    assert res.plan == compressed(dense, sparsity=0.5, reconstruct="liar")[1].plan
    for r, want in zip(res.local, expected, strict=True):
        assert r["loss_before"] == pytest.approx(want, rel=1e-4)
        assert r["loss_after"] < r["loss_before"]
    assert refined.widths == liar.widths
    # the refined weights are what the report says: re-measure independently
    after = _layer_mse_on_dense_inputs(refined.module(), dense.module(), CALIB)
    for r, got in zip(res.local, after):
        assert r["loss_after"] == pytest.approx(got, rel=1e-4)


def test_refined_model_exports_to_gguf_and_passes_verification(tmp_path):
    """Local refinement changes values only: the exporter's llama.cpp parity check still holds."""
    from exporters.gguf import export_gguf
    from tests.tiny import SAMPLE_TEXT

    refined, res = compressed(tiny_model(seed=2), sparsity=0.5, local=LocalOptions(granularity="module", **FAST))
    assert all(r["loss_after"] < r["loss_before"] for r in res.local)  # it really changed the weights
    summary = export_gguf(refined, tmp_path / "m.gguf", quant="f32", verify_text=SAMPLE_TEXT * 3,
                          verify_seqlen=64, verify_windows=2, progress=False)
    assert summary["passed"], summary["failures"]
    assert summary["max_abs_dlogit"] <= 1e-3


def test_deterministic_for_a_seed_on_cpu():
    dense = tiny_model(seed=8)
    (ma, ra), (mb, rb), (mc, _) = (_local(dense, 8, granularity="module", seed=s) for s in (0, 0, 1))
    sa, sb, sc = _state(ma), _state(mb), _state(mc)
    assert [r["loss_after"] for r in ra] == [r["loss_after"] for r in rb]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)  # the seed orders the batches


def _logit_error(model, dense):
    ids = sample_ids(n=32, seed=11, batch=4)
    with torch.no_grad():
        return (model.module()(ids).logits - dense.module()(ids).logits).pow(2).mean().item()


def test_pruned_inputs():
    dense = tiny_model(seed=9)
    cut, _ = compressed(dense, plan=_plan(dense, 9), reconstruct="none")
    model, report = _local(dense, 9, inputs="pruned")
    _, ref = _local(dense, 9, inputs="dense")
    assert report[0]["loss_before"] == ref[0]["loss_before"]  # same input at the first block
    assert report[1]["loss_before"] > ref[1]["loss_before"]  # upstream error reaches later blocks
    assert all(r["loss_after"] < r["loss_before"] for r in report)
    assert _logit_error(model, dense) < _logit_error(cut, dense)


def test_a_diverging_submodel_gets_its_starting_weights_back():
    dense = tiny_model(seed=3)
    cut, _ = compressed(dense, plan=_plan(dense, 3), reconstruct="none")
    model, report = _local(dense, 3, lr=10.0, steps=4)
    assert all(r["reverted"] and r["loss_after"] == r["loss_before"] for r in report)
    start = _state(cut)
    assert all(torch.equal(v, start[k]) for k, v in _state(model).items())


def test_schedule_and_steps():
    assert default_steps(12, 4) == 3 and default_steps(13, 4) == 4 and default_steps(13, 4, epochs=3) == 12
    f = [lr_factor(s, 10, 0.2) for s in range(10)]
    assert f[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert all(a > b for a, b in zip(f[2:], f[3:])) and f[-1] == pytest.approx(1 / 8)
    assert min(f) > 0 and [lr_factor(s, 4, 0.0) for s in range(4)] == [1.0, 0.75, 0.5, 0.25]


@pytest.mark.parametrize("bad", [dict(granularity="blocks:0"), dict(granularity="layer"),
                                 dict(granularity="blocks:x"), dict(inputs="teacher"), dict(steps=0),
                                 dict(lr=0.0), dict(warmup=1.0), dict(batch_size=0), dict(weight_decay=-1)])
def test_bad_options_are_refused_before_any_model(bad):
    with pytest.raises(UserError):
        LocalOptions(**bad).validate()
