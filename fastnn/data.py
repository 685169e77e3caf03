"""Data as it comes, split and iterated over in mini-batches, reproducibly.

``train_test_split`` holds out a test (or validation) set, optionally stratified by class;
``batches`` walks a data set in mini-batches, reshuffled every epoch. Both take a ``seed``: an
int, ``None`` (``fastnn.seed``'s sequence, or fresh entropy) or a ``numpy.random.Generator``;
the same seed gives the same split and the same sequence of epochs. Indices are drawn on the
CPU, so NumPy and CuPy arrays are split and batched identically.

Before that, data as it comes: ``features`` reads a feature matrix (and its column names) from
an array or a pandas DataFrame, refusing text and categorical columns with what to do about
them; ``check_missing`` names the columns and rows of missing values (NaN); ``infer_task``
says whether targets are class labels or regression targets (and refuses to guess when it is
not clear); ``encode_labels`` maps class labels of any kind (strings too) to 0..C-1.
"""

from __future__ import annotations

import math
from typing import Any, Iterator

import numpy as np

from . import seeding
from ._backend import array_module, as_array, device_of, shown, to_numpy

__all__ = ["as_generator", "train_test_split", "batches", "Batches", "features", "check_missing", "infer_task",
           "encode_labels", "TASKS", "MAX_INFERRED_CLASSES"]

TASKS = ("classification", "regression")
_TASK_NAMES = {"classify": "classification", "classification": "classification", "regress": "regression",
               "regression": "regression"}
MAX_INFERRED_CLASSES = 20  # whole-number targets with at most this many values are read as classes


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
    first = next(iter(arrays))
    if arrays[first] is None:
        raise TypeError(f"{first} must be an array, got None")
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
        raise ValueError(f"test_size as a fraction must be in (0, 1), got {shown(test_size)}")
    count = math.ceil(fraction * n)
    if count >= n:
        raise ValueError(f"test_size={shown(test_size)} of {n} samples leaves no training data")
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
            raise ValueError(f"batch_size must be a positive int, got {shown(batch_size)}")
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


# ---------------------------------------------------------------------------------------------
# Data as it comes: features, missing values, the task, class labels.


def _is_frame(X) -> bool:
    """A pandas DataFrame, recognised without importing pandas."""
    return hasattr(X, "columns") and hasattr(X, "dtypes") and hasattr(X, "to_numpy")


def features(X, name: str = "X") -> tuple[Any, list[str] | None]:
    """``(array, column_names)`` for a feature matrix: a pandas DataFrame becomes a row-major
    NumPy array with its column names (as strings); anything else is ``_backend.as_array``'s
    view of it, with names None. Numeric and boolean columns only: a text, categorical or
    other object column is a ``ValueError`` naming the columns and saying what to do (one-hot
    encode or drop them). Missing values (NaN) are kept (see :func:`check_missing`)."""
    if not _is_frame(X):
        a = as_array(X, name)
        if np.dtype(a.dtype).kind not in "biuf":
            raise TypeError(f"{name} must hold numbers, got dtype {np.dtype(a.dtype)}" +
                            (" (text or mixed values: one-hot encode text columns or drop them)"
                             if np.dtype(a.dtype).kind in "OUS" else ""))
        return a, None
    names = [str(column) for column in X.columns]
    kinds = [getattr(dtype, "kind", "O") for dtype in X.dtypes]
    text = [n for n, kind in zip(names, kinds) if kind not in "biuf"]
    if text:
        raise ValueError(f"{name}: the columns {text} hold text or categories, not numbers; one-hot encode them "
                         f"(e.g. pandas.get_dummies({name}, columns={text}, dtype=float)) or drop them "
                         f"({name}.drop(columns={text}))")
    if len(set(names)) != len(names):
        raise ValueError(f"{name}: column names must be unique, got {names}")
    return np.ascontiguousarray(X.to_numpy(dtype=np.float64)), names


def check_missing(X, names=None, name: str = "X", rows=None) -> None:
    """``ValueError`` when the host array ``X`` (N, F) has missing values (NaN), naming the
    columns (by ``names`` when given, else by index) and their first rows (0-based, or the
    labels ``rows[i]`` when given, e.g. a file's line numbers), and saying how to impute them.
    Infinities are refused the same way (they are not missing, they are wrong)."""
    a = to_numpy(as_array(X, name))
    if np.dtype(a.dtype).kind != "f" or a.ndim != 2:
        return
    for test, what, advice in ((np.isnan, "missing values (NaN)",
                                "fill or drop them, or impute them from the training data "
                                "(fastnn.preprocessing.SimpleImputer; fastnn train --impute mean|median)"),
                               (np.isinf, "infinite values", "fix or drop those rows")):
        bad = test(a)
        if not bad.any():
            continue
        parts = []
        columns = np.flatnonzero(bad.any(axis=0))
        for c in columns[:10]:
            where = np.flatnonzero(bad[:, c])
            label = repr(names[c]) if names is not None else str(c)
            shown = ", ".join(str(i if rows is None else rows[i]) for i in where[:5])
            parts.append(f"column {label} (rows {shown}{', ...' if len(where) > 5 else ''}; {len(where)} in all)")
        more = f" and {len(columns) - 10} more columns" if len(columns) > 10 else ""
        raise ValueError(f"{name} has {what} in " + ", ".join(parts) + f"{more}: {advice}")


def infer_task(y, task: str = "auto") -> str:
    """``"classification"`` or ``"regression"`` for targets ``y``.

    ``task`` "classify" / "regress" (or "classification" / "regression") is taken as given,
    after checking that it can apply (text labels cannot be regressed on). With "auto":

    - text, booleans, and targets with more than one column -> decided by their kind: text and
      booleans are classes, several columns are regression targets;
    - numbers with a fractional part -> regression;
    - whole numbers with at most :data:`MAX_INFERRED_CLASSES` (20) distinct values ->
      classification;
    - whole numbers with more distinct values than half the samples (most values seen once or
      twice: prices, counts, ids) -> regression;
    - other whole numbers (e.g. 57 distinct values over 1,000 samples) are ambiguous: a
      ``ValueError`` that says how to choose.
    """
    if task not in ("auto", None) and task not in _TASK_NAMES:
        raise ValueError(f"task must be 'auto', 'classify' or 'regress', got {task!r}")
    y = to_numpy(as_array(y, "y")) if not _is_frame(y) else y.to_numpy()
    kind = np.dtype(y.dtype).kind
    if kind not in "biufUSO":
        raise TypeError(f"y: expected class labels or numeric targets, got dtype {y.dtype}")
    if task not in ("auto", None):
        task = _TASK_NAMES[task]
        if task == "regression" and kind in "USOb":
            held = "booleans" if kind == "b" else "text"
            raise ValueError(f"task 'regress' needs numeric targets, but y holds {held}; use task 'classify'")
        return task
    if kind in "USOb":
        return "classification"
    if y.ndim > 1 and y.shape[1] > 1:
        return "regression"
    values = y.reshape(-1)
    if kind == "f":
        finite = values[np.isfinite(values)]
        if not np.array_equal(finite, np.round(finite)):
            return "regression"
    distinct = len(np.unique(values))
    if distinct <= MAX_INFERRED_CLASSES:
        return "classification"
    if distinct > len(values) / 2:
        return "regression"
    raise ValueError(f"cannot tell whether y holds classes or regression targets: {distinct} distinct whole numbers "
                     f"over {len(values)} samples (classes are inferred for at most {MAX_INFERRED_CLASSES} values, "
                     "regression for more distinct values than half the samples); say which with task='classify' or "
                     "task='regress' (fastnn train --task classify|regress)")


def encode_labels(y) -> tuple[np.ndarray, np.ndarray]:
    """``(classes, codes)``: the distinct labels of ``y`` in sorted order (numbers, strings or
    booleans, as a NumPy array) and int64 codes (N,) with ``classes[codes] == y``. The number
    of classes is the number of distinct labels, whatever their values (a label 10**7 is one
    class, not the 10**7-th). (sklearn.preprocessing.LabelEncoder)"""
    y = to_numpy(as_array(y, "y")) if not _is_frame(y) else y.to_numpy()
    if y.ndim != 1:
        y = y.reshape(len(y), -1)
        if y.shape[1] != 1:
            raise ValueError(f"class labels must be one per sample, got shape {y.shape}")
        y = y[:, 0]
    if np.dtype(y.dtype).kind == "O":
        y = y.astype(str)
    if np.dtype(y.dtype).kind == "f" and not np.isfinite(y).all():
        raise ValueError("class labels must not be NaN or infinite")
    classes, codes = np.unique(y, return_inverse=True)
    return classes, codes.astype(np.int64).reshape(-1)
