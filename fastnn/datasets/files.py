"""Your own data from a file: ``.npz`` (arrays ``X`` and ``y``) or ``.csv`` (a label column).

Both return ``(X, y)`` with ``X`` float32 ``(n, ...)``. Labels that are all whole numbers become
int64 class labels; any other labels stay float32 targets (regression). Every problem (a missing
file, key or column, a value that is not a number, a ragged row, NaN or infinity) raises an error
that says where it is.
"""

from __future__ import annotations

import csv
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np


# What numpy raises for a file that is not an .npz archive, or a damaged one.
_UNREADABLE_NPZ = (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error)


def _existing(path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file" + (" (it is a directory)" if path.is_dir() else ""))
    return path


def _labels(y: np.ndarray) -> np.ndarray:
    """int64 when every label is a whole number (that float64 holds exactly), else float32."""
    if y.dtype.kind in "biu":
        return y.astype(np.int64)
    if np.array_equal(y, np.round(y)) and np.all(np.abs(y) <= 2**53):
        return y.astype(np.int64)
    return y.astype(np.float32)


def _check_finite(a: np.ndarray, what: str, source: Path) -> None:
    bad = ~np.isfinite(a)
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        raise ValueError(f"{source}: {what} has a NaN or infinite value in sample {row}")


def load_npz(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Arrays ``X`` (features, ``(n, ...)``, at least 2-D) and ``y`` (labels or targets, ``(n, ...)``)
    from an ``.npz`` file, as written by ``numpy.savez(path, X=X, y=y)``.

    Returns ``X`` as float32 and ``y`` as int64 (whole numbers) or float32. Raises
    FileNotFoundError for a missing file, ValueError for a missing key (naming the keys present),
    non-numeric or mismatched arrays, NaN or infinity. Pickled (object) arrays are refused.
    """
    path = _existing(path)
    try:
        npz = np.load(path, allow_pickle=False)
    except _UNREADABLE_NPZ as e:
        raise ValueError(f"{path}: not a readable .npz file ({e})") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: not an .npz archive (it holds a single array)")
    with npz:
        for key in ("X", "y"):
            if key not in npz.files:
                raise ValueError(f"{path}: no array named {key!r}; the file has {sorted(npz.files)}"
                                 " (save with numpy.savez(path, X=features, y=labels))")
        try:
            X, y = npz["X"], npz["y"]
        except _UNREADABLE_NPZ as e:
            raise ValueError(f"{path}: cannot read X and y ({e})") from None
    for key, a in (("X", X), ("y", y)):
        if a.dtype.kind not in "biuf":
            raise ValueError(f"{path}: {key} must hold numbers, got dtype {a.dtype}")
    if X.ndim < 2 or len(X) == 0:
        raise ValueError(f"{path}: X must be (samples, features) with at least one sample, "
                         f"got shape {X.shape}")
    if y.ndim < 1 or len(y) != len(X):
        raise ValueError(f"{path}: y must have one entry per sample of X ({len(X)}), got shape {y.shape}")
    X = X.astype(np.float32)
    _check_finite(X, "X", path)
    if y.dtype.kind == "f":
        _check_finite(y, "y", path)
    return X, _labels(y)


def load_csv(path: str | os.PathLike, label_column: str | int = "label", delimiter: str = ",",
             header: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels from a ``.csv`` file: one sample per row, every field a number.

    ``label_column`` names the label column (a header name, or a 0-based index, negative from the
    end; with ``header=False`` only an index works); all other columns are features. Fields may
    be quoted; spaces around them and blank lines are ignored. Returns ``X`` float32
    ``(rows, columns - 1)`` and ``y`` ``(rows,)``, int64 when every label is a whole number, else
    float32.

    Raises FileNotFoundError for a missing file and ValueError for an unknown label column
    (listing the columns), a field that is not a number (giving its row and column), a row with
    the wrong number of fields, NaN or infinity, or a file without data rows.
    """
    path = _existing(path)
    with open(path, newline="", encoding="utf-8-sig") as f:
        # Spaces after a delimiter are common in hand-written files, and would hide a quote.
        reader = csv.reader(f, delimiter=delimiter, skipinitialspace=True)
        try:
            rows = [(reader.line_num, row) for row in reader if row]
        except (csv.Error, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not a readable UTF-8 CSV file ({e})") from None
    if header:
        if not rows:
            raise ValueError(f"{path}: the file is empty (expected a header row)")
        names = [name.strip() for name in rows.pop(0)[1]]
    else:
        names = [f"column {i}" for i in range(len(rows[0][1]))] if rows else []
    if not rows:
        raise ValueError(f"{path}: no data rows")
    label = _label_index(label_column, names, header, path)

    values = np.empty((len(rows), len(names)), dtype=np.float64)
    for r, (line, row) in enumerate(rows):
        if len(row) != len(names):
            raise ValueError(f"{path}: line {line} has {len(row)} fields, expected {len(names)}"
                             f" (like {'the header' if header else 'the first row'})")
        for c, field in enumerate(row):
            try:
                values[r, c] = float(field)
            except ValueError:
                raise ValueError(f"{path}: row {r + 1} (line {line}), column {names[c]!r}: "
                                 f"{field!r} is not a number") from None
    bad = np.argwhere(~np.isfinite(values))
    if len(bad):
        r, c = bad[0]
        raise ValueError(f"{path}: row {r + 1} (line {rows[r][0]}), column {names[c]!r}: "
                         f"{rows[r][1][c]!r} is NaN or infinite")
    return np.delete(values, label, axis=1).astype(np.float32), _labels(values[:, label])


def _label_index(label_column, names: list[str], header: bool, path: Path) -> int:
    if isinstance(label_column, str):
        if not header:
            raise ValueError(f"{path}: with header=False, label_column must be a column index "
                             f"(0..{len(names) - 1} or negative), got {label_column!r}")
        matches = [i for i, name in enumerate(names) if name == label_column.strip()]
        if not matches:
            raise ValueError(f"{path}: no column named {label_column!r}; the columns are {names}")
        if len(matches) > 1:
            raise ValueError(f"{path}: {len(matches)} columns are named {label_column!r}; "
                             f"give label_column as an index ({matches})")
        index = matches[0]
    elif isinstance(label_column, (int, np.integer)) and not isinstance(label_column, bool):
        if not -len(names) <= label_column < len(names):
            raise ValueError(f"{path}: label_column {label_column} is out of range for "
                             f"{len(names)} columns {names}")
        index = int(label_column) % len(names)
    else:
        raise TypeError(f"label_column must be a column name or index, got {type(label_column).__name__}")
    if len(names) < 2:
        raise ValueError(f"{path}: only the label column {names[index]!r}; there are no feature columns")
    return index
