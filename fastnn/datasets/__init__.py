"""Datasets: the UCI handwritten digits shipped with fastnn, synthetic toy data, your own files.

Every loader returns ``(X, y)``: ``X`` float32 with one sample per row, ``y`` int64 whole numbers,
float32 other numbers, or (from files) text labels; ``fastnn.data.infer_task`` tells classes
from regression targets.

- ``load_digits()``: 1,797 8x8 digit images (UCI, CC BY 4.0; see ``DATA_LICENSE.md``).
- ``spirals(...)``, ``blobs(...)``: seeded synthetic classification problems.
- ``load_npz(path)``, ``load_csv(path, label_column=...)``: user data (``read_csv`` also gives
  the column names).
- ``load(name_or_path, **options)``: any of the above by name or by file extension.
"""

from __future__ import annotations

import os
from pathlib import Path

from .digits import load_digits
from .files import load_csv, load_npz, read_csv
from .synthetic import blobs, spirals

__all__ = ["load", "load_digits", "spirals", "blobs", "load_npz", "load_csv", "read_csv"]

_NAMED = {"digits": load_digits, "spirals": spirals, "blobs": blobs}
_BY_SUFFIX = {".npz": load_npz, ".csv": load_csv}


def load(name_or_path: str | os.PathLike, **options):
    """``(X, y)`` from a built-in dataset name or a data file, ``options`` passed on.

    ``"digits"`` -> ``load_digits``, ``"spirals"`` -> ``spirals``, ``"blobs"`` -> ``blobs``;
    a path ending in ``.npz`` -> ``load_npz``, in ``.csv`` -> ``load_csv`` (e.g.
    ``load("data.csv", label_column="target")``). Anything else is a ValueError listing the
    choices.
    """
    if isinstance(name_or_path, str) and name_or_path.lower() in _NAMED:
        return _NAMED[name_or_path.lower()](**options)
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"load() takes a dataset name or a path, got {type(name_or_path).__name__}")
    loader = _BY_SUFFIX.get(Path(name_or_path).suffix.lower())
    if loader is None:
        raise ValueError(f"unknown dataset {str(name_or_path)!r}: expected one of "
                         f"{', '.join(map(repr, _NAMED))}, or a path ending in "
                         f"{' or '.join(_BY_SUFFIX)}")
    return loader(name_or_path, **options)
