import tempfile

import pytest
import torch

from tests.tiny import random_plan, sample_ids, tiny_model
from toolchain.checkpoint import load_checkpoint, save_checkpoint
from toolchain.errors import UserError
from toolchain.plan import LayerPlan, PruningPlan
from toolchain.surgery import apply_plan, ensure_bias


def _reference_logits(model, plan, ids):
    """Zero the removed weights instead of removing them: same function, dense shapes."""
    d = plan.head_dim
    with torch.no_grad():
        for layer, lp in zip(model.model.layers, plan.layers):
            drop_q = [h for h in range(plan.num_heads) if h not in lp.heads]
            for h in drop_q:
                layer.self_attn.o_proj.weight[:, h * d:(h + 1) * d] = 0
            drop_ch = [c for c in range(plan.intermediate_size) if c not in lp.channels]
            layer.mlp.down_proj.weight[:, drop_ch] = 0
        return model(ids).logits


@pytest.mark.parametrize("whole_groups", [False, True])
def test_surgery_matches_zeroed_dense(whole_groups):
    loaded = tiny_model(seed=1)
    plan = random_plan(loaded.model, seed=3, whole_groups=whole_groups)
    ids = sample_ids()
    apply_plan(loaded.model, plan)
    with torch.no_grad():
        pruned = loaded.model(ids).logits
    ref = _reference_logits(tiny_model(seed=1).model, plan, ids)
    torch.testing.assert_close(pruned, ref, atol=1e-5, rtol=1e-5)
    for layer, lp in zip(loaded.model.model.layers, plan.layers):
        assert layer.self_attn.q_proj.out_features == lp.num_heads * plan.head_dim
        assert layer.mlp.down_proj.in_features == lp.intermediate_size


def test_save_load_identical_logits():
    loaded = tiny_model(seed=2)
    plan = random_plan(loaded.model, seed=5)
    apply_plan(loaded.model, plan)
    layer = loaded.model.model.layers[1]
    layer.mlp.down_proj = ensure_bias(layer.mlp.down_proj)
    torch.nn.init.normal_(layer.mlp.down_proj.bias, 0, 0.1)
    ids = sample_ids()
    with tempfile.TemporaryDirectory() as d:
        save_checkpoint(loaded, d, {"plan": plan.to_json()})
        back = load_checkpoint(d)
        with torch.no_grad():
            torch.testing.assert_close(back.model(ids).logits, loaded.model(ids).logits,
                                       atol=0, rtol=0)
        assert back.model.config.liar_layers == loaded.model.config.liar_layers
        assert PruningPlan.from_json(back.meta["plan"]) == plan


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
