"""Activations, forward and backward, validated and dispatched to the reference, native CPU or
CUDA implementation (see ``fastnn._backend``).

Every function takes float32 or float64 C-contiguous arrays (NumPy, CuPy, or zero-copy views
of other arrays) and returns a new array, or writes into ``out=`` when given (``out`` may be the
input: the ops work in place). Backward functions return the gradient with respect to the
input (``=``, not accumulated), except PReLU's slope gradient, a parameter gradient, which is
accumulated (``+=``) into ``dalpha``.

================ ========================================== ==================================
activation       forward                                    backward takes
================ ========================================== ==================================
relu             max(x, 0)                                  dy, x
leaky_relu       x if x > 0 else alpha x  (alpha=0.01)      dy, x
prelu            x if x > 0 else alpha[c] x, c on axis 1    dy, x, alpha
sigmoid          1 / (1 + e^-x)                             dy, y
tanh             tanh x                                     dy, y
gelu             x Phi(x), or the tanh approximation        dy, x
softmax          e^x / sum e^x along the last axis          dy, y
log_softmax      x - log sum e^x along the last axis        dy, y
================ ========================================== ==================================

These match ``torch.nn.functional`` (``gelu(approximate="none"|"tanh")``, ``prelu`` with one
slope or one per channel).
"""

from __future__ import annotations

from .. import _backend as B
from .. import reference as ref

__all__ = [
    "ACTIVATIONS", "activation_forward", "activation_backward",
    "relu_forward", "relu_backward", "leaky_relu_forward", "leaky_relu_backward",
    "sigmoid_forward", "sigmoid_backward", "tanh_forward", "tanh_backward",
    "gelu_forward", "gelu_backward", "prelu_forward", "prelu_backward",
    "softmax_forward", "softmax_backward", "log_softmax_forward", "log_softmax_backward",
]

# The activations of csrc/activation_math.h (enum Activation). The kernels' integer codes come
# from the binding (fastnn._C.Activation), so C++ alone numbers them; without the extension
# only the reference path runs, which takes the names.
ACTIVATIONS = ("identity", "relu", "leaky_relu", "sigmoid", "tanh", "gelu", "gelu_tanh")
_CODES = {} if B._C is None else {name: int(code) for name, code in B._C.Activation.__members__.items()}
# Activations whose backward reads the forward output y rather than the input x.
SAVES_OUTPUT = frozenset({"sigmoid", "tanh"})


def _activation_code(activation: str) -> int | None:
    """The kernels' code for ``activation`` (None without the extension); ValueError naming the
    choices for an unknown name."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; expected one of {sorted(ACTIVATIONS)}")
    return _CODES[activation] if _CODES else None


def _gelu_name(approximate: str) -> str:
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh' (as in PyTorch), got {approximate!r}")
    return "gelu" if approximate == "none" else "gelu_tanh"


def activation_forward(x, activation: str, *, alpha: float = 0.01, out=None):
    """y = f(x) elementwise for ``activation`` in :data:`ACTIVATIONS` (``alpha``: leaky_relu's
    negative slope). x: any shape. Returns y, same shape and dtype."""
    code = _activation_code(activation)
    alpha = B.check_scalar(alpha, "alpha")
    x = B.check_float(x, "x")
    path = B.path_of(x)
    if path == "reference":
        return B.finish(out, ref.activation_forward(x, activation, alpha))
    y = B.output(out, x)
    B.launch(path, "activation_forward", x, code, B.pointer(x), B.pointer(y), x.size, alpha)
    return y


def activation_backward(dy, saved, activation: str, *, alpha: float = 0.01, out=None):
    """dx = dy * f'(.) elementwise. ``saved`` is the forward output y for sigmoid and tanh
    (:data:`SAVES_OUTPUT`), the forward input x otherwise. Returns dx shaped like dy."""
    code = _activation_code(activation)
    alpha = B.check_scalar(alpha, "alpha")
    dy = B.check_float(dy, "dy")
    saved_name = "y" if activation in SAVES_OUTPUT else "x"
    saved = B.check_float(saved, saved_name, like=("dy", dy), shape=dy.shape)
    path = B.path_of(dy)
    if path == "reference":
        return B.finish(out, ref.activation_backward(dy, saved, activation, alpha))
    dx = B.output(out, dy)
    B.launch(path, "activation_backward", dy, code, B.pointer(dy), B.pointer(saved),
             B.pointer(dx), dy.size, alpha)
    return dx


def relu_forward(x, *, out=None):
    """ReLU: y = max(x, 0). x: any shape. (torch.nn.functional.relu)"""
    return activation_forward(x, "relu", out=out)


def relu_backward(dy, x, *, out=None):
    """ReLU gradient: dx = dy where x > 0, else 0 (relu'(0) = 0). ``x`` may also be the
    forward output y, which has the same sign pattern."""
    return activation_backward(dy, x, "relu", out=out)


def leaky_relu_forward(x, alpha: float = 0.01, *, out=None):
    """Leaky ReLU: y = x if x > 0 else alpha x. (torch.nn.functional.leaky_relu,
    negative_slope=0.01)"""
    return activation_forward(x, "leaky_relu", alpha=alpha, out=out)


def leaky_relu_backward(dy, x, alpha: float = 0.01, *, out=None):
    """Leaky ReLU gradient: dx = dy if x > 0 else alpha dy."""
    return activation_backward(dy, x, "leaky_relu", alpha=alpha, out=out)


def sigmoid_forward(x, *, out=None):
    """Logistic sigmoid: y = 1 / (1 + e^-x), computed without overflow. (torch.sigmoid)"""
    return activation_forward(x, "sigmoid", out=out)


def sigmoid_backward(dy, y, *, out=None):
    """Sigmoid gradient from the forward output: dx = dy y (1 - y)."""
    return activation_backward(dy, y, "sigmoid", out=out)


def tanh_forward(x, *, out=None):
    """Hyperbolic tangent: y = tanh x. (torch.tanh)"""
    return activation_forward(x, "tanh", out=out)


def tanh_backward(dy, y, *, out=None):
    """Tanh gradient from the forward output: dx = dy (1 - y^2)."""
    return activation_backward(dy, y, "tanh", out=out)


def gelu_forward(x, approximate: str = "none", *, out=None):
    """GELU (Hendrycks & Gimpel 2016): y = x Phi(x) = x/2 erfc(-x/sqrt 2) for
    ``approximate="none"``, or x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) for ``"tanh"``.
    (torch.nn.functional.gelu)"""
    return activation_forward(x, _gelu_name(approximate), out=out)


def gelu_backward(dy, x, approximate: str = "none", *, out=None):
    """GELU gradient: dx = dy (Phi(x) + x phi(x)), or the derivative of the tanh form."""
    return activation_backward(dy, x, _gelu_name(approximate), out=out)


def _prelu_layout(x, alpha) -> tuple[int, int, int]:
    """(outer, channels, inner) of x for PReLU's channel axis 1, after checking alpha's size."""
    channels = x.shape[1] if x.ndim >= 2 else 1
    if alpha.ndim != 1 or alpha.size not in (1, channels):
        raise ValueError(
            f"prelu: alpha must have shape (1,) or ({channels},) (one slope per channel on axis 1 "
            f"of x with shape {tuple(x.shape)}), got {tuple(alpha.shape)}"
        )
    if alpha.size == 1:
        return 1, 1, x.size
    inner = x.size // (x.shape[0] * channels) if x.size else 0
    return x.shape[0], channels, inner


def prelu_forward(x, alpha, *, out=None):
    """PReLU (He et al. 2015): y = x if x > 0 else alpha[c] x, where c indexes axis 1 of x and
    alpha has shape (1,) (one shared slope) or (C,). (torch.nn.functional.prelu)"""
    x = B.check_float(x, "x")
    alpha = B.check_float(alpha, "alpha", like=("x", x))
    outer, channels, inner = _prelu_layout(x, alpha)
    path = B.path_of(x)
    if path == "reference":
        return B.finish(out, ref.prelu_forward(x, alpha))
    y = B.output(out, x)
    if x.size:  # the kernels size their row blocks by the row length, which is 0 for an empty x
        B.launch(path, "prelu_forward", x, B.pointer(x), B.pointer(alpha), B.pointer(y), outer,
                 channels, inner)
    return y


def prelu_backward(dy, x, alpha, *, dalpha=None, out=None):
    """PReLU gradients. Returns ``(dx, dalpha)``: dx = dy (1 if x > 0 else alpha[c]) (``=``),
    and dalpha[c] += sum of dy x over x <= 0 (accumulated into ``dalpha`` when given, else
    into zeros)."""
    dy = B.check_float(dy, "dy")
    x = B.check_float(x, "x", like=("dy", dy), shape=dy.shape)
    alpha = B.check_float(alpha, "alpha", like=("dy", dy))
    outer, channels, inner = _prelu_layout(x, alpha)
    if dalpha is None:
        with B.on_device(alpha):
            dalpha = B.array_module(alpha).zeros_like(alpha)
    else:
        dalpha = B.check_float(dalpha, "dalpha", like=("alpha", alpha), shape=alpha.shape, writable=True)
    path = B.path_of(dy)
    if path == "reference":
        dx, grad = ref.prelu_backward(dy, x, alpha)
        dalpha += grad
        return B.finish(out, dx), dalpha
    dx = B.output(out, dy)
    if dy.size:
        B.launch(path, "prelu_backward", dy, B.pointer(dy), B.pointer(x), B.pointer(alpha),
                 B.pointer(dx), B.pointer(dalpha), outer, channels, inner)
    return dx, dalpha


def _rows(x, name: str) -> tuple[int, int]:
    if x.ndim == 0 or x.shape[-1] == 0:
        raise ValueError(f"{name}: softmax needs at least one entry along the last axis, got shape {tuple(x.shape)}")
    cols = x.shape[-1]
    return x.size // cols, cols


def _softmax_forward(x, log: bool, out):
    x = B.check_float(x, "x")
    rows, cols = _rows(x, "x")
    path = B.path_of(x)
    if path == "reference":
        return B.finish(out, ref.log_softmax_forward(x) if log else ref.softmax_forward(x))
    y = B.output(out, x)
    B.launch(path, "softmax_forward", x, B.pointer(x), B.pointer(y), rows, cols, log)
    return y


def _softmax_backward(dy, y, log: bool, out):
    dy = B.check_float(dy, "dy")
    y = B.check_float(y, "y", like=("dy", dy), shape=dy.shape)
    rows, cols = _rows(dy, "dy")
    path = B.path_of(dy)
    if path == "reference":
        return B.finish(out, ref.log_softmax_backward(dy, y) if log else ref.softmax_backward(dy, y))
    dx = B.output(out, dy)
    B.launch(path, "softmax_backward", dy, B.pointer(dy), B.pointer(y), B.pointer(dx), rows, cols, log)
    return dx


def softmax_forward(x, *, out=None):
    """Softmax along the last axis: y = e^(x - max) / sum e^(x - max) (numerically stable).
    x: any shape with a non-empty last axis. (torch.softmax(x, dim=-1))"""
    return _softmax_forward(x, False, out)


def softmax_backward(dy, y, *, out=None):
    """Softmax gradient from the forward output: dx = y (dy - sum(dy y)) along the last axis."""
    return _softmax_backward(dy, y, False, out)


def log_softmax_forward(x, *, out=None):
    """Log-softmax along the last axis: y = x - max - log sum e^(x - max).
    (torch.log_softmax(x, dim=-1))"""
    return _softmax_forward(x, True, out)


def log_softmax_backward(dy, y, *, out=None):
    """Log-softmax gradient from the forward output: dx = dy - e^y sum(dy) along the last axis."""
    return _softmax_backward(dy, y, True, out)
