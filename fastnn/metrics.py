"""Evaluation metrics: accuracy, top-k accuracy, the confusion matrix, MSE and MAE, both as
functions that return a float and as sums over batches kept on the device (what
:class:`fastnn.train.Trainer` accumulates over an epoch); RMSE and R^2 as functions (neither is
a mean over samples); and, over a whole set of predictions, precision, recall, F1, ROC AUC and
the classification report (checked against scikit-learn's values).

Arguments come in scikit-learn's order, ``(y_true, y_pred)``. Class predictions may be given as
labels (N,) or as scores (N, C) (logits or probabilities: the predicted class is the argmax);
binary scores (N,) or (N, 1) need a ``threshold`` (0.5 for probabilities, 0.0 for logits), so a
logit is never silently read as a probability. True labels may be integer labels (N,), one-hot
or probability rows (N, C), or integral floats. Shapes that do not line up raise ``ValueError``
naming both shapes; nothing is broadcast. NumPy or CuPy arrays; scalars come back as floats.

On the device, ``batch_metric("accuracy", threshold=0.0)`` is a :class:`BatchMetric` whose
``batch_sum(y_true, y_pred)`` is the sum of the per-sample values over a batch, a 0-d array on
the batch's device (no host synchronisation: the targets are checked once, whole, by
:func:`check_targets`), and :class:`MetricSums` adds those up over an epoch and reads the means
in one device-to-host transfer. A batch's sum / N is the host function's value on that batch:
both run the same code for the labels, the top-k test and the errors.
"""

from __future__ import annotations

import functools
import re
import sys
from typing import Any, Callable, NamedTuple

import numpy as np

from . import _backend as B

__all__ = ["accuracy", "top_k_accuracy", "confusion_matrix", "mse", "mae", "check_labels", "predicted_labels",
           "probabilities", "METRICS", "BatchMetric", "batch_metric", "MetricSums", "rmse", "r2_score",
           "precision", "recall", "f1_score", "roc_auc_score", "classification_report"]


def check_labels(y, name: str = "y", num_classes: int | None = None):
    """Validate integer class labels: y (N,) of an integer dtype with values in [0, num_classes)
    (``num_classes`` defaults to max(y) + 1). Returns ``(y, num_classes)``; ``TypeError`` for
    non-integer dtypes, ``ValueError`` for other shapes or labels out of range."""
    y = B.as_array(y, name)
    if np.dtype(y.dtype).kind not in "iu":
        raise TypeError(f"{name}: class labels must have an integer dtype, got {np.dtype(y.dtype)} "
                        f"(use {name}.astype(int))")
    if y.ndim != 1:
        raise ValueError(f"{name}: class labels must be a 1-d array (N,), got shape {tuple(y.shape)}")
    if num_classes is not None and (isinstance(num_classes, bool) or
                                    not isinstance(num_classes, (int, np.integer)) or num_classes < 1):
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if y.size == 0:
        if num_classes is None:
            raise ValueError(f"{name} is empty: pass num_classes")
        return y, int(num_classes)
    low, high = int(y.min()), int(y.max())
    if num_classes is None:
        num_classes = high + 1
    if low < 0 or high >= num_classes:
        bad = low if low < 0 else high
        raise ValueError(f"{name}: label {bad} is out of range for {num_classes} classes [0, {num_classes})")
    return y, int(num_classes)


def _pair(y_true, y_pred):
    """Both arguments as arrays on one device."""
    y_true, y_pred = B.as_array(y_true, "y_true"), B.as_array(y_pred, "y_pred")
    if B.device_of(y_true) != B.device_of(y_pred):
        raise ValueError(f"y_true is on {B.device_of(y_true)} but y_pred is on {B.device_of(y_pred)}; "
                         "move one of them first")
    return y_true, y_pred


def _true_labels(y_true, check: bool = True):
    """Class labels (N,) from integer labels, integral floats, or one-hot/probability rows.
    ``check=False`` skips the shape and dtype checks and the integrality test (a host
    synchronisation): for batches of targets that :func:`check_targets` checked whole."""
    if y_true.ndim == 2 and y_true.shape[1] > 1:
        return B.array_module(y_true).argmax(y_true, axis=1)
    if check:
        xp = B.array_module(y_true)
        column = y_true[:, 0] if y_true.ndim == 2 else y_true
        if column.ndim != 1:
            raise ValueError("y_true must be labels (N,) or rows of class scores (N, C), got shape "
                             f"{tuple(y_true.shape)}")
        kind = np.dtype(column.dtype).kind
        if kind == "f":
            if not bool(xp.all(column == xp.floor(column))):
                raise ValueError("y_true holds non-integral floats; class labels must be whole numbers")
        elif kind not in "iub":
            raise TypeError(f"y_true: expected class labels or scores, got dtype {np.dtype(column.dtype)}")
    return y_true.reshape(-1).astype(np.int64, copy=False)


def predicted_labels(y_pred, threshold: float | None = None):
    """Predicted classes (N,) on ``y_pred``'s device: integer labels (N,) as they are, the
    argmax of scores (N, C), or for binary scores (N,)/(N, 1) class 1 where score > ``threshold``
    (no default: 0.5 for probabilities, 0.0 for logits; ``ValueError`` without one)."""
    y_pred = B.as_array(y_pred, "y_pred")
    xp = B.array_module(y_pred)
    kind = np.dtype(y_pred.dtype).kind
    if y_pred.ndim == 2 and y_pred.shape[1] > 1:
        return xp.argmax(y_pred, axis=1)
    if y_pred.ndim not in (1, 2):
        raise ValueError(f"y_pred must be labels (N,) or class scores (N, C), got shape {tuple(y_pred.shape)}")
    scores = y_pred.reshape(-1)
    if kind in "iub":
        return scores.astype(xp.int64)
    if threshold is None:
        raise ValueError(f"y_pred of shape {tuple(y_pred.shape)} and dtype {np.dtype(y_pred.dtype)} reads as "
                         "binary scores: pass threshold=0.5 for probabilities or threshold=0.0 for logits "
                         "(or integer labels)")
    return (scores > B.check_scalar(threshold, "threshold")).astype(xp.int64)


def probabilities(logits):
    """Class probabilities from logits: softmax along the last axis for (N, C) with C > 1, the
    sigmoid for one logit per sample ((N,) or (N, 1)). Same shape, on the logits' device."""
    logits = B.as_array(logits, "logits")
    xp = B.array_module(logits)
    if logits.ndim == 2 and logits.shape[1] > 1:
        shifted = logits - logits.max(axis=1, keepdims=True)
        e = xp.exp(shifted)
        return e / e.sum(axis=1, keepdims=True)
    if logits.ndim in (1, 2):
        return 1 / (1 + xp.exp(-logits))
    raise ValueError(f"logits must be (N, C) or (N,)/(N, 1), got shape {tuple(logits.shape)}")


def _labels_pair(y_true, y_pred, threshold=None):
    y_true, y_pred = _pair(y_true, y_pred)
    true, predicted = _true_labels(y_true), predicted_labels(y_pred, threshold)
    if true.shape != predicted.shape:
        raise ValueError(f"y_true {tuple(y_true.shape)} and y_pred {tuple(y_pred.shape)} do not describe the "
                         f"same samples ({true.shape[0]} vs {predicted.shape[0]} labels)")
    return true, predicted


def accuracy(y_true, y_pred, threshold: float | None = None) -> float:
    """Fraction of samples whose predicted class equals the true class.

    y_pred: labels (N,), scores (N, C) (argmax), or binary scores (N,)/(N, 1) with ``threshold``
    (class 1 where score > threshold). y_true: labels (N,) or one-hot (N, C).
    (torchmetrics Accuracy; sklearn.metrics.accuracy_score on labels)
    """
    true, predicted = _labels_pair(y_true, y_pred, threshold)
    if true.shape[0] == 0:
        raise ValueError("accuracy of an empty batch is undefined")
    return float((true == predicted).mean())


def top_k_accuracy(y_true, scores, k: int = 5) -> float:
    """Fraction of samples whose true class is among the ``k`` highest scores.

    scores: (N, C) logits or probabilities; y_true: labels (N,). A sample counts as correct
    when fewer than k classes score strictly higher than its true class (ties go in its
    favour). k = 1 is plain accuracy up to ties. (sklearn.metrics.top_k_accuracy_score)
    """
    y_true, scores = _pair(y_true, scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be (N, C), got shape {tuple(scores.shape)}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= scores.shape[1]:
        raise ValueError(f"k must be an int in [1, {scores.shape[1]}] (the number of classes), got {k!r}")
    true, _ = check_labels(_true_labels(y_true), "y_true", scores.shape[1])
    if true.shape[0] != scores.shape[0] or true.shape[0] == 0:
        raise ValueError(f"y_true {tuple(y_true.shape)} and scores {tuple(scores.shape)} must describe the "
                         "same, non-empty set of samples")
    return float(_top_k_hits(true, scores, k).mean())


def _top_k_hits(true, scores, k: int):
    """(N,) bool: whether fewer than k classes score strictly higher than the true one."""
    xp = B.array_module(scores)
    true_score = scores[xp.arange(scores.shape[0]), true]
    return (scores > true_score[:, None]).sum(axis=1) < k


def confusion_matrix(y_true, y_pred, num_classes: int | None = None, threshold: float | None = None):
    """Counts C[i, j] of samples of true class i predicted as class j (rows: truth, columns:
    prediction; the diagonal holds the correct ones).

    y_pred as in :func:`accuracy`. ``num_classes`` defaults to the largest label seen + 1.
    Returns an int64 array (num_classes, num_classes) on the inputs' device.
    (sklearn.metrics.confusion_matrix)
    """
    true, predicted = _labels_pair(y_true, y_pred, threshold)
    if num_classes is None and true.size:
        num_classes = max(int(true.max()), int(predicted.max())) + 1
    true, num_classes = check_labels(true, "y_true", num_classes)
    predicted, _ = check_labels(predicted, "y_pred", num_classes)
    xp = B.array_module(true)
    counts = xp.bincount(true * num_classes + predicted, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(xp.int64)


def _regression_pair(y_true, y_pred):
    y_true, y_pred = _pair(y_true, y_pred)
    if tuple(y_true.shape) != tuple(y_pred.shape):
        raise ValueError(f"y_true {tuple(y_true.shape)} and y_pred {tuple(y_pred.shape)} must have the same "
                         "shape (nothing is broadcast; reshape one of them)")
    if y_true.size == 0:
        raise ValueError("the error of an empty array is undefined")
    return y_true, y_pred


def mse(y_true, y_pred) -> float:
    """Mean squared error over all elements: mean((y_pred - y_true)^2). Same shapes required.
    (torch.nn.functional.mse_loss; sklearn mean_squared_error)"""
    return float(_errors(*_regression_pair(y_true, y_pred), power=2).mean())


def mae(y_true, y_pred) -> float:
    """Mean absolute error over all elements: mean(|y_pred - y_true|). Same shapes required.
    (torch.nn.functional.l1_loss; sklearn mean_absolute_error)"""
    return float(_errors(*_regression_pair(y_true, y_pred), power=1).mean())


def rmse(y_true, y_pred) -> float:
    """Root mean squared error: sqrt(mse), the error in the targets' own units. Same shapes
    required. (sklearn.metrics.root_mean_squared_error for one output)"""
    return float(np.sqrt(mse(y_true, y_pred)))


def r2_score(y_true, y_pred) -> float:
    """Coefficient of determination R^2 = 1 - sum (y - yhat)^2 / sum (y - mean(y))^2: 1 for
    perfect predictions, 0 for always predicting the mean, negative when worse than that.
    Targets (N,) or (N, k): for k outputs the mean of the k per-output scores. An output whose
    true values are constant scores 1.0 when predicted exactly, else 0.0 (no division by zero).
    Needs at least two samples. (sklearn.metrics.r2_score, force_finite=True)"""
    y_true, y_pred = _regression_pair(y_true, y_pred)
    if y_true.shape[0] < 2:
        raise ValueError(f"R^2 needs at least two samples, got {y_true.shape[0]}")
    xp = B.array_module(y_true)
    true = y_true.astype(np.float64).reshape(y_true.shape[0], -1)
    residual = _errors(y_true, y_pred, power=2).reshape(true.shape).sum(axis=0)
    total = ((true - true.mean(axis=0)) ** 2).sum(axis=0)
    constant = total == 0
    scores = xp.where(constant, xp.where(residual == 0, 1.0, 0.0), 1.0 - residual / xp.where(constant, 1.0, total))
    return float(scores.mean())


def _errors(y_true, y_pred, power: int):
    """(y_pred - y_true)^2 (power 2) or |y_pred - y_true| (power 1) per element, in float64."""
    diff = y_pred.astype(np.float64) - y_true.astype(np.float64)
    return diff * diff if power == 2 else abs(diff)


METRICS = {"accuracy": accuracy, "top_k_accuracy": top_k_accuracy, "mse": mse, "mae": mae}
"""Metrics by name, for ``metrics=["accuracy", ...]`` lists: each takes ``(y_true, y_pred)``."""


# ---------------------------------------------------------------------------------------------
# Sums over batches, on the device.


class BatchMetric(NamedTuple):
    """A metric summed over batches: ``batch_sum(y_true, y_pred)`` is the sum of its per-sample
    values over the batch, a 0-d array on the batch's device for the named metrics (a float
    for user functions, which run on the host). ``needs_labels``: the targets must be class
    labels, which :func:`check_targets` checks once before the batches."""

    name: str
    batch_sum: Callable
    needs_labels: bool = False


def _correct_sum(y_true, y_pred, threshold):
    """The number of samples classified correctly: N * accuracy."""
    return (predicted_labels(y_pred, threshold) == _true_labels(y_true, check=False)).sum()


def _top_k_sum(y_true, scores, k: int):
    """The number of samples whose true class is among the k highest scores: N * top-k accuracy."""
    if scores.ndim != 2 or not 1 <= k <= scores.shape[1]:
        raise ValueError(f"top_{k}_accuracy needs scores (N, C) with at least {k} classes, got shape "
                         f"{tuple(scores.shape)}")
    return _top_k_hits(_true_labels(y_true, check=False), scores, k).sum()


def _error_sum(y_true, y_pred, power: int):
    """The sum over samples of each sample's mean error (squared for power 2, absolute for 1):
    N * mse or N * mae when every sample has the same size."""
    if tuple(y_pred.shape) != tuple(y_true.shape):
        raise ValueError(f"{'mse' if power == 2 else 'mae'}: targets {tuple(y_true.shape)} and outputs "
                         f"{tuple(y_pred.shape)} must have the same shape")
    return _errors(y_true, y_pred, power).reshape(y_pred.shape[0], -1).mean(axis=1).sum()


def _user_metric(name: str, fn: Callable) -> BatchMetric:
    def batch_sum(y_true, y_pred):
        return float(fn(y_true, y_pred)) * y_pred.shape[0]
    return BatchMetric(name, batch_sum)


def batch_metric(spec, threshold: float | None = None) -> BatchMetric:
    """The :class:`BatchMetric` for ``spec``: a name of :data:`METRICS` ("top_3_accuracy" picks
    k; "top_k_accuracy" is k = 5), a ``(name, fn)`` pair, or a function
    ``fn(y_true, y_pred) -> float`` (named by its ``__name__``; its batch sum is N * fn).
    ``threshold``: above it, binary scores ((N,) or (N, 1)) count as class 1 for "accuracy"
    (0.0 for logits, 0.5 for probabilities), as in :func:`accuracy`."""
    if isinstance(spec, str):
        top = re.fullmatch(r"top_([1-9]\d*|k)_accuracy", spec)
        if spec == "accuracy":
            return BatchMetric(spec, functools.partial(_correct_sum, threshold=threshold), needs_labels=True)
        if top:
            k = 5 if top.group(1) == "k" else int(top.group(1))
            return BatchMetric(spec, functools.partial(_top_k_sum, k=k), needs_labels=True)
        if spec in ("mse", "mae"):
            return BatchMetric(spec, functools.partial(_error_sum, power=2 if spec == "mse" else 1))
        raise ValueError(f"unknown metric {spec!r}: use one of {sorted(METRICS)}, 'top_<k>_accuracy', a function "
                         "fn(y_true, y_pred) or a (name, fn) pair")
    if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str) and callable(spec[1]):
        return _user_metric(*spec)
    if callable(spec):
        return _user_metric(getattr(spec, "__name__", type(spec).__name__), spec)
    raise TypeError(f"a metric must be a name, a function or a (name, function) pair, got {type(spec).__name__}")


def check_targets(metrics, y, who: str) -> None:
    """Check, once and on the whole of ``y``, that it holds class labels when one of the
    :class:`BatchMetric` ``metrics`` needs them (their batch sums then skip the check); the
    error names ``who`` and those metrics."""
    labelled = [m.name for m in metrics if m.needs_labels]
    if not labelled:
        return
    try:
        _true_labels(y)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{who}: the metrics {labelled} need class labels: {exc} (for regression, pass "
                        "metrics=['mse'] or metrics=[])") from None


class MetricSums:
    """Running sums of per-sample values over an epoch, kept on the device: ``add(name,
    value)`` adds a batch's sum (as float64), ``count`` is the number of samples (the caller
    adds each batch's size), ``sums`` maps each name to its total."""

    def __init__(self):
        self.sums: dict[str, Any] = {}
        self.count = 0

    def add(self, name: str, value) -> None:
        if hasattr(value, "astype"):
            value = value.astype(np.float64)
        self.sums[name] = self.sums.get(name, 0.0) + value

    def means(self) -> dict[str, float]:
        """Sum / count for every name, read from the device in one transfer."""
        return {name: total / self.count for name, total in host_floats(self.sums).items()}


def host_floats(values: dict) -> dict[str, float]:
    """Python floats from a dict of 0-d arrays (and floats), with one device-to-host transfer."""
    on_device = [name for name, v in values.items() if B.is_cupy(v)]
    out = {name: float(v) for name, v in values.items() if name not in on_device}
    if on_device:
        cp = sys.modules["cupy"]
        fetched = cp.stack([cp.asarray(values[name], dtype=cp.float64) for name in on_device]).get()
        out.update(zip(on_device, map(float, fetched)))
    return {name: out[name] for name in values}


# ---------------------------------------------------------------------------------------------
# Classification reports: precision, recall, F1, ROC AUC, over a whole set of predictions.
#
# These are not means of per-sample values, so they are not batch metrics of the Trainer:
# compute them on ``trainer.predict(X)`` (labels) or ``trainer.predict_proba(X)`` (scores).
# Labels and scores are brought to the host (N integers or floats); the results are floats.

AVERAGES = ("macro", "micro", "weighted", "binary", None)


class _Counts(NamedTuple):
    """Per class of ``labels``: true positives, predicted count, true count (support); and
    ``every_class``, whether ``labels`` covers every class present in y_true or y_pred."""

    labels: np.ndarray
    tp: np.ndarray
    predicted: np.ndarray
    support: np.ndarray
    every_class: bool


def _counts(y_true, y_pred, labels, threshold) -> _Counts:
    true, predicted = (B.to_numpy(a) for a in _labels_pair(y_true, y_pred, threshold))
    present = np.union1d(true, predicted)
    if labels is None:
        labels = present
    else:
        labels = np.asarray(labels)
        if (labels.ndim != 1 or labels.size == 0 or labels.dtype.kind not in "iu"
                or np.unique(labels).size != labels.size):
            raise ValueError(f"labels must be a non-empty list of distinct integer class labels, got {labels.tolist()}")
    if labels.size == 0:
        raise ValueError("precision, recall and F1 of an empty set of samples are undefined")
    index = {int(label): i for i, label in enumerate(labels)}
    tp, pred_count, support = (np.zeros(labels.size, np.int64) for _ in range(3))
    for counts, values in ((support, true), (pred_count, predicted), (tp, true[true == predicted])):
        found, how_many = np.unique(values, return_counts=True)
        for label, count in zip(found.tolist(), how_many.tolist()):
            if label in index:
                counts[index[label]] = count
    return _Counts(labels, tp, pred_count, support, set(present.tolist()) <= set(labels.tolist()))


def _ratio(numerator, denominator) -> np.ndarray:
    """numerator / denominator elementwise, 0 where the denominator is 0 (scikit-learn's
    ``zero_division=0``, without its warning)."""
    numerator, denominator = np.asarray(numerator, np.float64), np.asarray(denominator, np.float64)
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator != 0)


def _average(name: str, c: _Counts, per_class: np.ndarray, micro: Callable, pos_label: int):
    if name is None:
        return per_class
    if name == "micro":
        return float(micro(c.tp.sum(), c.predicted.sum(), c.support.sum()))
    if name == "macro":
        return float(per_class.mean())
    if name == "weighted":
        return float(_ratio((per_class * c.support).sum(), c.support.sum()))
    if c.labels.size > 2 or not set(c.labels.tolist()) <= {0, 1}:
        raise ValueError(f"average='binary' needs the labels 0 and 1 alone, got {c.labels.tolist()}; choose "
                         "average='macro', 'micro', 'weighted' or None")
    found = np.flatnonzero(c.labels == pos_label)
    return float(per_class[found[0]]) if found.size else 0.0


def _check_average(average) -> None:
    if average not in AVERAGES:
        raise ValueError(f"average must be one of {AVERAGES}, got {average!r}")


def precision(y_true, y_pred, *, average: str | None = "macro", labels=None, threshold: float | None = None,
              pos_label: int = 1):
    """Precision tp / (tp + fp) per class (0 where a class is never predicted), averaged:
    ``"macro"`` (the mean over classes), ``"micro"`` (over all decisions: total tp / total
    predicted), ``"weighted"`` (by each class's support), ``"binary"`` (the ``pos_label``
    class alone, for labels 0 and 1) or None (an array, one value per class of ``labels``).

    y_true, y_pred as in :func:`accuracy` (labels, scores (argmax), or binary scores with
    ``threshold``). ``labels``: the classes to report, default the sorted classes present in
    either. (sklearn.metrics.precision_score with zero_division=0; its default average is
    "binary", fastnn's "macro")"""
    _check_average(average)
    c = _counts(y_true, y_pred, labels, threshold)
    return _average(average, c, _ratio(c.tp, c.predicted), lambda tp, p, s: _ratio(tp, p), pos_label)


def recall(y_true, y_pred, *, average: str | None = "macro", labels=None, threshold: float | None = None,
           pos_label: int = 1):
    """Recall tp / (tp + fn) per class (0 for a class absent from y_true), averaged as in
    :func:`precision`; micro recall over every class equals accuracy. (sklearn.metrics.
    recall_score with zero_division=0)"""
    _check_average(average)
    c = _counts(y_true, y_pred, labels, threshold)
    return _average(average, c, _ratio(c.tp, c.support), lambda tp, p, s: _ratio(tp, s), pos_label)


def f1_score(y_true, y_pred, *, average: str | None = "macro", labels=None, threshold: float | None = None,
             pos_label: int = 1):
    """F1, the harmonic mean of precision and recall, per class: 2 tp / (2 tp + fp + fn) (0 for
    a class neither present nor predicted), averaged as in :func:`precision` (macro: the mean
    of the per-class F1; micro: from the total counts). (sklearn.metrics.f1_score with
    zero_division=0)"""
    _check_average(average)
    c = _counts(y_true, y_pred, labels, threshold)
    f1 = _ratio(2 * c.tp, c.predicted + c.support)
    return _average(average, c, f1, lambda tp, p, s: _ratio(2 * tp, p + s), pos_label)


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values``, tied values sharing the mean of their ranks."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], values.size]
    ranks = np.empty(values.size, np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def _binary_auc(positive: np.ndarray, score: np.ndarray, what: str) -> float:
    """The area under the ROC curve of ``score`` for the boolean ``positive``: the probability
    that a random positive scores above a random negative, ties counting one half (the
    Mann-Whitney U statistic / (n_pos n_neg))."""
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"roc_auc_score: {what} has {'no' if n_pos == 0 else 'only'} positive samples; the ROC AUC "
                         "needs both positives and negatives")
    if not np.isfinite(score).all():
        raise ValueError("roc_auc_score: y_score contains NaN or infinity")
    rank_sum = _average_ranks(score)[positive].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_auc_score(y_true, y_score, *, average: str | None = "macro"):
    """Area under the ROC curve (Hanley & McNeil 1982): the probability that a random
    positive sample scores above a random negative one (ties count one half).

    Binary: y_true labels in {0, 1}, y_score the score of class 1, (N,) or (N, 1) (a
    probability or a logit: only the order matters), or (N, 2) (its second column).
    Multiclass, one-vs-rest: y_true labels in [0, C) with every class present, y_score (N, C)
    (probabilities, as scikit-learn requires, or any scores: the per-class ordering is what is
    measured); the AUC of each class against the rest, averaged by ``average``: "macro" (mean),
    "weighted" (by prevalence), or None (an array, one per class). (sklearn.metrics.
    roc_auc_score, multi_class="ovr")"""
    if average not in ("macro", "weighted", None):
        raise ValueError(f"roc_auc_score: average must be 'macro', 'weighted' or None, got {average!r}")
    y_true, y_score = _pair(y_true, y_score)
    true = B.to_numpy(_true_labels(y_true))
    score = B.to_numpy(y_score).astype(np.float64)
    if score.ndim not in (1, 2) or score.shape[0] != true.shape[0]:
        raise ValueError(f"roc_auc_score: y_score must be (N,), (N, 1) or (N, C) with the N = {true.shape[0]} rows of "
                         f"y_true, got shape {tuple(score.shape)}")
    if score.ndim == 1 or score.shape[1] == 1:
        if not set(np.unique(true).tolist()) <= {0, 1}:
            raise ValueError(f"roc_auc_score: binary scores need labels 0 and 1, got {np.unique(true).tolist()}; give "
                             "one score column per class for a multiclass AUC")
        return _binary_auc(true == 1, score.reshape(-1), "y_true")
    classes = score.shape[1]
    check_labels(true, "y_true", classes)
    if classes == 2:
        return _binary_auc(true == 1, score[:, 1], "y_true")
    aucs = np.array([_binary_auc(true == c, score[:, c], f"class {c}") for c in range(classes)])
    if average is None:
        return aucs
    if average == "macro":
        return float(aucs.mean())
    return float((aucs * np.bincount(true, minlength=classes)).sum() / true.size)


def classification_report(y_true, y_pred, *, labels=None, target_names=None, digits: int = 2,
                          output_dict: bool = False, threshold: float | None = None):
    """Precision, recall, F1 and support per class, then the accuracy (or, when ``labels``
    leaves classes out, the micro average), the macro and the support-weighted averages: a
    text table, or with ``output_dict=True`` a dict ``{"<class>": {"precision", "recall",
    "f1-score", "support"}, "accuracy": ..., "macro avg": {...}, "weighted avg": {...}}``.
    ``target_names``: a name per class of ``labels`` (default the labels themselves);
    ``digits``: decimals in the text. y_true, y_pred as in :func:`accuracy`.
    (sklearn.metrics.classification_report with zero_division=0, the same layout)"""
    if isinstance(digits, bool) or not isinstance(digits, (int, np.integer)) or digits < 0:
        raise ValueError(f"digits must be an int >= 0, got {digits!r}")
    c = _counts(y_true, y_pred, labels, threshold)
    names = [str(label) for label in c.labels.tolist()] if target_names is None else [str(n) for n in target_names]
    if len(names) != c.labels.size:
        raise ValueError(f"target_names has {len(names)} names for {c.labels.size} classes {c.labels.tolist()}")
    p, r = _ratio(c.tp, c.predicted), _ratio(c.tp, c.support)
    f1 = _ratio(2 * c.tp, c.predicted + c.support)
    total = int(c.support.sum())
    rows = {name: {"precision": float(p[i]), "recall": float(r[i]), "f1-score": float(f1[i]),
                   "support": int(c.support[i])} for i, name in enumerate(names)}
    averages = {}
    if c.every_class:
        averages["accuracy"] = float(_ratio(c.tp.sum(), total))
    else:
        averages["micro avg"] = {"precision": float(_ratio(c.tp.sum(), c.predicted.sum())),
                                 "recall": float(_ratio(c.tp.sum(), total)),
                                 "f1-score": float(_ratio(2 * c.tp.sum(), c.predicted.sum() + total)), "support": total}
    averages["macro avg"] = {"precision": float(p.mean()), "recall": float(r.mean()), "f1-score": float(f1.mean()),
                             "support": total}
    averages["weighted avg"] = {key: float(_ratio((value * c.support).sum(), total))
                                for key, value in (("precision", p), ("recall", r), ("f1-score", f1))}
    averages["weighted avg"]["support"] = total
    if output_dict:
        return {**rows, **averages}
    width = max(len(name) for name in [*names, "weighted avg"])

    def line(name, *cells):
        return f"{name:>{width}} " + "".join(f" {cell:>9}" for cell in cells)

    def row(name, values):
        return line(name, *(f"{values[k]:.{digits}f}" for k in ("precision", "recall", "f1-score")), values["support"])

    lines = [line("", "precision", "recall", "f1-score", "support"), ""]
    lines += [row(name, values) for name, values in rows.items()] + [""]
    if "accuracy" in averages:
        lines.append(line("accuracy", "", "", f"{averages['accuracy']:.{digits}f}", total))
    lines += [row(name, values) for name, values in averages.items() if name != "accuracy"]
    return "\n".join(lines) + "\n"
