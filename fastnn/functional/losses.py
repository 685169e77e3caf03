# PLACEHOLDER: replaced at merge by the kernel helper's module
"""Losses, forward and backward, the mean over the batch as in PyTorch.

Reference-only stand-in with the signatures and semantics of API_CORE.md. ``*_forward``
returns a 0-d array on pred's device and, given ``grad_out``, writes d loss / d pred into it.
"""

from __future__ import annotations

import numpy as np

from .. import _backend as B
from .. import reference as ref

__all__ = [f"{name}_{part}" for name in ("softmax_cross_entropy", "bce_with_logits", "mse", "hinge", "l1")
           for part in ("forward", "backward")]


def _labels(pred, target):
    pred = B.check_float(pred, "logits", ndim=2)
    target = B.as_array(target, "labels")
    if np.dtype(target.dtype) not in (np.dtype(np.int32), np.dtype(np.int64)):
        raise TypeError(f"labels: expected dtype int32 or int64, got {np.dtype(target.dtype)}")
    if target.shape != (pred.shape[0],):
        raise ValueError(f"labels: expected shape ({pred.shape[0]},), got {tuple(target.shape)}")
    if B.device_of(target) != B.device_of(pred):
        raise ValueError("labels and logits are on different devices")
    classes = pred.shape[1]
    bad = B.to_numpy((target < 0) | (target >= classes))
    if bad.any():
        first = int(B.to_numpy(target)[bad.argmax()])
        raise ValueError(f"labels: label {first} is out of range for {classes} classes")
    return pred, target


def _pair(pred, target):
    pred = B.check_float(pred, "pred")
    target = B.check_float(target, "target", like=("pred", pred), shape=pred.shape)
    return pred, target


def _softmax_cross_entropy(pred, target):
    pred, target = _labels(pred, target)
    xp = B.array_module(pred)
    rows = xp.arange(pred.shape[0])
    logp = ref.log_softmax_forward(pred)
    loss = -logp[rows, target].mean()
    grad = xp.exp(logp)
    grad[rows, target] -= 1
    return loss, grad / pred.shape[0]


def _bce_with_logits(pred, target):
    pred, target = _pair(pred, target)
    xp = B.array_module(pred)
    loss = (xp.maximum(pred, 0) - pred * target + xp.log1p(xp.exp(-xp.abs(pred)))).mean()
    return loss, (ref.activation_forward(pred, "sigmoid") - target) / pred.size


def _mse(pred, target):
    pred, target = _pair(pred, target)
    diff = pred - target
    return (diff * diff).mean(), 2 * diff / pred.size


def _hinge(pred, target):
    pred, target = _labels(pred, target)
    xp = B.array_module(pred)
    rows = xp.arange(pred.shape[0])
    margins = pred - pred[rows, target][:, None] + 1
    margins[rows, target] = 0
    grad = (margins > 0).astype(pred.dtype)
    grad[rows, target] = -grad.sum(axis=1)  # the target column of grad is 0 before this line
    return xp.maximum(margins, 0).sum() / pred.shape[0], grad / pred.shape[0]


def _l1(pred, target):
    pred, target = _pair(pred, target)
    xp = B.array_module(pred)
    diff = pred - target
    return xp.abs(diff).mean(), xp.sign(diff) / pred.size


def _forward(compute, pred, target, grad_out):
    loss, grad = compute(pred, target)
    if grad_out is not None:
        B.finish(grad_out, grad)
    return B.array_module(grad).asarray(loss, dtype=grad.dtype)


def softmax_cross_entropy_forward(pred, target, *, grad_out=None):
    """mean_i (logsumexp(pred_i) - pred_i[target_i]); pred (N, C) logits, target (N,) int labels."""
    return _forward(_softmax_cross_entropy, pred, target, grad_out)


def softmax_cross_entropy_backward(pred, target, *, out=None):
    """(softmax(pred) - onehot(target)) / N."""
    return B.finish(out, _softmax_cross_entropy(pred, target)[1])


def bce_with_logits_forward(pred, target, *, grad_out=None):
    """mean(max(z, 0) - z t + log(1 + e^-|z|)); pred and target of one shape."""
    return _forward(_bce_with_logits, pred, target, grad_out)


def bce_with_logits_backward(pred, target, *, out=None):
    """(sigmoid(pred) - target) / numel."""
    return B.finish(out, _bce_with_logits(pred, target)[1])


def mse_forward(pred, target, *, grad_out=None):
    """mean((pred - target)^2)."""
    return _forward(_mse, pred, target, grad_out)


def mse_backward(pred, target, *, out=None):
    """2 (pred - target) / numel."""
    return B.finish(out, _mse(pred, target)[1])


def hinge_forward(pred, target, *, grad_out=None):
    """mean_i sum_{j != y_i} max(0, s_ij - s_iy + 1); pred (N, C) scores, target (N,) labels."""
    return _forward(_hinge, pred, target, grad_out)


def hinge_backward(pred, target, *, out=None):
    """Subgradient of the multiclass hinge loss (0 at the kink), divided by N."""
    return B.finish(out, _hinge(pred, target)[1])


def l1_forward(pred, target, *, grad_out=None):
    """mean |pred - target|."""
    return _forward(_l1, pred, target, grad_out)


def l1_backward(pred, target, *, out=None):
    """sign(pred - target) / numel (0 at 0)."""
    return B.finish(out, _l1(pred, target)[1])
