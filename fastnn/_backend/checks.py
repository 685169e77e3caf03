"""What a valid array argument is, answered in one place.

Every op and layer validates its arguments here, once, before any pointer is taken. Each check
returns the argument as an array (a zero-copy view, or a contiguous copy where the caller asks
for one) or raises: ``TypeError`` for what is not an array or has the wrong dtype,
``ValueError`` for the wrong device, shape, layout or value. Messages start with the argument's
name (after ``where``, the layer or op, when given) and end with what to do about it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .arrays import as_array, device_of, array_module, is_contiguous, is_writable, partially_overlaps, \
    shares_memory, empty, CudaView

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
LABEL_DTYPES = (np.dtype(np.int32), np.dtype(np.int64))


def _fail(kind: type, where, message: str) -> Exception:
    if callable(where):
        where = where()
    return kind(f"{where}: {message}" if where else message)


def check_float(x: Any, name: str, *, like: tuple[str, Any] | None = None, shape=None,
                ndim: int | None = None, features: int | None = None, writable: bool = False,
                dtype=None, dtypes: tuple = FLOAT_DTYPES, copy: bool = False, where=None):
    """Validate a float array argument and return it as an array.

    - dtype float32 or float64, or one of ``dtypes`` when given (``TypeError`` naming the
      argument, expected and given dtype); with ``dtype`` given, exactly that one;
    - with ``like=(other_name, other)``: ``other``'s device (``ValueError``) and dtype
      (``TypeError``);
    - ``ndim``, ``features`` (the size of the last axis) and ``shape`` when given
      (``ValueError``);
    - C-contiguous: refused (``ValueError``: kernels need it and fastnn does not copy behind
      your back), or with ``copy=True`` copied (layers copy their inputs; never what is written);
    - writable when it will be written (``ValueError``).

    ``where`` (e.g. a layer's ``"(0) Dense(4, 8)"``, or a function returning it, called only
    when a check fails) prefixes every message.
    """
    try:
        a = as_array(x, name)
    except TypeError as exc:
        raise _fail(TypeError, where, str(exc)) from None
    dt = np.dtype(a.dtype)
    if dtype is not None and dt != np.dtype(dtype):
        raise _fail(TypeError, where, f"{name}: expected dtype {np.dtype(dtype)}, got {dt}")
    if dt not in dtypes:
        hint = f" (integer data: convert with {name}.astype(numpy.float32))" if dt.kind in "iub" else ""
        expected = " or ".join([", ".join(d.name for d in dtypes[:-1]), dtypes[-1].name] if len(dtypes) > 1 else [dtypes[0].name])
        raise _fail(TypeError, where, f"{name}: expected dtype {expected}, got {dt}{hint}")
    if like is not None:
        other_name, other = like
        if device_of(a) != device_of(other):
            raise _fail(ValueError, where,
                        f"{name} is on {device_of(a)} but {other_name} is on {device_of(other)}: fastnn never copies "
                        "between devices; move one of them first (model.to(...), cupy.asarray(...), .get())")
        if dt != np.dtype(other.dtype):
            raise _fail(TypeError, where,
                        f"{name}: expected dtype {np.dtype(other.dtype)} (the dtype of {other_name}), got {dt}; convert "
                        "one of them (.astype(...), model.to(dtype=...))")
    if ndim is not None and a.ndim != ndim:
        raise _fail(ValueError, where, f"{name}: expected a {ndim}-d array, got shape {tuple(a.shape)}")
    if features is not None and (a.ndim == 0 or a.shape[-1] != features):
        raise _fail(ValueError, where, f"{name} has {a.shape[-1] if a.ndim else 0} features, expected {features} "
                                       f"(shape {tuple(a.shape)})")
    if shape is not None and tuple(a.shape) != tuple(shape):
        raise _fail(ValueError, where, f"{name}: expected shape {tuple(shape)}, got {tuple(a.shape)}")
    if not is_contiguous(a):
        if not copy or isinstance(a, CudaView):
            raise _fail(ValueError, where,
                        f"{name} must be C-contiguous (got strides {a.strides} for shape {tuple(a.shape)}); pass "
                        "numpy.ascontiguousarray(...) / cupy.ascontiguousarray(...)")
        a = array_module(a).ascontiguousarray(a)
    if writable and not is_writable(a):
        raise _fail(ValueError, where, f"{name} is read-only but fastnn writes into it")
    return a


def check_labels(labels: Any, name: str, *, rows: int | None = None, like: tuple[str, Any] | None = None,
                 convert: bool = False, where=None):
    """Validate integer class labels, one per row: a 1-d array of ``rows`` elements (when
    given) on ``like``'s device, int32 or int64 and C-contiguous. With ``convert=True`` other
    integer dtypes become int64 and a non-contiguous array is copied; otherwise both are
    refused. Range is not checked here (the loss kernels check it)."""
    try:
        a = as_array(labels, name)
    except TypeError as exc:
        raise _fail(TypeError, where, str(exc)) from None
    dt = np.dtype(a.dtype)
    if dt not in LABEL_DTYPES and not (convert and dt.kind in "iu"):
        expected = "integer class labels, got dtype" if convert else "dtype int32 or int64 (class indices), got"
        raise _fail(TypeError, where, f"{name}: expected {expected} {dt} (convert with {name}.astype(numpy.int64))")
    if like is not None and device_of(a) != device_of(like[1]):
        raise _fail(ValueError, where, f"{name} is on {device_of(a)} but {like[0]} is on {device_of(like[1])}: fastnn "
                                       "never copies between devices; move one of them first")
    if rows is not None and tuple(a.shape) != (rows,):
        of = f" (one label per row of {like[0]}, shape {tuple(like[1].shape)})" if like is not None else ""
        raise _fail(ValueError, where, f"{name}: expected shape ({rows},){of}, got {tuple(a.shape)}")
    if convert:
        if dt not in LABEL_DTYPES:
            a = a.astype(np.int64)
        return array_module(a).ascontiguousarray(a)
    if not is_contiguous(a):
        raise _fail(ValueError, where, f"{name} must be C-contiguous; pass numpy.ascontiguousarray(...)")
    return a


def check_finite(a: Any, name: str, where=None) -> None:
    """``ValueError`` naming the first NaN or infinity of ``a`` (a pass over it; on the GPU a
    host synchronisation)."""
    xp = array_module(a)
    bad = ~xp.isfinite(a)
    if bool(bad.any()):
        index = tuple(int(i) for i in np.unravel_index(int(bad.argmax()), a.shape))
        kind = "NaN" if math.isnan(float(a[index])) else "infinity"
        raise _fail(ValueError, where, f"{name} contains {kind} (first at index {index}, shape {tuple(a.shape)})")


def shown(value: Any) -> str:
    """``repr(value)`` for an error message, a NumPy scalar as the Python number it holds
    (``-1.0``, not ``np.float64(-1.0)``)."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def check_scalar(value: Any, name: str, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False) -> float:
    """A finite real hyperparameter within [low, high] (ends open when asked), else ValueError."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}") from None
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {shown(value)}")
    if low is not None and (v < low or (low_open and v == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {shown(value)}")
    if high is not None and (v > high or (high_open and v == high)):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}, got {shown(value)}")
    return v


def check_disjoint(outputs, inputs) -> None:
    """ValueError when a written array (``outputs``: (name, array) pairs) shares memory with
    another argument (``inputs``; None entries skipped), for kernels that read their inputs
    while writing."""
    may_share, host = np.may_share_memory, np.ndarray  # the common case, without a call per pair
    for out_name, out in outputs:
        out_on_host = isinstance(out, host)
        for name, other in inputs:
            if other is None or name == out_name:
                continue
            if may_share(out, other) if out_on_host and isinstance(other, host) else shares_memory(out, other):
                raise ValueError(f"{out_name} shares memory with {name}: pass a separate array")


def output(out: Any, like: Any, name: str = "out", shape=None):
    """``out`` validated to match ``like`` (device, dtype, shape), or a new empty array on
    ``like``'s device."""
    shape = tuple(like.shape) if shape is None else tuple(shape)
    if out is None:
        if isinstance(like, CudaView):
            raise TypeError(f"{name}: allocating on a foreign GPU array needs CuPy; pass {name}= or install CuPy")
        return empty(shape, like)
    out = check_float(out, name, like=("the input", like), shape=shape, writable=True)
    if partially_overlaps(out, like):
        raise ValueError(f"{name} overlaps the input without being the same array: pass the input itself "
                         "(in place) or a separate array")
    return out


def finish(out: Any, result: Any):
    """Return a reference-path ``result``, written into ``out`` (validated like the native
    paths' outputs) when the caller gave one."""
    if out is None:
        return result
    target = check_float(out, "out", like=("the result", result), shape=result.shape, writable=True)
    target[...] = result
    return target
