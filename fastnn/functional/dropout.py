"""Dropout, validated and dispatched to the reference, native CPU or CUDA implementation.

Inverted dropout: y = x * keep / (1 - p) in training, nothing to do at evaluation. The mask
comes from a counter-based generator (Philox4x32-10) keyed by ``(seed, counter, element
index)``: it is never stored, the backward regenerates it, and the reference, the CPU kernels
and the GPU kernels (which draw it inside the kernel) all produce the same mask for the same
``(seed, counter)``. A layer keeps one seed and advances ``counter`` on every forward call.
The exact definition is in ``fastnn.reference.dropout``.

PyTorch equivalent: ``torch.nn.functional.dropout(x, p, training=True)`` (same scaling; its
masks come from its own generator, so they differ from fastnn's).
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from .. import _backend as B
from .. import reference as ref

__all__ = ["dropout_forward", "dropout_backward", "dropout_mask"]


def _check_p(p) -> float:
    return B.check_scalar(p, "p", low=0.0, high=1.0, high_open=True)


def _check_word(value, name: str) -> int:
    """An unsigned 64-bit integer (the seed or the counter)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    v = int(value)
    if not 0 <= v < 2**64:
        raise ValueError(f"{name} must be in [0, 2**64), got {v}")
    return v


def _apply(name: str, a, arg_name: str, p, seed, counter, out):
    p = _check_p(p)
    seed, counter = _check_word(seed, "seed"), _check_word(counter, "counter")
    a = B.check_float(a, arg_name)
    path = B.path_of(a)
    if path == "reference":
        return B.finish(out, getattr(ref, name)(a, p, seed, counter))
    result = B.output(out, a)
    B.launch(path, name, a, B.pointer(a), B.pointer(result), a.size, ref.keep_threshold(p),
             1.0 / (1.0 - p), seed, counter)
    return result


def dropout_forward(x, p: float, *, seed: int, counter: int, out=None):
    """Inverted dropout: y = x * keep / (1 - p), keep_i = (u_i >= p) with u_i the uniform
    number of element i (flat, C order) for ``(seed, counter)``.

    x: any shape, float32/float64. p in [0, 1) (``ValueError`` otherwise); p = 0 is a copy.
    seed, counter: integers in [0, 2^64). Returns y (=), or writes it into ``out`` (which may
    be x). A dropped NaN stays NaN (x * 0), as in ``torch.nn.functional.dropout``."""
    return _apply("dropout_forward", x, "x", p, seed, counter, out)


def dropout_backward(dy, p: float, *, seed: int, counter: int, out=None):
    """Dropout gradient: dx = dy * keep / (1 - p) (=), with the mask of the forward call that
    used the same ``(seed, counter)`` regenerated (nothing was stored). ``out`` may be dy."""
    return _apply("dropout_backward", dy, "dy", p, seed, counter, out)


def dropout_mask(shape, p: float, *, seed: int, counter: int, xp=np):
    """The keep mask :func:`dropout_forward` applies to an array of ``shape`` for
    ``(seed, counter)``: a bool array on ``xp`` (numpy, or cupy for the GPU)."""
    p = _check_p(p)
    seed, counter = _check_word(seed, "seed"), _check_word(counter, "counter")
    dims = (shape,) if isinstance(shape, numbers.Integral) else tuple(shape)
    if not all(isinstance(d, numbers.Integral) and not isinstance(d, bool) and d >= 0 for d in dims):
        raise ValueError(f"shape must be non-negative integers, got {shape!r}")
    mask = xp.empty(tuple(int(d) for d in dims), dtype=bool)
    path = B.path_of(mask)
    if path == "reference":
        return ref.dropout_mask(mask.shape, p, seed, counter, xp)
    B.launch(path, "dropout_mask", mask, B.pointer(mask), math.prod(mask.shape),
             ref.keep_threshold(p), seed, counter)
    return mask
