"""Sanity checks before a long training run (cs231n's "before learning" checklist):

- :func:`initial_loss`: at initialization the loss should be what chance gives (ln C for a
  softmax over C classes); far above it, the initial weights are too large.
- :func:`overfit_small_batch`: a model that cannot drive the loss on ~20 samples to about zero
  (without regularization) has a bug, or too little capacity, or a bad learning rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from . import _backend as B
from .gradient_check import inspection_copy, without_dropout
from .nn.losses import BCEWithLogits, Hinge, Loss, MSE, SoftmaxCrossEntropy
from .nn.module import Module

__all__ = ["initial_loss", "overfit_small_batch", "InitialLoss", "OverfitResult"]


@dataclass
class InitialLoss:
    """The loss at initialization: ``value``, what chance gives (``expected``: ln C for softmax
    cross-entropy over C classes, ln 2 for binary cross-entropy on logits, C - 1 for the
    multiclass hinge with near-zero scores; None for other losses), ``ratio`` = value /
    expected, and ``ok`` (|ratio - 1| <= tolerance; None without an expectation)."""

    value: float
    expected: float | None
    ratio: float | None
    ok: bool | None
    loss: str

    def __str__(self) -> str:
        if self.expected is None:
            return f"initial {self.loss} loss {self.value:.4g} (no chance-level value known for this loss)"
        advice = "" if self.ok else ": the initial weights are probably too large (or the labels wrong)"
        return (f"initial {self.loss} loss {self.value:.4g}, chance level {self.expected:.4g} "
                f"(ratio {self.ratio:.3g}) -> {'ok' if self.ok else 'off'}{advice}")


def _expected(loss: Loss, outputs: int) -> float | None:
    if isinstance(loss, SoftmaxCrossEntropy):
        return math.log(outputs)
    if isinstance(loss, BCEWithLogits):
        return math.log(2.0)
    if isinstance(loss, Hinge):
        return float(outputs - 1)
    return None


def initial_loss(model: Module, loss: Loss, X, y, tolerance: float = 0.25) -> InitialLoss:
    """The loss of ``model`` on (X, y) as it starts training: a training-mode forward (batch
    statistics in BatchNorm) with dropout off, on a copy, so the model's running statistics and
    dropout counters are untouched. Compared with the chance level (see :class:`InitialLoss`);
    ``ok`` when value / expected is within ``1 ± tolerance``."""
    from .prediction import _prepare

    tolerance = B.check_scalar(tolerance, "tolerance", low=0.0, low_open=True)
    clone = inspection_copy(model)
    X, y = _prepare(clone, X, y, "initial_loss", labels=bool(getattr(loss, "labels", False)))
    device = B.device_of(clone.parameters()[0].data)
    pred = clone.forward(B.to_device(X, device), training=True)
    value = loss.forward(pred, B.to_device(y, device))
    expected = _expected(loss, pred.shape[-1] if pred.ndim > 1 else 1)
    if expected is None:
        return InitialLoss(value, None, None, None, type(loss).__name__)
    ratio = value / expected
    return InitialLoss(value, expected, ratio, abs(ratio - 1) <= tolerance, type(loss).__name__)


@dataclass
class OverfitResult:
    """What :func:`overfit_small_batch` saw: ``ok`` (the loss reached ``loss_threshold`` and,
    for a classifier, the accuracy 1.0), the ``final_loss`` and ``accuracy`` (None for other
    losses) in inference mode after training, the per-epoch training ``losses``, and the
    trained ``model``."""

    ok: bool
    final_loss: float
    accuracy: float | None
    losses: list = field(repr=False)
    model: Module = field(repr=False)
    loss_threshold: float = 0.0

    def __str__(self) -> str:
        accuracy = "" if self.accuracy is None else f", accuracy {self.accuracy:.3f}"
        verdict = "ok" if self.ok else "NOT overfitting: check the model, the loss and the learning rate"
        return (f"overfit {len(self.losses)} epochs: loss {self.losses[0]:.4g} -> {self.final_loss:.4g} "
                f"(threshold {self.loss_threshold:g}){accuracy} -> {verdict}")


def overfit_small_batch(model_factory, X, y, epochs: int = 200, lr: float = 1e-2, optimizer=None, loss=None,
                        loss_threshold: float = 1e-2, seed=0) -> OverfitResult:
    """Train a fresh ``model_factory()`` on a small batch (X, y), e.g. 20 samples, full-batch,
    for ``epochs`` steps, and report whether it fits it: the loss at or below ``loss_threshold``
    and, for a classification loss, every sample right.

    No regularization: no L1/L2, dropout off (every Dropout's p set to 0); ``optimizer`` is a
    class or factory called as ``optimizer(params, lr=lr)`` (default ``fastnn.optim.Adam``;
    give it no weight decay). ``loss`` defaults to ``SoftmaxCrossEntropy`` for integer labels,
    ``MSE`` otherwise. ``seed`` fixes the trainer's generator.
    """
    from .optim import Adam
    from .train import Trainer

    model = model_factory()
    if not isinstance(model, Module):
        raise TypeError(f"model_factory must return a fastnn.nn.Module, got {type(model).__name__}")
    without_dropout(model)
    labels = np.dtype(B.as_array(y, "y").dtype).kind in "iu"
    if loss is None:
        loss = SoftmaxCrossEntropy() if labels else MSE()
    classifier = isinstance(loss, (SoftmaxCrossEntropy, Hinge, BCEWithLogits))
    opt = (optimizer or Adam)(model.parameters(), lr=B.check_scalar(lr, "lr", low=0.0, low_open=True))
    trainer = Trainer(model, loss, opt, metrics=["accuracy"] if classifier else [], seed=seed)
    history = trainer.fit(X, y, epochs=epochs, batch_size=len(X), shuffle=False, verbose=0)
    final = trainer.evaluate(X, y, batch_size=len(X))
    accuracy = final.get("accuracy")
    threshold = B.check_scalar(loss_threshold, "loss_threshold", low=0.0)
    ok = final["loss"] <= threshold and (accuracy is None or accuracy == 1.0)
    return OverfitResult(ok, final["loss"], accuracy, history.history["loss"], model, threshold)
