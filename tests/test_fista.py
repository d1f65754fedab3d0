import pytest
import torch

import toolchain.unstructured as unstructured
from tests.tiny import sample_ids, tiny_model
from toolchain.errors import UserError
from toolchain.fista import fista, keep_mask, lipschitz, solve
from toolchain.models import Model
from toolchain.recipe import FistaOptions, SparsityOptions
from toolchain.sinks import MemorySink
from toolchain.sparsegpt import sparsegpt
from toolchain.unstructured import sparsify

CALIB = sample_ids(n=32, seed=7, batch=8)
QUICK = dict(iters=5, steps=3, refit_iters=10)
# FISTAPruner's setting (not the default, recipe.py): each operator's inputs through the stages pruned
# before it, the dense model's output as the target
FISTA = dict(reconstruct="fista", target="dense", within_layer="sequential", **QUICK)
CPU = torch.device("cpu")


def _sparsified(model: Model, opts: SparsityOptions) -> tuple[Model, dict]:
    sink = MemorySink(model)
    report = sparsify(model, CALIB, opts, CPU, sink, progress=False)
    return sink.close(model.widths, {}), report


def _linears(model: Model):
    """(name, weight) of every pruned operator."""
    state = model.module().state_dict()
    for i in range(model.num_layers):
        for name in model.family.linears():
            key = f"{model.layer_prefix(i)}{name}.weight"
            yield key, state[key]


def _problem(seed: int, out: int = 6, inp: int = 16, n: int = 400, spread: float = 1.0):
    """Random least squares: X* = X + noise, channel scales spanning 10^±spread."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.logspace(-spread, spread, inp, dtype=torch.float64)
    x = torch.randn(inp, n, generator=g, dtype=torch.float64) * scale[:, None]
    xs = x + 0.3 * torch.randn(inp, n, generator=g, dtype=torch.float64) * scale[:, None]
    w = torch.randn(out, inp, generator=g, dtype=torch.float64)
    return w, x, xs, xs @ xs.T / n, x @ xs.T / n, x @ x.T / n


def _ista(h: torch.Tensor, b: torch.Tensor, lam: torch.Tensor, iters: int) -> torch.Tensor:
    """Reference: plain proximal gradient in W coordinates (no momentum, no rescaling)."""
    step = 1 / float(torch.linalg.eigvalsh(h)[-1])
    v = torch.zeros_like(b)
    for _ in range(iters):
        z = v - step * (v @ h - b)
        v = z.sign() * (z.abs() - step * lam[:, None]).clamp_min(0)
    return v


def test_fista_matches_converged_ista_and_kkt():
    w, _, _, h, c, _ = _problem(0, spread=0.3)
    b = w @ c
    lam = 0.05 * b.abs().amax(1)
    ref = _ista(h, b, lam, 5000)
    # KKT of the lasso at the reference: ∇ = −λ sign(W*) on the support, |∇| ≤ λ off it
    grad = ref @ h - b
    on = ref != 0
    torch.testing.assert_close(grad[on], -(lam[:, None] * ref.sign())[on], atol=1e-7, rtol=0)
    assert (grad[~on].abs() <= lam[:, None].expand_as(grad)[~on] + 1e-7).all()
    assert 0 < on.sum() < on.numel()  # a non-trivial support
    # FISTA in the column-rescaled coordinates the solver uses: same minimiser
    d = h.diagonal().sqrt()
    ht, bt = h / torch.outer(d, d), b / d
    v = fista(torch.zeros_like(b), ht, bt, lam[:, None] / d[None, :], lipschitz(ht), 3000)
    torch.testing.assert_close(v / d, ref, atol=1e-6, rtol=0)


def test_fista_orthonormal_inputs_is_soft_thresholding():
    b = torch.randn(5, 8, dtype=torch.float64)
    lam = torch.full((5, 1), 0.4, dtype=torch.float64)
    v = fista(torch.zeros_like(b), torch.eye(8, dtype=torch.float64), b, lam, 1.0, 5)
    torch.testing.assert_close(v, b.sign() * (b.abs() - 0.4).clamp_min(0))


@pytest.mark.parametrize("pattern,sparsity", [("unstructured", 0.5), ("unstructured", 0.7), ("2:4", 0.5)])
def test_solve_reaches_exact_pattern_and_lowers_true_error(pattern, sparsity):
    w, x, xs, h, c, g = _problem(1, out=12, inp=32)
    w32 = w.float()
    mask0 = keep_mask(w32.abs() * h.diagonal().sqrt().float(), pattern, sparsity)
    res = solve(w32, h, c, g, mask0, pattern, sparsity, FistaOptions(10, 6, 20))
    k = 32 - round(sparsity * 32)
    assert (res.mask.sum(1) == k).all()
    if pattern == "2:4":
        assert (res.mask.reshape(12, 8, 4).sum(-1) == 2).all()
        assert ((res.weight != 0).reshape(12, 8, 4).sum(-1) == 2).all()
    assert torch.equal(res.weight != 0, res.mask)  # zeros exactly outside the mask, no kept weight at 0
    # the reported relative errors are the real ones on the raw data
    target = w @ x
    true = lambda m: float(((m.double() @ xs - target) ** 2).sum() / (target ** 2).sum())  # noqa: E731
    assert res.err_before == pytest.approx(true(w32 * mask0), rel=1e-3)
    assert res.err_after == pytest.approx(true(res.weight), rel=1e-3)
    assert res.err_after < 0.95 * res.err_before


@pytest.mark.parametrize("criterion,reconstruct", [("magnitude", "none"), ("wanda", "none"), ("wanda", "fista"),
                                                ("sparsegpt", "fista")])
def test_two_four_groups_in_every_linear(criterion, reconstruct):
    dense = tiny_model(seed=1)
    opts = SparsityOptions(pattern="2:4", criterion=criterion, reconstruct=reconstruct, **QUICK)
    model, report = _sparsified(dense, opts)
    assert report["sparsity"] == 0.5
    for name, weight in _linears(model):
        nz = (weight != 0).reshape(weight.shape[0], -1, 4).sum(-1)
        assert (nz == 2).all(), name
        assert torch.isfinite(weight).all()
    before, after = dense.module().state_dict(), model.module().state_dict()
    for name in ("model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"):
        assert torch.equal(after[name], before[name])
    with torch.no_grad():
        assert torch.isfinite(model.module()(CALIB).logits).all()


def test_unstructured_rows_have_exact_sparsity():
    model, report = _sparsified(tiny_model(seed=2), SparsityOptions(sparsity=0.6, **FISTA))
    for name, weight in _linears(model):
        zeros = (weight == 0).sum(1)
        assert (zeros == round(0.6 * weight.shape[1])).all(), name
    for lay in report["layers"]:
        assert lay["sparsity"] == pytest.approx(0.6, abs=0.01)
        for st in lay["stages"]:
            assert st["err_after"] <= st["err_before"] and st["iterations"] == 5 * 3 + 10


def _input_grams(model: Model, ids):
    """E[x xᵀ] of every stage's input, captured from a plain forward of `model`."""
    module = model.module()
    sums, hooks = {}, []
    for i, layer in enumerate(module.model.layers):
        for stage in model.family.stages():
            def hook(_m, args, key=(i, stage)):
                x = args[0].reshape(-1, args[0].shape[-1]).double()
                s, n = sums.get(key, (0, 0))
                sums[key] = (s + x.T @ x, n + x.shape[0])
            hooks.append(layer.get_submodule(stage[0]).register_forward_pre_hook(hook))
    with torch.no_grad():
        module(ids)
    for h in hooks:
        h.remove()
    return {k: s / n for k, (s, n) in sums.items()}


@pytest.mark.parametrize("criterion", ["wanda", "sparsegpt"])
def test_each_stage_regresses_on_pruned_upstream_outputs(monkeypatch, criterion):
    """X* fed to every solve is what the *final* pruned model feeds that operator (pruned q/k/v
    before o_proj, pruned gate/up before down_proj, pruned earlier layers), and the target X
    is what the dense model feeds it. SparseGPT (the warm start) sees the same X*."""
    dense = tiny_model(seed=3)
    seen, warm = [], []
    real_solve, real_sparsegpt = unstructured.solve, unstructured.sparsegpt

    def spy(w, h, c, g, *rest, **kw):
        seen.append((h, g))
        return real_solve(w, h, c, g, *rest, **kw)

    def spy_sparsegpt(w, h, *rest):
        warm.append(h)
        return real_sparsegpt(w, h, *rest)

    monkeypatch.setattr(unstructured, "solve", spy)
    monkeypatch.setattr(unstructured, "sparsegpt", spy_sparsegpt)
    model, _ = _sparsified(dense, SparsityOptions(criterion=criterion, **FISTA))
    pruned_grams, dense_grams = _input_grams(model, CALIB), _input_grams(dense, CALIB)
    stages = dense.family.stages()
    keys = [(i, stage) for i in range(dense.num_layers) for stage in stages]
    assert len(seen) == len(keys) and len(warm) == (len(keys) if criterion == "sparsegpt" else 0)
    for n, (key, (h, g)) in enumerate(zip(keys, seen)):
        torch.testing.assert_close(h, pruned_grams[key], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(g, dense_grams[key], rtol=1e-4, atol=1e-6)
        if warm:
            torch.testing.assert_close(warm[n], h, rtol=1e-6, atol=1e-9)
        if key != (0, stages[0]):  # only layer 0's q/k/v input is untouched by pruning
            assert (h - g).norm() > 1e-3 * g.norm()


def test_fista_layer_error_below_criterion_alone():
    """One decoder layer, same input, same mask budget: FISTA's output error ≤ Wanda's."""
    dense = tiny_model(seed=4, num_hidden_layers=1)
    errors = {}
    for method in ("none", "fista"):
        model, _ = _sparsified(dense, SparsityOptions(criterion="wanda", reconstruct=method, **QUICK))
        outs = {}
        for key, m in (("dense", dense), ("pruned", model)):
            module = m.module()
            layer = module.model.layers[0]
            hook = layer.register_forward_hook(lambda _m, _a, y, k=key: outs.__setitem__(k, y))
            with torch.no_grad():
                module(CALIB)
            hook.remove()
        errors[method] = float((outs["pruned"] - outs["dense"]).norm() / outs["dense"].norm())
    assert errors["fista"] < errors["none"]


def test_warm_start_weights_are_candidate_zero():
    """With SparseGPT's weights as the warm start, FISTA's result is never worse on the
    calibration data (per row), and with no λ steps and no refit it returns them unchanged."""
    w, _, _, h, c, g = _problem(6, out=12, inp=32)
    w32 = w.float()
    w0, mask0 = sparsegpt(w32, h, "unstructured", 0.5)
    same = solve(w32, h, c, g, mask0, "unstructured", 0.5, FistaOptions(5, 0, 0), w0=w0)
    torch.testing.assert_close(same.weight, w0)
    assert same.err_after == same.err_before and same.warm_start_rows == 12
    for damp in (0.0, 0.05):
        res = solve(w32, h, c, g, mask0, "unstructured", 0.5, FistaOptions(10, 6, 20, damp), w0=w0)
        assert res.err_after <= res.err_before
        assert ((res.weight != 0).sum(1) == 16).all()


@pytest.mark.parametrize("kw,match", [({"pattern": "3:4"}, "--pattern"), ({"criterion": "flap"}, "--criterion"),
                                      ({"pattern": "2:4", "sparsity": 0.3}, "2:4"), ({"sparsity": 1.0}, "--sparsity"),
                                      ({"iters": 0}, "--fista-iters")])
def test_bad_options_are_user_errors(kw, match):
    model = tiny_model()
    with pytest.raises(UserError, match=match):
        sparsify(model, CALIB, SparsityOptions(**kw), CPU, MemorySink(model), progress=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="2:4 semi-structured matmul needs a CUDA GPU")
def test_semi_structured_matmul_matches_dense():
    from benchmarks.sparsity_table import semi_structured_timing

    res = semi_structured_timing(1024, 1024, 1024, reps=5)
    assert res["max_rel_diff"] < 1e-2 and res["dense_s"] > 0 and res["sparse_s"] > 0


def _two_four_tiny() -> Model:
    return _sparsified(tiny_model(seed=5), SparsityOptions(pattern="2:4", **FISTA))[0]


def test_sparse_model_exports_to_gguf_and_verifies_in_llamacpp(tmp_path):
    """Shapes are unchanged, so the exporter applies as-is; the zeros survive in the file
    (it shrinks under general-purpose compression, not on disk or in llama.cpp's dense kernels)."""
    import gzip

    from exporters.gguf.export import export_gguf
    from tests.tiny import SAMPLE_TEXT

    sizes = {}
    for key, lm in (("dense", tiny_model(seed=5)), ("sparse", _two_four_tiny())):
        path = tmp_path / f"{key}.gguf"
        s = export_gguf(lm, path, quant="f32", verify_text=SAMPLE_TEXT, verify_seqlen=64, verify_windows=2,
                        progress=False)
        assert s["passed"], s["failures"]
        sizes[key] = (path.stat().st_size, len(gzip.compress(path.read_bytes(), 6)))
    assert abs(sizes["sparse"][0] - sizes["dense"][0]) < 0.01 * sizes["dense"][0]  # dense tensors, same shapes
    assert sizes["sparse"][1] < 0.9 * sizes["dense"][1]


@pytest.mark.slow  # the torch.onnx dynamo export takes minutes on a loaded 2-core machine
def test_sparse_model_exports_to_onnx_and_verifies_in_onnxruntime(tmp_path):
    from exporters.onnx import export_onnx

    assert export_onnx(_two_four_tiny(), tmp_path / "onnx", progress=False)["verification"]["passed"]
