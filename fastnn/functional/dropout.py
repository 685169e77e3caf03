# PLACEHOLDER: replaced at merge by the kernel helper's module
"""Inverted dropout with a counter-based RNG: the mask is a function of (seed, counter, index).

Reference-only stand-in with the signatures and semantics of API_CORE.md; the mask comes from
NumPy's Philox generator keyed by (seed, counter).
"""

from __future__ import annotations

import numpy as np

from .. import _backend as B

__all__ = ["dropout_forward", "dropout_backward", "dropout_mask"]


def dropout_mask(shape, p, *, seed, counter, xp=np):
    """keep_i = uniform(seed, counter, i) >= p, as a boolean array of ``shape``."""
    p = B.check_scalar(p, "p", low=0, high=1, high_open=True)
    size = int(np.prod(shape, dtype=np.int64))
    uniform = np.random.Generator(np.random.Philox(key=[int(seed), int(counter)])).random(size)
    return xp.asarray((uniform >= p).reshape(shape))


def _apply(a, p, seed, counter, out, name):
    a = B.check_float(a, name)
    p = B.check_scalar(p, "p", low=0, high=1, high_open=True)
    keep = dropout_mask(a.shape, p, seed=seed, counter=counter, xp=B.array_module(a))
    return B.finish(out, (a * keep / (1 - p)).astype(a.dtype, copy=False))


def dropout_forward(x, p, *, seed, counter, out=None):
    """y = x * keep / (1 - p), p in [0, 1)."""
    return _apply(x, p, seed, counter, out, "x")


def dropout_backward(dy, p, *, seed, counter, out=None):
    """dx = dy * keep / (1 - p), the mask regenerated from (seed, counter)."""
    return _apply(dy, p, seed, counter, out, "dy")
