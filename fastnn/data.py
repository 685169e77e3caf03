"""Splitting data and iterating over it in mini-batches, reproducibly.

``train_test_split`` holds out a test (or validation) set, optionally stratified by class;
``batches`` walks a data set in mini-batches, reshuffled every epoch. Both take a ``seed``: an
int, ``None`` (``fastnn.seed``'s sequence, or fresh entropy) or a ``numpy.random.Generator``;
the same seed gives the same split and the same sequence of epochs. Indices are drawn on the
CPU, so NumPy and CuPy arrays are split and batched identically.
"""

from __future__ import annotations

import math
from typing import Any, Iterator

import numpy as np

from . import seeding
from ._backend import array_module, as_array, device_of, to_numpy

__all__ = ["as_generator", "train_test_split", "batches", "Batches"]


def as_generator(seed: Any) -> np.random.Generator:
    """A ``numpy.random.Generator`` from ``seed``: a Generator is returned as is (its state is
    shared), an int seeds a new one (``numpy.random.default_rng``), ``None`` gets the next one
    of ``fastnn.seed``'s sequence (fresh entropy when no seed is set)."""
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None:
        return seeding.generator()
    if isinstance(seed, (int, np.integer, np.random.SeedSequence)):
        return np.random.default_rng(seed)
    raise TypeError(f"seed must be an int, None or a numpy.random.Generator, got {type(seed).__name__}")


def _num_samples(arrays: dict[str, Any]) -> int:
    """The common length of the non-None arrays, by name; ValueError naming them if their lengths
    or devices differ."""
    present = {name: a for name, a in arrays.items() if a is not None}
    devices = {name: device_of(as_array(a, name)) for name, a in present.items()}
    if len(set(devices.values())) > 1:
        raise ValueError("arrays must be on one device (fastnn never copies between devices), got "
                         + ", ".join(f"{name} on {device}" for name, device in devices.items()))
    lengths = {name: len(a) for name, a in present.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError("arrays must have the same number of samples (first axis), got "
                         + ", ".join(f"{name}: {n}" for name, n in lengths.items()))
    n = next(iter(lengths.values()))
    if n == 0:
        raise ValueError("cannot split or batch an empty data set (0 samples)")
    return n


def _take(a, index: np.ndarray):
    """Rows ``index`` (host integers) of ``a``, on ``a``'s device."""
    return a[array_module(a).asarray(index)]


def _test_count(test_size, n: int) -> int:
    if isinstance(test_size, (bool, np.bool_)):
        raise TypeError("test_size must be a fraction in (0, 1) or a sample count, got a bool")
    if isinstance(test_size, (int, np.integer)):
        count = int(test_size)
        if not 1 <= count <= n - 1:
            raise ValueError(f"test_size={count} samples leaves no train or no test data out of {n} samples")
        return count
    fraction = float(test_size)
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"test_size as a fraction must be in (0, 1), got {test_size!r}")
    count = math.ceil(fraction * n)
    if count >= n:
        raise ValueError(f"test_size={test_size!r} of {n} samples leaves no training data")
    return count


def _stratified_counts(class_sizes: np.ndarray, n_test: int) -> np.ndarray:
    """Test samples per class, proportional to the class sizes and summing to ``n_test``
    (largest remainders), with every class of two or more samples in both parts when the
    counts allow it."""
    ideal = class_sizes * (n_test / class_sizes.sum())
    low = np.where(class_sizes >= 2, 1, 0)
    high = np.where(class_sizes >= 2, class_sizes - 1, 0)
    if low.sum() > n_test or high.sum() < n_test:  # too few samples to keep every class in both
        low, high = np.zeros_like(class_sizes), class_sizes.copy()
    counts = np.clip(np.floor(ideal).astype(np.int64), low, high)
    while counts.sum() < n_test:
        short = np.where(counts < high, ideal - counts, -np.inf)
        counts[np.argmax(short)] += 1
    while counts.sum() > n_test:
        excess = np.where(counts > low, counts - ideal, -np.inf)
        counts[np.argmax(excess)] -= 1
    return counts


def train_test_split(X, y=None, test_size=0.25, seed=None, stratify: bool = False, shuffle: bool = True):
    """Split ``X`` (and ``y``) into a training part and a held-out test part.

    X: (N, ...), y: (N, ...) or None. ``test_size``: a fraction in (0, 1) (the test part gets
    ``ceil(test_size * N)`` samples) or a number of samples. ``shuffle=False`` keeps the order
    and holds out the last samples. ``stratify=True`` splits every class of the integer labels
    ``y`` in the same proportion, so both parts keep the class frequencies (to within one
    sample per class) and every class with two or more samples appears in both.

    Returns ``X_train, X_test, y_train, y_test`` (``X_train, X_test`` when y is None), on the
    arrays' device. Like ``sklearn.model_selection.train_test_split``.
    """
    n = _num_samples({"X": X, "y": y})
    n_test = _test_count(test_size, n)
    if stratify:
        if y is None:
            raise ValueError("stratify=True needs the labels y")
        if not shuffle:
            raise ValueError("stratify=True needs shuffle=True (a stratified split picks samples at random)")
        labels = to_numpy(y)
        if labels.ndim != 1:
            raise ValueError(f"stratify=True needs 1-d class labels y, got shape {labels.shape}")
        classes, label_index = np.unique(labels, return_inverse=True)
        rng = as_generator(seed)
        counts = _stratified_counts(np.bincount(label_index, minlength=len(classes)), n_test)
        test_parts, train_parts = [], []
        for c, count in enumerate(counts):
            members = rng.permutation(np.flatnonzero(label_index == c))
            test_parts.append(members[:count])
            train_parts.append(members[count:])
        test_index = rng.permutation(np.concatenate(test_parts))
        train_index = rng.permutation(np.concatenate(train_parts))
    else:
        order = as_generator(seed).permutation(n) if shuffle else np.arange(n)
        train_index, test_index = order[:n - n_test], order[n - n_test:]
    parts = [_take(X, train_index), _take(X, test_index)]
    if y is not None:
        parts += [_take(y, train_index), _take(y, test_index)]
    return tuple(parts)


class Batches:
    """Mini-batches of ``X`` (and ``y``), re-iterable: every ``for`` loop over it is one epoch
    that visits each sample exactly once (``drop_last=True``: all but the last ``N % batch_size``
    of that epoch's order).

    With ``shuffle=True`` each epoch draws a new order from one generator made from ``seed``
    at construction, so the sequence of epochs is reproducible; ``shuffle=False`` yields views
    in order. Yields ``Xb`` or ``(Xb, yb)`` with ``Xb`` shaped (batch_size, ...); ``len()`` is
    the number of batches per epoch. Like ``torch.utils.data.DataLoader(TensorDataset(X, y),
    batch_size, shuffle, drop_last)``.
    """

    def __init__(self, X, y=None, batch_size: int = 32, shuffle: bool = True, seed=None,
                 drop_last: bool = False):
        self.num_samples = _num_samples({"X": X, "y": y})
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if drop_last and batch_size > self.num_samples:
            raise ValueError(f"drop_last=True with batch_size={batch_size} > {self.num_samples} samples "
                             "would yield no batch at all")
        self.X, self.y = X, y
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.rng = as_generator(seed)

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return -(-self.num_samples // self.batch_size)

    def __iter__(self) -> Iterator:
        order = array_module(self.X).asarray(self.rng.permutation(self.num_samples)) if self.shuffle else None
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            stop = start + self.batch_size
            index = slice(start, stop) if order is None else order[start:stop]
            yield self.X[index] if self.y is None else (self.X[index], self.y[index])

def batches(X, y=None, batch_size: int = 32, shuffle: bool = True, seed=None, drop_last: bool = False) -> Batches:
    """Mini-batches of ``X`` (and ``y``): a re-iterable :class:`Batches`, reshuffled every epoch
    from ``seed``. ``for Xb, yb in fnn.data.batches(X, y, batch_size=64, seed=0): ...``"""
    return Batches(X, y, batch_size=batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last)
