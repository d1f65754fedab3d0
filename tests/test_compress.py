import copy

import pytest
import torch

from tests.tiny import sample_ids, tiny_model
from toolchain.allocation import allocate
from toolchain.criteria import CRITERIA
from toolchain.errors import UserError
from toolchain.pipeline import Compressor, dense_plan
from toolchain import recipe
from toolchain.recipe import CompressOptions
from toolchain.reconstruct import reconstruct_oneshot
from toolchain.stats import StatsAccumulator

CALIB = sample_ids(n=32, seed=7, batch=12)


def compress(loaded, plan=None, **kw):
    kw.setdefault("round_to", 16)
    opts = CompressOptions(**kw)
    return Compressor(loaded.model, CALIB, opts, torch.device("cpu"), plan=plan, progress=False).run()


def test_every_recipe_criterion_has_an_implementation():
    assert set(recipe.CRITERIA) == set(CRITERIA)


@pytest.mark.parametrize("criterion", sorted(CRITERIA))
@pytest.mark.parametrize("allocation", recipe.ALLOCATIONS)
def test_plan_invariants(criterion, allocation):
    loaded = tiny_model(seed=0)
    dense_params = dense_plan(loaded.model).block_params()
    res = compress(loaded, sparsity=0.4, criterion=criterion, allocation=allocation)
    plan = res.plan
    plan.validate()
    for lp, layer in zip(plan.layers, loaded.model.model.layers):
        assert lp.intermediate_size % 16 == 0 and lp.intermediate_size >= 16
        per_kv = {k: sum(h // plan.group_size == k for h in lp.heads) for k in lp.kv_heads}
        assert len(set(per_kv.values())) == 1  # n_head % n_head_kv == 0
        assert layer.mlp.down_proj.in_features == lp.intermediate_size
        assert layer.self_attn.o_proj.in_features == lp.num_heads * plan.head_dim
    achieved = 1 - plan.block_params() / dense_params
    assert abs(achieved - 0.4) < 0.12  # unit granularity of a tiny model
    if allocation == "uniform":
        assert plan.is_uniform
    with torch.no_grad():
        assert torch.isfinite(loaded.model(sample_ids()).logits).all()


def test_whole_group_mode_drops_kv_heads():
    loaded = tiny_model(seed=0)
    plan = compress(loaded, sparsity=0.5, head_unit="groups", allocation="uniform").plan
    assert all(lp.num_kv_heads == 1 and lp.num_heads == 2 for lp in plan.layers)
    assert loaded.model.model.layers[0].self_attn.k_proj.out_features == 16


def _activations(linear, loaded, ids):
    acts = []
    h = linear.register_forward_pre_hook(lambda m, a: acts.append(a[0].reshape(-1, a[0].shape[-1])))
    with torch.no_grad():
        loaded.model(ids)
    h.remove()
    return torch.cat(acts).double()


def test_liar_and_bias_match_direct_least_squares():
    loaded = tiny_model(seed=3)
    lin = loaded.model.model.layers[1].mlp.down_proj
    x = _activations(lin, loaded, CALIB)
    acc = StatsAccumulator()
    for chunk in x.float().split(100):
        acc.add(chunk)
    stats = acc.result()
    keep = list(range(0, 128, 2))
    drop = [j for j in range(128) if j not in keep]
    w = lin.weight.double()
    # direct reference: regress x_P on [x_S, 1] by lstsq on the raw activations
    design = torch.cat([x[:, keep], torch.ones(len(x), 1, dtype=x.dtype)], 1)
    coef = torch.linalg.lstsq(design, x[:, drop]).solution
    ref_w = w[:, keep] + w[:, drop] @ coef[:-1].T
    ref_b = w[:, drop] @ coef[-1]
    new, used = reconstruct_oneshot(lin, keep, stats, "liar", ridge=0.0)
    assert used == "liar"
    torch.testing.assert_close(new.weight.double(), ref_w, atol=2e-4, rtol=1e-3)
    torch.testing.assert_close(new.bias.double(), ref_b, atol=2e-4, rtol=1e-3)
    bias_new, _ = reconstruct_oneshot(lin, keep, stats, "bias")
    torch.testing.assert_close(bias_new.bias.double(), w[:, drop] @ x[:, drop].mean(0), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(bias_new.weight, lin.weight[:, keep])

    def err(m):
        y = x.float() @ lin.weight.T
        y_hat = m(x[:, keep].float())
        return (y - y_hat).pow(2).sum().item()

    none_new, _ = reconstruct_oneshot(lin, keep, stats, "none")
    liar_default, _ = reconstruct_oneshot(lin, keep, stats, "liar")
    assert err(liar_default) <= err(bias_new) <= err(none_new)
    assert err(liar_default) < 0.9 * err(none_new)


def test_plan_replay_reproduces_model():
    a, b = tiny_model(seed=4), tiny_model(seed=4)
    res = compress(a, sparsity=0.5, criterion="wanda-sp", allocation="global")
    compress(b, plan=copy.deepcopy(res.plan), sparsity=0.5, criterion="wanda-sp")
    for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert ka == kb
        torch.testing.assert_close(va, vb, atol=1e-6, rtol=1e-5)


def _final_error(loaded, dense):
    ids = sample_ids(n=32, seed=11, batch=4)
    with torch.no_grad():
        return (loaded.model(ids).logits - dense.model(ids).logits).pow(2).mean().item()


@pytest.mark.parametrize("mode", ["oneshot", "sequential"])
def test_reconstruction_reduces_output_error(mode):
    dense = tiny_model(seed=5)
    errs = {}
    for method in ("none", "bias", "liar"):
        m = tiny_model(seed=5)
        compress(m, sparsity=0.5, reconstruct=method, mode=mode, allocation="uniform")
        errs[method] = _final_error(m, dense)
    assert errs["liar"] < errs["none"]
    assert errs["bias"] <= errs["none"] * 1.05


def test_sequential_uses_same_plan_as_oneshot_for_uniform():
    a, b = tiny_model(seed=6), tiny_model(seed=6)
    pa = compress(a, sparsity=0.3, mode="oneshot", allocation="uniform").plan
    pb = compress(b, sparsity=0.3, mode="sequential", allocation="uniform").plan
    assert pa == pb


def test_bad_options():
    with pytest.raises(UserError):
        compress(tiny_model(), sparsity=1.0)
    with pytest.raises(UserError):
        compress(tiny_model(), criterion="nope")
    with pytest.raises(UserError):
        allocate(dense_plan(tiny_model().model), [], [], 0.5, allocation="nope")
