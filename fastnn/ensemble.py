"""Averaging models: ``Ensemble`` (several trained classifiers, their probabilities averaged)
and ``EMA`` (an exponential moving average of one model's weights over training)."""

from __future__ import annotations

import contextlib

import numpy as np

from . import _backend as B
from .callbacks import Callback
from .nn.module import Module
from .metrics import predicted_labels, probabilities
from .train import _device_context, predict_outputs

__all__ = ["Ensemble", "EMA"]


class Ensemble:
    """Independently trained classifiers combined by averaging their class probabilities
    (soft voting): p(x) = (1/M) sum_m probs_m(x), where probs is the softmax of C > 1 logits or
    the sigmoid of a single logit. The models must give outputs of one shape, and live on one
    device; they run in inference mode. (sklearn VotingClassifier(voting="soft"); cs231n's
    model ensembles)
    """

    def __init__(self, models):
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

    def __len__(self) -> int:
        return len(self.models)

    def predict_proba(self, X, batch_size: int = 256):
        """The averaged probabilities, (N, C) (or (N, 1)/(N,) for one logit), on the models'
        device (X may be NumPy with GPU models)."""
        total = None
        for i, model in enumerate(self.models):
            p = probabilities(predict_outputs(model, X, batch_size)).astype(np.float64)
            if total is not None and p.shape != total.shape:
                raise ValueError(f"Ensemble: models[{i}] gives outputs of shape {tuple(p.shape)}, models[0] "
                                 f"{tuple(total.shape)}")
            total = p if total is None else total + p
        return total / len(self.models)

    def predict(self, X, batch_size: int = 256):
        """The predicted classes, (N,) int64: the argmax of the averaged probabilities, or
        probability > 0.5 for one logit."""
        return predicted_labels(self.predict_proba(X, batch_size), threshold=0.5)


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
