# PLACEHOLDER: replaced at merge by the kernel helper's module
"""Dense (fully connected) layers, forward and backward: y = act(x @ W + b), W of shape (in, out).

Reference-only stand-in with the signatures and semantics of API_CORE.md, so that ``fastnn.nn``
can be developed before the kernels land. Parameter gradients accumulate (``+=``), dx is
written (``=``).
"""

from __future__ import annotations

from .. import _backend as B
from .. import reference as ref
from .activations import ACTIVATIONS, SAVES_OUTPUT

__all__ = ["dense_forward", "dense_backward", "dense_needs_aux", "set_matmul_precision",
           "get_matmul_precision"]

_NEEDS_AUX = frozenset({"gelu", "gelu_tanh", "leaky_relu"})
_PRECISIONS = ("highest", "high", "medium")
_precision = "highest"


def set_matmul_precision(precision: str) -> None:
    """"highest" (strict fp32), "high" (TF32) or "medium" (bf16 inputs, fp32 accumulation) for
    float32 GEMMs on the GPU; the CPU always computes in the array's dtype.
    (torch.set_float32_matmul_precision)"""
    global _precision
    if precision not in _PRECISIONS:
        raise ValueError(f"matmul precision must be one of {_PRECISIONS}, got {precision!r}")
    _precision = precision


def get_matmul_precision() -> str:
    """The precision set by :func:`set_matmul_precision` ("highest" by default)."""
    return _precision


def dense_needs_aux(activation: str) -> bool:
    """Whether the backward of ``activation`` needs the pre-activation z (passed as ``aux``)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; expected one of {sorted(ACTIVATIONS)}")
    return activation in _NEEDS_AUX


def _check(x, W, b):
    x = B.check_float(x, "x", ndim=2)
    W = B.check_float(W, "W", like=("x", x), ndim=2)
    if W.shape[0] != x.shape[1]:
        raise ValueError(f"dense: x has {x.shape[1]} features but W has shape {tuple(W.shape)}")
    if b is not None:
        b = B.check_float(b, "b", like=("x", x), shape=(W.shape[1],))
    return x, W, b


def dense_forward(x, W, b=None, activation="identity", *, alpha=0.01, out=None, aux=None):
    """y (N, out) = act(x @ W + b) for x (N, in), W (in, out), b (out,) or None. ``aux``
    receives z = x @ W + b when :func:`dense_needs_aux` (activation)."""
    x, W, b = _check(x, W, b)
    needs_aux = dense_needs_aux(activation)
    shape = (x.shape[0], W.shape[1])
    if needs_aux:
        if aux is None:
            raise ValueError(f"dense_forward: activation {activation!r} needs aux= of shape {shape}")
        aux = B.check_float(aux, "aux", like=("x", x), shape=shape, writable=True)
    z = x @ W
    if b is not None:
        z += b
    if needs_aux:
        aux[...] = z
    return B.finish(out, ref.activation_forward(z, activation, alpha))


def dense_backward(dy, x, W, *, activation="identity", y=None, aux=None, alpha=0.01, dW,
                   db=None, need_dx=True, dx=None):
    """dz = dy * act'(.) (from y or aux); dW += x.T @ dz, db += dz.sum(0), dx = dz @ W.T (=)
    unless ``need_dx=False`` (then returns None)."""
    x, W, _ = _check(x, W, None)
    shape = (x.shape[0], W.shape[1])
    dy = B.check_float(dy, "dy", like=("x", x), shape=shape)
    dW = B.check_float(dW, "dW", like=("W", W), shape=W.shape, writable=True)
    if db is not None:
        db = B.check_float(db, "db", like=("W", W), shape=(W.shape[1],), writable=True)
    if activation == "identity":
        dz = dy
    else:
        saved = y if activation in SAVES_OUTPUT or activation == "relu" else aux
        if saved is None:
            raise ValueError(f"dense_backward: activation {activation!r} needs "
                             f"{'y' if activation in SAVES_OUTPUT or activation == 'relu' else 'aux'}=")
        saved = B.check_float(saved, "saved", like=("x", x), shape=shape)
        dz = ref.activation_backward(dy, saved, activation, alpha)
    dW += x.T @ dz
    if db is not None:
        db += dz.sum(axis=0)
    if not need_dx:
        return None
    return B.finish(dx, dz @ W.T)
