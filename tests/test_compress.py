import pytest
import torch

from tests.tiny import CALIB, compressed, sample_ids, tiny_model
from toolchain import recipe
from toolchain.allocation import allocate
from toolchain.compress import dense_plan
from toolchain.errors import UserError
from toolchain.recipe import CompressOptions
from toolchain.reconstruct import reconstruct_oneshot
from toolchain.stats import StatsAccumulator


@pytest.mark.parametrize("criterion", recipe.CRITERIA)  # every name the CLI accepts runs
@pytest.mark.parametrize("allocation", recipe.ALLOCATIONS)
def test_plan_invariants(criterion, allocation):
    dense = tiny_model(seed=0)
    dense_params = dense_plan(dense).block_params()
    model, res = compressed(dense, sparsity=0.4, criterion=criterion, allocation=allocation)
    plan = res.plan
    plan.validate()
    for lp, layer in zip(plan.layers, model.module().model.layers):
        assert lp.intermediate_size % 16 == 0 and lp.intermediate_size >= 16
        per_kv = {k: sum(h // plan.group_size == k for h in lp.heads) for k in lp.kv_heads}
        assert len(set(per_kv.values())) == 1  # n_head % n_head_kv == 0
        assert layer.mlp.down_proj.in_features == lp.intermediate_size
        assert layer.self_attn.o_proj.in_features == lp.num_heads * plan.head_dim
    assert model.widths == res.widths  # the record says what the modules are
    achieved = 1 - plan.block_params() / dense_params
    assert abs(achieved - 0.4) < 0.12  # unit granularity of a tiny model
    assert model.widths.is_uniform == (allocation == "uniform") or allocation == "global"
    if allocation == "uniform":
        assert model.widths.is_uniform
    with torch.no_grad():
        assert torch.isfinite(model.module()(sample_ids()).logits).all()


def test_whole_group_mode_drops_kv_heads():
    model, res = compressed(tiny_model(seed=0), sparsity=0.5, head_unit="groups", allocation="uniform")
    assert all(lp.num_kv_heads == 1 and lp.num_heads == 2 for lp in res.plan.layers)
    assert model.module().model.layers[0].self_attn.k_proj.out_features == 16


def _activations(linear, module, ids):
    acts = []
    h = linear.register_forward_pre_hook(lambda m, a: acts.append(a[0].reshape(-1, a[0].shape[-1])))
    with torch.no_grad():
        module(ids)
    h.remove()
    return torch.cat(acts).double()


def test_liar_and_bias_match_direct_least_squares():
    module = tiny_model(seed=3).module()
    lin = module.model.layers[1].mlp.down_proj
    x = _activations(lin, module, CALIB)
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
    # the covariance formed in the Gram matrix's own memory is the same one
    inplace, _ = reconstruct_oneshot(lin, keep, stats, "liar", consume=True)
    torch.testing.assert_close(inplace.weight, liar_default.weight, atol=1e-6, rtol=1e-5)
    assert stats.gram is None  # consumed


def test_plan_replay_reproduces_model():
    dense = tiny_model(seed=4)
    a, res = compressed(dense, sparsity=0.5, criterion="wanda-sp", allocation="global")
    b, _ = compressed(dense, plan=res.plan, sparsity=0.5, criterion="wanda-sp")
    sa, sb = a.module().state_dict(), b.module().state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], atol=1e-6, rtol=1e-5)


def _final_error(model, dense):
    ids = sample_ids(n=32, seed=11, batch=4)
    with torch.no_grad():
        return (model.module()(ids).logits - dense.module()(ids).logits).pow(2).mean().item()


@pytest.mark.parametrize("mode", ["oneshot", "sequential"])
def test_reconstruction_reduces_output_error(mode):
    dense = tiny_model(seed=5)
    errs = {method: _final_error(compressed(dense, sparsity=0.5, reconstruct=method, mode=mode,
                                            allocation="uniform")[0], dense)
            for method in ("none", "bias", "liar")}
    assert errs["liar"] < errs["none"]
    assert errs["bias"] <= errs["none"] * 1.05


def test_sequential_uses_same_plan_as_oneshot_for_uniform():
    dense = tiny_model(seed=6)
    pa = compressed(dense, sparsity=0.3, mode="oneshot", allocation="uniform")[1].plan
    pb = compressed(dense, sparsity=0.3, mode="sequential", allocation="uniform")[1].plan
    assert pa == pb


def test_the_source_model_is_left_alone():
    dense = tiny_model(seed=6)
    before = {k: v.clone() for k, v in dense.module().state_dict().items()}
    compressed(dense, sparsity=0.5, mode="sequential")
    after = dense.module().state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("options, match", [
    ({"sparsity": 1.0}, "--sparsity"), ({"criterion": "nope"}, "--criterion"), ({"round_to": 0}, "--round-to"),
    ({"ridge": -1.0}, "--ridge"), ({"allocation": "nope"}, "--allocation"),
])
def test_bad_options_are_refused_before_any_model(options, match):
    with pytest.raises(UserError, match=match):
        CompressOptions(**options).validate()


def test_allocate_refuses_an_unknown_allocation():
    with pytest.raises(UserError, match="--allocation"):
        allocate(dense_plan(tiny_model()), [], [], 0.5, allocation="nope")


@pytest.mark.parametrize("method", ["none", "bias", "liar"])
@pytest.mark.parametrize("removed", [(40, 72), (0, 100)])  # fewer inputs removed than kept, and more
def test_priced_removal_error_is_the_reconstruction_error(method, removed):
    """toolchain.pricing's estimate for removing a set of inputs equals the mean squared output
    error the reconstruction really leaves on the calibration inputs; marginal errors add up to it."""
    from toolchain.pricing import marginal_errors, prefix_errors

    module = tiny_model(seed=3).module()
    lin = module.model.layers[1].mlp.down_proj
    x = _activations(lin, module, CALIB)
    acc = StatsAccumulator()
    acc.add(x.float())
    unit = list(range(*removed))
    prefixes = prefix_errors(lin.weight, acc.result(), unit, method, ridge=0.0)
    parts = marginal_errors(lin.weight, acc.result(), [unit[:8], unit[8:20], unit[20:]], method, ridge=0.0)
    assert sum(parts) == pytest.approx(float(prefixes[-1]), rel=1e-9)
    for k in (8, 20, len(unit)):  # every prefix of the removal order, not only the whole set
        keep = [j for j in range(128) if j not in unit[:k]]
        new, used = reconstruct_oneshot(lin, keep, acc.result(), method, ridge=0.0)
        assert used == method
        with torch.no_grad():
            err = ((x.float() @ lin.weight.T) - new(x[:, keep].float())).double().pow(2).sum(1).mean().item()
        assert float(prefixes[k - 1]) == pytest.approx(err, rel=1e-3)


def test_error_pricing_gives_a_valid_plan_with_both_kinds():
    model, res = compressed(tiny_model(seed=0), sparsity=0.4, pricing="error")
    res.plan.validate()
    assert model.widths == res.widths
    achieved = 1 - res.plan.block_params() / dense_plan(tiny_model(seed=0)).block_params()
    assert abs(achieved - 0.4) < 0.12


def _units(kind: str, costs: list[int], errors: list[float]) -> list:
    from toolchain.allocation import Unit

    return [Unit(0, kind, r, 0.0, c, error=e) for r, (c, e) in enumerate(zip(costs, errors))]


@pytest.mark.parametrize("attn_error, expected", [(100.0, (0, 3)), (0.01, (2, 1))])
def test_balanced_spends_a_layers_budget_on_the_cheaper_kind(attn_error, expected):
    """With a layer's budget fixed, heads go when their estimated error is lower than the FFN
    channels' of the same cost, and FFN channels otherwise; the cost stays closest to the budget."""
    from toolchain.allocation import _balanced

    attn = _units("attn", [20, 20], [attn_error, attn_error])
    ffn = _units("ffn", [20, 20, 20], [1.0, 1.0, 1.0])
    chosen = _balanced(attn, ffn, budget=60)
    assert (sum(u.kind == "attn" for u in chosen), sum(u.kind == "ffn" for u in chosen)) == expected
    assert sum(u.cost for u in chosen) == 60
    assert chosen == [u for u in attn + ffn if u in chosen]  # prefixes of each kind's removal order


def test_balanced_pricing_keeps_each_layers_budget():
    """`balanced` removes per layer what `score` removes, within half an FFN step (global allocation
    decides how much each layer loses; balancing only changes what)."""
    dense = tiny_model(seed=0)
    _, score = compressed(dense, sparsity=0.4, pricing="score")
    _, balanced = compressed(dense, sparsity=0.4, pricing="balanced")
    balanced.plan.validate()
    ffn_unit = 3 * 16 * dense.dims["hidden_size"]  # one round_to step of an FFN's three matrices
    for s, b in zip(score.plan.layers, balanced.plan.layers):
        assert abs(score.plan.with_layers([s]).block_params() - balanced.plan.with_layers([b]).block_params()) \
            <= ffn_unit // 2
