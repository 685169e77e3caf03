"""Averaging models: ``Ensemble`` (several trained models: classifiers' probabilities or
regressors' outputs averaged) and ``EMA`` (an exponential moving average of one model's weights over training)."""

from __future__ import annotations

import contextlib

import numpy as np

from . import _backend as B
from .callbacks import Callback
from .nn.losses import BCEWithLogits, Loss, SoftmaxCrossEntropy
from .nn.module import Module
from .prediction import _device_context, loss_task, outputs_to_predictions, outputs_to_probabilities, predict_outputs

__all__ = ["Ensemble", "EMA"]


class Ensemble:
    """Independently trained models combined by averaging.

    Their predictions mean what :class:`fastnn.train.Trainer`'s do for ``loss``, the loss they
    were trained with (:func:`fastnn.prediction.outputs_to_predictions`):

    - classifiers (``SoftmaxCrossEntropy``, ``BCEWithLogits``) average their class
      probabilities (soft voting): p(x) = (1/M) sum_m probs_m(x); ``predict`` gives the argmax
      class (N,) (softmax) or 1 where p > 0.5, per output (sigmoid), ``predict_proba`` p;
    - ``Hinge`` classifiers average their scores, and ``predict`` gives the argmax (they have
      no probabilities);
    - regressors (``MSE``, ``L1``, ...) average their outputs, which ``predict`` returns.

    ``loss=None`` reads the models as classifiers by their output width: C > 1 outputs as
    softmax logits, one output as a sigmoid logit. ``predict_outputs`` is the mean of the raw
    outputs. The models must give outputs of one shape, and live on one device; they run in
    inference mode. (sklearn VotingClassifier(voting="soft") / VotingRegressor; cs231n's
    model ensembles)
    """

    def __init__(self, models, loss: Loss | None = None):
        self.models = list(models)
        if not self.models:
            raise ValueError("Ensemble needs at least one model")
        for i, model in enumerate(self.models):
            if not isinstance(model, Module):
                raise TypeError(f"Ensemble: models[{i}] must be a fastnn.nn.Module, got {type(model).__name__}")
        devices = {model.device for model in self.models}
        if len(devices) > 1:
            raise ValueError(f"Ensemble: the models are on different devices {sorted(map(str, devices))}; move "
                             "them to one with model.to(...)")
        if loss is not None and not isinstance(loss, Loss):
            raise TypeError(f"Ensemble: loss must be the fastnn.nn loss the models were trained with, got "
                            f"{type(loss).__name__}")
        self.loss = loss

    def __len__(self) -> int:
        return len(self.models)

    def _mean(self, X, batch_size: int, transform):
        """(1/M) sum_m transform(outputs_m), float64, and the loss that gives them meaning."""
        total, loss = None, self.loss
        for i, model in enumerate(self.models):
            outputs = predict_outputs(model, X, batch_size)
            if loss is None:
                loss = SoftmaxCrossEntropy() if outputs.ndim == 2 and outputs.shape[1] > 1 else BCEWithLogits()
            value = transform(outputs, loss).astype(np.float64)
            if total is not None and value.shape != total.shape:
                raise ValueError(f"Ensemble: models[{i}] gives outputs of shape {tuple(value.shape)}, models[0] "
                                 f"{tuple(total.shape)}")
            total = value if total is None else total + value
        return total / len(self.models), loss

    def predict_proba(self, X, batch_size: int = 256):
        """The averaged probabilities, (N, C) (or the outputs' shape for sigmoid logits), on the
        models' device (X may be NumPy with GPU models); a ``TypeError`` for losses without
        probabilities."""
        return self._mean(X, batch_size, outputs_to_probabilities)[0]

    def predict_outputs(self, X, batch_size: int = 256):
        """The mean of the models' raw outputs (logits for classifiers), float64."""
        return self._mean(X, batch_size, lambda outputs, loss: outputs)[0]

    def predict(self, X, batch_size: int = 256):
        """Class labels for classifiers (int64: the argmax (N,), or 0/1 per sigmoid output),
        the averaged outputs for regressors (see the class docstring)."""
        loss = self.loss
        if loss is not None and loss_task(loss) == "regression":
            return self.predict_outputs(X, batch_size)
        if loss is not None and loss.labels and not isinstance(loss, SoftmaxCrossEntropy):  # Hinge: no probabilities
            return outputs_to_predictions(self.predict_outputs(X, batch_size), loss)
        proba, loss = self._mean(X, batch_size, outputs_to_probabilities)
        if loss_task(loss) == "binary":
            return (proba > 0.5).astype(np.int64)
        return B.array_module(proba).argmax(proba, axis=1).astype(np.int64)


class EMA(Callback):
    """Exponential moving average of a model's parameters (Polyak averaging; TensorFlow's
    ``ExponentialMovingAverage``, timm's ``ModelEma``).

    ``update()`` (after each optimizer step) sets, for every parameter w and its average s,
    s = d s + (1 - d) w, with d = ``decay``, or with ``warmup=True`` d = min(decay,
    (1 + t) / (10 + t)) at the t-th update (t from 1; TensorFlow's ``num_updates``), so early
    averages are not dominated by the initial weights. The averages start as copies of the
    parameters and live on their device, in their dtype. Buffers (BatchNorm's running
    statistics) are not averaged: they already are running averages.

    ``with ema.average_parameters(): ...`` swaps the averages into the model in place
    (evaluate, predict, save) and puts the live weights back on exit, also after an exception.
    Passed in a trainer's ``callbacks`` it updates after every step. ``state_dict`` /
    ``load_state_dict`` save and restore the averages and the update count.
    """

    def __init__(self, model: Module, decay: float = 0.999, warmup: bool = False):
        if not isinstance(model, Module):
            raise TypeError(f"EMA: model must be a fastnn.nn.Module, got {type(model).__name__}")
        self._model = model
        self.decay = B.check_scalar(decay, "EMA: decay", low=0.0, high=1.0)
        self.warmup = bool(warmup)
        self.num_updates = 0
        with _device_context(model):
            self.shadow = {name: p.data.copy() for name, p in model.named_parameters()}

    @property
    def model(self) -> Module:
        """The averaged model (also while training, where ``Callback.model`` is the trainer's)."""
        return self._model

    def _pairs(self):
        """(name, parameter, average), checking that the model still matches the averages."""
        pairs = []
        for name, p in self._model.named_parameters():
            s = self.shadow.get(name)
            if s is None or s.shape != p.data.shape or s.dtype != p.data.dtype or B.device_of(s) != B.device_of(
                    p.data):
                raise ValueError(f"EMA: parameter {name} no longer matches its average (moved, converted or "
                                 "replaced after the EMA was created); create the EMA after model.to(...)")
            pairs.append((name, p, s))
        return pairs

    def current_decay(self) -> float:
        """The decay the next update uses."""
        if not self.warmup:
            return self.decay
        t = self.num_updates + 1
        return min(self.decay, (1 + t) / (10 + t))

    def update(self) -> None:
        """s = d s + (1 - d) w for every parameter, in place."""
        d = self.current_decay()
        with _device_context(self._model):
            for _, p, s in self._pairs():
                s *= d
                s += (1 - d) * p.data
        self.num_updates += 1

    def on_batch_end(self, batch, logs):
        self.update()

    @contextlib.contextmanager
    def average_parameters(self):
        """Within the block the model's parameters hold the averages (copied in place, so the
        arrays, and an optimizer built on them, stay the same); the live values come back on
        exit, even when the block raises."""
        pairs = self._pairs()
        with _device_context(self._model):
            live = [p.data.copy() for _, p, _ in pairs]
            for _, p, s in pairs:
                p.data[...] = s
        try:
            yield self._model
        finally:
            with _device_context(self._model):
                for (_, p, _), saved in zip(pairs, live):
                    p.data[...] = saved

    def state_dict(self) -> dict:
        """The decay, warm-up flag, update count and copies of the averages by parameter name."""
        return {"decay": self.decay, "warmup": self.warmup, "num_updates": self.num_updates,
                "shadow": {name: s.copy() for name, s in self.shadow.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict` into the existing averages (values are copied onto their
        device); ValueError, with nothing changed, if its names, shapes or dtypes do not match
        the model's parameters (``Module.state_dict_mismatches``)."""
        shadow = state["shadow"]
        problems = self._model.state_dict_mismatches(shadow, buffers=False)
        if problems:
            raise ValueError("EMA.load_state_dict: the state does not match, nothing was loaded:\n  "
                             + "\n  ".join(problems))
        with _device_context(self._model):
            for name, s in self.shadow.items():
                value = shadow[name]
                s[...] = B.to_numpy(value) if isinstance(s, np.ndarray) else B.array_module(s).asarray(value)
        self.decay = B.check_scalar(state["decay"], "EMA: decay", low=0.0, high=1.0)
        self.warmup, self.num_updates = bool(state["warmup"]), int(state["num_updates"])
