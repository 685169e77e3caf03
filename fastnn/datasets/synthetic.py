"""Synthetic classification data for quick experiments: interleaved spirals and Gaussian blobs.

Both return ``(X, y)`` with ``X`` float32 ``(n, features)`` and ``y`` int64 ``(n,)`` in
``0..classes-1``, drawn from ``numpy.random.default_rng(seed)`` (``seed`` is None, an int or a
``numpy.random.Generator``, which is used and advanced). Samples are shuffled unless
``shuffle=False``, so that slicing off a test set keeps every class.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np

from .._backend import check_scalar


def _count(value: Any, name: str, low: int) -> int:
    """An integer ``>= low`` (bools and floats are refused), else TypeError/ValueError."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got bool")
    try:
        n = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}") from None
    if n < low:
        raise ValueError(f"{name} must be >= {low}, got {n}")
    return n


def _finish(X: np.ndarray, y: np.ndarray, rng: np.random.Generator, shuffle: bool):
    if shuffle:
        order = rng.permutation(len(y))
        X, y = X[order], y[order]
    return X.astype(np.float32), y.astype(np.int64)


def spirals(n_per_class: int = 100, classes: int = 3, noise: float = 0.2, seed=None, *,
            shuffle: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``classes`` interleaved spiral arms in the plane (the cs231n "spiral" toy data).

    Arm ``j`` has ``n_per_class`` points at radius ``r = linspace(0, 1)`` and angle
    ``t = linspace(4j, 4(j+1)) + noise * N(0, 1)``, at ``(r sin t, r cos t)``; a linear model
    cannot separate the arms, a small MLP can. Returns ``X`` float32
    ``(n_per_class * classes, 2)`` and ``y`` int64 with the arm index.
    """
    n = _count(n_per_class, "n_per_class", 1)
    k = _count(classes, "classes", 1)
    noise = check_scalar(noise, "noise", low=0.0)
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(k), n)
    r = np.tile(np.linspace(0.0, 1.0, n), k)
    t = 4.0 * (y + r) + noise * rng.standard_normal(n * k)
    return _finish(np.stack([r * np.sin(t), r * np.cos(t)], axis=1), y, rng, shuffle)


def blobs(n_samples: int = 300, centers: int = 3, features: int = 2, std: float = 1.0, seed=None,
          center_box: tuple[float, float] = (-10.0, 10.0), *,
          shuffle: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Isotropic Gaussian blobs, like ``sklearn.datasets.make_blobs``.

    ``centers`` centres are drawn uniformly from the box ``center_box`` in each of ``features``
    dimensions; sample ``i`` of class ``c`` is ``center_c + std * N(0, I)``. The ``n_samples``
    samples are split as evenly as possible (the first ``n_samples % centers`` classes get one
    more). Returns ``X`` float32 ``(n_samples, features)`` and ``y`` int64 with the centre index.
    """
    n = _count(n_samples, "n_samples", 1)
    k = _count(centers, "centers", 1)
    d = _count(features, "features", 1)
    std = check_scalar(std, "std", low=0.0)
    try:
        low, high = (check_scalar(v, "center_box") for v in center_box)
    except (TypeError, ValueError) as e:
        raise type(e)(f"center_box must be a pair of finite numbers (low, high), "
                      f"got {center_box!r}") from None
    if not low < high:
        raise ValueError(f"center_box must have low < high, got {center_box!r}")
    rng = np.random.default_rng(seed)
    means = rng.uniform(low, high, size=(k, d))
    y = np.repeat(np.arange(k), [n // k + (c < n % k) for c in range(k)])
    return _finish(means[y] + std * rng.standard_normal((n, d)), y, rng, shuffle)
