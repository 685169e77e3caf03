"""Weight initializers.

Each one fills an array in place (a NumPy or CuPy array, or a :class:`Parameter`'s data) and
returns what it was given. Random values are drawn on the host from a
``numpy.random.Generator`` (``rng=``, or a new one from ``seed=``, or when neither is given
the next one of ``fastnn.seed``'s sequence, fresh entropy without a seed) and then copied to
the array's device, so a seed gives the same weights on the CPU and the GPU.

Weights are laid out ``(in_features, out_features)`` (``y = x @ W + b``), so the fan-in is
``shape[0]`` and the fan-out ``shape[1]``; PyTorch's ``Linear.weight`` is the transpose, so
``torch.nn.init`` reads them the other way round and the statistics agree.

The data-driven LSUV initialization, which runs a model, is ``fastnn.nn.lsuv``
(``fastnn/nn/lsuv_init.py``): ``Dense`` imports this module for its ``init=``.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from .. import _backend as B
from .._warnings import FastnnWarning
from ..data import as_generator
from .parameter import Parameter

__all__ = ["zeros", "normal", "uniform", "xavier", "glorot", "he", "kaiming", "orthogonal", "INITIALIZERS"]


def generator(rng=None, seed=None) -> np.random.Generator:
    """The ``numpy.random.Generator`` to draw from: ``rng`` itself, a new one seeded with
    ``seed``, or ``fastnn.seeding.generator()`` (``fastnn.seed``'s sequence, or fresh OS
    entropy). Giving both is a ``ValueError``."""
    if rng is not None and seed is not None:
        raise ValueError("give rng= or seed=, not both")
    if rng is not None and not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    return as_generator(seed if rng is None else rng)


def _target(array):
    return array.data if isinstance(array, Parameter) else B.as_array(array, "array")


def _fill(array, values: np.ndarray):
    """Write host ``values`` into ``array`` (any device) in place; return ``array``."""
    target = _target(array)
    if tuple(values.shape) != tuple(target.shape):
        raise ValueError(f"initializer: array has shape {tuple(target.shape)}, values {values.shape}")
    if isinstance(target, np.ndarray):
        target[...] = values
    else:
        target[...] = B.array_module(target).asarray(values.astype(target.dtype))
    return array


def _fans(array, name: str) -> tuple[int, int]:
    shape = tuple(_target(array).shape)
    if len(shape) != 2 or 0 in shape:
        raise ValueError(f"{name} needs a non-empty 2-d weight (in_features, out_features), got shape {shape}")
    return shape[0], shape[1]


def _draw(rng: np.random.Generator, shape, std: float, distribution: str, name: str) -> np.ndarray:
    """Zero-mean values with standard deviation ``std``: normal, or uniform on
    [-sqrt(3) std, sqrt(3) std]."""
    if distribution == "normal":
        return rng.normal(0.0, std, shape)
    if distribution == "uniform":
        bound = math.sqrt(3.0) * std
        return rng.uniform(-bound, bound, shape)
    raise ValueError(f"{name}: distribution must be 'normal' or 'uniform', got {distribution!r}")


def zeros(array):
    """Fill with 0. Right for biases; for a weight matrix (2-d) it warns, because every unit of
    the layer then computes the same output and receives the same gradient, so the units stay
    identical (the symmetry is never broken). (torch.nn.init.zeros_)"""
    target = _target(array)
    if target.ndim >= 2:
        warnings.warn("init.zeros on a weight matrix: every unit gets the same gradient and the units stay "
                      "identical (the symmetry is never broken); use it for biases, and a random initializer for "
                      "weights", FastnnWarning,
                      stacklevel=2)
    target.fill(0)
    return array


def normal(array, std: float = 0.01, *, mean: float = 0.0, rng=None, seed=None):
    """Fill with N(mean, std^2); the classic ``std=0.01`` of early deep nets (Krizhevsky et al.
    2012), too small for deep ReLU networks (He et al. 2015). (torch.nn.init.normal_)"""
    std = B.check_scalar(std, "normal: std", low=0)
    mean = B.check_scalar(mean, "normal: mean")
    values = generator(rng, seed).normal(mean, std, _target(array).shape)
    return _fill(array, values)


def uniform(array, low: float = -0.05, high: float = 0.05, *, rng=None, seed=None):
    """Fill with U(low, high) (defaults as Keras' RandomUniform). (torch.nn.init.uniform_,
    whose defaults are 0 and 1)"""
    low = B.check_scalar(low, "uniform: low")
    high = B.check_scalar(high, "uniform: high")
    if not low < high:
        raise ValueError(f"uniform: low must be below high, got low={low}, high={high}")
    return _fill(array, generator(rng, seed).uniform(low, high, _target(array).shape))


def xavier(array, gain: float = 1.0, *, distribution: str = "normal", rng=None, seed=None):
    """Glorot & Bengio 2010, "Understanding the difficulty of training deep feedforward neural
    networks": Var(W) = gain^2 * 2 / (fan_in + fan_out), which keeps the variance of the
    activations and of the gradients roughly constant through tanh/linear layers.
    ``distribution="normal"``: N(0, that variance); ``"uniform"``: U(-a, a) with
    a = gain * sqrt(6 / (fan_in + fan_out)). (torch.nn.init.xavier_normal_ / xavier_uniform_)"""
    fan_in, fan_out = _fans(array, "xavier")
    gain = B.check_scalar(gain, "xavier: gain", low=0)
    std = gain * math.sqrt(2.0 / (fan_in + fan_out))
    return _fill(array, _draw(generator(rng, seed), (fan_in, fan_out), std, distribution, "xavier"))


glorot = xavier


def he(array, gain: float = math.sqrt(2.0), *, mode: str = "fan_in", distribution: str = "normal",
       rng=None, seed=None):
    """He et al. 2015, "Delving deep into rectifiers": Var(W) = gain^2 / fan, with gain sqrt(2)
    for ReLU (sqrt(2 / (1 + a^2)) for a leaky ReLU of slope a), so that the forward variance is
    preserved (``mode="fan_in"``, the default) or the backward one (``"fan_out"``).
    ``distribution="normal"``: N(0, gain^2 / fan); ``"uniform"``: U(-b, b) with
    b = gain * sqrt(3 / fan). (torch.nn.init.kaiming_normal_ / kaiming_uniform_ with
    nonlinearity="relu")"""
    fan_in, fan_out = _fans(array, "he")
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"he: mode must be 'fan_in' or 'fan_out', got {mode!r}")
    gain = B.check_scalar(gain, "he: gain", low=0)
    std = gain / math.sqrt(fan_in if mode == "fan_in" else fan_out)
    return _fill(array, _draw(generator(rng, seed), (fan_in, fan_out), std, distribution, "he"))


kaiming = he


def orthogonal(array, gain: float = 1.0, *, rng=None, seed=None):
    """Saxe, McClelland & Ganguli 2014, "Exact solutions to the nonlinear dynamics of learning
    in deep linear neural networks": W = gain * Q, Q from the QR decomposition of a Gaussian
    matrix with the signs of diag(R) folded in (so Q is uniformly distributed). The columns of
    W (in, out) are orthonormal when in >= out (W^T W = gain^2 I), else its rows
    (W W^T = gain^2 I). (torch.nn.init.orthogonal_)"""
    rows, cols = _fans(array, "orthogonal")
    gain = B.check_scalar(gain, "orthogonal: gain", low=0)
    gaussian = generator(rng, seed).standard_normal((max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(gaussian)
    q *= np.sign(np.diag(r))
    return _fill(array, gain * (q if rows >= cols else q.T))


# The names Dense(init=...) accepts (besides "zeros" and a callable), with their options.
INITIALIZERS = {
    "he": (he, {}), "kaiming": (he, {}),
    "he_uniform": (he, {"distribution": "uniform"}), "kaiming_uniform": (he, {"distribution": "uniform"}),
    "xavier": (xavier, {}), "glorot": (xavier, {}),
    "xavier_uniform": (xavier, {"distribution": "uniform"}), "glorot_uniform": (xavier, {"distribution": "uniform"}),
    "orthogonal": (orthogonal, {}), "normal": (normal, {}), "uniform": (uniform, {}),
}
