"""``set_matmul_precision("medium")`` on the CPU: bf16 GEMM operands, float32 sums, through
oneDNN (``fastnn._bf16``). Outputs and gradients of the per-layer kernels, the row-blocked
chain and the fused step against the float64 reference within the bounds below; the rounding
itself; the path taken (oneDNN's GEMMs are counted); the float32 fallback when bf16 is off
(run everywhere, oneDNN or not); the digits job's accuracy.

The bound, per output element of a GEMM of depth K with bf16 operands and float32 sums:
each operand is rounded to bf16 with relative error at most u = 2^-8 (8 significant bits,
round to nearest: half of the 2^-7 spacing in [1, 2)), so a product is off by at most
(2u + u^2) |a||b|, and float32 summation of K terms adds at most about K * 2^-24 |a||b| (each
partial sum rounded once; 2^-23 below, for slack and the u^2 term). So
|C - A @ B| <= (2^-7 + K * 2^-23) (|A| @ |B|), the ``bound`` of each test. The
backward's GEMMs read dz as the kernels compute it from the saved forward outputs, which the
reference is given too (so ReLU masks agree); where dz itself comes from an earlier bf16 GEMM
(a chain's lower layers) that GEMM's bound, times |act'| <= 1, is carried into the next.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

import fastnn
from fastnn import _backend, _bf16
from fastnn import functional as F
from fastnn import reference as R

NATIVE = _backend._C is not None
needs_native = pytest.mark.skipif(not NATIVE, reason="compiled CPU kernels not built")
needs_bf16 = pytest.mark.skipif(not (NATIVE and _bf16.available()),
                                reason=f"no bf16 GEMM here: {_bf16.describe() if NATIVE else ''}")
ACTIVATIONS = ["identity", "relu", "leaky_relu", "sigmoid", "tanh", "gelu", "gelu_tanh"]


@pytest.fixture(autouse=True)
def _medium():
    F.set_matmul_precision("medium")
    yield
    F.set_matmul_precision("highest")
    if NATIVE:
        _bf16.enable(True)


def bound(K):
    return 2.0**-7 + K * 2.0**-23


def bf16_round(a):
    """The float32 values of ``a`` rounded to bf16 (nearest, ties to even), as float64."""
    u = np.ascontiguousarray(a, np.float32).view(np.uint32).astype(np.uint64)
    top = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint32) << 16
    return top.view(np.float32).astype(np.float64)


def calls():
    return _backend._C.cpu.bf16_gemm_calls()


def f32(rng, shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


# ---- the rounding ----------------------------------------------------------------------------


@needs_native
def test_to_bf16_rounds_to_nearest_even_and_keeps_specials(rng):
    specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8,
                         np.float32(1.0 + 2.0**-8 + 2.0**-20), 3.0e38, 1e-40], np.float32)
    # a NaN whose set mantissa bits all lie in the low half: plain rounding would make it inf
    low_nan = np.array([0x7F800001, 0xFF800001], np.uint32).view(np.float32)
    x = np.concatenate([specials, low_nan, f32(rng, 100_000)])
    out = np.empty(x.shape, np.uint16)
    _backend._C.cpu.to_bf16(x.ctypes.data, out.ctypes.data, x.size)
    got = (out.astype(np.uint32) << 16).view(np.float32)
    finite = np.isfinite(x)
    np.testing.assert_array_equal(got[finite], bf16_round(x[finite]).astype(np.float32))
    assert got[5] == 1.0  # 1 + 2^-8 is a tie: to the even 1.0
    assert got[6] == np.float32(1.0 + 4 * 2.0**-8)  # 1 + 3 * 2^-8 is a tie: to the even one above
    assert got[7] == np.float32(1.0 + 2 * 2.0**-8)  # just above the tie: up
    assert np.isposinf(got[2]) and np.isneginf(got[3])
    assert np.isnan(got[4]) and np.all(np.isnan(got[len(specials):len(specials) + 2]))
    torch = pytest.importorskip("torch")
    expected = torch.from_numpy(x[finite]).bfloat16().float().numpy()
    np.testing.assert_array_equal(got[finite], expected)


# ---- the per-layer kernels --------------------------------------------------------------------


@needs_bf16
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("shape", [(1, 3, 2), (37, 300, 65), (256, 784, 128)])
def test_medium_forward_is_the_bf16_product(rng, activation, shape):
    n, k, m = shape
    x, W, b = f32(rng, (n, k)), f32(rng, (k, m), k**-0.5), f32(rng, m)
    aux = np.empty((n, m), np.float32) if F.dense_needs_aux(activation) else None
    before = calls()
    y = F.dense_forward(x, W, b, activation, aux=aux)
    assert calls() == before + 1
    # exactly the product of the rounded operands, up to the float32 sums
    exact = bf16_round(x) @ bf16_round(W) + b
    ref_y, _ = R.dense_forward(exact, np.eye(m), None, activation)
    sums = k * 2.0**-23 * (np.abs(bf16_round(x)) @ np.abs(bf16_round(W))) + 1e-6
    assert np.all(np.abs(y - ref_y) <= 1.2 * sums)  # activations are 1.2-Lipschitz at most
    # and within the bound of the unrounded float32 product
    ref64, _ = R.dense_forward(x.astype(np.float64), W.astype(np.float64), b.astype(np.float64), activation)
    assert np.all(np.abs(y - ref64) <= 1.2 * bound(k) * (np.abs(x) @ np.abs(W)).astype(np.float64) + 1e-6)


@needs_bf16
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("x_activation", ["identity", "relu", "gelu"])
def test_medium_backward_within_bound(rng, activation, x_activation):
    n, k, m = 300, 200, 130
    x, W, b = f32(rng, (n, k)), f32(rng, (k, m), k**-0.5), f32(rng, m)
    aux = np.empty((n, m), np.float32) if F.dense_needs_aux(activation) else None
    y = F.dense_forward(x, W, b, activation, aux=aux)
    dy = f32(rng, (n, m))
    x_aux = f32(rng, (n, k)) if x_activation == "gelu" else None
    dW, db, x_db = f32(rng, (k, m)), f32(rng, m), np.zeros(k, np.float32)
    dW0, db0 = dW.astype(np.float64), db.astype(np.float64)
    before = calls()
    got = F.dense_backward(dy, x, W, activation=activation, y=y, aux=aux, dW=dW, db=db,
                           x_activation=x_activation, x_aux=x_aux, x_db=x_db)
    assert calls() == before + 2
    x64, W64, dy64 = x.astype(np.float64), W.astype(np.float64), dy.astype(np.float64)
    saved = (aux if F.dense_needs_aux(activation) else y).astype(np.float64)
    dz = R.activation_backward(dy64, saved, activation) if activation != "identity" else dy64
    assert np.all(np.abs(dW - (dW0 + x64.T @ dz)) <= bound(n) * (np.abs(x64).T @ np.abs(dz)) + 1e-5)
    assert np.allclose(db, db0 + dz.sum(axis=0), rtol=1e-5, atol=1e-4)  # float32 dz: no bf16
    dx = dz @ W64.T
    dx_bound = bound(m) * (np.abs(dz) @ np.abs(W64).T) + 1e-6
    if x_activation != "identity":
        x_saved = x64 if x_activation == "relu" else x_aux.astype(np.float64)
        dx = R.activation_backward(dx, x_saved, x_activation)
        dx_bound = 1.2 * dx_bound
    assert np.all(np.abs(got - dx) <= dx_bound)
    assert np.all(np.abs(x_db - dx.sum(axis=0)) <= dx_bound.sum(axis=0) + 1e-4)


@needs_bf16
def test_medium_leaves_float64_in_float64(rng):
    x, W = rng.standard_normal((50, 40)), rng.standard_normal((40, 30))
    before = calls()
    y = F.dense_forward(x, W)
    dW = np.zeros_like(W)
    F.dense_backward(np.ones_like(y), x, W, dW=dW)
    assert calls() == before
    np.testing.assert_allclose(y, x @ W, rtol=1e-12, atol=1e-12)


# ---- the row-blocked chain and the fused step --------------------------------------------------


def chain_layers(rng, widths, activations):
    return [(f32(rng, (a, b), a**-0.5), f32(rng, b, 0.1), act)
            for a, b, act in zip(widths[:-1], widths[1:], activations)]


def chain_reference(x, layers, ys, auxs, dy):
    """Per layer, from the chain's own saved outputs: the float64 forward and its bound (the
    layer's input as the chain had it), and the backward's dW and dx with bounds that carry
    each lower layer's dx GEMM error through |act'| <= 1."""
    out = []
    inputs = [x] + ys[:-1]
    g, g_err = dy.astype(np.float64), np.zeros(dy.shape)
    for i in reversed(range(len(layers))):
        W, b, act = layers[i]
        h, W64 = inputs[i].astype(np.float64), W.astype(np.float64)
        n, k = h.shape
        m = W.shape[1]
        ref_y, _ = R.dense_forward(h, W64, b.astype(np.float64), act)
        y_bound = 1.2 * bound(k) * (np.abs(h) @ np.abs(W64)) + 1e-6
        saved = (auxs[i] if F.dense_needs_aux(act) else ys[i]).astype(np.float64)
        dz = R.activation_backward(g, saved, act) if act != "identity" else g
        dz_err = 1.2 * g_err
        dW = h.T @ dz
        dW_bound = bound(n) * (np.abs(h).T @ np.abs(dz)) + np.abs(h).T @ dz_err + 1e-5
        g = dz @ W64.T
        g_err = bound(m) * (np.abs(dz) @ np.abs(W64).T) + dz_err @ np.abs(W64).T + 1e-6
        out.insert(0, dict(y=ref_y, y_bound=y_bound, dW=dW, dW_bound=dW_bound))
    return out, g, g_err


@needs_bf16
@pytest.mark.parametrize("activations", [("relu", "tanh", "identity"), ("gelu", "leaky_relu", "sigmoid")])
def test_medium_chain_forward_backward_within_bound(rng, activations):
    widths = [48, 64, 40, 10]
    layers = chain_layers(rng, widths, activations)
    x = f32(rng, (1000, widths[0]))
    auxs = [np.empty((1000, w), np.float32) if F.dense_needs_aux(a) else None
            for w, a in zip(widths[1:], activations)]
    before = calls()
    ys = F.dense_chain_forward(x, layers, auxs=auxs, block_rows=96, blocked=True)
    dy = f32(rng, ys[-1].shape)
    dWs = [np.zeros_like(W) for W, _, _ in layers]
    dbs = [np.zeros_like(b) for _, b, _ in layers]
    dx = F.dense_chain_backward(dy, x, layers, ys, auxs, dWs=dWs, dbs=dbs, block_rows=96, blocked=True)
    assert calls() > before  # oneDNN ran the chain's GEMMs
    ref, ref_dx, dx_bound = chain_reference(x, layers, ys, auxs, dy)
    for i, r in enumerate(ref):
        assert np.all(np.abs(ys[i] - r["y"]) <= r["y_bound"]), f"layer {i} y"
        assert np.all(np.abs(dWs[i] - r["dW"]) <= r["dW_bound"]), f"layer {i} dW"
    assert np.all(np.abs(dx - ref_dx) <= dx_bound)


@needs_bf16
@pytest.mark.parametrize("loss", ["softmax_cross_entropy", "mse"])
def test_medium_fused_step_matches_the_medium_chain(rng, loss):
    widths = [30, 64, 64, 10]
    layers = chain_layers(rng, widths, ("relu", "gelu", "identity"))
    n = 700
    x = f32(rng, (n, widths[0]))
    target = rng.integers(0, 10, n) if loss == "softmax_cross_entropy" else f32(rng, (n, 10))
    dWs = [np.zeros_like(W) for W, _, _ in layers]
    dbs = [np.zeros_like(b) for _, b, _ in layers]
    before = calls()
    value, dx = F.dense_chain_step(x, layers, loss, target, dWs=dWs, dbs=dbs, need_dx=True, block_rows=64,
                                   blocked=True)
    assert calls() > before
    auxs = [None, np.empty((n, 64), np.float32), None]
    ys = F.dense_chain_forward(x, layers, auxs=auxs, block_rows=64, blocked=True)
    grad = np.empty_like(ys[-1])
    expected = getattr(F, f"{loss}_forward")(ys[-1], target, grad_out=grad)
    ref_dWs = [np.zeros_like(W) for W, _, _ in layers]
    ref_dbs = [np.zeros_like(b) for _, b, _ in layers]
    ref_dx = F.dense_chain_backward(grad, x, layers, ys, auxs, dWs=ref_dWs, dbs=ref_dbs, block_rows=64,
                                    blocked=True)
    assert float(value) == pytest.approx(float(expected), rel=1e-5)
    # the same bf16 roundings, the loss gradient scaled per block: a bf16 ulp where it flips
    for got, want in zip(dWs + dbs + [dx], ref_dWs + ref_dbs + [ref_dx]):
        np.testing.assert_allclose(got, want, rtol=0, atol=2.0**-8 * np.abs(want).max() + 1e-7)


# ---- the path taken, and the fallback ------------------------------------------------------------


@needs_native
def test_backend_info_says_what_medium_computes():
    info = fastnn.backend_info()["cpu_medium_precision"]
    on, why = _bf16.status()
    assert info.startswith("bf16 GEMMs") == on and why in info
    if not on:
        assert info.startswith("float32 (")
    _bf16.enable(False)
    assert fastnn.backend_info()["cpu_medium_precision"].startswith("float32 (turned off")
    assert not _bf16.available()


@needs_native
def test_environment_turns_bf16_off():
    code = "import fastnn, fastnn._bf16 as b; print(b.available(), fastnn.backend_info()['cpu_medium_precision'])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, FASTNN_CPU_BF16="0"), check=True).stdout
    assert out.strip() == "False float32 (turned off by FASTNN_CPU_BF16=0)"


@needs_native
def test_medium_falls_back_to_float32_when_bf16_is_off(rng):
    """Without the bf16 GEMM (off here; absent on CI machines without oneDNN or AVX512_BF16),
    "medium" computes exactly what "highest" does, and calls no bf16 GEMM."""
    _bf16.enable(False)
    x, W, b = f32(rng, (300, 100)), f32(rng, (100, 64), 0.1), f32(rng, 64)
    layers = chain_layers(rng, [100, 64, 10], ("relu", "identity"))
    labels = rng.integers(0, 10, 300)

    def run():
        y = F.dense_forward(x, W, b, "relu")
        dW, db = np.zeros_like(W), np.zeros_like(b)
        dx = F.dense_backward(np.ones_like(y), x, W, activation="relu", y=y, dW=dW, db=db)
        dWs = [np.zeros_like(l[0]) for l in layers]
        chained = [F.dense_chain_forward(x, layers, blocked=blocked)[-1] for blocked in (False, None)]
        F.dense_chain_step(x, layers, "softmax_cross_entropy", labels, dWs=dWs)
        return [y, dW, db, dx, *chained, *dWs]

    before = calls()
    medium = run()
    assert calls() == before
    F.set_matmul_precision("highest")
    for a, b_ in zip(medium, run()):
        np.testing.assert_array_equal(a, b_)


@needs_bf16
def test_sequential_runs_medium_through_onednn(rng):
    model = fastnn.nn.Sequential(fastnn.nn.Dense(20, 32, seed=0), fastnn.nn.ReLU(), fastnn.nn.Dense(32, 5, seed=1))
    x, labels = f32(rng, (64, 20)), rng.integers(0, 5, 64)
    loss = fastnn.nn.SoftmaxCrossEntropy()
    before = calls()
    loss.forward(model.forward(x, training=True), labels)
    model.backward(loss.backward())
    assert calls() >= before + 5  # two forward GEMMs, two dW, one dx at least


# ---- training ------------------------------------------------------------------------------------


@needs_bf16
def test_digits_job_accuracy_in_medium_within_half_a_point(tmp_path):
    from fastnn.job import JobConfig, run

    accuracy = {}
    for precision in ("highest", "medium"):
        F.set_matmul_precision(precision)
        before = calls()
        metrics = run(JobConfig(epochs=20, verbose=0, seed=0, out=str(tmp_path / precision)))
        assert (calls() > before) == (precision == "medium")
        accuracy[precision] = 100 * metrics["test"]["accuracy"]
    assert abs(accuracy["medium"] - accuracy["highest"]) <= 0.5, accuracy


# ---- operands rounded once per step on the layer-by-layer path -------------------------------


@needs_bf16
@pytest.mark.parametrize("activation,bias", [("relu", True), ("gelu", True), ("identity", False)])
def test_dense_forward_writes_the_next_operand_and_takes_given_ones(rng, activation, bias):
    x, W = f32(rng, (96, 40)), f32(rng, (40, 24), 0.2)
    b = f32(rng, 24) if bias else None
    aux = np.empty((96, 24), np.float32) if F.dense_needs_aux(activation) else None
    plain = F.dense_forward(x, W, b, activation, aux=aux)
    y16 = np.empty((96, 24), np.uint16)
    given = F.dense_forward(x, W, b, activation, aux=aux, x16=F.to_bf16(x), W16=F.to_bf16(W), y16=y16)
    np.testing.assert_array_equal(given, plain)
    np.testing.assert_array_equal(y16, F.to_bf16(plain))
    with pytest.raises(TypeError, match="x16: expected a uint16 NumPy array"):
        F.dense_forward(x, W, b, activation, aux=aux, x16=x)
    with pytest.raises(ValueError, match=r"y16: expected a C-contiguous array of shape \(96, 24\)"):
        F.dense_forward(x, W, b, activation, aux=aux, y16=np.empty((96, 23), np.uint16))


@needs_bf16
def test_a_wide_training_step_rounds_each_operand_once(rng, monkeypatch):
    """784-512-512-10 runs layer by layer (too wide for the chain): in "medium" each W and the
    input are rounded once per step, each hidden output by its layer's epilogue, and the
    backward reuses them all; the gradients are those of rounding every operand separately."""
    def model():
        return fastnn.nn.Sequential(fastnn.nn.Dense(784, 512, seed=0), fastnn.nn.ReLU(),
                                    fastnn.nn.Dense(512, 512, seed=1), fastnn.nn.ReLU(), fastnn.nn.Dense(512, 10, seed=2))

    x, labels = f32(rng, (64, 784)), rng.integers(0, 10, 64)
    real = _backend._C.cpu.to_bf16
    rounded = []
    monkeypatch.setattr(_backend._C.cpu, "to_bf16", lambda src, dst, n: (rounded.append(n), real(src, dst, n))[1])

    def step(net):
        loss = fastnn.nn.SoftmaxCrossEntropy()
        loss.forward(net.forward(x, training=True), labels)
        net.backward(loss.backward(), need_input_grad=False)
        return [p.grad.copy() for p in net.parameters()]

    linked = step(model())
    assert sorted(rounded) == sorted([64 * 784, 784 * 512, 512 * 512, 512 * 10])
    rounded.clear()
    monkeypatch.setattr(fastnn.nn.dense.Bf16Link, "take", lambda self, x: None)
    separate = step(model())
    assert len(rounded) > 4  # the hidden outputs rounded by passes of their own
    for a, b in zip(linked, separate):
        np.testing.assert_array_equal(a, b)
