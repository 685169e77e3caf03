"""Your own data from a file: ``.npz`` (arrays ``X`` and ``y``) or ``.csv`` (a label column).

Both return ``(X, y)`` with ``X`` float32 ``(n, ...)``. Labels that are all whole numbers become
int64, other numbers float32, and a CSV label column with any text in it a NumPy string array
(class names such as ``setosa``); whether labels are classes or regression targets is decided
later (``fastnn.data.infer_task``). Missing values (empty fields, ``NA``, ``NaN``, ``null``,
``?``) are an error naming the columns and rows, or with ``missing="keep"`` NaN in ``X`` (to be
imputed: ``fastnn.preprocessing.SimpleImputer``); a missing label is always an error. Every
other problem (a missing file, key or column, text in a feature column, a ragged row,
infinity) raises an error that says where it is and what to do.
"""

from __future__ import annotations

import csv
import os
import zipfile
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..data import check_missing

# What numpy raises for a file that is not an .npz archive, or a damaged one.
_UNREADABLE_NPZ = (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error)
# Fields read as a missing value (compared in lower case, without surrounding spaces).
MISSING_MARKERS = frozenset({"", "na", "n/a", "nan", "null", "none", "?"})
_MISSING = ("error", "keep")


def _existing(path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file" + (" (it is a directory)" if path.is_dir() else ""))
    return path


def _labels(y: np.ndarray) -> np.ndarray:
    """int64 when every label is a whole number (that float64 holds exactly), else float32;
    text stays text."""
    if y.dtype.kind in "US":
        return y
    if y.dtype.kind in "biu":
        return y.astype(np.int64)
    if np.array_equal(y, np.round(y)) and np.all(np.abs(y) <= 2**53):
        return y.astype(np.int64)
    return y.astype(np.float32)


def _check_missing_option(missing) -> None:
    if missing not in _MISSING:
        raise ValueError(f"missing must be 'error' or 'keep', got {missing!r}")


def load_npz(path: str | os.PathLike, missing: str = "error") -> tuple[np.ndarray, np.ndarray]:
    """Arrays ``X`` (features, ``(n, ...)``, at least 2-D) and ``y`` (labels or targets, ``(n, ...)``)
    from an ``.npz`` file, as written by ``numpy.savez(path, X=X, y=y)``.

    Returns ``X`` as float32 and ``y`` as int64 (whole numbers), float32, or as saved for text
    labels. Raises FileNotFoundError for a missing file, ValueError for a missing key (naming
    the keys present), non-numeric or mismatched arrays, infinity, and NaN in ``X`` unless
    ``missing="keep"`` (NaN in ``y`` always). Pickled (object) arrays are refused.
    """
    _check_missing_option(missing)
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
    for key, a, kinds in (("X", X, "biuf"), ("y", y, "biufUS")):
        if a.dtype.kind not in kinds:
            raise ValueError(f"{path}: {key} must hold numbers{'' if key == 'X' else ' or text labels'}, got dtype "
                             f"{a.dtype}")
    if X.ndim < 2 or len(X) == 0:
        raise ValueError(f"{path}: X must be (samples, features) with at least one sample, "
                         f"got shape {X.shape}")
    if y.ndim < 1 or len(y) != len(X):
        raise ValueError(f"{path}: y must have one entry per sample of X ({len(X)}), got shape {y.shape}")
    X = X.astype(np.float32)
    flat = X.reshape(len(X), -1)
    if missing == "keep":
        flat = np.where(np.isnan(flat), 0, flat)  # NaN allowed, infinity still refused
    check_missing(flat, name=f"{path}: X")
    if y.dtype.kind == "f":
        check_missing(y.reshape(len(y), -1), name=f"{path}: y")
    return X, _labels(y)


class Table(NamedTuple):
    """A CSV file read by :func:`read_csv`: ``X`` float32 (rows, features) with NaN where a
    value is missing (``missing="keep"``), ``y`` the labels (None without a label column),
    ``feature_names`` and ``label_name`` (``"column 3"`` without a header), ``label_index``
    the label's position among the file's columns, and ``lines``, each row's line in the
    file."""

    X: np.ndarray
    y: np.ndarray | None
    feature_names: list[str]
    label_name: str | None
    label_index: int | None
    lines: list[int]


def load_csv(path: str | os.PathLike, label_column: str | int = "label", delimiter: str = ",",
             header: bool = True, missing: str = "error") -> tuple[np.ndarray, np.ndarray]:
    """Features and labels from a ``.csv`` file: one sample per row, every feature a number.

    ``label_column`` names the label column (a header name, or a 0-based index, negative from the
    end; with ``header=False`` only an index works); all other columns are features. Fields may
    be quoted; spaces around them and blank lines are ignored. Returns ``X`` float32
    ``(rows, columns - 1)`` and ``y`` ``(rows,)``: int64 when every label is a whole number,
    float32 for other numbers, a string array (stripped) when any label is text.
    :func:`read_csv` also returns the column names.

    Raises FileNotFoundError for a missing file and ValueError for an unknown label column
    (listing the columns), text in a feature column (one-hot encode it or drop it), missing
    values (naming the columns and rows; ``missing="keep"`` keeps them as NaN in ``X``, a
    missing label is always an error), infinity, a row with the wrong number of fields, or a
    file without data rows.
    """
    table = read_csv(path, label_column, delimiter=delimiter, header=header, missing=missing)
    return table.X, table.y


def read_csv(path: str | os.PathLike, label_column: str | int | None = "label", *, delimiter: str = ",",
             header: bool = True, missing: str = "error", columns: list[str] | None = None) -> Table:
    """A CSV file as a :class:`Table`: ``load_csv``'s ``X`` and ``y`` with the column names.

    ``label_column=None`` reads features only (a file to predict on). ``columns`` (with a
    header) picks the feature columns by name, in that order, ignoring the others (the label
    column among them); a name the file lacks is a ValueError listing every missing one.
    Otherwise every column but the label is a feature. Errors as in :func:`load_csv`.
    """
    _check_missing_option(missing)
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
    for line, row in rows:
        if len(row) != len(names):
            raise ValueError(f"{path}: line {line} has {len(row)} fields, expected {len(names)}"
                             f" (like {'the header' if header else 'the first row'})")
    label = None if label_column is None else _label_index(label_column, names, header, path)
    if columns is not None:
        if not header:
            raise ValueError(f"{path}: columns= picks columns by name, which needs a header")
        absent = [name for name in columns if name not in names]
        if absent:
            raise ValueError(f"{path}: the columns {absent} are missing; the file has {names}")
        chosen = [names.index(name) for name in columns]
    else:
        chosen = [c for c in range(len(names)) if c != label]
        if not chosen:
            raise ValueError(f"{path}: only the label column {names[label]!r}; there are no feature columns")
    lines = [line for line, _ in rows]
    X = np.empty((len(rows), len(chosen)), dtype=np.float64)
    for j, c in enumerate(chosen):
        X[:, j] = _feature_column([row[c] for _, row in rows], names[c], lines, path)
    # Missing values are NaN here; infinity is refused either way.
    check_missing(np.where(np.isnan(X), 0, X) if missing == "keep" else X, [names[c] for c in chosen],
                  f"{path}: X", rows=[f"{r + 1} (line {line})" for r, line in enumerate(lines)])
    y = None if label is None else _label_column([row[label] for _, row in rows], names[label], lines, path)
    return Table(X.astype(np.float32), y, [names[c] for c in chosen], None if label is None else names[label], label,
                 lines)


def _number(field: str) -> float | None:
    """The field as a float, NaN for a missing value, None for text."""
    if field.strip().lower() in MISSING_MARKERS:
        return float("nan")
    try:
        return float(field)
    except ValueError:
        return None


def _feature_column(fields: list[str], name: str, lines: list[int], path: Path) -> np.ndarray:
    values = [_number(field) for field in fields]
    text = [r for r, v in enumerate(values) if v is None]
    if text:
        r = text[0]
        raise ValueError(f"{path}: row {r + 1} (line {lines[r]}), column {name!r}: {fields[r]!r} is not a number "
                         f"({len(text)} text field{'s' if len(text) > 1 else ''} in that column); a text or "
                         "categorical feature must be one-hot encoded (one 0/1 column per category) or dropped")
    return np.asarray(values, dtype=np.float64)


def _label_column(fields: list[str], name: str, lines: list[int], path: Path) -> np.ndarray:
    """Numbers when every label is one (int64 or float32, as ``_labels``), else the stripped
    text; a missing label is a ValueError."""
    stripped = [field.strip() for field in fields]
    gaps = [r for r, field in enumerate(stripped) if field.lower() in MISSING_MARKERS]
    if gaps:
        shown = ", ".join(f"{r + 1} (line {lines[r]})" for r in gaps[:5])
        raise ValueError(f"{path}: the label column {name!r} has missing values in rows {shown}"
                         f"{', ...' if len(gaps) > 5 else ''} ({len(gaps)} in all); drop those rows (a label "
                         "cannot be imputed)")
    values = [_number(field) for field in stripped]
    if any(v is None for v in values):
        return np.asarray(stripped, dtype=str)
    numbers = np.asarray(values, dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(numbers))
    if len(bad):
        r = bad[0]
        raise ValueError(f"{path}: row {r + 1} (line {lines[r]}), column {name!r}: {fields[r]!r} is infinite")
    return _labels(numbers)


def _label_index(label_column, names: list[str], header: bool, path: Path) -> int:
    if isinstance(label_column, str):
        if not header:
            raise ValueError(f"{path}: with header=False, label_column must be a column index "
                             f"(0..{len(names) - 1} or negative), got {label_column!r}")
        matches = [i for i, name in enumerate(names) if name == label_column.strip()]
        if not matches:
            looks_like_data = all(_number(name) is not None for name in names)
            raise ValueError(f"{path}: no column named {label_column!r}; the columns are {names}" +
                             (" (the first row holds numbers: a file without a header is read with header=False, "
                              "fastnn train --no-header)" if looks_like_data else ""))
        if len(matches) > 1:
            raise ValueError(f"{path}: {len(matches)} columns are named {label_column!r}; "
                             f"give label_column as an index ({matches})")
        return matches[0]
    if isinstance(label_column, (int, np.integer)) and not isinstance(label_column, bool):
        if not -len(names) <= label_column < len(names):
            raise ValueError(f"{path}: label_column {label_column} is out of range for "
                             f"{len(names)} columns {names}")
        return int(label_column) % len(names)
    raise TypeError(f"label_column must be a column name or index, got {type(label_column).__name__}")
