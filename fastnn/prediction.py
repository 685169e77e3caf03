"""Prediction: a model's raw outputs over a data set in batches, and what they mean for the
loss it was trained with (scikit-learn's ``predict`` / ``predict_proba``); and placing data on
the model's device, which training shares.

- :func:`predict_outputs`: the raw outputs (logits) in inference mode, ``batch_size`` rows at a
  time, on the model's device (host data is moved there batch by batch);
- :func:`loss_task`, :func:`outputs_to_predictions`, :func:`outputs_to_probabilities`: labels
  for a classifier, values for a regressor, probabilities where the loss defines them.

Used by :class:`fastnn.train.Trainer`, :class:`fastnn.Ensemble`, model files
(:class:`fastnn.Predictor`) and the scikit-learn estimators, so that all of them mean the same.
"""

from __future__ import annotations

import contextlib

import numpy as np

from . import _backend as B
from .metrics import probabilities
from .nn.losses import BCEWithLogits, Loss, SoftmaxCrossEntropy
from .nn.module import Module

__all__ = ["predict_outputs", "loss_task", "outputs_to_predictions", "outputs_to_probabilities"]


def _device_context(model: Module):
    """Make the model's GPU current while CuPy allocates and computes beside it."""
    params = model.parameters()
    return B.on_device(params[0].data) if params else contextlib.nullcontext()


def _model_place(model: Module, who: str):
    """The device and dtype of the model's parameters."""
    params = model.parameters()
    if not params:
        raise ValueError(f"{who}: the model has no parameters")
    return B.device_of(params[0].data), params[0].data.dtype


def _prepare(model: Module, X, y, who: str, labels: bool = False):
    """X (and y) checked against the model: on its device, or on the CPU when the model is on a
    GPU (then moved batch by batch); X and float targets converted to the model's dtype.
    ``labels``: the loss takes integer class labels, and y given as whole-number floats or
    booleans (as Keras accepts them) becomes int64; other float y is refused, saying why."""
    device, dtype = _model_place(model, who)
    X = B.as_array(X, "X")
    arrays = {"X": X} if y is None else {"X": X, "y": B.as_array(y, "y")}
    for name, a in arrays.items():
        here = B.device_of(a)
        if here != device and here != B.CPU:
            raise ValueError(f"{who}: {name} is on {here} but the model on {device}; fastnn never copies between "
                             f"devices behind your back: move one of them (cupy.asarray, .get(), model.to(...))")
    if np.dtype(X.dtype).kind not in "biuf":
        raise TypeError(f"{who}: X must hold numbers, got dtype {np.dtype(X.dtype)}")
    X = X.astype(dtype, copy=False)
    if y is None:
        return X, None
    y = arrays["y"]
    if labels and np.dtype(y.dtype).kind in "fb":
        return X, _float_labels(y, who)
    if np.dtype(y.dtype).kind in "fb":
        y = y.astype(dtype, copy=False)
    elif np.dtype(y.dtype).kind not in "iu":
        raise TypeError(f"{who}: y must hold integer labels or float targets, got dtype {np.dtype(y.dtype)}")
    return X, y


def _float_labels(y, who: str):
    """Class labels given as floats or booleans, as int64 when they are whole numbers, one per
    sample; anything else a TypeError naming what y holds."""
    xp = B.array_module(y)
    given = f"y is {np.dtype(y.dtype)} of shape {tuple(y.shape)}"
    if y.ndim != 1:
        hint = " (one-hot or probability rows? pass y.argmax(axis=1))" if y.ndim == 2 else ""
        raise TypeError(f"{who}: the loss takes integer class labels, one per sample, shape (N,); {given}{hint}")
    whole = xp.isfinite(y) & (y == xp.floor(y)) if np.dtype(y.dtype).kind == "f" else xp.ones(y.shape, bool)
    if not bool(whole.all()):
        index = int(xp.argmin(whole))
        raise TypeError(f"{who}: the loss takes integer class labels; {given} and holds {float(y[index])!r} at "
                        f"index {index} (for regression targets, use a regression loss such as MSE)")
    return y.astype(np.int64)


def _to_device(a, device):
    """``a`` on ``device`` (a host batch copied to the model's GPU); None stays None."""
    return None if a is None else B.to_device(a, device)


def predict_outputs(model: Module, X, batch_size: int = 256):
    """The model's raw outputs (logits for a classifier) for X in inference mode
    (``training=False``: running statistics, no dropout), computed ``batch_size`` rows at a
    time, as one array on the model's device (X may be NumPy when the model is on a GPU).
    X: (N, ...) -> (N, out); an empty X gives an empty (0, out)."""
    device, _ = _model_place(model, "predict")
    X, _ = _prepare(model, X, None, "predict")
    if X.shape[0] == 0:
        with _device_context(model):
            return model.forward(_to_device(X, device), training=False)
    out = None
    with _device_context(model):
        for start, xb in _chunks(X, batch_size):
            pred = model.forward(_to_device(xb, device), training=False)
            if out is None:
                out = B.array_module(pred).empty((X.shape[0], *pred.shape[1:]), pred.dtype)
            out[start:start + pred.shape[0]] = pred
    return out


def loss_task(loss: Loss | None) -> str:
    """What a model trained with ``loss`` predicts: ``"multiclass"`` for a loss on integer
    class labels (``SoftmaxCrossEntropy``, ``Hinge``: one score per class), ``"binary"`` for
    ``BCEWithLogits`` (one logit per output, each its own yes/no), ``"regression"`` for the
    others (``MSE``, ``L1``, a loss of your own on float targets)."""
    if not isinstance(loss, Loss):
        raise TypeError(f"expected a fastnn.nn loss, got {type(loss).__name__}")
    if loss.labels:
        return "multiclass"
    return "binary" if isinstance(loss, BCEWithLogits) else "regression"


def outputs_to_predictions(outputs, loss: Loss):
    """What ``predict`` returns from the model's raw ``outputs`` (N, C) for a model trained with
    ``loss`` (scikit-learn's meaning: labels for a classifier, values for a regressor):
    ``"multiclass"`` the argmax class (N,) int64; ``"binary"`` 1 where a logit is above 0
    (probability above 0.5), 0 elsewhere, int64 of the outputs' shape; ``"regression"`` the
    outputs themselves. On the outputs' device. (See :func:`loss_task`.)"""
    xp = B.array_module(outputs)
    task = loss_task(loss)
    if task == "multiclass":
        return xp.argmax(outputs, axis=1).astype(xp.int64, copy=False)
    if task == "binary":
        return (outputs > 0).astype(xp.int64)
    return outputs


def outputs_to_probabilities(outputs, loss: Loss):
    """Class probabilities from the raw ``outputs`` of a model trained with ``loss``: the
    softmax over the classes for ``SoftmaxCrossEntropy`` (N, C), the sigmoid of each logit for
    ``BCEWithLogits`` (the outputs' shape). ``TypeError`` for ``Hinge`` (its margins are not
    probabilities; scikit-learn's LinearSVC has no predict_proba either) and for regression."""
    task = loss_task(loss)
    if task == "binary":
        return 1 / (1 + B.array_module(outputs).exp(-outputs))
    if task == "multiclass" and isinstance(loss, SoftmaxCrossEntropy):
        return probabilities(outputs)
    what = "a regression loss: its outputs are values" if task == "regression" else \
        "a margin loss: its scores are not probabilities"
    raise TypeError(f"predict_proba: {type(loss).__name__} is {what}; use predict (or predict_outputs for the raw "
                    "outputs)")


def _chunks(X, batch_size):
    """(start, X[start:start + batch_size]) in order."""
    batch_size = _positive(batch_size, "batch_size")
    for start in range(0, X.shape[0], batch_size):
        yield start, X[start:start + batch_size]


def _positive(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)
