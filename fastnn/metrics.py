"""Evaluation metrics: accuracy, top-k accuracy, the confusion matrix, MSE and MAE.

Arguments come in scikit-learn's order, ``(y_true, y_pred)``. Class predictions may be given as
labels (N,) or as scores (N, C) (logits or probabilities: the predicted class is the argmax);
binary scores (N,) or (N, 1) need a ``threshold`` (0.5 for probabilities, 0.0 for logits), so a
logit is never silently read as a probability. True labels may be integer labels (N,), one-hot
or probability rows (N, C), or integral floats. Shapes that do not line up raise ``ValueError``
naming both shapes; nothing is broadcast. NumPy or CuPy arrays; scalars come back as floats.
"""

from __future__ import annotations

import numpy as np

from . import _backend as B

__all__ = ["accuracy", "top_k_accuracy", "confusion_matrix", "mse", "mae", "check_labels", "METRICS"]


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


def _true_labels(y_true):
    """Class labels (N,) from integer labels, integral floats, or one-hot/probability rows."""
    xp = B.array_module(y_true)
    if y_true.ndim == 2 and y_true.shape[1] > 1:
        return xp.argmax(y_true, axis=1)
    if y_true.ndim == 2:
        y_true = y_true[:, 0]
    if y_true.ndim != 1:
        raise ValueError(f"y_true must be labels (N,) or rows of class scores (N, C), got shape {tuple(y_true.shape)}")
    kind = np.dtype(y_true.dtype).kind
    if kind == "f":
        if not bool(xp.all(y_true == xp.floor(y_true))):
            raise ValueError("y_true holds non-integral floats; class labels must be whole numbers")
        return y_true.astype(xp.int64)
    if kind not in "iub":
        raise TypeError(f"y_true: expected class labels or scores, got dtype {np.dtype(y_true.dtype)}")
    return y_true.astype(xp.int64)


def _predicted_labels(y_pred, threshold):
    """Predicted classes (N,) from labels (N,), scores (N, C) or thresholded binary scores."""
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


def _labels_pair(y_true, y_pred, threshold=None):
    y_true, y_pred = _pair(y_true, y_pred)
    true, predicted = _true_labels(y_true), _predicted_labels(y_pred, threshold)
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
    xp = B.array_module(scores)
    true_score = scores[xp.arange(scores.shape[0]), true]
    higher = (scores > true_score[:, None]).sum(axis=1)
    return float((higher < k).mean())


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
    y_true, y_pred = _regression_pair(y_true, y_pred)
    diff = y_pred.astype(np.float64) - y_true.astype(np.float64)
    return float((diff * diff).mean())


def mae(y_true, y_pred) -> float:
    """Mean absolute error over all elements: mean(|y_pred - y_true|). Same shapes required.
    (torch.nn.functional.l1_loss; sklearn mean_absolute_error)"""
    y_true, y_pred = _regression_pair(y_true, y_pred)
    return float(abs(y_pred.astype(np.float64) - y_true.astype(np.float64)).mean())


METRICS = {"accuracy": accuracy, "top_k_accuracy": top_k_accuracy, "mse": mse, "mae": mae}
"""Metrics by name, for ``metrics=["accuracy", ...]`` lists: each takes ``(y_true, y_pred)``."""
