"""Losses, forward and backward, in plain xp code.

Every loss is the mean over the batch, as in PyTorch's default ``reduction="mean"``, and
returns a 0-d array of the prediction's dtype. ``*_backward`` returns d loss / d prediction.
Sums run in float64. Labels are integer class indices in [0, C) (the caller checks the range).
"""

from ._xp import xp_of
from .activations import activation_forward

__all__ = [
    "softmax_cross_entropy_forward", "softmax_cross_entropy_backward",
    "bce_with_logits_forward", "bce_with_logits_backward",
    "mse_forward", "mse_backward",
    "hinge_forward", "hinge_backward",
    "l1_forward", "l1_backward",
]


def _mean(values, dtype):
    xp = xp_of(values)
    return xp.asarray(values.mean(dtype=xp.float64), dtype=dtype)


def softmax_cross_entropy_forward(logits, labels):
    """mean_i (logsumexp(logits_i) - logits_i[labels_i]); logits (N, C), labels (N,).
    The max is subtracted first, so logits of any magnitude are safe."""
    xp = xp_of(logits)
    shifted = logits - logits.max(axis=1, keepdims=True)
    lse = xp.log(xp.exp(shifted).sum(axis=1))
    return _mean(lse - shifted[xp.arange(logits.shape[0]), labels], logits.dtype)


def softmax_cross_entropy_backward(logits, labels):
    """(softmax(logits) - onehot(labels)) / N."""
    xp = xp_of(logits)
    shifted = logits - logits.max(axis=1, keepdims=True)
    p = xp.exp(shifted)
    p /= p.sum(axis=1, keepdims=True)
    p[xp.arange(logits.shape[0]), labels] -= 1
    return p / logits.shape[0]


def bce_with_logits_forward(logits, targets):
    """mean(max(z, 0) - z t + log(1 + e^-|z|)): binary cross-entropy of sigmoid(z) against
    targets t in [0, 1], without ever forming sigmoid(z)."""
    xp = xp_of(logits)
    z, t = logits, targets
    return _mean(xp.maximum(z, 0) - z * t + xp.log1p(xp.exp(-xp.abs(z))), logits.dtype)


def bce_with_logits_backward(logits, targets):
    """(sigmoid(z) - t) / numel."""
    return (activation_forward(logits, "sigmoid") - targets) / logits.size


def mse_forward(pred, target):
    """mean((pred - target)^2) over all elements."""
    return _mean((pred - target) ** 2, pred.dtype)


def mse_backward(pred, target):
    """2 (pred - target) / numel."""
    return 2 * (pred - target) / pred.size


def _hinge_margins(scores, labels):
    """s_ij - s_iy + 1, with the j = y entries set to 0 (they never count)."""
    xp = xp_of(scores)
    rows = xp.arange(scores.shape[0])
    margins = scores - scores[rows, labels][:, None] + 1
    margins[rows, labels] = 0
    return margins


def hinge_forward(scores, labels):
    """Multiclass SVM loss: mean_i sum_{j != y_i} max(0, s_ij - s_iy + 1)."""
    xp = xp_of(scores)
    return _mean(xp.maximum(_hinge_margins(scores, labels), 0).sum(axis=1), scores.dtype)


def hinge_backward(scores, labels):
    """Subgradient: 1/N for every j != y_i with a positive margin, minus their count at y_i.
    A margin of exactly 0 (the kink) contributes 0."""
    xp = xp_of(scores)
    active = (_hinge_margins(scores, labels) > 0).astype(scores.dtype)
    active[xp.arange(scores.shape[0]), labels] = -active.sum(axis=1)
    return active / scores.shape[0]


def l1_forward(pred, target):
    """mean|pred - target| over all elements."""
    xp = xp_of(pred)
    return _mean(xp.abs(pred - target), pred.dtype)


def l1_backward(pred, target):
    """sign(pred - target) / numel (0 where they are equal)."""
    xp = xp_of(pred)
    return xp.sign(pred - target) / pred.size
