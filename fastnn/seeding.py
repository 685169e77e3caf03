"""One global seed for everything random that is not given its own: ``fastnn.seed(n)``.

fastnn draws its random numbers from ``numpy.random.Generator`` objects: layer initializers,
Dropout's seed, the Trainer's shuffling and augmentation, ``train_test_split``, the
hyperparameter searches. Each takes ``seed=``/``rng=``; one that is given neither asks
:func:`generator` for one. After ``fastnn.seed(n)`` those generators are the children of one
``numpy.random.SeedSequence(n)``, spawned in the order they are asked for, so a script that
builds and trains the same way after ``fastnn.seed(n)`` gets the same model bit for bit on the
CPU, and the children are statistically independent streams (NumPy's guarantee for spawned
sequences). Without a call to ``seed`` (or after ``seed(None)``) each one starts from fresh OS
entropy, as ``numpy.random.default_rng()`` does. An explicit ``seed=``/``rng=`` always wins and
takes nothing from the sequence. (``torch.manual_seed``, ``keras.utils.set_random_seed``; but
fastnn never touches NumPy's or Python's own global generators.)
"""

from __future__ import annotations

import threading

import numpy as np

__all__ = ["seed", "generator"]

_lock = threading.Lock()
_root: np.random.SeedSequence | None = None


def seed(n: int | None) -> None:
    """Derive every later unseeded generator of fastnn from ``n`` (an int >= 0); ``None``
    goes back to fresh entropy for each. Generators made before the call are not affected."""
    global _root
    if n is not None and (isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)) or n < 0):
        raise ValueError(f"fastnn.seed: expected an int >= 0 or None, got {n!r}")
    with _lock:
        _root = None if n is None else np.random.SeedSequence(int(n))


def generator() -> np.random.Generator:
    """A new ``numpy.random.Generator`` for something given no seed: the next child of the
    sequence :func:`seed` set, or one from fresh OS entropy when no seed is set."""
    with _lock:
        child = None if _root is None else _root.spawn(1)[0]
    return np.random.default_rng(child)
