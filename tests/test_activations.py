"""Activations: every kernel against the reference on random inputs, float32 and float64, on
every path this machine can run; float64 finite-difference checks of every backward."""

import numpy as np
import pytest

from fastnn import _backend
from fastnn import functional as F
from fastnn import reference as R
from util import assert_close, assert_grad_close, away_from_zero, numeric_grad, randn

ELEMENTWISE = ["identity", "relu", "leaky_relu", "sigmoid", "tanh", "gelu", "gelu_tanh"]
SHAPES = [(7,), (5, 13), (2, 3, 4), (300, 200)]  # the last one is above the OpenMP threshold
DTYPES = [np.float32, np.float64]


def saved_for(activation, x, y):
    return y if activation in F.activations.SAVES_OUTPUT else x


@pytest.mark.parametrize("activation", ELEMENTWISE)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_elementwise_matches_reference(xp, path, rng, activation, shape, dtype):
    x = randn(xp, rng, shape, dtype, scale=3.0)
    dy = randn(xp, rng, shape, dtype)
    y = F.activation_forward(x, activation, alpha=0.07)
    assert y.dtype == dtype and y.shape == shape
    assert_close(y, R.activation_forward(x, activation, 0.07))
    saved = saved_for(activation, x, y)
    dx = F.activation_backward(dy, saved, activation, alpha=0.07)
    assert_close(dx, R.activation_backward(dy, saved, activation, 0.07))


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "sigmoid", "tanh", "gelu", "gelu_tanh"])
def test_elementwise_gradient_finite_differences(xp, path, rng, activation):
    x = away_from_zero(xp, rng, (4, 6))
    dy = randn(xp, rng, (4, 6))
    y = F.activation_forward(x, activation, alpha=0.2)
    analytic = F.activation_backward(dy, saved_for(activation, x, y), activation, alpha=0.2)
    numeric = numeric_grad(lambda v: F.activation_forward(v, activation, alpha=0.2), x, dy)
    assert_grad_close(analytic, numeric)


NAMED = [
    (F.relu_forward, F.relu_backward, "relu", {}),
    (F.leaky_relu_forward, F.leaky_relu_backward, "leaky_relu", {}),
    (F.sigmoid_forward, F.sigmoid_backward, "sigmoid", {}),
    (F.tanh_forward, F.tanh_backward, "tanh", {}),
    (F.gelu_forward, F.gelu_backward, "gelu", {}),
    (F.gelu_forward, F.gelu_backward, "gelu_tanh", {"approximate": "tanh"}),
]


@pytest.mark.parametrize("forward,backward,activation,kwargs", NAMED)
def test_named_functions_follow_torch_defaults(xp, path, rng, forward, backward, activation, kwargs):
    x = randn(xp, rng, (6, 9), np.float64, scale=2.0)
    dy = randn(xp, rng, (6, 9), np.float64)
    y = forward(x, **kwargs)
    assert_close(y, R.activation_forward(x, activation, 0.01))  # leaky_relu: torch's 0.01
    saved = saved_for(activation, x, y)
    assert_close(backward(dy, saved, **kwargs), R.activation_backward(dy, saved, activation, 0.01))


@pytest.mark.parametrize("dtype", DTYPES)
def test_float32_transcendentals_accurate_over_wide_range(xp, path, dtype):
    # The native CPU kernels use their own vectorizable exp/tanh for float32; hold them to
    # a few ulp of float64 libm over the whole useful range, including the saturated tails.
    x64 = np.linspace(-30, 30, 60001)
    x = xp.asarray(x64.astype(dtype))
    xs = x64.astype(dtype).astype(np.float64)
    exact = {
        "sigmoid": 1 / (1 + np.exp(-xs)),
        "tanh": np.tanh(xs),
    }
    for activation, expected in exact.items():
        got = F.activation_forward(x, activation)
        rtol = 4e-7 if dtype == np.float32 else 1e-14
        np.testing.assert_allclose(np.asarray(got.get() if hasattr(got, "get") else got, np.float64),
                                   expected, rtol=rtol, atol=1e-30, err_msg=activation)


def test_extreme_inputs_are_stable(xp, path):
    x = xp.asarray(np.array([-1e4, -100.0, -30.0, 0.0, 30.0, 100.0, 1e4], np.float32))
    s = F.sigmoid_forward(x)
    t = F.tanh_forward(x)
    for v in (s, t):
        assert bool(xp.isfinite(v).all())
    assert float(s[0]) < 1e-30 and float(s[-1]) == 1.0
    assert float(t[0]) == -1.0 and float(t[-1]) == 1.0
    big = xp.asarray(np.array([[1e4, 0.0, -1e4], [88.0, 89.0, 90.0]], np.float32))
    p = F.softmax_forward(big)
    assert_close(p, np.array([[1.0, 0.0, 0.0], R.softmax_forward(np.array([88.0, 89.0, 90.0]))]), np.float32)
    lp = F.log_softmax_forward(big)
    assert bool(xp.isfinite(lp).all())


def test_nan_propagates(xp, path):
    x = xp.asarray(np.array([[1.0, np.nan, -2.0]], np.float32))
    for activation in ["relu", "leaky_relu", "sigmoid", "tanh", "gelu", "gelu_tanh"]:
        y = F.activation_forward(x, activation)
        assert bool(xp.isnan(y[0, 1])), activation
    assert bool(xp.isnan(F.softmax_forward(x)).all())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(6,), (4, 5), (3, 4, 5), (512, 96), (0, 5), (0, 3, 2)])  # empty: no crash
@pytest.mark.parametrize("shared", [False, True])
def test_prelu_matches_reference(xp, path, rng, dtype, shape, shared):
    channels = 1 if shared or len(shape) < 2 else shape[1]
    x = randn(xp, rng, shape, dtype)
    alpha = xp.asarray(rng.uniform(0.05, 0.5, channels).astype(dtype))
    dy = randn(xp, rng, shape, dtype)
    assert_close(F.prelu_forward(x, alpha), R.prelu_forward(x, alpha))
    start = xp.asarray(rng.standard_normal(channels).astype(dtype))
    dx, dalpha = F.prelu_backward(dy, x, alpha, dalpha=start.copy())
    ref_dx, ref_dalpha = R.prelu_backward(dy, x, alpha)
    assert_close(dx, ref_dx)
    # dalpha accumulates (+=) into what was there; sums over many terms get a looser bound.
    assert_close(dalpha, start + ref_dalpha, rtol=1e-4 if dtype == np.float32 else 1e-10, atol=1e-4)


@pytest.mark.parametrize("shared", [False, True])
def test_prelu_gradient_finite_differences(xp, path, rng, shared):
    x = away_from_zero(xp, rng, (5, 3, 2))
    alpha = xp.asarray(rng.uniform(0.1, 0.4, 1 if shared else 3))
    dy = randn(xp, rng, (5, 3, 2))
    dx, dalpha = F.prelu_backward(dy, x, alpha)
    assert_grad_close(dx, numeric_grad(lambda v: F.prelu_forward(v, alpha), x, dy))
    assert_grad_close(dalpha, numeric_grad(lambda a: F.prelu_forward(x, a), alpha, dy))


@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1,), (9,), (8, 10), (3, 4, 7), (64, 1500), (2000, 33)])
def test_softmax_matches_reference(xp, path, rng, log, dtype, shape):
    forward, backward = (F.log_softmax_forward, F.log_softmax_backward) if log else (F.softmax_forward, F.softmax_backward)
    ref_forward, ref_backward = (R.log_softmax_forward, R.log_softmax_backward) if log else (R.softmax_forward, R.softmax_backward)
    x = randn(xp, rng, shape, dtype, scale=4.0)
    dy = randn(xp, rng, shape, dtype)
    y = forward(x)
    assert_close(y, ref_forward(x))
    if not log:
        assert_close(y.sum(axis=-1), xp.ones(shape[:-1], dtype))
    assert_close(backward(dy, y), ref_backward(dy, y))


@pytest.mark.parametrize("log", [False, True])
def test_softmax_gradient_finite_differences(xp, path, rng, log):
    forward, backward = (F.log_softmax_forward, F.log_softmax_backward) if log else (F.softmax_forward, F.softmax_backward)
    x = randn(xp, rng, (3, 5))
    dy = randn(xp, rng, (3, 5))
    assert_grad_close(backward(dy, forward(x)), numeric_grad(forward, x, dy))


def test_out_and_in_place(xp, path, rng):
    x = randn(xp, rng, (10, 10), np.float32)
    expected = R.activation_forward(x.copy(), "tanh")
    out = xp.empty_like(x)
    assert F.tanh_forward(x, out=out) is out
    assert_close(out, expected)
    F.tanh_forward(x, out=x)  # in place
    assert_close(x, expected)


def test_unaligned_views(xp, path, rng):
    # x[1:] of a float32 vector is contiguous but 4 bytes off a 16-byte boundary: the CUDA
    # kernels must fall back to scalar loads, the CPU ones must not care.
    base = randn(xp, rng, (1027,), np.float32)
    x = base[1:]
    out_base = xp.zeros(1027, np.float32)
    y = F.gelu_forward(x, out=out_base[1:])
    assert_close(y, R.activation_forward(x, "gelu"))
    assert float(out_base[0]) == 0.0


def test_foreign_array_interface_is_viewed_without_copy(rng):
    class Foreign:  # a minimal producer that only speaks __array_interface__
        def __init__(self, a):
            self._a = a
            self.__array_interface__ = a.__array_interface__

    x = rng.standard_normal(32).astype(np.float32)
    out = np.zeros(32, np.float32)
    F.relu_forward(Foreign(x), out=Foreign(out))
    assert_close(out, np.maximum(x, 0))


# ---- bad input --------------------------------------------------------------------------------


def test_rejects_non_float_dtypes(xp):
    with pytest.raises(TypeError, match=r"x: expected dtype float32 or float64, got int64"):
        F.relu_forward(xp.arange(5))
    with pytest.raises(TypeError, match="float16"):
        F.sigmoid_forward(xp.ones(5, xp.float16))
    with pytest.raises(TypeError, match="must be an array"):
        F.relu_forward([1.0, 2.0])


def test_rejects_mismatches(xp, rng):
    x = randn(xp, rng, (4, 5), np.float32)
    with pytest.raises(ValueError, match=r"x: expected shape \(3, 5\), got \(4, 5\)"):
        F.relu_backward(randn(xp, rng, (3, 5), np.float32), x)
    with pytest.raises(TypeError, match="expected dtype float64"):
        F.tanh_backward(randn(xp, rng, (4, 5), np.float64), x)
    with pytest.raises(ValueError, match="C-contiguous"):
        F.relu_forward(randn(xp, rng, (5, 4), np.float32).T)
    with pytest.raises(ValueError, match="out: expected shape"):
        F.relu_forward(x, out=xp.empty((5, 4), np.float32))
    with pytest.raises(ValueError, match="unknown activation"):
        F.activation_forward(x, "swish")
    with pytest.raises(ValueError, match="approximate"):
        F.gelu_forward(x, approximate="fast")
    with pytest.raises(ValueError, match="alpha must be finite"):
        F.leaky_relu_forward(x, alpha=float("nan"))
    with pytest.raises(ValueError, match=r"alpha must have shape \(1,\) or \(5,\)"):
        F.prelu_forward(x, xp.ones(3, np.float32))
    with pytest.raises(ValueError, match="last axis"):
        F.softmax_forward(xp.ones((3, 0), np.float32))


def test_rejects_partially_overlapping_output(xp, rng):
    base = randn(xp, rng, (33,), np.float32)
    with pytest.raises(ValueError, match="overlaps the input"):
        F.relu_forward(base[:32], out=base[1:])
    F.relu_forward(base, out=base)  # exact aliasing (in place) stays allowed


def test_rejects_read_only_output(rng):
    x = rng.standard_normal(8).astype(np.float32)
    frozen = np.zeros(8, np.float32)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        F.relu_forward(x, out=frozen)


def test_rejects_mixed_devices_without_a_gpu(rng):
    try:
        import cupy  # noqa: F401
        pytest.skip("CuPy is installed: the GPU test below covers mixed devices")
    except ImportError:
        pass

    class FakeGpuArray:  # never dereferenced: the device check comes first
        __cuda_array_interface__ = {"shape": (4,), "typestr": "<f4", "data": (16, False), "version": 3}

    with pytest.raises(ValueError, match=r"is on cuda:0 but .* is on cpu|is on cpu but .* is on cuda:0"):
        F.relu_backward(np.ones(4, np.float32), FakeGpuArray())


@pytest.mark.gpu
def test_rejects_mixed_devices_on_gpu(rng):
    import cupy

    with pytest.raises(ValueError, match="never copies between devices"):
        F.relu_backward(cupy.ones(4, np.float32), np.ones(4, np.float32))
    with pytest.raises(ValueError, match="never copies between devices"):
        F.relu_forward(cupy.ones(4, np.float32), out=np.empty(4, np.float32))


def test_exact_gelu_float32_accuracy_on_the_cpu():
    # The CPU's float32 erfc is a vectorized polynomial (csrc/activation_math.h), not libm's:
    # over a dense grid, against float64 math.erfc. Beyond |x| ~ 4 the float32 rounding of
    # x / sqrt(2) itself moves erfc by about x^2 2^-24 relatively, whatever computes it.
    if not _backend.native_available("cpu"):
        pytest.skip("no native CPU kernels")
    import math

    x = np.linspace(-12, 12, 240_001).astype(np.float32)
    x64 = x.astype(np.float64)
    erfc = np.vectorize(math.erfc)
    cdf = 0.5 * erfc(-x64 / math.sqrt(2))
    ref = x64 * cdf
    y = F.activation_forward(x, "gelu").astype(np.float64)
    rel = np.abs(y - ref) / np.maximum(np.abs(ref), 1e-30)
    assert rel[np.abs(x64) <= 4].max() < 2e-6
    assert rel[np.abs(ref) > 1e-30].max() < 3e-5
    far = np.array([-1e4, -50, -14, 14, 50, 1e4], np.float32)
    np.testing.assert_array_equal(F.activation_forward(far, "gelu"), [0, 0, 0, 14, 50, 1e4])
    grad = F.activation_backward(np.ones_like(x), x, "gelu").astype(np.float64)
    grad_ref = cdf + x64 * np.exp(-0.5 * x64 ** 2) / math.sqrt(2 * math.pi)
    np.testing.assert_allclose(grad, grad_ref, rtol=2e-6, atol=1e-6)
