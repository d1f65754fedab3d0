"""Every compression stage on every device this machine has: CPU always, CUDA when present.

A device case runs the same recipe as a CPU reference and must agree with it (same plan,
close outputs; local refinement: every submodel no worse, the model back on the CPU in its
dtype). On a GPU machine the CUDA cases exercise the real CUDA paths — one layer or submodel
on the device, hidden states on the CPU, bf16 autocast for local refinement; without CUDA
they skip and the CPU cases check the same assertions.
"""

import copy

import pytest
import torch

from tests.tiny import sample_ids, tiny_model
from toolchain.local import local_reconstruct
from toolchain.pipeline import Compressor
from toolchain.recipe import CompressOptions, LocalOptions, SparsityOptions
from toolchain.unstructured import sparsify

DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU")])]
CALIB = sample_ids(n=32, seed=7, batch=12)
HELD_OUT = sample_ids(n=24, seed=8, batch=2)
CPU = torch.device("cpu")


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(HELD_OUT).logits.double()


def _rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got - want).norm() / want.norm()).item()


def _on_cpu_in_float32(model) -> bool:
    return all(t.device.type == "cpu" and t.dtype == torch.float32 for t in model.state_dict().values())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["oneshot", "sequential"])
def test_structured_pruning_and_liar_agree_with_cpu(device, mode):
    opts = CompressOptions(sparsity=0.5, round_to=16, mode=mode)
    ref, got = tiny_model(seed=3), tiny_model(seed=3)
    ref_plan = Compressor(ref.model, CALIB, opts, CPU, progress=False).run().plan
    plan = Compressor(got.model, CALIB, opts, torch.device(device), progress=False).run().plan
    assert plan.to_json() == ref_plan.to_json()
    assert _on_cpu_in_float32(got.model)
    assert _rel_err(_logits(got.model), _logits(ref.model)) < 1e-3


@pytest.mark.parametrize("device", DEVICES)
def test_local_refinement_improves_every_block_on_device(device):
    loaded = tiny_model(seed=4)
    dense = copy.deepcopy(loaded.model)
    Compressor(loaded.model, CALIB, CompressOptions(sparsity=0.5, round_to=16), CPU, progress=False).run()
    before = _logits(loaded.model)
    opts = LocalOptions(granularity="block", lr=1e-3, steps=12, batch_size=4, mixed_precision=True)
    report = local_reconstruct(dense, loaded.model, CALIB, opts, torch.device(device), progress=False)
    assert len(report) == loaded.model.config.num_hidden_layers
    assert all(r["loss_after"] <= r["loss_before"] for r in report)
    assert sum(r["loss_after"] for r in report) < sum(r["loss_before"] for r in report)
    assert _on_cpu_in_float32(loaded.model) and _on_cpu_in_float32(dense)
    assert not torch.equal(_logits(loaded.model), before)  # the weights really changed


@pytest.mark.parametrize("device", DEVICES)
def test_two_four_fista_agrees_with_cpu(device):
    opts = SparsityOptions(pattern="2:4", iters=2, steps=1, refit_iters=4)
    ref, got = tiny_model(seed=5), tiny_model(seed=5)
    sparsify(ref.model, CALIB, opts, CPU, progress=False)
    report = sparsify(got.model, CALIB, opts, torch.device(device), progress=False)
    assert report["sparsity"] == 0.5 and _on_cpu_in_float32(got.model)
    linears = [(a, b) for la, lb in zip(ref.model.model.layers, got.model.model.layers)
               for a, b in zip(la.modules(), lb.modules()) if isinstance(b, torch.nn.Linear)]
    for a, b in linears:
        assert ((b.weight != 0).reshape(b.out_features, -1, 4).sum(-1) == 2).all()
        # float rounding may flip a near-tie between two weights of a group, rarely more
        assert ((a.weight != 0) == (b.weight != 0)).float().mean() > 0.98
    assert _rel_err(_logits(got.model), _logits(ref.model)) < 0.05
