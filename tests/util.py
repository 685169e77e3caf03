"""Helpers for tests: random arrays, comparisons, finite differences."""

from __future__ import annotations

import numpy as np

from fastnn._backend import to_numpy

# Tolerances for comparing a kernel with the reference on O(1) data.
TOL = {np.dtype(np.float32): dict(rtol=1e-5, atol=1e-5), np.dtype(np.float64): dict(rtol=1e-12, atol=1e-12)}


def randn(xp, rng, shape, dtype=np.float64, scale=1.0):
    """Standard normal values (drawn on the CPU from ``rng``) as an ``xp`` array."""
    return xp.asarray((rng.standard_normal(shape) * scale).astype(dtype))


def away_from_zero(xp, rng, shape, dtype=np.float64, low=0.1, high=2.0):
    """Values with |v| in [low, high] and random signs: finite differences never cross a kink."""
    v = rng.uniform(low, high, shape) * rng.choice([-1.0, 1.0], shape)
    return xp.asarray(v.astype(dtype))


def assert_close(actual, expected, dtype=None, **tol):
    """Compare any arrays (NumPy or CuPy) after moving them to the host."""
    a, e = to_numpy(actual), to_numpy(expected)
    if dtype is None:
        dtype = a.dtype
    options = dict(TOL.get(np.dtype(dtype), dict(rtol=1e-5, atol=1e-5)))
    options.update(tol)
    assert a.shape == e.shape, f"shape {a.shape} != {e.shape}"
    np.testing.assert_allclose(a, e, **options)


def numeric_grad(f, x, dy, eps=1e-6):
    """d/dx of sum(f(x) * dy) by centred differences, one element at a time, in float64.
    ``f`` maps an array like ``x`` to an array like ``dy``; ``x`` is restored afterwards."""
    xp_x = x
    flat = xp_x.reshape(-1)
    grad = np.zeros(flat.size)
    for i in range(flat.size):
        old = float(flat[i])
        flat[i] = old + eps
        plus = float((to_numpy(f(xp_x)) * to_numpy(dy)).sum())
        flat[i] = old - eps
        minus = float((to_numpy(f(xp_x)) * to_numpy(dy)).sum())
        flat[i] = old
        grad[i] = (plus - minus) / (2 * eps)
    return grad.reshape(x.shape)


def assert_grad_close(analytic, numeric, rtol=1e-6, atol=1e-8):
    """Finite-difference agreement in float64: relative error per element under ``rtol``."""
    a, n = to_numpy(analytic), to_numpy(numeric)
    np.testing.assert_allclose(a, n, rtol=rtol, atol=atol)
