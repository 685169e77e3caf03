"""Dense layers: every path against the float64 reference on random inputs (float32 and
float64, every activation, with and without bias), accumulation of parameter gradients, the
fused previous-layer gradient, float64 finite differences of dx, dW and db, PyTorch where it
is installed, GPU precision modes and the GEMM-epilogue fallbacks, and bad input."""

import numpy as np
import pytest

import fastnn
from fastnn import _backend
from fastnn import functional as F
from fastnn import reference as R
from fastnn._backend import to_numpy
from util import assert_close, assert_grad_close, numeric_grad, randn

ACTIVATIONS = ["identity", "relu", "leaky_relu", "sigmoid", "tanh", "gelu", "gelu_tanh"]
DTYPES = [np.float32, np.float64]
# (N, in, out); the last is above the CPU kernels' OpenMP threshold, and its 130 columns
# make several bias-gradient column blocks on the GPU.
SHAPES = [(1, 3, 2), (7, 5, 3), (64, 33, 16), (300, 200, 130)]


@pytest.fixture(autouse=True)
def _restore_precision():
    yield
    F.set_matmul_precision("highest")


def tol(dtype, k, activation="identity"):
    """Float32 GEMMs of depth k differ from the float64 reference by about k eps |x||W|; the
    GPU's GELU epilogue may use a fast tanh."""
    if np.dtype(dtype) == np.float64:
        return dict(rtol=1e-10, atol=1e-10)
    extra = 2e-3 if activation == "gelu_tanh" else 0.0
    return dict(rtol=2e-5 * max(1, k) ** 0.5 + extra, atol=2e-5 * max(1, k) ** 0.5 + extra)


def host64(*arrays):
    return [None if a is None else to_numpy(a).astype(np.float64) for a in arrays]


def layer(xp, rng, shape, dtype, bias=True):
    n, k, m = shape
    x = randn(xp, rng, (n, k), dtype)
    W = randn(xp, rng, (k, m), dtype, scale=1 / np.sqrt(k))
    b = randn(xp, rng, (m,), dtype) if bias else None
    return x, W, b


def forward(x, W, b, activation, alpha=0.01):
    """Runs dense_forward, with an aux array where the activation needs one."""
    xp = _backend.array_module(x)
    aux = xp.empty((x.shape[0], W.shape[1]), x.dtype) if F.dense_needs_aux(activation) else None
    return F.dense_forward(x, W, b, activation, alpha=alpha, aux=aux), aux


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_matches_reference(xp, path, rng, activation, bias, dtype, shape):
    x, W, b = layer(xp, rng, shape, dtype, bias)
    y, aux = forward(x, W, b, activation, alpha=0.07)
    assert y.dtype == dtype and y.shape == (shape[0], shape[2])
    ref_y, ref_z = R.dense_forward(*host64(x, W, b), activation, 0.07)
    assert_close(y, ref_y, dtype, **tol(dtype, shape[1], activation))
    if aux is not None:
        assert_close(aux, ref_z, dtype, **tol(dtype, shape[1]))


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("need_dx", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_backward_matches_reference_and_accumulates(xp, path, rng, activation, bias, need_dx, dtype, shape):
    n, k, m = shape
    x, W, b = layer(xp, rng, shape, dtype, bias)
    y, aux = forward(x, W, b, activation, alpha=0.07)
    dy = randn(xp, rng, (n, m), dtype)
    dW0 = randn(xp, rng, (k, m), dtype)
    db0 = randn(xp, rng, (m,), dtype)
    dW, db = dW0.copy(), db0.copy() if bias else None
    dx = F.dense_backward(dy, x, W, activation=activation, y=y, aux=aux, alpha=0.07, dW=dW, db=db,
                          need_dx=need_dx)
    saved = aux if F.dense_needs_aux(activation) else y
    ref_dx, ref_dW, ref_db = R.dense_backward(*host64(dy, x, W), activation, *host64(saved), 0.07)
    # parameter gradients accumulate (+=); sums over n rows get a looser bound
    assert_close(dW, to_numpy(dW0) + ref_dW, dtype, **tol(dtype, n, activation))
    if bias:
        assert_close(db, to_numpy(db0) + ref_db, dtype, **tol(dtype, n, activation))
    if need_dx:
        assert dx.shape == (n, k) and dx.dtype == dtype
        assert_close(dx, ref_dx, dtype, **tol(dtype, m, activation))
    else:
        assert dx is None


@pytest.mark.parametrize("x_activation", ACTIVATIONS)
@pytest.mark.parametrize("with_db", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(9, 8, 5), (300, 136, 40)])
def test_backward_fused_with_the_layer_below(xp, path, rng, x_activation, with_db, dtype, shape):
    # Layer 1 (u = x0 W1 + b1, x = x_act(u)) feeding layer 2: layer 2's backward returns dL/du
    # and accumulates layer 1's bias gradient.
    n, k, m = shape
    u = randn(xp, rng, (n, k), dtype)
    x = F.activation_forward(u, x_activation, alpha=0.2)
    W = randn(xp, rng, (k, m), dtype, scale=1 / np.sqrt(k))
    dy = randn(xp, rng, (n, m), dtype)
    x_db0 = randn(xp, rng, (k,), dtype)
    x_db = x_db0.copy() if with_db else None
    dW = xp.zeros((k, m), dtype)
    du = F.dense_backward(dy, x, W, dW=dW, x_activation=x_activation,
                          x_aux=u if F.dense_needs_aux(x_activation) else None, x_alpha=0.2, x_db=x_db)
    dy64, x64, W64, u64 = host64(dy, x, W, u)
    saved = u64 if F.dense_needs_aux(x_activation) or x_activation == "identity" else x64
    expected = R.activation_backward(dy64 @ W64.T, saved, x_activation, 0.2)
    assert_close(du, expected, dtype, **tol(dtype, m, x_activation))
    if with_db:
        assert_close(x_db, to_numpy(x_db0) + expected.sum(axis=0), dtype, **tol(dtype, n * m, x_activation))


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_gradients_finite_differences(xp, path, rng, activation):
    x, W, b = layer(xp, rng, (4, 5, 3), np.float64)
    dy = randn(xp, rng, (4, 3))
    y, aux = forward(x, W, b, activation, alpha=0.2)
    dW, db = xp.zeros_like(W), xp.zeros_like(b)
    dx = F.dense_backward(dy, x, W, activation=activation, y=y, aux=aux, alpha=0.2, dW=dW, db=db)

    def f(x_, W_, b_):
        return forward(x_, W_, b_, activation, alpha=0.2)[0]

    assert_grad_close(dx, numeric_grad(lambda v: f(v, W, b), x, dy))
    assert_grad_close(dW, numeric_grad(lambda v: f(x, v, b), W, dy))
    assert_grad_close(db, numeric_grad(lambda v: f(x, W, v), b, dy))


@pytest.mark.parametrize("x_activation", ["relu", "leaky_relu", "sigmoid", "tanh", "gelu", "gelu_tanh"])
def test_fused_gradient_finite_differences(xp, path, rng, x_activation):
    u = randn(xp, rng, (4, 5))
    W = randn(xp, rng, (5, 3))
    b1 = randn(xp, rng, (5,))
    dy = randn(xp, rng, (4, 3))
    x = F.activation_forward(u, x_activation, alpha=0.2)
    x_db = xp.zeros(5)
    du = F.dense_backward(dy, x, W, dW=xp.zeros_like(W), x_activation=x_activation, x_aux=u, x_alpha=0.2,
                          x_db=x_db)

    def f(u_, b1_):
        return F.dense_forward(F.activation_forward(u_ + b1_, x_activation, alpha=0.2), W)

    u_minus_b1 = u - b1
    assert_grad_close(du, numeric_grad(lambda v: f(v, 0 * b1), u, dy))
    assert_grad_close(x_db, numeric_grad(lambda v: f(u_minus_b1, v), b1, dy))


def test_out_and_aux_are_written(xp, path, rng):
    x, W, b = layer(xp, rng, (6, 4, 5), np.float64)
    out = xp.full((6, 5), np.nan)
    aux = xp.full((6, 5), np.nan)
    y = F.dense_forward(x, W, b, "gelu", out=out, aux=aux)
    assert y is out
    ref_y, ref_z = R.dense_forward(*host64(x, W, b), "gelu")
    assert_close(out, ref_y)
    assert_close(aux, ref_z)
    dx = xp.full((6, 4), np.nan)
    assert F.dense_backward(xp.ones((6, 5)), x, W, activation="gelu", aux=aux, dW=xp.zeros_like(W),
                            dx=dx) is dx
    assert bool(xp.isfinite(dx).all())


def test_empty_batch(xp, path, rng):
    x, W, b = layer(xp, rng, (0, 4, 3), np.float32)
    y, _ = forward(x, W, b, "relu")
    assert y.shape == (0, 3)
    dW, db = xp.ones_like(W), xp.ones_like(b)
    dx = F.dense_backward(xp.ones((0, 3), np.float32), x, W, activation="relu", y=y, dW=dW, db=db)
    assert dx.shape == (0, 4)
    assert_close(dW, np.ones((4, 3)))
    assert_close(db, np.ones(3))


def test_needs_aux():
    assert [a for a in ACTIVATIONS if F.dense_needs_aux(a)] == ["leaky_relu", "gelu", "gelu_tanh"]
    with pytest.raises(ValueError, match="unknown activation"):
        F.dense_needs_aux("swish")


def test_matmul_precision_setting(rng):
    assert F.get_matmul_precision() == "highest"
    x, W, b = layer(np, rng, (8, 6, 4), np.float32)
    strict = F.dense_forward(x, W, b)
    for precision in ["high", "medium", "highest"]:
        fastnn.set_matmul_precision(precision)
        assert fastnn.get_matmul_precision() == precision
        # the CPU computes "high" in float32; "medium" too where it has no bf16 GEMM
        # (tests/test_bf16_gemm.py covers it where it has one)
        if precision != "medium" or not fastnn._bf16.available():
            np.testing.assert_array_equal(F.dense_forward(x, W, b), strict)
    with pytest.raises(ValueError, match="matmul precision must be one of"):
        F.set_matmul_precision("low")


# ---- GPU: precision modes, epilogue fallbacks, alignment, determinism -----------------------

# Bound on |error| / (|x| @ |W|) per output element for each precision (see
# set_matmul_precision): fp32 accumulation over k terms, or rounded inputs.
PRECISION_BOUND = {"highest": 2e-5, "high": 2.0**-9, "medium": 2.0**-6}


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["highest", "high", "medium"])
@pytest.mark.parametrize("activation", ["identity", "relu", "gelu_tanh", "tanh"])
def test_gpu_precision_modes_within_documented_tolerance(rng, precision, activation):
    import cupy

    F.set_matmul_precision(precision)
    n, k, m = 512, 256, 128
    x, W, b = layer(cupy, rng, (n, k, m), np.float32)
    y, aux = forward(x, W, b, activation)
    dy = randn(cupy, rng, (n, m), np.float32)
    dW, db = cupy.zeros_like(W), cupy.zeros_like(b)
    dx = F.dense_backward(dy, x, W, activation=activation, y=y, aux=aux, dW=dW, db=db)
    x64, W64, b64, dy64 = host64(x, W, b, dy)
    bound = PRECISION_BOUND[precision]
    z_bound = bound * (np.abs(x64) @ np.abs(W64)) + 1e-6
    ref_y, ref_z = R.dense_forward(x64, W64, b64, activation)
    # every activation here is 1-Lipschitz within a factor of 1.2
    assert np.all(np.abs(to_numpy(y) - ref_y) <= 1.2 * z_bound + 2e-3 * (activation == "gelu_tanh"))
    # the backward's GEMMs read dz, computed from the GPU's own forward outputs
    saved = to_numpy(aux if F.dense_needs_aux(activation) else y).astype(np.float64)
    ref_dx, ref_dW, ref_db = R.dense_backward(dy64, x64, W64, activation, saved)
    dz_abs = np.abs(R.activation_backward(dy64, saved, activation)) if activation != "identity" else np.abs(dy64)
    assert np.all(np.abs(to_numpy(dW) - ref_dW) <= bound * (np.abs(x64).T @ dz_abs) + 1e-5)
    assert np.all(np.abs(to_numpy(dx) - ref_dx) <= bound * (dz_abs @ np.abs(W64).T) + 1e-5)
    # db may come from the GEMM's BGRADA epilogue, which reads the (rounded) GEMM operand
    assert np.all(np.abs(to_numpy(db) - ref_db) <= bound * dz_abs.sum(axis=0) + 1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["highest", "medium"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_gpu_fallbacks_without_epilogues_match(rng, precision, activation):
    from fastnn import _C

    import cupy

    F.set_matmul_precision(precision)
    x, W, b = layer(cupy, rng, (200, 64, 48), np.float32)
    dy = randn(cupy, rng, (200, 48), np.float32)
    u = randn(cupy, rng, (200, 64), np.float32)
    results = []
    for enabled in [True, False]:
        _C.cuda.set_epilogues_enabled(enabled)
        try:
            y, aux = forward(x, W, b, activation)
            dW, db, x_db = cupy.zeros_like(W), cupy.zeros_like(b), cupy.zeros(64, np.float32)
            du = F.dense_backward(dy, x, W, activation=activation, y=y, aux=aux, dW=dW, db=db,
                                  x_activation="gelu_tanh", x_aux=u, x_db=x_db)
            results.append([to_numpy(a) for a in (y, dW, db, du, x_db)])
        finally:
            _C.cuda.set_epilogues_enabled(True)
    loose = dict(rtol=2e-2, atol=2e-2) if precision == "medium" else dict(rtol=1e-3, atol=2e-3)
    for fused, plain in zip(*results):
        np.testing.assert_allclose(fused, plain, **loose)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_unaligned_views_and_determinism(rng, dtype):
    import cupy

    # Row slices of larger arrays start 4 or 8 bytes off cuBLASLt's preferred 256-byte alignment.
    big_x = randn(cupy, rng, (65, 33), dtype)
    x = big_x[1:]
    W = randn(cupy, rng, (34, 17), dtype)[1:]
    b = randn(cupy, rng, (18,), dtype)[1:]
    y, aux = forward(x, W, b, "gelu")
    ref_y, ref_z = R.dense_forward(*host64(x, W, b), "gelu")
    assert_close(y, ref_y, dtype, **tol(dtype, 33))
    dy = randn(cupy, rng, (64, 17), dtype)
    grads = []
    for _ in range(2):
        dW, db = cupy.zeros_like(W), cupy.zeros_like(b)
        dx = F.dense_backward(dy, x, W, activation="gelu", aux=aux, dW=dW, db=db)
        grads.append([to_numpy(a) for a in (dx, dW, db)])
    for first, second in zip(*grads):
        np.testing.assert_array_equal(first, second)  # no atomics: the same bits every run


@pytest.mark.gpu
def test_gpu_rejects_mixed_devices(rng):
    import cupy

    x, W, b = layer(np, rng, (4, 3, 2), np.float32)
    with pytest.raises(ValueError, match="never copies between devices"):
        F.dense_forward(cupy.asarray(x), W, b)
    with pytest.raises(ValueError, match="never copies between devices"):
        F.dense_backward(cupy.ones((4, 2), np.float32), cupy.asarray(x), cupy.asarray(W), dW=np.zeros_like(W))


# ---- PyTorch -----------------------------------------------------------------------------------

TORCH_ACTIVATIONS = {
    "identity": lambda t, z: z,
    "relu": lambda t, z: t.relu(z),
    "leaky_relu": lambda t, z: t.nn.functional.leaky_relu(z, 0.01),
    "sigmoid": lambda t, z: t.sigmoid(z),
    "tanh": lambda t, z: t.tanh(z),
    "gelu": lambda t, z: t.nn.functional.gelu(z),
    "gelu_tanh": lambda t, z: t.nn.functional.gelu(z, approximate="tanh"),
}


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_matches_torch(path, rng, activation):
    torch = pytest.importorskip("torch")
    x, W, b = layer(np, rng, (16, 12, 7), np.float64)
    dy = rng.standard_normal((16, 7))
    tx, tW, tb = (torch.tensor(a, requires_grad=True) for a in (x, W, b))
    ty = TORCH_ACTIVATIONS[activation](torch, torch.nn.functional.linear(tx, tW.T, tb))
    ty.backward(torch.tensor(dy))
    y, aux = forward(x, W, b, activation)
    dW, db = np.zeros_like(W), np.zeros_like(b)
    dx = F.dense_backward(dy, x, W, activation=activation, y=y, aux=aux, dW=dW, db=db)
    for mine, theirs in [(y, ty), (dx, tx.grad), (dW, tW.grad), (db, tb.grad)]:
        assert_close(mine, theirs.detach().numpy(), rtol=1e-10, atol=1e-10)


# ---- bad input ---------------------------------------------------------------------------------


def test_rejects_bad_shapes_and_dtypes(xp, rng):
    x, W, b = layer(xp, rng, (4, 3, 2), np.float32)
    with pytest.raises(ValueError, match=r"W has shape \(5, 2\) but x has shape \(4, 3\)"):
        F.dense_forward(x, randn(xp, rng, (5, 2), np.float32))
    with pytest.raises(ValueError, match=r"b: expected shape \(2,\), got \(3,\)"):
        F.dense_forward(x, W, randn(xp, rng, (3,), np.float32))
    with pytest.raises(ValueError, match=r"x: expected a 2-d array, got shape \(12,\)"):
        F.dense_forward(x.reshape(-1), W)
    with pytest.raises(TypeError, match=r"W: expected dtype float32 \(the dtype of x\), got float64"):
        F.dense_forward(x, W.astype(np.float64))
    with pytest.raises(TypeError, match="x: expected dtype float32 or float64, got int64"):
        F.dense_forward(xp.ones((4, 3), np.int64), W)
    with pytest.raises(ValueError, match="C-contiguous"):
        F.dense_forward(x, xp.ascontiguousarray(W.T).T)
    with pytest.raises(ValueError, match=r"out: expected shape \(4, 2\)"):
        F.dense_forward(x, W, out=xp.empty((2, 4), np.float32))
    with pytest.raises(ValueError, match=r"needs aux, an \(4, 2\) array"):
        F.dense_forward(x, W, activation="gelu")
    with pytest.raises(ValueError, match="unknown activation"):
        F.dense_forward(x, W, activation="swish")
    with pytest.raises(ValueError, match="out shares memory with x"):
        F.dense_forward(x, xp.ones((3, 3), np.float32), out=x)
    dW = xp.zeros_like(W)
    with pytest.raises(ValueError, match=r"dy: expected shape \(4, 2\) \(x has shape \(4, 3\), W has shape \(3, 2\)\), got \(4, 3\)"):
        F.dense_backward(xp.ones((4, 3), np.float32), x, W, dW=dW)
    with pytest.raises(ValueError, match=r"needs y, the forward's output of shape \(4, 2\)"):
        F.dense_backward(xp.ones((4, 2), np.float32), x, W, activation="relu", dW=dW)
    with pytest.raises(ValueError, match=r"needs aux, the forward's pre-activation"):
        F.dense_backward(xp.ones((4, 2), np.float32), x, W, activation="gelu_tanh", dW=dW)
    with pytest.raises(ValueError, match=r"dW: expected shape \(3, 2\), got \(2, 3\)"):
        F.dense_backward(xp.ones((4, 2), np.float32), x, W, dW=xp.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"db: expected shape \(2,\)"):
        F.dense_backward(xp.ones((4, 2), np.float32), x, W, dW=dW, db=xp.zeros(3, np.float32))
    with pytest.raises(ValueError, match="need need_dx=True"):
        F.dense_backward(xp.ones((4, 2), np.float32), x, W, dW=dW, need_dx=False, x_activation="relu")
    with pytest.raises(ValueError, match=r"needs x_aux"):
        F.dense_backward(xp.ones((4, 2), np.float32), x, W, dW=dW, x_activation="gelu")
    with pytest.raises(ValueError, match="dx shares memory with x"):
        F.dense_backward(xp.ones((4, 2), np.float32), x, W, dW=dW, dx=x)
    with pytest.raises(TypeError, match="dW"):
        F.dense_backward(xp.ones((4, 2), np.float32), x, W)  # dW is required


def test_rejects_read_only_gradient(rng):
    x, W, b = layer(np, rng, (4, 3, 2), np.float32)
    dW = np.zeros_like(W)
    dW.flags.writeable = False
    with pytest.raises(ValueError, match="dW is read-only"):
        F.dense_backward(np.ones((4, 2), np.float32), x, W, dW=dW)
