import json

import pytest
import torch

from tests.tiny import pruned, random_plan, sample_ids, tiny_model, with_random_biases
from toolchain.checkpoint import save_checkpoint
from toolchain.errors import UserError
from toolchain.models import open_model
from toolchain.plan import LayerPlan, PruningPlan


def _zeroed_dense_logits(model, plan, ids):
    """Zero the removed weights instead of removing them: same function, dense shapes."""
    module, d = model.module(), plan.head_dim
    with torch.no_grad():
        for layer, lp in zip(module.model.layers, plan.layers):
            for h in (h for h in range(plan.num_heads) if h not in lp.heads):
                layer.self_attn.o_proj.weight[:, h * d:(h + 1) * d] = 0
            drop_ch = [c for c in range(plan.intermediate_size) if c not in lp.channels]
            layer.mlp.down_proj.weight[:, drop_ch] = 0
        return module(ids).logits


@pytest.mark.parametrize("whole_groups", [False, True])
def test_surgery_matches_zeroed_dense(whole_groups):
    dense = tiny_model(seed=1)
    plan = random_plan(dense, seed=3, whole_groups=whole_groups)
    ids = sample_ids()
    cut = pruned(dense, plan)
    with torch.no_grad():
        logits = cut.module()(ids).logits
    torch.testing.assert_close(logits, _zeroed_dense_logits(dense, plan, ids), atol=1e-5, rtol=1e-5)
    assert cut.widths == plan.widths()
    for layer, lp in zip(cut.module().model.layers, plan.layers):
        assert layer.self_attn.q_proj.out_features == lp.num_heads * plan.head_dim
        assert layer.self_attn.k_proj.out_features == lp.num_kv_heads * plan.head_dim
        assert layer.mlp.down_proj.in_features == lp.intermediate_size


def test_save_load_identical_logits(tmp_path):
    dense = tiny_model(seed=2)
    plan = random_plan(dense, seed=5)
    model = with_random_biases(pruned(dense, plan), seed=5)
    save_checkpoint(model, tmp_path, {"plan": plan.to_json()})
    back = open_model(str(tmp_path))
    ids = sample_ids()
    with torch.no_grad():
        torch.testing.assert_close(back.module()(ids).logits, model.module()(ids).logits, atol=0, rtol=0)
    assert back.widths == model.widths and all(w.o_proj_bias and w.down_proj_bias for w in back.widths)
    assert PruningPlan.from_json(back.meta["plan"]) == plan
    assert back.source["kind"] == "checkpoint"


def test_checkpoint_whose_weights_disagree_with_its_widths_is_refused(tmp_path):
    dense = tiny_model(seed=2)
    save_checkpoint(pruned(dense, random_plan(dense, seed=5)), tmp_path, {})
    config = json.loads((tmp_path / "config.json").read_text())
    config["liar_layers"][1]["intermediate_size"] += 1
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="do not match the recorded widths"):
        open_model(str(tmp_path))


def test_plan_rejects_unrepresentable_layers():
    plan = PruningPlan.dense(2, 4, 2, 16, 64, 128)
    plan.layers[1] = LayerPlan([0, 1, 2], [0, 1], list(range(64)))  # 2 + 1 query heads per group
    with pytest.raises(UserError, match="unequal"):
        plan.validate()
    plan.layers[1] = LayerPlan([], [], list(range(64)))
    with pytest.raises(UserError, match="at least one"):
        plan.validate()
    plan.layers[1] = LayerPlan([0, 1], [1], list(range(64)))  # heads 0,1 belong to KV head 0
    with pytest.raises(UserError, match="removed KV head"):
        plan.validate()
