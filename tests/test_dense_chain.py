"""The row-blocked dense chain (``functional.dense_chain_*``, ``csrc/cpu/dense_chain.cpp``):
against the float64 reference layer by layer on random inputs (float32 and float64, every
activation, with and without biases, several row blocks per thread, a short last block, one
and two threads), float64 finite differences through a whole chain, gradient accumulation,
``Sequential`` running its Dense layers as chains (and not when a layer is wide), OpenBLAS's
thread count restored, and bad input."""

from __future__ import annotations

import numpy as np
import pytest

import fastnn
from fastnn import _backend, _blas, nn
from fastnn import functional as F
from fastnn import reference as R
from fastnn.nn import fusion
from util import assert_close, assert_grad_close, numeric_grad

ACTIVATIONS = ["identity", "relu", "leaky_relu", "sigmoid", "tanh", "gelu", "gelu_tanh"]


def chain_problem(rng, widths, activations, dtype, bias=True, n=203):
    x = rng.standard_normal((n, widths[0])).astype(dtype)
    layers = []
    for (a, b), activation in zip(zip(widths[:-1], widths[1:]), activations):
        W = (rng.standard_normal((a, b)) / np.sqrt(a)).astype(dtype)
        layers.append((W, rng.standard_normal(b).astype(dtype) if bias else None, activation, 0.07))
    dy = rng.standard_normal((n, widths[-1])).astype(dtype)
    return x, layers, dy


def reference_chain(x, layers, dy):
    """Outputs, dWs, dbs and dx in float64 from the reference path, layer by layer."""
    x = x.astype(np.float64)
    inputs, outs, zs = [x], [], []
    for W, b, activation, alpha in layers:
        y, z = R.dense_forward(inputs[-1], W.astype(np.float64), None if b is None else b.astype(np.float64),
                               activation, alpha)
        outs.append(y)
        zs.append(z)
        inputs.append(y)
    grad, dWs, dbs = dy.astype(np.float64), [], []
    for i in range(len(layers) - 1, -1, -1):
        W, _, activation, alpha = layers[i]
        saved = zs[i] if F.dense_needs_aux(activation) else outs[i]
        grad, dW, db = R.dense_backward(grad, inputs[i], W.astype(np.float64), activation, saved, alpha)
        dWs.insert(0, dW)
        dbs.insert(0, db)
    return outs, dWs, dbs, grad


def run_chain(x, layers, dy, *, blocked, block_rows=0, need_dx=True, start=0.0):
    auxs = [np.empty((x.shape[0], W.shape[1]), x.dtype) if F.dense_needs_aux(a) else None
            for W, _, a, _ in layers]
    ys = F.dense_chain_forward(x, layers, auxs=auxs, blocked=blocked, block_rows=block_rows)
    dWs = [np.full_like(W, start) for W, _, _, _ in layers]
    dbs = [None if b is None else np.full_like(b, start) for _, b, _, _ in layers]
    dx = F.dense_chain_backward(dy, x, layers, ys, auxs, dWs=dWs, dbs=dbs, need_dx=need_dx, blocked=blocked,
                                block_rows=block_rows)
    return ys, dWs, dbs, dx


def tolerance(dtype, depth):
    if dtype == np.float64:
        return dict(rtol=1e-10, atol=1e-10)
    return dict(rtol=1e-4, atol=2e-5 * depth)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("activations", [("relu", "relu", "identity"), ("leaky_relu", "gelu", "tanh"),
                                         ("sigmoid", "gelu_tanh", "relu"), ("identity", "tanh", "gelu")])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("block_rows", [16, 48, 0])
def test_blocked_chain_matches_the_reference(chain_threads, rng, dtype, activations, bias, block_rows):
    # 203 rows: blocks of 16 or 48 leave a short last block and several blocks per thread.
    x, layers, dy = chain_problem(rng, (13, 40, 33, 7), activations, dtype, bias)
    ys, dWs, dbs, dx = run_chain(x, layers, dy, blocked=True, block_rows=block_rows)
    ref_ys, ref_dWs, ref_dbs, ref_dx = reference_chain(x, layers, dy)
    tol = tolerance(dtype, 203)
    for i in range(3):
        assert_close(ys[i], ref_ys[i].astype(dtype), **tol, err_msg=f"y{i}")
        assert_close(dWs[i], ref_dWs[i].astype(dtype), **tol, err_msg=f"dW{i}")
        if bias:
            assert_close(dbs[i], ref_dbs[i].astype(dtype), **tol, err_msg=f"db{i}")
    assert_close(dx, ref_dx.astype(dtype), **tol)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_every_activation_blocked_and_by_layer_agree(chain_threads, rng, activation):
    x, layers, dy = chain_problem(rng, (9, 24, 24, 5), (activation, activation, "identity"), np.float64, n=150)
    blocked = run_chain(x, layers, dy, blocked=True, block_rows=32)
    by_layer = run_chain(x, layers, dy, blocked=False)
    for a, b in zip(blocked, by_layer):
        for u, v in zip(a, b) if isinstance(a, list) else [(a, b)]:
            if u is not None:
                assert_close(u, v, rtol=1e-12, atol=1e-12)


def test_one_thread_and_two_threads_agree(chain_threads, rng):
    x, layers, dy = chain_problem(rng, (20, 64, 64, 10), ("relu", "gelu", "identity"), np.float64, n=500)
    results = []
    for threads in (1, 2):
        _backend._C.cpu.set_omp_threads(threads)
        results.append(run_chain(x, layers, dy, blocked=True, block_rows=64))
    for a, b in zip(*results):
        for u, v in zip(a, b) if isinstance(a, list) else [(a, b)]:
            assert_close(u, v, rtol=1e-12, atol=1e-12)


def test_gradients_accumulate_and_need_dx(chain_threads, rng):
    x, layers, dy = chain_problem(rng, (6, 16, 4), ("tanh", "identity"), np.float64, n=100)
    _, fresh_dWs, fresh_dbs, _ = run_chain(x, layers, dy, blocked=True, block_rows=16)
    _, dWs, dbs, dx = run_chain(x, layers, dy, blocked=True, block_rows=16, need_dx=False, start=0.5)
    assert dx is None
    for fresh, grad in zip(fresh_dWs + fresh_dbs, dWs + dbs):
        assert_close(grad, fresh + 0.5)


@pytest.mark.parametrize("activations", [("tanh", "gelu", "identity"), ("sigmoid", "leaky_relu", "gelu_tanh")])
def test_finite_differences_through_the_chain(chain_threads, rng, activations):
    # L = sum(y_last * dy): x and every W and b against centred differences, in float64.
    x, layers, dy = chain_problem(rng, (4, 6, 5, 3), activations, np.float64, n=37)
    _, dWs, dbs, dx = run_chain(x, layers, dy, blocked=True, block_rows=16)
    auxs = [np.empty((37, W.shape[1])) for W, _, _, _ in layers]

    def last(_):
        return F.dense_chain_forward(x, layers, auxs=auxs, blocked=True, block_rows=16)[-1]

    assert_grad_close(dx, numeric_grad(last, x, dy), rtol=1e-6, atol=1e-8)
    for i, (W, b, _, _) in enumerate(layers):
        assert_grad_close(dWs[i], numeric_grad(last, W, dy), rtol=1e-6, atol=1e-8)
        assert_grad_close(dbs[i], numeric_grad(last, b, dy), rtol=1e-6, atol=1e-8)


def test_openblas_thread_count_is_restored(chain_threads, rng):
    found = _blas._register()
    lib, naming = found["lib"], found["sgemm_name"].replace("cblas_sgemm", "openblas_get_num_threads")
    before = getattr(lib, naming)()
    x, layers, dy = chain_problem(rng, (8, 8, 8), ("relu", "identity"), np.float32, n=64)
    run_chain(x, layers, dy, blocked=True, block_rows=16)
    assert getattr(lib, naming)() == before
    assert "openblas" in fastnn.backend_info()["chain_blas"].lower()


def narrow_model(dtype=np.float64, wide=None):
    hidden = wide or 32
    return nn.Sequential(nn.Dense(10, hidden, dtype=dtype, seed=0), nn.ReLU(),
                         nn.Dense(hidden, 16, dtype=dtype, seed=1), nn.GELU(approximate="tanh"),
                         nn.BatchNorm(16, dtype=dtype), nn.Dense(16, 16, activation="leaky_relu", dtype=dtype, seed=2),
                         nn.Dense(16, 4, dtype=dtype, seed=3))


@pytest.mark.parametrize("need_input_grad", [True, False])
def test_sequential_runs_its_dense_layers_as_chains(chain_threads, rng, monkeypatch, need_input_grad):
    x, dy = rng.standard_normal((300, 10)), rng.standard_normal((300, 4))
    results = []
    for chained in (True, False):
        if not chained:
            monkeypatch.setattr(fusion.FusionPlan, "use_chains", lambda self, x: False)
        model = narrow_model()
        y = model.forward(x, training=True).copy()
        assert model._plan.chained == chained
        dx = model.backward(dy, need_input_grad=need_input_grad)
        results.append((y, None if dx is None else dx.copy(), [p.grad.copy() for p in model.parameters()]))
    (y1, dx1, g1), (y2, dx2, g2) = results
    assert_close(y1, y2, rtol=1e-12, atol=1e-12)
    if need_input_grad:
        assert_close(dx1, dx2, rtol=1e-12, atol=1e-12)
    else:
        assert dx1 is None and dx2 is None
    for a, b in zip(g1, g2):
        assert_close(a, b, rtol=1e-11, atol=1e-11)


def test_a_wide_layer_keeps_the_whole_model_on_numpys_gemms(chain_threads, rng):
    model = narrow_model(wide=F.CHAIN_MAX_WIDTH + 1)
    model.forward(rng.standard_normal((8, 10)), training=True)
    assert not model._plan.chained
    model = narrow_model()
    with fastnn.use_backend("reference"):
        model.forward(rng.standard_normal((8, 10)), training=True)
    assert not model._plan.chained
    model.check_nan()
    model.forward(rng.standard_normal((8, 10)), training=True)
    assert not model._plan.chained
    block = nn.Sequential(nn.Dense(16, 8, dtype=np.float64))
    with_residual = nn.Sequential(nn.Dense(10, 16, dtype=np.float64), nn.ReLU(), nn.Residual(block))
    with_residual.forward(rng.standard_normal((8, 10)), training=True)
    assert not with_residual._plan.chained
    assert with_residual[2].block._plan.chained  # the nested Sequential holds only its own Dense


def test_dense_chain_blocked_decides_for_the_chains_and_sequential(chain_threads, rng):
    x, widths = rng.standard_normal((8, 10)), [10, 32, 4]
    wide = [10, F.CHAIN_MAX_WIDTH + 1, 4]
    assert F.dense_chain_blocked(x, widths)
    assert not F.dense_chain_blocked(x, wide)
    assert F.dense_chain_blocked(x, wide, blocked=True)  # it can, though it does not pay
    assert not F.dense_chain_blocked(x, widths, blocked=False)
    assert not F.dense_chain_blocked(x[:0], widths)
    _backend._C.cpu.set_omp_threads(1)
    assert not F.dense_chain_blocked(x, widths)
    _backend._C.cpu.set_omp_threads(2)
    with fastnn.use_backend("reference"):
        assert not F.dense_chain_blocked(x, widths)
        with pytest.raises(ValueError, match="blocked=True needs the compiled CPU kernels"):
            F.dense_chain_blocked(x, widths, blocked=True)
    model = narrow_model()
    assert model._plan.chain_widths == [10, 32, 32, 16, 16, 16, 16, 4]
    for width in (None, F.CHAIN_MAX_WIDTH + 1):
        model = narrow_model(wide=width)
        model.forward(x, training=True)
        assert model._plan.chained == F.dense_chain_blocked(x, model._plan.chain_widths) == (width is None)


def test_bad_input(chain_threads, rng):
    x, layers, dy = chain_problem(rng, (5, 6, 3), ("relu", "identity"), np.float32, n=20)
    with pytest.raises(ValueError, match="layer 1 W has shape"):
        F.dense_chain_forward(x, [layers[0], (np.zeros((7, 3), np.float32), None, "relu")])
    with pytest.raises(ValueError, match="no layers"):
        F.dense_chain_forward(x, [])
    with pytest.raises(TypeError, match="layer 0 must be a tuple"):
        F.dense_chain_forward(x, [layers[0][0]])
    with pytest.raises(ValueError, match="unknown activation|activation"):
        F.dense_chain_forward(x, [(layers[0][0], None, "swish")])
    with pytest.raises(ValueError, match=r"layer 1's activation 'gelu' needs auxs\[1\]"):
        F.dense_chain_forward(x, [layers[0], (layers[1][0], None, "gelu")])
    with pytest.raises(ValueError, match="block_rows"):
        F.dense_chain_forward(x, layers, block_rows=-1)
    with pytest.raises(TypeError, match="float64|dtype"):
        F.dense_chain_forward(x.astype(np.float64), layers)
    with pytest.raises(ValueError, match="ys has 1 entries"):
        F.dense_chain_forward(x, layers, ys=[np.empty((20, 6), np.float32)])
    with pytest.raises(ValueError, match=r"ys\[0\]"):
        F.dense_chain_forward(x, layers, ys=[np.empty((20, 5), np.float32), np.empty((20, 3), np.float32)])
    ys = F.dense_chain_forward(x, layers)
    dWs = [np.zeros_like(W) for W, _, _, _ in layers]
    with pytest.raises(ValueError, match="dy: expected shape"):
        F.dense_chain_backward(np.ascontiguousarray(dy[:, :2]), x, layers, ys, dWs=dWs)
    with pytest.raises(ValueError, match="one entry per layer"):
        F.dense_chain_backward(dy, x, layers, ys, dWs=dWs[:1])
    with pytest.raises(ValueError, match=r"dWs\[0\] shares memory with layer 0 W"):
        F.dense_chain_backward(dy, x, layers, ys, dWs=[layers[0][0], dWs[1]])
    with fastnn.use_backend("reference"), pytest.raises(ValueError, match="blocked=True"):
        F.dense_chain_forward(x, layers, blocked=True)


def test_a_smaller_team_than_asked_still_covers_every_row(chain_threads, tmp_path):
    # OMP_THREAD_LIMIT=1 gives a one-thread team to a region asking for two: the blocks must be
    # shared over the threads that exist, not over the number asked for.
    import os
    import subprocess
    import sys

    script = """
import numpy as np
from fastnn import _backend, functional as F
_backend._C.cpu.set_omp_threads(2)
rng = np.random.default_rng(0)
x = rng.standard_normal((300, 8))
layers = [(rng.standard_normal((8, 12)), rng.standard_normal(12), "relu"),
          (rng.standard_normal((12, 3)), None, "identity")]
dy = rng.standard_normal((300, 3))
out = []
for blocked in (True, False):
    ys = F.dense_chain_forward(x, layers, blocked=blocked, block_rows=16)
    dWs = [np.zeros_like(W) for W, _, _ in layers]
    dbs = [np.zeros(12), None]
    dx = F.dense_chain_backward(dy, x, layers, ys, dWs=dWs, dbs=dbs, blocked=blocked, block_rows=16)
    out.append([ys[0], ys[1], dWs[0], dWs[1], dbs[0], dx])
for a, b in zip(*out):
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
print("ok")
"""
    env = dict(os.environ, OMP_THREAD_LIMIT="1")
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_chain_on_every_device_matches_the_reference(xp, rng):
    # Where the blocked kernel does not run (a GPU, one thread), the chain is dense_forward and
    # dense_backward layer by layer, each fused with the layer below.
    x, layers, dy = chain_problem(rng, (9, 24, 24, 5), ("relu", "gelu", "identity"), np.float64, n=150)
    ref_ys, ref_dWs, ref_dbs, ref_dx = reference_chain(x, layers, dy)
    on = [(xp.asarray(W), xp.asarray(b), a, alpha) for W, b, a, alpha in layers]
    auxs = [None, xp.empty((150, 24)), None]
    ys = F.dense_chain_forward(xp.asarray(x), on, auxs=auxs)
    dWs = [xp.zeros_like(W) for W, _, _, _ in on]
    dbs = [xp.zeros_like(b) for _, b, _, _ in on]
    dx = F.dense_chain_backward(xp.asarray(dy), xp.asarray(x), on, ys, auxs, dWs=dWs, dbs=dbs)
    for got, want in zip(ys + dWs + dbs + [dx], ref_ys + ref_dWs + ref_dbs + [ref_dx]):
        assert_close(got, want, rtol=1e-10, atol=1e-10)


def step_problem(rng, loss, dtype, n=203):
    x, layers, _ = chain_problem(rng, (7, 20, 16, 5), ("gelu", "relu", "identity"), dtype, n=n)
    if loss in ("softmax_cross_entropy", "hinge"):
        target = rng.integers(0, 5, n).astype(np.int32 if dtype == np.float32 else np.int64)
    else:
        target = rng.random((n, 5)).astype(dtype)
    return x, layers, target


@pytest.mark.parametrize("loss", sorted(F.CHAIN_LOSSES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_step_matches_forward_loss_backward(chain_threads, rng, loss, dtype):
    x, layers, target = step_problem(rng, loss, dtype)
    results = []
    for blocked in (True, False):
        dWs = [np.full_like(W, 0.25) for W, _, _, _ in layers]
        dbs = [np.full_like(b, 0.25) for _, b, _, _ in layers]
        out = np.empty((x.shape[0], 5), dtype)
        value, dx = F.dense_chain_step(x, layers, loss, target, dWs=dWs, dbs=dbs, out=out, need_dx=True,
                                       blocked=blocked, block_rows=32)
        results.append([np.asarray(value)] + dWs + dbs + [out, dx])
    # blocked=False is dense_chain_forward, the functional loss and dense_chain_backward; check
    # it once more against the reference, by the loss's own reference functions.
    ref_ys, _, _, _ = reference_chain(x, layers, np.zeros((x.shape[0], 5)))
    ref_loss = getattr(R, f"{loss}_forward")(ref_ys[-1], target)
    assert_close(results[1][0], np.asarray(ref_loss, dtype), **tolerance(dtype, 20))
    for got, want in zip(*results):
        assert_close(got, want, **tolerance(dtype, 203))


def test_fused_step_bad_input(chain_threads, rng):
    x, layers, labels = step_problem(rng, "softmax_cross_entropy", np.float32, n=40)
    dWs = [np.zeros_like(W) for W, _, _, _ in layers]
    with pytest.raises(ValueError, match="loss must be one of"):
        F.dense_chain_step(x, layers, "cross_entropy", labels, dWs=dWs)
    bad = labels.copy()
    bad[7] = 5
    with pytest.raises(ValueError, match="label 5 at index 7 is out of range"):
        F.dense_chain_step(x, layers, "softmax_cross_entropy", bad, dWs=dWs)
    with pytest.raises(TypeError, match="int32 or int64"):
        F.dense_chain_step(x, layers, "hinge", labels.astype(np.float32), dWs=dWs)
    with pytest.raises(ValueError, match="target: expected shape"):
        F.dense_chain_step(x, layers, "mse", np.zeros((40, 4), np.float32), dWs=dWs)
    with pytest.raises(ValueError, match="one entry per layer"):
        F.dense_chain_step(x, layers, "mse", np.zeros((40, 5), np.float32), dWs=dWs[:2])
    assert not any(d.any() for d in dWs)  # nothing was written by the refused calls


def step_model():
    return nn.Sequential(nn.Dense(10, 32, dtype=np.float64, seed=0), nn.ReLU(),
                         nn.Dense(32, 16, activation="tanh", dtype=np.float64, seed=1),
                         nn.Dense(16, 4, dtype=np.float64, seed=2))


@pytest.mark.parametrize("loss_class", [nn.SoftmaxCrossEntropy, nn.Hinge, nn.BCEWithLogits, nn.MSE, nn.L1])
def test_sequential_fused_step(chain_threads, rng, monkeypatch, loss_class):
    x = rng.standard_normal((300, 10))
    target = rng.integers(0, 4, 300) if loss_class.labels else rng.random((300, 4))
    plain, fused, loss = step_model(), step_model(), loss_class()
    expected = loss.forward(plain.forward(x, training=True), target)
    plain.backward(loss.backward(), need_input_grad=False)
    chain_step, losses = F.dense_chain_step, []
    monkeypatch.setattr(F, "dense_chain_step", lambda *a, **k: losses.append(a[2]) or chain_step(*a, **k))
    value = fused.fused_step(x, target, loss)
    assert losses == [loss.name]  # one compiled pass, named by the loss's public name
    assert isinstance(value, float) and value == pytest.approx(expected, rel=1e-12)
    for a, b in zip(fused.parameters(), plain.parameters()):
        assert_close(a.grad, b.grad, rtol=1e-11, atol=1e-12)
    with pytest.raises(RuntimeError, match="needs a training forward first"):
        fused.backward(np.zeros((300, 4)))
    with pytest.raises(RuntimeError, match="needs a forward first"):
        loss.backward()


def test_a_loss_with_its_own_kernel_takes_the_three_calls(chain_threads, rng, monkeypatch):
    def doubled_mse(pred, target, *, grad_out=None, out=None):
        value = F.mse_forward(pred, target, grad_out=grad_out, out=out)
        grad_out *= 2
        value *= 2
        return value

    class DoubledMSE(nn.MSE):
        kernel = staticmethod(doubled_mse)

    x, target = rng.standard_normal((300, 10)), rng.standard_normal((300, 4))
    plain, fused = step_model(), step_model()
    expected = 2 * nn.MSE().forward(plain.forward(x, training=True), target)
    calls = []
    monkeypatch.setattr(F, "dense_chain_step", lambda *a, **k: calls.append(1))
    loss = DoubledMSE()
    assert fused.fused_step(x, target, loss) == pytest.approx(expected, rel=1e-12)
    assert calls == [] and fused._plan.chained  # chained forward and backward, not the fused step
    assert_close(loss.backward(), 4 * (plain[3]._saved.y - target) / target.size, rtol=1e-12, atol=1e-15)


def test_sequential_fused_step_falls_back_where_it_cannot_fuse(chain_threads, rng, monkeypatch):
    x, labels = rng.standard_normal((64, 10)), rng.integers(0, 4, 64)
    calls = []
    monkeypatch.setattr(F, "dense_chain_step", lambda *a, **k: calls.append(1))
    with_bn = nn.Sequential(nn.Dense(10, 8, dtype=np.float64, seed=0), nn.BatchNorm(8, dtype=np.float64),
                            nn.ReLU(), nn.Dense(8, 4, dtype=np.float64, seed=1))
    reference = nn.Sequential(nn.Dense(10, 8, dtype=np.float64, seed=0), nn.BatchNorm(8, dtype=np.float64),
                              nn.ReLU(), nn.Dense(8, 4, dtype=np.float64, seed=1))
    loss = nn.SoftmaxCrossEntropy()
    value = with_bn.fused_step(x, labels, loss)
    expected = loss.forward(reference.forward(x, training=True), labels)
    reference.backward(loss.backward(), need_input_grad=False)
    assert calls == [] and value == pytest.approx(expected, rel=1e-12)
    for a, b in zip(with_bn.parameters(), reference.parameters()):
        assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-12)
    with pytest.raises(TypeError, match="must be a fastnn.nn loss"):
        with_bn.fused_step(x, labels, lambda p, t: 0.0)
    bad = labels.copy()
    bad[3] = 9
    chain = nn.Sequential(nn.Dense(10, 4, dtype=np.float64, seed=0))
    monkeypatch.undo()
    with pytest.raises(ValueError, match="label 9 at index 3"):
        chain.fused_step(x, bad, nn.SoftmaxCrossEntropy())
