"""Activations, forward and backward, in plain xp code.

Shapes: the elementwise ones take any shape and return the same shape. ``prelu`` reads its
channel from axis 1 (PyTorch's convention; one shared slope for arrays of fewer than 2 dims).
``softmax`` and ``log_softmax`` normalise along the last axis.

Backward functions take the upstream gradient ``dy`` and what the forward saved: the output
``y`` for sigmoid, tanh and the softmaxes, the input ``x`` for the others; they return
``dx`` (and ``prelu_backward`` also the slope's gradient).
"""

from ._xp import erfc, xp_of

__all__ = [
    "activation_forward", "activation_backward",
    "prelu_forward", "prelu_backward",
    "softmax_forward", "softmax_backward", "log_softmax_forward", "log_softmax_backward",
]

_SQRT_2_OVER_PI = 0.7978845608028654
_INV_SQRT_2 = 0.7071067811865476
_INV_SQRT_2PI = 0.3989422804014327


def activation_forward(x, activation, alpha=0.01):
    """y = f(x) for f in identity, relu, leaky_relu (slope ``alpha``), sigmoid, tanh,
    gelu (exact, x Phi(x)) and gelu_tanh (PyTorch's approximate="tanh")."""
    xp = xp_of(x)
    if activation == "identity":
        return x.copy()
    if activation == "relu":
        return xp.maximum(x, 0)
    if activation == "leaky_relu":
        return xp.where(x > 0, x, alpha * x)
    if activation == "sigmoid":
        e = xp.exp(-xp.abs(x))  # in (0, 1]: never overflows
        return xp.where(x >= 0, 1 / (1 + e), e / (1 + e))
    if activation == "tanh":
        return xp.tanh(x)
    if activation == "gelu":
        return 0.5 * x * erfc(-x * _INV_SQRT_2)
    if activation == "gelu_tanh":
        return 0.5 * x * (1 + xp.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x**3)))
    raise ValueError(f"unknown activation {activation!r}")


def activation_backward(dy, saved, activation, alpha=0.01):
    """dx = dy * f'(.), where ``saved`` is y for sigmoid and tanh and x for the others.
    At the kinks: relu'(0) = 0, leaky_relu'(0) = alpha (as PyTorch)."""
    xp = xp_of(dy)
    if activation == "identity":
        return dy.copy()
    if activation == "relu":
        return xp.where(saved > 0, dy, 0).astype(dy.dtype)
    if activation == "leaky_relu":
        return xp.where(saved > 0, dy, alpha * dy)
    if activation == "sigmoid":
        return dy * saved * (1 - saved)
    if activation == "tanh":
        return dy * (1 - saved * saved)
    if activation == "gelu":
        x = saved
        cdf = 0.5 * erfc(-x * _INV_SQRT_2)
        pdf = _INV_SQRT_2PI * xp.exp(-0.5 * x * x)
        return dy * (cdf + x * pdf)
    if activation == "gelu_tanh":
        x = saved
        t = xp.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x**3))
        du = _SQRT_2_OVER_PI * (1 + 3 * 0.044715 * x * x)
        return dy * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * du)
    raise ValueError(f"unknown activation {activation!r}")


def _channel_view(alpha, x):
    """alpha shaped to broadcast along axis 1 of x (or everywhere, for a shared slope)."""
    if alpha.size == 1:
        return alpha.reshape(())
    return alpha.reshape((1, -1) + (1,) * (x.ndim - 2))


def prelu_forward(x, alpha):
    """y = x if x > 0 else alpha[c] * x, c the index along axis 1 (alpha of size 1 or C)."""
    xp = xp_of(x)
    return xp.where(x > 0, x, _channel_view(alpha, x) * x)


def prelu_backward(dy, x, alpha):
    """dx = dy * (1 if x > 0 else alpha[c]); dalpha[c] = sum of dy * x where x <= 0.
    Returns (dx, dalpha) with dalpha shaped like alpha."""
    xp = xp_of(dy)
    a = _channel_view(alpha, x)
    dx = xp.where(x > 0, dy, a * dy)
    contribution = xp.where(x > 0, 0, dy * x)
    if alpha.size == 1:
        dalpha = contribution.sum().reshape(alpha.shape)
    else:
        axes = (0,) + tuple(range(2, x.ndim))
        dalpha = contribution.sum(axis=axes).reshape(alpha.shape)
    return dx, dalpha.astype(alpha.dtype)


def softmax_forward(x):
    """y = exp(x - max) / sum(exp(x - max)) along the last axis (shifted: no overflow)."""
    xp = xp_of(x)
    e = xp.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def softmax_backward(dy, y):
    """dx = y * (dy - sum(dy * y)) along the last axis."""
    return y * (dy - (dy * y).sum(axis=-1, keepdims=True))


def log_softmax_forward(x):
    """y = x - max - log(sum(exp(x - max))) along the last axis."""
    xp = xp_of(x)
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=-1, keepdims=True))


def log_softmax_backward(dy, y):
    """dx = dy - exp(y) * sum(dy) along the last axis (y the log-probabilities)."""
    xp = xp_of(dy)
    return dy - xp.exp(y) * dy.sum(axis=-1, keepdims=True)
