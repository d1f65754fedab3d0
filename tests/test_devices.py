"""Every compression stage on every device this machine has: CPU always, CUDA when present.

A device case runs the same recipe as a CPU reference and must agree with it (same plan,
close outputs; local refinement: every submodel no worse, the model back on the CPU in its
dtype). On a GPU machine the CUDA cases exercise the real CUDA paths — one layer or submodel
on the device, hidden states on the CPU, bf16 autocast for local refinement; without CUDA
they skip and the CPU cases check the same assertions.
"""

import pytest
import torch

from tests.tiny import CALIB, compressed, sample_ids, tiny_model
from toolchain.recipe import LocalOptions, SparsityOptions
from toolchain.sinks import MemorySink
from toolchain.unstructured import sparsify

DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU")])]
HELD_OUT = sample_ids(n=24, seed=8, batch=2)


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model.module()(HELD_OUT).logits.double()


def _rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got - want).norm() / want.norm()).item()


def _on_cpu_in_float32(model) -> bool:
    return all(t.device.type == "cpu" and t.dtype == torch.float32 for t in model.module().state_dict().values())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["oneshot", "sequential"])
def test_structured_pruning_and_liar_agree_with_cpu(device, mode):
    dense = tiny_model(seed=3)
    ref, ref_res = compressed(dense, sparsity=0.5, mode=mode)
    got, res = compressed(dense, sparsity=0.5, mode=mode, device=device)
    assert res.plan.to_json() == ref_res.plan.to_json()
    assert _on_cpu_in_float32(got)
    assert _rel_err(_logits(got), _logits(ref)) < 1e-3


@pytest.mark.parametrize("device", DEVICES)
def test_local_refinement_improves_every_block_on_device(device):
    dense = tiny_model(seed=4)
    liar, _ = compressed(dense, sparsity=0.5)
    opts = LocalOptions(granularity="block", lr=1e-3, steps=12, batch_size=4, mixed_precision=True)
    refined, res = compressed(dense, sparsity=0.5, local=opts, device=device)
    report = res.local
    assert len(report) == dense.config.num_hidden_layers
    assert all(r["loss_after"] <= r["loss_before"] for r in report)
    assert sum(r["loss_after"] for r in report) < sum(r["loss_before"] for r in report)
    assert _on_cpu_in_float32(refined) and _on_cpu_in_float32(dense)
    assert not torch.equal(_logits(refined), _logits(liar))  # the weights really changed


@pytest.mark.parametrize("device", DEVICES)
def test_two_four_fista_agrees_with_cpu(device):
    opts = SparsityOptions(pattern="2:4", reconstruct="fista", iters=2, steps=1, refit_iters=4)
    dense = tiny_model(seed=5)
    runs = []
    for dev in ("cpu", device):
        sink = MemorySink(dense)
        report = sparsify(dense, CALIB, opts, torch.device(dev), sink, progress=False)
        runs.append((report, sink.close(dense.widths, {})))
    (_, ref), (report, got) = runs
    assert report["sparsity"] == 0.5 and _on_cpu_in_float32(got)
    linears = [(a, b) for la, lb in zip(ref.module().model.layers, got.module().model.layers)
               for a, b in zip(la.modules(), lb.modules()) if isinstance(b, torch.nn.Linear)]
    for a, b in linears:
        assert ((b.weight != 0).reshape(b.out_features, -1, 4).sum(-1) == 2).all()
        # float rounding may flip a near-tie between two weights of a group, rarely more
        assert ((a.weight != 0) == (b.weight != 0)).float().mean() > 0.98
    assert _rel_err(_logits(got), _logits(ref)) < 0.05
