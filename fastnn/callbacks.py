"""Callbacks: code that runs at fixed points of :meth:`fastnn.train.Trainer.fit`.

A callback subclasses :class:`Callback` and overrides the hooks it needs. The trainer calls them,
in the order of its ``callbacks`` list, at these points::

    on_train_begin(logs)
    for each epoch:
        on_epoch_begin(epoch, logs)        # logs: this epoch's dict, filled in as it goes
        for each batch:
            on_batch_begin(batch, logs)
            forward, loss, backward, L1/L2 gradients
            on_before_step(batch, logs)    # gradients ready, the optimizer has not stepped
            optimizer.step()
            on_batch_end(batch, logs)
        validation; the epoch's record goes into the History
        on_epoch_end(epoch, logs)
    on_train_end(logs)

Epochs and batches are counted from 0 (``epoch`` keeps counting across ``fit`` calls); messages
show them from 1, as the progress bar does. Epoch logs map names to floats (``loss``,
``accuracy``, ``val_loss``, ``lr``, ...); a key a callback adds in ``on_epoch_begin`` is recorded
in the History with the others. Batch logs hold ``batch``, ``size`` (samples) and ``loss``: the
batch's loss, penalty included, as a 0-d array on the model's device (``float()`` reads it, which
waits for the GPU); after a step that measured them, ``update_ratios`` maps weight names to
‖Δw‖/‖w‖ (0-d arrays).

A callback stops training with ``self.trainer.request_stop(reason)``. Requested in
``on_before_step`` it also cancels that step (the weights keep their values); requested during
an epoch it ends training at once and the unfinished epoch is not recorded; requested in
``on_epoch_end`` it ends training after that epoch. (Keras' ``keras.callbacks``.)
"""

from __future__ import annotations

import math
import os
import warnings

import numpy as np

from . import _backend as B
from ._warnings import FastnnRuntimeWarning

__all__ = ["Callback", "EarlyStopping", "ModelCheckpoint", "LRScheduler", "MomentumRamp", "NaNGuard",
           "UpdateRatioMonitor"]


class Callback:
    """Base class: every hook does nothing. ``self.trainer`` is the :class:`Trainer` running
    it (set when ``fit`` starts), ``self.model`` its model."""

    trainer = None

    def set_trainer(self, trainer) -> None:
        """Attach to ``trainer`` (called by the trainer before ``on_train_begin``)."""
        self.trainer = trainer

    @property
    def model(self):
        return self.trainer.model

    def on_train_begin(self, logs: dict) -> None:
        """Before the first epoch of a ``fit``."""

    def on_train_end(self, logs: dict) -> None:
        """After the last epoch of a ``fit`` (also when it stopped early); ``logs`` are the last
        epoch's."""

    def on_epoch_begin(self, epoch: int, logs: dict) -> None:
        """Before the epoch's first batch; keys added to ``logs`` are recorded for the epoch."""

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        """After the epoch's validation, with its finished logs (already in the History)."""

    def on_batch_begin(self, batch: int, logs: dict) -> None:
        """Before the batch's forward pass."""

    def on_before_step(self, batch: int, logs: dict) -> None:
        """After the backward pass (and the L1/L2 gradients), before ``optimizer.step()``. A stop
        requested here cancels the step."""

    def on_batch_end(self, batch: int, logs: dict) -> None:
        """After ``optimizer.step()``."""


def _direction(monitor: str, mode: str) -> str:
    """"min" or "max" for ``mode`` ("auto": "max" for names ending in "accuracy", else "min")."""
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
    if mode != "auto":
        return mode
    return "max" if monitor.endswith("accuracy") else "min"


class _Best:
    """The best value of a monitored log so far: ``improves(value)`` is True when ``value``
    beats it by more than ``min_delta`` in the monitor's direction (NaN never does)."""

    def __init__(self, monitor: str, mode: str, min_delta: float):
        if not isinstance(monitor, str):
            raise TypeError(f"monitor must be the name of a log entry, got {type(monitor).__name__}")
        self.monitor = monitor
        self.direction = _direction(monitor, mode)
        self.min_delta = B.check_scalar(min_delta, "min_delta", low=0.0)
        self.reset()

    def reset(self) -> None:
        self.value = math.inf if self.direction == "min" else -math.inf

    def read(self, logs: dict, who: str) -> float:
        """The monitored value in ``logs``; ValueError listing the available ones if absent."""
        if self.monitor not in logs:
            hint = " (pass validation_data= or validation_split= to fit)" if self.monitor.startswith("val_") else ""
            raise ValueError(f"{who} monitors {self.monitor!r}, but the epoch logs have {sorted(logs)}{hint}")
        return float(logs[self.monitor])

    def improves(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.direction == "min":
            return value < self.value - self.min_delta
        return value > self.value + self.min_delta


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved for ``patience`` epochs in a row.

    An epoch improves when its value beats the best so far by more than ``min_delta`` (lower for
    ``mode="min"``, higher for ``"max"``; ``"auto"`` picks "max" for names ending in
    ``accuracy``). With ``restore_best=True`` the weights (and buffers, e.g. BatchNorm's running
    statistics) of the best epoch are kept as a copy (``model.state_dict()``) and loaded back at
    the end of training, whether it stopped early or ran out of epochs; the optimizer state is
    not restored. After ``fit``: ``best``, ``best_epoch`` and ``stopped_epoch`` (None when it
    did not stop), epochs from 0. (keras.callbacks.EarlyStopping(restore_best_weights=True))
    """

    def __init__(self, monitor: str = "val_loss", patience: int = 5, min_delta: float = 0.0, mode: str = "auto",
                 restore_best: bool = True):
        if isinstance(patience, bool) or not isinstance(patience, (int, np.integer)) or patience < 1:
            raise ValueError(f"patience must be a positive int (epochs), got {patience!r}")
        self._best = _Best(monitor, mode, min_delta)
        self.monitor, self.patience, self.restore_best = monitor, int(patience), bool(restore_best)
        self.best = self.best_epoch = self.stopped_epoch = None
        self.best_weights = None
        self.wait = 0

    def on_train_begin(self, logs):
        self._best.reset()
        self.best = self.best_epoch = self.stopped_epoch = None
        self.best_weights = None
        self.wait = 0

    def on_epoch_end(self, epoch, logs):
        value = self._best.read(logs, "EarlyStopping")
        if self._best.improves(value):
            self._best.value = self.best = value
            self.best_epoch, self.wait = epoch, 0
            if self.restore_best:
                self.best_weights = self.model.state_dict()
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            best = "never finite" if self.best is None else f"best {self.best:.6g} at epoch {self.best_epoch + 1}"
            self.trainer.request_stop(f"EarlyStopping: {self.monitor} has not improved for {self.patience} epochs "
                                      f"({best}); stopped after epoch {epoch + 1}")

    def on_train_end(self, logs):
        if self.restore_best and self.best_weights is not None:
            self.model.load_state_dict(self.best_weights)


class ModelCheckpoint(Callback):
    """Save a checkpoint (``fastnn.save``) at the end of every epoch, or with
    ``save_best_only=True`` only when ``monitor`` improved (``mode`` as in
    :class:`EarlyStopping`).

    ``path`` may hold ``str.format`` fields filled from the epoch (from 1) and its logs, e.g.
    ``"ckpt-{epoch:03d}-{val_loss:.3f}.npz"``; each save replaces the file atomically, in a
    folder made when missing (checked when training begins, unless fields name it). The file
    holds the model, the optimizer (unless ``save_optimizer=False``) and the extras ``epoch``
    (from 0), ``logs`` and ``trainer`` (:meth:`Trainer.state_dict`: epoch count, shuffling
    generator, dropout counters, History), so ``fastnn.load`` plus
    ``trainer.load_state_dict(extras["trainer"])`` resumes training exactly. ``last_path`` is
    the file last written. In distributed training only rank 0 writes (the trainer's
    ``is_main_process``). (keras.callbacks.ModelCheckpoint)
    """

    def __init__(self, path, monitor: str = "val_loss", save_best_only: bool = False, mode: str = "auto",
                 save_optimizer: bool = True):
        self.path = path
        self.save_best_only = bool(save_best_only)
        self.save_optimizer = bool(save_optimizer)
        self._best = _Best(monitor, mode, 0.0)
        self.last_path = None

    def on_train_begin(self, logs):
        self._best.reset()
        # The folder is made (as Keras does), and one that cannot take the file is said now, not
        # after the first epoch's training. (A folder named by the epoch's fields is made at save.)
        folder = os.path.dirname(os.fspath(self.path)) or "."
        if "{" not in folder:
            from .job import prepare_out

            prepare_out(folder, option="ModelCheckpoint: the folder")

    def on_epoch_end(self, epoch, logs):
        if not self.trainer.is_main_process:
            return
        if self.save_best_only:
            value = self._best.read(logs, "ModelCheckpoint")
            if not self._best.improves(value):
                return
            self._best.value = value
        from .checkpoint import save

        path = str(self.path).format(epoch=epoch + 1, **logs)
        folder = os.path.dirname(path) or "."
        if folder != (os.path.dirname(os.fspath(self.path)) or "."):  # named by the epoch's fields: made now
            os.makedirs(folder, exist_ok=True)
        trainer = self.trainer
        save(path, model=trainer.model, optimizer=trainer.optimizer if self.save_optimizer else None,
             epoch=epoch, logs=dict(logs), trainer=trainer.state_dict())
        self.last_path = path


class LRScheduler(Callback):
    """Step a schedule of ``fastnn.optim.lr_scheduler`` (an LR schedule, or a
    ``MomentumSchedule``) once per epoch, after the epoch (``interval="epoch"``), or after
    every optimizer step (``interval="batch"``, e.g. a warm-up counted in steps). The trainer
    records each epoch's ``lr`` (of the first parameter group); for a momentum schedule this
    callback records ``momentum`` too. (keras.callbacks.LearningRateScheduler)"""

    def __init__(self, scheduler, interval: str = "epoch"):
        if not callable(getattr(scheduler, "step", None)):
            raise TypeError(f"scheduler must have a step() method, got {type(scheduler).__name__}")
        if interval not in ("epoch", "batch"):
            raise ValueError(f"interval must be 'epoch' or 'batch', got {interval!r}")
        self.scheduler, self.interval = scheduler, interval

    def on_epoch_begin(self, epoch, logs):
        momentum = getattr(self.scheduler, "get_last_momentum", None)
        if momentum is not None:
            logs["momentum"] = float(momentum()[0])

    def on_batch_end(self, batch, logs):
        if self.interval == "batch":
            self.scheduler.step()

    def on_epoch_end(self, epoch, logs):
        if self.interval == "epoch":
            self.scheduler.step()


class MomentumRamp(LRScheduler):
    """Raise the momentum (SGD, RMSprop) or beta1 (Adam) of the trainer's optimizer from
    ``start`` to ``end`` over ``epochs`` epochs: a ``fastnn.optim.lr_scheduler.MomentumSchedule``
    built on the trainer's optimizer when training first starts, stepped after each epoch and
    recorded as ``momentum``. ``mode``: "linear" or "geometric" (1 - momentum falls evenly on
    a log scale)."""

    def __init__(self, start: float = 0.5, end: float = 0.99, epochs: int = 10, mode: str = "linear"):
        from .optim.lr_scheduler import MomentumSchedule

        start, end, epochs, mode = MomentumSchedule.check_options(start, end, epochs, mode)  # now, not at fit
        self.options = dict(start=start, end=end, epochs=epochs, mode=mode)
        self.scheduler, self.interval = None, "epoch"

    def on_train_begin(self, logs):
        if self.scheduler is None:
            from .optim.lr_scheduler import MomentumSchedule

            self.scheduler = MomentumSchedule(self.trainer.optimizer, **self.options)


def _all_finite(arrays) -> bool:
    """Whether every element of every array is finite: one reduction per array and a single
    host transfer at the end."""
    flags = [B.array_module(a).isfinite(a).all() for a in arrays]
    if not flags:
        return True
    xp = B.array_module(flags[0])
    return bool(xp.stack(flags).all())


def _first_bad(named) -> str | None:
    """The name of the first (name, array) pair holding NaN or infinity."""
    return next((name for name, a in named if not _all_finite([a])), None)


class NaNGuard(Callback):
    """Stop training at the first non-finite loss, gradient or weight, keeping the last good
    weights, with a message (a ``RuntimeWarning``, also in ``trainer.stop_reason``) that names
    the epoch, the batch and what went bad.

    - Before each optimizer step it checks the batch's loss and every gradient. If one is NaN
      or infinite the step is cancelled, so the bad update never reaches the weights, and the
      buffers (BatchNorm's running statistics, which that batch's forward already updated) are
      put back as they were before the batch.
    - After each step it checks the weights: an update can overflow with finite gradients.
      Then the weights and buffers of the start of the epoch are restored (a copy taken then;
      they were finite, having passed this check).

    The failure is kept in ``epoch``, ``batch`` (from 0) and ``what``. Cost: a pass over the
    gradients and one over the weights, and a host synchronisation for each, per batch; a
    debugging and safety net, not free on the GPU. (keras.callbacks.TerminateOnNaN, which
    keeps the bad weights)
    """

    def __init__(self):
        self.epoch = self.batch = self.what = None
        self._epoch_state = self._buffers = None

    def on_train_begin(self, logs):
        self.epoch = self.batch = self.what = None

    def on_epoch_begin(self, epoch, logs):
        self._current_epoch = epoch
        self._epoch_state = self.model.state_dict()

    def on_batch_begin(self, batch, logs):
        self._buffers = [(a, a.copy()) for _, a in self.model.named_buffers()]

    def on_before_step(self, batch, logs):
        named = self.model.named_parameters()
        loss = logs["loss"]
        if _all_finite([B.array_module(loss).asarray(loss)] + [p.grad for _, p in named]):
            return
        if not _all_finite([B.array_module(loss).asarray(loss)]):
            what = f"the loss is {float(loss)}"
        else:
            what = f"the gradient of {_first_bad((name, p.grad) for name, p in named)} is not finite"
        for live, saved in self._buffers:
            live[...] = saved
        self._stop(batch, what, "the step was not applied; the weights are those before this batch")

    def on_batch_end(self, batch, logs):
        named = self.model.named_parameters()
        if _all_finite([p.data for _, p in named]):
            return
        what = f"the update made {_first_bad((name, p.data) for name, p in named)} non-finite"
        self.model.load_state_dict(self._epoch_state)
        self._stop(batch, what, "the weights were restored to those at the start of the epoch")

    def _stop(self, batch: int, what: str, outcome: str) -> None:
        self.epoch, self.batch, self.what = self._current_epoch, batch, what
        message = (f"NaNGuard: at epoch {self._current_epoch + 1}, batch {batch + 1} {what}; training stopped "
                   f"and {outcome}")
        warnings.warn(message, FastnnRuntimeWarning, stacklevel=5)  # the caller of Trainer.fit
        self.trainer.request_stop(message)


class UpdateRatioMonitor(Callback):
    """Watch the update-to-weight ratio ‖Δw‖ / ‖w‖ of every weight (the parameters with two or
    more dimensions), measured over one optimizer step every ``every`` steps.

    A healthy learning rate moves each weight by about 1e-3 of its norm per step (cs231n's rule
    of thumb); at the end of each epoch, a weight whose average ratio is below ``low`` (learns
    too slowly: raise the lr) or above ``high`` (the lr is probably too high) gets a
    ``RuntimeWarning``, once per weight and direction per ``fit``. The measurements are kept in
    ``steps`` (global step numbers, from 0) and ``ratios`` (weight name -> one value per
    measurement) for ``fastnn.plot.update_ratios(monitor.ratios, path)``; the History's
    ``update_ratio`` (per epoch) is their geometric mean over the weights.

    Without this callback the trainer measures once per epoch, on its last batch. Each
    measurement copies the weights before the step and reduces on the device, synchronising
    only at the end of the epoch.
    """

    def __init__(self, every: int = 10, low: float = 1e-4, high: float = 1e-2, warn: bool = True):
        if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1:
            raise ValueError(f"every must be a positive int (optimizer steps), got {every!r}")
        self.every = int(every)
        self.low = B.check_scalar(low, "low", low=0.0, low_open=True)
        self.high = B.check_scalar(high, "high", low=self.low, low_open=True)
        self.warn = bool(warn)
        self.steps: list[int] = []
        self.ratios: dict[str, list[float]] = {}
        self._warned: set = set()

    def on_train_begin(self, logs):
        self._warned = set()

    def on_epoch_end(self, epoch, logs):
        measured = self.trainer.measured_update_ratios
        for step, ratios in measured:
            self.steps.append(step)
            for name, ratio in ratios.items():
                self.ratios.setdefault(name, []).append(ratio)
        if not self.warn or not measured:
            return
        for name in measured[0][1]:
            mean = float(np.mean([ratios[name] for _, ratios in measured]))
            direction = "low" if mean < self.low else "high" if mean > self.high else None
            if direction is None or (name, direction) in self._warned:
                continue
            self._warned.add((name, direction))
            advice = ("it learns slowly: the learning rate may be too low" if direction == "low"
                      else "the learning rate is probably too high")
            warnings.warn(f"UpdateRatioMonitor: epoch {epoch + 1}: {name} moves by {mean:.2e} of its norm per step "
                          f"(|update|/|weight|; about 1e-3 is healthy, outside [{self.low:g}, {self.high:g}] is "
                          f"{direction}): {advice} (lr={logs.get('lr', float('nan')):.3g})",
                          FastnnRuntimeWarning, stacklevel=3)  # the caller of Trainer.fit
