"""Dropout, validated and dispatched to the reference, native CPU or CUDA implementation.

Inverted dropout: y = x * keep / (1 - p) in training, nothing to do at evaluation. The mask
comes from a counter-based generator (Philox4x32-10) keyed by ``(seed, counter, element
index)``: it is never stored, the backward regenerates it, and the reference, the CPU kernels
and the GPU kernels (which draw it inside the kernel) all produce the same mask for the same
``(seed, counter)``. A layer keeps one seed and advances ``counter`` on every forward call.
The exact definition is in ``fastnn.reference.dropout``.

The counter may also live in memory (for CUDA graphs): pass ``counter=`` a one-element uint64
array on x's device instead of an int, and the kernels read it when they run, so a captured
graph draws the mask of the value it holds at each replay. :func:`dropout_next_counter`
advances a ``[next, current]`` pair of such words on the device (what ``nn.Dropout`` does
after ``counter_on_device()``); the same counter value gives the same mask either way.

PyTorch equivalent: ``torch.nn.functional.dropout(x, p, training=True)`` (same scaling; its
masks come from its own generator, so they differ from fastnn's).
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from .. import _backend as B
from .. import reference as ref

__all__ = ["dropout_forward", "dropout_backward", "dropout_mask", "dropout_next_counter"]


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


def _check_words(a, name: str, size: int, like=None, writable: bool = False):
    """A C-contiguous uint64 array of ``size`` elements (on ``like``'s device when given)."""
    try:
        a = B.as_array(a, name)
    except TypeError:
        raise TypeError(f"{name} must be an integer or a uint64 array of {size} element{'s' if size > 1 else ''}, "
                        f"got {type(a).__name__}") from None
    if np.dtype(a.dtype) != np.uint64:
        raise TypeError(f"{name}: expected a uint64 array, got dtype {np.dtype(a.dtype)}")
    if a.size != size or a.ndim > 1:
        raise ValueError(f"{name}: expected {size} element{'s' if size > 1 else ''} in at most one dimension, got "
                         f"shape {tuple(a.shape)}")
    if like is not None and B.device_of(a) != B.device_of(like):
        raise ValueError(f"{name} is on {B.device_of(a)} but the data is on {B.device_of(like)}")
    if not B.is_contiguous(a):
        raise ValueError(f"{name} must be C-contiguous")
    if writable and not B.is_writable(a):
        raise ValueError(f"{name} is read-only but fastnn writes into it")
    return a


def _apply(name: str, a, arg_name: str, p, seed, counter, out):
    p = _check_p(p)
    seed = _check_word(seed, "seed")
    a = B.check_float(a, arg_name)
    if isinstance(counter, numbers.Integral):
        counter, counter_at = _check_word(counter, "counter"), None
    else:
        counter, counter_at = 0, _check_words(counter, "counter", 1, like=a)
    path = B.path_of(a)
    if path == "reference":
        if counter_at is not None:
            counter = int(counter_at.reshape(-1)[0])
        return B.finish(out, getattr(ref, name)(a, p, seed, counter))
    result = B.output(out, a)
    B.launch(path, name, a, B.pointer(a), B.pointer(result), a.size, ref.keep_threshold(p),
             1.0 / (1.0 - p), seed, counter, 0 if counter_at is None else B.pointer(counter_at))
    return result


def dropout_forward(x, p: float, *, seed: int, counter, out=None):
    """Inverted dropout: y = x * keep / (1 - p), keep_i = (u_i >= p) with u_i the uniform
    number of element i (flat, C order) for ``(seed, counter)``.

    x: any shape, float32/float64. p in [0, 1) (``ValueError`` otherwise); p = 0 is a copy.
    seed: an integer in [0, 2^64); counter: one too, or a one-element uint64 array on x's
    device holding it, read when the kernel runs. Returns y (=), or writes it into ``out``
    (which may be x). A dropped NaN stays NaN (x * 0), as in ``torch.nn.functional.dropout``."""
    return _apply("dropout_forward", x, "x", p, seed, counter, out)


def dropout_backward(dy, p: float, *, seed: int, counter, out=None):
    """Dropout gradient: dx = dy * keep / (1 - p) (=), with the mask of the forward call that
    used the same ``(seed, counter)`` regenerated (nothing was stored). ``out`` may be dy."""
    return _apply("dropout_backward", dy, "dy", p, seed, counter, out)


def dropout_next_counter(counters) -> None:
    """Advance a counter kept in memory: ``counters`` is a uint64 array ``[next, current]``;
    ``current = next`` and ``next += 1`` (mod 2^64), in place, on the array's device (one
    one-thread kernel on the GPU, ordered on the current stream, so a captured CUDA graph
    advances it on every replay). Pass ``counters[1:]`` as the ``counter`` of
    :func:`dropout_forward` and :func:`dropout_backward` after this call."""
    counters = _check_words(counters, "counters", 2, writable=True)
    path = B.path_of(counters)
    if path == "reference":
        counters[1:] = counters[:1]
        counters[:1] += 1  # an array op: wraps at 2^64 like the kernels
        return
    B.launch(path, "dropout_next_counter", counters, B.pointer(counters))


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
