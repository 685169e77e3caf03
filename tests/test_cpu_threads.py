"""The CPU kernels split work over OpenMP threads only above a size (kParallelGrain, 2^21
elements: below it they stay on the calling thread, out of the way of the BLAS threads of a
training step). Above it, one thread and two threads give the same results: bit for bit for
elementwise kernels and dropout, to rounding for reductions."""

from __future__ import annotations

import numpy as np
import pytest

import fastnn
import fastnn.functional as F
from fastnn.optim import functional as optim_F

GRAIN = 1 << 21


@pytest.fixture
def threads():
    """Run a function on one and on two OpenMP threads; returns both results."""
    if not fastnn.backend_info()["native_cpu"]:
        pytest.skip("no native CPU kernels")
    from fastnn import _C

    before = _C.cpu.omp_threads()

    def both(fn):
        out = []
        try:
            for n in (1, 2):
                _C.cpu.set_omp_threads(n)
                out.append(fn())
        finally:
            _C.cpu.set_omp_threads(before)
        return out

    return both


def test_activations_and_dropout_are_bitwise_independent_of_threads(threads, rng):
    x = rng.standard_normal(GRAIN + 7).astype(np.float32)
    dy = rng.standard_normal(GRAIN + 7).astype(np.float32)
    for kind in ("relu", "gelu", "sigmoid"):
        one, two = threads(lambda: F.activation_forward(x, kind))
        np.testing.assert_array_equal(one, two)
        one, two = threads(lambda: F.activation_backward(dy, x, kind))
        np.testing.assert_array_equal(one, two)
    one, two = threads(lambda: F.dropout_forward(x, 0.3, seed=5, counter=6))
    np.testing.assert_array_equal(one, two)


def test_adam_is_bitwise_independent_of_threads(threads, rng):
    p0 = rng.standard_normal(GRAIN + 5).astype(np.float32)
    g = rng.standard_normal(GRAIN + 5).astype(np.float32)

    def step():
        p, m, v = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
        for t in (1, 2):
            optim_F.adam_([p], [g], [m], [v], step=t, lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                          amsgrad=False, decoupled=False, maximize=False)
        return p

    one, two = threads(step)
    np.testing.assert_array_equal(one, two)


def test_batchnorm_agrees_across_threads(threads, rng):
    n, c = GRAIN // 3 + 11, 3
    x = rng.standard_normal((n, c)) * 2 + 1
    dy = rng.standard_normal((n, c))
    gamma, beta = rng.standard_normal(c), rng.standard_normal(c)

    def run():
        y, saved = F.batchnorm_forward(x, gamma, beta, np.zeros(c), np.ones(c), training=True, relu=True)
        dgamma, dbeta = np.zeros(c), np.zeros(c)
        dx = F.batchnorm_backward(dy, x, gamma, saved, dgamma=dgamma, dbeta=dbeta, relu=True, y=y)
        return y, dx, dgamma, dbeta

    one, two = threads(run)
    for a, b in zip(one, two):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)
