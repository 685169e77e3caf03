"""``Trainer``: the training loop, with metrics, validation, L1/L2 penalties, callbacks and a
progress bar; ``History``: what it recorded, epoch by epoch.

::

    trainer = fnn.train.Trainer(model, fnn.nn.SoftmaxCrossEntropy(), fnn.optim.Adam(model.parameters()),
                                metrics=["accuracy"], callbacks=[fnn.callbacks.EarlyStopping(patience=5)],
                                l2=1e-4, seed=0)
    history = trainer.fit(X, y, epochs=30, batch_size=64, validation_split=0.1)
    history.history["val_accuracy"], trainer.evaluate(X_test, y_test), trainer.predict_proba(X_test)

The data stays on the model's device: with the model on a GPU, NumPy data is moved there one
batch at a time (``cupy.asarray``); GPU data with a model on the CPU is refused (``ValueError``),
never copied back silently. X is converted once to the model's dtype (float targets too; integer
labels are kept). On the GPU the loss and the metrics are summed on the device
(:class:`fastnn.metrics.MetricSums`) and read once per epoch (and when the progress bar
refreshes, at most twice a second), not once per batch. The metrics are
:mod:`fastnn.metrics`'s, the L1/L2 penalty :mod:`fastnn.penalties`'s.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
import warnings
from typing import Any, Callable

import numpy as np

from . import _backend as B
from . import data as D
from .callbacks import Callback, UpdateRatioMonitor
from ._warnings import FastnnRuntimeWarning
from .metrics import MetricSums, batch_metric, check_targets, host_floats, probabilities
from .nn.dropout import Dropout
from .nn.losses import Loss
from .nn.module import Module
from .penalties import add_penalty_grad, penalty, weight_parameters
from .prediction import (_chunks, _device_context, _model_place, _positive, _prepare, _to_device, loss_task,
                         outputs_to_predictions, outputs_to_probabilities, predict_outputs)

# The penalty functions, probabilities and the prediction functions lived here first: still
# importable from fastnn.train (their homes are fastnn.penalties, metrics and prediction).
__all__ = ["Trainer", "History", "NonFiniteLossError", "weight_parameters", "penalty", "add_penalty_grad",
           "probabilities", "predict_outputs", "loss_task", "outputs_to_predictions", "outputs_to_probabilities"]


# ---------------------------------------------------------------------------------------------
# A loss that is not finite.


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; ``epoch`` and ``batch`` (from 0) say where
    first. Raised by ``Trainer.fit`` unless ``on_nonfinite`` says otherwise."""

    def __init__(self, message: str, epoch: int, batch: int):
        super().__init__(message)
        self.epoch, self.batch = epoch, batch


NONFINITE_POLICIES = ("raise", "warn", "ignore")


class LossWatch:
    """Finds the first batch of an epoch whose training loss is not finite and acts on it as
    ``policy`` says: ``"raise"`` a :class:`NonFiniteLossError` (after ``on_raise(message)``),
    ``"warn"`` once per ``fit``
    (a ``FastnnRuntimeWarning``) and go on, ``"ignore"``.

    A loss on the host is looked at as it comes (:meth:`add`), before the optimizer step, so
    with ``"raise"`` the bad update is never applied. A loss on the device is only kept
    (``deferred=True``): reading it would cost a synchronisation per batch. When the epoch's
    summed loss is read (once per epoch), :meth:`end_epoch` finds the first bad batch among
    the kept values with one more transfer, and only when the sum is not finite."""

    def __init__(self, policy: str, who: str = "fit", on_raise: Callable[[str], None] | None = None):
        if policy not in NONFINITE_POLICIES:
            raise ValueError(f"on_nonfinite must be one of {NONFINITE_POLICIES}, got {policy!r}")
        self.policy, self.who, self.on_raise = policy, who, on_raise
        self.warned = False
        self.epoch, self._kept = 0, []

    def start_epoch(self, epoch: int) -> None:
        self.epoch, self._kept = epoch, []

    def add(self, batch: int, value, deferred: bool) -> None:
        """Look at batch ``batch``'s loss now, or keep it for :meth:`end_epoch` when
        ``deferred``."""
        if self.policy == "ignore":
            return
        if deferred:
            self._kept.append(value)
        elif not math.isfinite(float(value)):
            self._found(batch, float(value), "", stacklevel=5)  # the caller of Trainer.fit

    def end_epoch(self, epoch_loss: float) -> None:
        """Given the epoch's mean loss as read from the device: find the first non-finite kept
        batch loss when it is not finite."""
        kept, self._kept = self._kept, []
        if self.policy == "ignore" or math.isfinite(epoch_loss) or not kept:
            return
        values = B.to_numpy(B.array_module(kept[0]).stack([B.array_module(kept[0]).asarray(v) for v in kept]))
        bad = np.flatnonzero(~np.isfinite(values))
        if not bad.size:  # every batch finite: the float64 sum itself overflowed
            return
        batch = int(bad[0])
        self._found(batch, float(values[batch]), " (found when the epoch's loss was read: on the GPU the loss stays on "
                    "the device during an epoch, so the weights took this batch's update and the later ones; "
                    "callbacks=[fastnn.callbacks.NaNGuard()] stops at once and keeps the last good weights)",
                    stacklevel=4)  # the caller of Trainer.fit

    def _found(self, batch: int, value: float, note: str, stacklevel: int) -> None:
        message = (f"{self.who}: the training loss is {value} at epoch {self.epoch + 1}, batch {batch + 1}{note}. "
                   "Lower the learning rate, check the data for NaN/inf, or pass on_nonfinite='warn' or 'ignore' "
                   "to go on")
        if self.policy == "raise":
            if self.on_raise is not None:
                self.on_raise(message)
            raise NonFiniteLossError(message, self.epoch, batch)
        if not self.warned:
            self.warned = True
            warnings.warn(message, FastnnRuntimeWarning, stacklevel=stacklevel)


# ---------------------------------------------------------------------------------------------
# History.


class History:
    """What ``Trainer.fit`` recorded: ``history`` maps each name (``loss``, every metric,
    ``val_loss``, ``val_<metric>``, ``lr``, ``update_ratio``, ``penalty`` with L1/L2, and keys
    callbacks add) to one value per epoch; ``epoch`` lists the epoch numbers (from 0);
    ``update_ratios`` maps each weight to its per-epoch mean ‖Δw‖/‖w‖; ``params`` describes the
    last ``fit`` (epochs, batch_size, steps per epoch, samples, ...); ``stop_reason`` says why
    training stopped early (None if it did not). Lists stay aligned: a value missing for an epoch
    is NaN. Plot with ``fastnn.plot.history(history, path)``. (keras.callbacks.History)"""

    def __init__(self):
        self.history: dict[str, list[float]] = {}
        self.epoch: list[int] = []
        self.update_ratios: dict[str, list[float]] = {}
        self.params: dict[str, Any] = {}
        self.stop_reason: str | None = None

    def __len__(self) -> int:
        return len(self.epoch)

    def append(self, epoch: int, logs: dict, update_ratios: dict | None = None) -> None:
        """Record one epoch."""
        for record, values in ((self.history, logs), (self.update_ratios, update_ratios or {})):
            for name in values:
                record.setdefault(name, [math.nan] * len(self.epoch))
            for name, series in record.items():
                series.append(float(values.get(name, math.nan)))
        self.epoch.append(int(epoch))

    def state_dict(self) -> dict:
        """A JSON-able copy of everything (for checkpoints)."""
        return {"history": {k: list(v) for k, v in self.history.items()}, "epoch": list(self.epoch),
                "update_ratios": {k: list(v) for k, v in self.update_ratios.items()},
                "params": dict(self.params), "stop_reason": self.stop_reason}

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict`; ValueError if its series do not have one value per epoch."""
        epochs = [int(e) for e in state["epoch"]]
        series = {**state["history"], **state["update_ratios"]}
        bad = [name for name, values in series.items() if len(values) != len(epochs)]
        if bad:
            raise ValueError(f"History.load_state_dict: series {bad} do not have one value per epoch ({len(epochs)})")
        self.epoch = epochs
        self.history = {k: [float(x) for x in v] for k, v in state["history"].items()}
        self.update_ratios = {k: [float(x) for x in v] for k, v in state["update_ratios"].items()}
        self.params = dict(state.get("params", {}))
        self.stop_reason = state.get("stop_reason")

    def __repr__(self) -> str:
        return f"History({len(self)} epochs: {', '.join(self.history)})"


# ---------------------------------------------------------------------------------------------
# The trainer.


class Trainer:
    """Trains ``model`` on (X, y) with ``loss`` and ``optimizer``.

    - ``metrics``: names of ``fastnn.metrics.METRICS`` ("accuracy", "top_k_accuracy" (k = 5) or
      "top_3_accuracy", "mse", "mae"), functions ``fn(y_true, y_pred) -> float`` or
      ``(name, fn)`` pairs (see :func:`fastnn.metrics.batch_metric`). Named metrics are summed on
      the device; functions run per batch (a host synchronisation each). Binary outputs ((N,)
      or (N, 1)) count as class 1 above 0 (logits) with ``BCEWithLogits``, above 0.5 with a
      regression loss; with ``SoftmaxCrossEntropy`` and ``Hinge`` the class is always the
      argmax (a one-output model is refused by the loss: one class is no classifier).
    - ``callbacks``: :class:`fastnn.callbacks.Callback` objects, called in order.
    - ``l1``, ``l2``: the penalty l1 * sum |W| + (l2 / 2) * sum W^2 over the weights W (the
      parameters with two or more dimensions: not biases, BatchNorm's gamma and beta or PReLU
      slopes). Its value is part of the reported training ``loss`` (and recorded alone as
      ``penalty``), and its gradient l1 * sign(W) + l2 * W is added to the weights' gradients
      before each optimizer step (l2 is then SGD's ``weight_decay``). Validation and
      ``evaluate`` report the data loss alone.
    - ``seed``: an int, None or a ``numpy.random.Generator``, for the shuffling and ``augment``.
    - ``augment``: a callable ``augment(X_batch, rng) -> X_batch`` (e.g.
      ``fastnn.augment.Augment``) applied to every training batch, with the trainer's generator.
    - ``distributed=True``: data-parallel training over the processes of a job launched with
      ``mpiexec``/``mpirun`` or ``torchrun`` (:mod:`fastnn.distributed`; the backend is chosen
      by ``fastnn.distributed.init``, joined here if not yet). Every rank calls ``fit`` with
      the same data: each epoch's order is split into global batches of ``batch_size`` times
      the number of processes (``batch_size`` is per process), each rank trains on its part
      (:class:`fastnn.distributed.DistributedBatches`, padded to equal shares), and the
      gradients are averaged over the ranks before every step. ``fit`` starts from rank 0's
      weights, optimizer state and trainer state (so resuming needs them loaded on rank 0
      only); the logged loss and metrics, validation and ``evaluate`` are computed over all
      ranks' samples (``evaluate`` is then collective: every rank calls it); BatchNorm's running
      statistics are averaged over the ranks after each epoch; a stop requested on one rank
      stops all; only rank 0 shows progress and ``ModelCheckpoint`` writes only there
      (``is_main_process``).
    - ``on_nonfinite``: what a NaN or infinite training loss does. ``"raise"`` (the default)
      stops ``fit`` with a :class:`NonFiniteLossError` naming the epoch and batch (the History
      keeps the finished epochs; on the CPU the bad step is not applied; on the GPU, where the
      loss is read once per epoch, at the end of that epoch); ``"warn"`` warns once and goes
      on; ``"ignore"`` goes on. (The ``NaNGuard`` callback checks every step and keeps the
      last good weights, at a synchronisation per batch.)

    Predictions follow scikit-learn's meaning (:func:`outputs_to_predictions`): ``predict``
    gives class labels for a classification loss and values for a regression loss,
    ``predict_proba`` probabilities (classification only), ``predict_outputs`` the raw outputs
    (logits).

    Class labels are checked against the model's number of outputs once per ``fit`` and
    ``evaluate``, on the whole of y: a label out of range is a ``ValueError`` naming its row in
    y, on the CPU and the GPU alike.
    ``fit`` continues where the last one stopped: epochs count on, the History grows, the
    generator's state carries over. :meth:`state_dict` holds what a checkpoint needs beside the
    model and the optimizer to resume exactly. Attributes: ``history``, ``epoch`` (epochs done),
    ``step_count`` (optimizer steps done), ``stop_reason`` (why the last ``fit`` stopped early,
    or None) and ``measured_update_ratios`` (the last epoch's [(step, {weight: ratio})]).
    (keras.Model.fit / evaluate / predict)
    """

    def __init__(self, model: Module, loss: Loss, optimizer, metrics=("accuracy",), callbacks=(), l1: float = 0.0,
                 l2: float = 0.0, seed=None, augment: Callable | None = None, on_nonfinite: str = "raise",
                 distributed: bool = False):
        if not isinstance(model, Module):
            raise TypeError(f"model must be a fastnn.nn.Module, got {type(model).__name__}")
        if not isinstance(loss, Loss):
            raise TypeError(f"loss must be a fastnn.nn loss (e.g. SoftmaxCrossEntropy()), got {type(loss).__name__}")
        if not all(callable(getattr(optimizer, name, None)) for name in ("step", "zero_grad")) or not hasattr(
                optimizer, "param_groups"):
            raise TypeError(f"optimizer must be a fastnn.optim optimizer, got {type(optimizer).__name__}")
        model_ids = {id(p) for p in model.parameters()}
        if not any(id(p) in model_ids for g in optimizer.param_groups for p in g["params"]):
            raise ValueError("the optimizer updates none of the model's parameters; build it with "
                             "optimizer(model.parameters(), ...)")
        if not isinstance(distributed, (bool, np.bool_)):
            raise TypeError(f"distributed must be True or False (the backend is chosen by fastnn.distributed.init), "
                            f"got {distributed!r}")
        self.model, self.loss, self.optimizer = model, loss, optimizer
        if metrics is None:
            metrics = ()
        elif isinstance(metrics, str) or callable(metrics):
            metrics = [metrics]
        threshold = {"binary": 0.0, "multiclass": None, "regression": 0.5}[loss_task(loss)]
        self.metrics = [batch_metric(m, threshold) for m in metrics]
        names = [m.name for m in self.metrics]
        if len(set(names)) != len(names) or "loss" in names:
            raise ValueError(f"metric names must be unique and not 'loss', got {names}")
        if isinstance(callbacks, Callback):
            raise TypeError(f"callbacks must be a list of Callback objects, got one {type(callbacks).__name__}; "
                            f"wrap it: callbacks=[{type(callbacks).__name__}(...)]")
        self.callbacks = list(callbacks)
        for cb in self.callbacks:
            if not isinstance(cb, Callback):
                raise TypeError(f"callbacks must be fastnn.callbacks.Callback objects, got {type(cb).__name__}")
        self.l1 = B.check_scalar(l1, "l1", low=0.0)
        self.l2 = B.check_scalar(l2, "l2", low=0.0)
        self.rng = D.as_generator(seed)
        if augment is not None and not callable(augment):
            raise TypeError(f"augment must be a callable augment(X, rng), got {type(augment).__name__}")
        self.augment = augment
        self.watch = LossWatch(on_nonfinite, on_raise=self._stopped_by)
        self.history = History()
        self.epoch = 0
        self.step_count = 0
        self.stop_training = False
        self.stop_reason: str | None = None
        self.measured_update_ratios: list[tuple[int, dict[str, float]]] = []
        self._sync = None
        if distributed:
            from .distributed.trainer_sync import TrainerSync

            self._sync = TrainerSync(model, optimizer)

    @property
    def is_main_process(self) -> bool:
        """False on the ranks other than 0 of a distributed trainer (which write no files)."""
        return self._sync is None or self._sync.is_main

    # -- stopping -------------------------------------------------------------------------

    def request_stop(self, reason: str = "stopped by a callback") -> None:
        """Stop training (see :mod:`fastnn.callbacks` for when it takes effect)."""
        self.stop_training = True
        self.stop_reason = reason

    # -- fit ------------------------------------------------------------------------------

    def fit(self, X, y, epochs: int = 1, batch_size: int = 32, validation_data=None, validation_split=None,
            shuffle: bool = True, verbose: int = 1, drop_last: bool = False) -> History:
        """Train for ``epochs`` more epochs of mini-batches of ``batch_size`` (reshuffled every
        epoch unless ``shuffle=False``; ``drop_last`` drops each epoch's short last batch).

        X (N, ...), y (N,) integer labels or (N, ...) float targets. Validation after each epoch
        on ``validation_data=(X_val, y_val)``, or on the last ``validation_split`` fraction of
        (X, y) before any shuffling (as Keras: shuffle ordered data first). ``verbose``: 0
        silent, 1 a progress bar per epoch (tqdm, on stdout, shown only when stdout is a
        terminal) with the loss, metrics and samples/s, 2 one line per epoch. The training loss
        and metrics of an epoch are means over its samples (batches weighted by their size),
        computed with the weights of each batch's step. Returns the trainer's :class:`History`.
        """
        epochs = _positive(epochs, "epochs")
        batch_size = _positive(batch_size, "batch_size")
        if verbose not in (0, 1, 2):
            raise ValueError(f"verbose must be 0, 1 or 2, got {verbose!r}")
        device, _ = _model_place(self.model, "fit")
        X, y = _prepare(self.model, X, y, "fit", labels=self.loss.labels)
        if validation_data is not None and validation_split is not None:
            raise ValueError("give validation_data or validation_split, not both")
        if validation_split is not None:
            split = B.check_scalar(validation_split, "validation_split", low=0.0, high=1.0, low_open=True,
                                   high_open=True)
            held_out = math.ceil(split * X.shape[0])
            if held_out >= X.shape[0]:
                raise ValueError(f"validation_split={split!r} of {X.shape[0]} samples leaves no training data")
            X, X_val, y, y_val = D.train_test_split(X, y, test_size=held_out, shuffle=False)
            validation_data = (X_val, y_val)
        elif validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise ValueError("validation_data must be a pair (X_val, y_val)")
            validation_data = _prepare(self.model, *validation_data, "fit: validation_data", labels=self.loss.labels)
        check_targets(self.metrics, y, "fit")
        # labels are checked against the model's outputs once, on the first batch's prediction
        unchecked = [("y", y)] + ([("validation y", validation_data[1])] if validation_data is not None else [])
        make_batches = D.batches
        if self._sync is not None:
            self._sync.begin(self, {"samples": int(X.shape[0]), "batch_size": batch_size, "epochs": epochs,
                                    "shuffle": bool(shuffle), "drop_last": bool(drop_last), "l1": self.l1,
                                    "l2": self.l2, "metrics": [m.name for m in self.metrics],
                                    "validation_samples": 0 if validation_data is None else len(validation_data[0])})
            make_batches = self._sync.batches
            verbose = verbose if self._sync.is_main else 0
        batches = make_batches(X, y, batch_size=batch_size, shuffle=shuffle, seed=self.rng, drop_last=drop_last)
        monitor = next((cb for cb in self.callbacks if isinstance(cb, UpdateRatioMonitor)), None)
        weights = weight_parameters(self.model)
        first, last = self.epoch, self.epoch + epochs
        self.history.params = {"epochs": last, "batch_size": batch_size, "steps": len(batches),
                               "samples": batches.num_samples,
                               "validation_samples": 0 if validation_data is None else len(validation_data[0]),
                               "metrics": [m.name for m in self.metrics], "l1": self.l1, "l2": self.l2,
                               **({} if self._sync is None else {"world_size": self._sync.world_size})}
        self.history.stop_reason = None
        self.stop_training, self.stop_reason = False, None
        self.watch.warned = False
        logs: dict = {}
        with _device_context(self.model), _ending(self._sync):
            for cb in self.callbacks:
                cb.set_trainer(self)
                cb.on_train_begin(logs)
            for epoch in range(first, last):
                logs = {}
                for cb in self.callbacks:
                    cb.on_epoch_begin(epoch, logs)
                logs = {"lr": float(self.optimizer.param_groups[0].get("lr", math.nan)), **logs}
                started = time.perf_counter()
                self.watch.start_epoch(epoch)
                with _progress(verbose, epoch, last, len(batches)) as bar:
                    sums, measured, completed = self._train_epoch(batches, device, weights, monitor, bar, unchecked)
                    if not completed:
                        break
                    if self._sync is not None:
                        sums = self._sync.totals(sums, ["loss", *(m.name for m in self.metrics)] +
                                                 (["penalty"] if self.l1 or self.l2 else []))
                        self._sync.average_buffers()
                    rate = sums.count / max(time.perf_counter() - started, 1e-12)
                    logs, ratios = self._epoch_logs(sums, logs, measured, weights)
                    self.watch.end_epoch(logs["loss"])
                    if validation_data is not None:
                        logs = _insert_validation(logs, self.evaluate(*validation_data, batch_size=batch_size))
                    bar.set_postfix_str(_describe(logs, rate), refresh=True)
                if verbose == 2:
                    print(f"Epoch {epoch + 1}/{last} - {time.perf_counter() - started:.2f}s - {_describe(logs, rate)}",
                          flush=True)
                self.history.append(epoch, logs, ratios)
                self.epoch = epoch + 1
                for cb in self.callbacks:
                    cb.on_epoch_end(epoch, logs)
                if self._sync is not None:
                    self._sync.agree_stop(self)
                if self.stop_training:
                    break
            self.history.stop_reason = self.stop_reason
            for cb in self.callbacks:
                cb.on_train_end(logs)
        return self.history

    def _stopped_by(self, message: str) -> None:
        """Record why training stops when ``fit`` raises (the History keeps it too)."""
        self.stop_reason = self.history.stop_reason = message

    def _train_epoch(self, batches, device, weights, monitor, bar, unchecked):
        """One pass over the batches. Returns the device sums, the update-ratio measurements
        [(step, {weight: 0-d array})] and whether every batch ran (no stop requested before the
        last one ended). The labels in ``unchecked`` ((name, y) pairs) are checked against the
        first prediction, and the list emptied."""
        sums, measured = MetricSums(), []
        refreshed = time.perf_counter()
        last = len(batches) - 1
        params = [p for _, p in weights]
        for batch, (xb, yb) in enumerate(batches):
            xb, yb = _to_device(xb, device), _to_device(yb, device)
            logs = {"batch": batch, "size": int(xb.shape[0])}
            for cb in self.callbacks:
                cb.on_batch_begin(batch, logs)
            if self.augment is not None:
                xb = self.augment(xb, self.rng)
            pred = self.model.forward(xb, training=True)
            if unchecked:
                self._check_label_range(unchecked, pred, "fit")
                unchecked.clear()
            value = self.loss.forward(pred, yb, sync=False)
            for m in self.metrics:
                sums.add(m.name, m.batch_sum(yb, pred))
            self.model.zero_grad()
            self.model.backward(self.loss.backward(), need_input_grad=False)
            if self._sync is not None:
                self._sync.reducer.synchronize()  # p.grad: the mean over the ranks
            if self.l1 or self.l2:
                extra = penalty(params, self.l1, self.l2)
                add_penalty_grad(params, self.l1, self.l2)
                sums.add("penalty", extra * logs["size"])
                value = value + extra
            logs["loss"] = value
            for cb in self.callbacks:
                cb.on_before_step(batch, logs)
            if self._sync is not None:
                self._sync.agree_stop(self)
            if self.stop_training:
                return sums, measured, False
            self.watch.add(batch, value, deferred=B.is_cupy(value))
            measure = (self.step_count % monitor.every == 0) if monitor is not None else batch == last
            before = [p.data.copy() for p in params] if measure else None
            self.optimizer.step()
            if measure:
                logs["update_ratios"] = {name: _ratio(p.data, old) for (name, p), old in zip(weights, before)}
                measured.append((self.step_count, logs["update_ratios"]))
            self.step_count += 1
            sums.add("loss", value * logs["size"])
            sums.count += logs["size"]
            for cb in self.callbacks:
                cb.on_batch_end(batch, logs)
            if self._sync is not None and batch < last:
                self._sync.agree_stop(self)
            if self.stop_training and batch < last:
                return sums, measured, False
            bar.update(1)
            if not bar.disable and time.perf_counter() - refreshed > 0.5:
                refreshed = time.perf_counter()
                rate = bar.format_dict["rate"] or 0.0
                bar.set_postfix_str(_describe(sums.means(), rate * logs["size"]), refresh=False)
        return sums, measured, True

    def _epoch_logs(self, sums: MetricSums, logs: dict, measured, weights) -> tuple[dict, dict]:
        """The epoch's record (loss, metrics, lr, update ratio, penalty, what callbacks added) and
        the per-weight mean update ratios, read from the device in one transfer. Sets
        ``measured_update_ratios`` to the epoch's measurements as floats."""
        device_values = {("sum", name): total for name, total in sums.sums.items()}
        device_values.update(((i, name), r) for i, (_, rs) in enumerate(measured) for name, r in rs.items())
        host = host_floats(device_values)
        means = {name: host[("sum", name)] / sums.count for name in sums.sums}
        self.measured_update_ratios = [(step, {name: host[(i, name)] for name in rs})
                                       for i, (step, rs) in enumerate(measured)]
        out = {"loss": means.pop("loss")}
        out.update((m.name, means.pop(m.name)) for m in self.metrics)
        out["lr"] = logs.pop("lr")
        ratios = {}
        if measured:
            ratios = {name: float(np.mean([rs[name] for _, rs in self.measured_update_ratios])) for name, _ in weights}
            out["update_ratio"] = math.exp(float(np.mean(np.log(np.maximum(list(ratios.values()), 1e-300)))))
        out.update(means)  # penalty
        out.update(logs)   # what callbacks added
        return out, ratios

    # -- evaluate / predict ---------------------------------------------------------------

    def evaluate(self, X, y, batch_size: int = 256) -> dict[str, float]:
        """The mean data loss (no penalty) and the metrics on (X, y) in inference mode
        (``training=False``), ``batch_size`` rows at a time: ``{"loss": ..., "accuracy": ...}``.
        Nothing in the model or the loss changes. An empty X is a ``ValueError`` (a mean over no
        samples is undefined)."""
        device, _ = _model_place(self.model, "evaluate")
        X, y = _prepare(self.model, X, y, "evaluate", labels=self.loss.labels)
        if X.shape[0] != y.shape[0]:
            raise ValueError(f"evaluate: X has {X.shape[0]} samples but y has {y.shape[0]}")
        if X.shape[0] == 0:
            raise ValueError("evaluate: X and y are empty (0 samples); the mean loss and metrics of no samples are "
                             "undefined")
        check_targets(self.metrics, y, "evaluate")
        if self._sync is not None:
            X, y = self._sync.shard(X, y)
        sums = MetricSums()
        with _device_context(self.model):
            for start, xb in _chunks(X, batch_size):
                xb, yb = _to_device(xb, device), _to_device(y[start:start + batch_size], device)
                pred = self.model.forward(xb, training=False)
                if start == 0:
                    self._check_label_range([("y", y)], pred, "evaluate")
                sums.add("loss", self.loss.value(pred, yb) * xb.shape[0])
                for m in self.metrics:
                    sums.add(m.name, m.batch_sum(yb, pred))
                sums.count += xb.shape[0]
        if self._sync is not None:
            sums = self._sync.totals(sums, ["loss", *(m.name for m in self.metrics)])
        means = sums.means()
        return {"loss": means["loss"], **{m.name: means[m.name] for m in self.metrics}}

    def _check_label_range(self, named, pred, who: str) -> None:
        """For a loss on class labels: every label of each (name, y) in ``named`` in [0, C),
        C = the number of outputs of the prediction ``pred``; a ``ValueError`` naming the first
        bad row otherwise (a pass over y and one host synchronisation, once per call)."""
        if not self.loss.labels or pred.ndim != 2:
            return
        classes = int(pred.shape[1])
        self.loss.check_classes(classes)
        for name, y in named:
            xp = B.array_module(y)
            bad = (y < 0) | (y >= classes)
            if y.size and bool(bad.any()):
                row = int(xp.flatnonzero(bad)[0])
                raise ValueError(f"{who}: {name}: label {int(y[row])} at index {row} is out of range: labels must be "
                                 f"in [0, C) with C = {classes} classes (the model's outputs)")

    def predict(self, X, batch_size: int = 256):
        """Predictions for X in inference mode, on the model's device, as scikit-learn's
        ``predict``: class labels (N,) for ``SoftmaxCrossEntropy`` and ``Hinge`` (the argmax),
        0/1 per output for ``BCEWithLogits`` (probability above 0.5), the outputs themselves for
        a regression loss (:func:`outputs_to_predictions`). An empty X gives an empty result."""
        return outputs_to_predictions(self.predict_outputs(X, batch_size), self.loss)

    def predict_proba(self, X, batch_size: int = 256):
        """Class probabilities for X: the softmax of the logits (N, C) for
        ``SoftmaxCrossEntropy``, the sigmoid of each logit for ``BCEWithLogits``; a
        ``TypeError`` for other losses (:func:`outputs_to_probabilities`)."""
        return outputs_to_probabilities(self.predict_outputs(X, batch_size), self.loss)

    def predict_outputs(self, X, batch_size: int = 256):
        """The model's raw outputs (logits for a classifier) for X in inference mode, (N, out) on
        the model's device (:func:`predict_outputs`); (0, out) for an empty X."""
        return predict_outputs(self.model, X, batch_size)

    # -- state ----------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """What resuming needs beside the model and optimizer: the epoch and step counts, the
        generator's state (shuffling, augmentation), every Dropout layer's seed and counter
        (which fix its future masks) and the History. JSON-able."""
        return {"epoch": self.epoch, "step_count": self.step_count, "rng": self.rng.bit_generator.state,
                "dropout": {path: [m.seed, m.counter] for path, m in self.model.named_modules()
                            if isinstance(m, Dropout)},
                "history": self.history.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict` (after loading the model's weights); ValueError, with
        nothing changed, if it does not fit this trainer's model or generator."""
        dropouts = {path: m for path, m in self.model.named_modules() if isinstance(m, Dropout)}
        saved = state["dropout"]
        if set(saved) != set(dropouts):
            raise ValueError(f"Trainer.load_state_dict: the state has Dropout layers {sorted(saved)}, the model "
                             f"{sorted(dropouts)}")
        kind = state["rng"].get("bit_generator")
        if kind != self.rng.bit_generator.state["bit_generator"]:
            raise ValueError(f"Trainer.load_state_dict: the state's generator is {kind}, this trainer's "
                             f"{self.rng.bit_generator.state['bit_generator']}")
        history = History()
        history.load_state_dict(state["history"])
        self.rng.bit_generator.state = state["rng"]
        for path, (seed, counter) in saved.items():
            dropouts[path].seed, dropouts[path].counter = int(seed), int(counter)
        self.epoch, self.step_count, self.history = int(state["epoch"]), int(state["step_count"]), history


@contextlib.contextmanager
def _ending(sync):
    """Unhooks a distributed trainer's gradient reducer when ``fit`` ends, however it ends."""
    try:
        yield
    finally:
        if sync is not None:
            sync.end()


def _insert_validation(logs: dict, results: dict) -> dict:
    """``logs`` with ``val_<name>`` entries placed after the training metrics."""
    keys = list(logs)
    cut = keys.index("lr")
    return {**{k: logs[k] for k in keys[:cut]}, **{f"val_{k}": v for k, v in results.items()},
            **{k: logs[k] for k in keys[cut:]}}


def _ratio(new, old):
    """‖new - old‖ / ‖new‖ as a 0-d array (``old`` is overwritten)."""
    xp = B.array_module(new)
    old -= new
    delta, flat = old.reshape(-1), new.reshape(-1)
    return xp.sqrt(xp.vdot(delta, delta)) / xp.maximum(xp.sqrt(xp.vdot(flat, flat)), 1e-30)


def _describe(logs: dict, rate: float) -> str:
    """``12,345 samples/s, loss=0.1234, accuracy=0.9812, ..., lr=0.001`` for the bar and verbose=2."""
    parts = [f"{rate:,.0f} samples/s"] + [f"{k}={v:.4g}" for k, v in logs.items() if k not in ("lr", "update_ratio")]
    if "lr" in logs:
        parts.append(f"lr={logs['lr']:.3g}")
    return ", ".join(parts)


class _Quiet:
    """Stands in for a disabled progress bar."""

    disable = True
    format_dict = {"rate": None}

    def update(self, n=1):
        pass

    def set_postfix_str(self, s="", refresh=True):
        pass


@contextlib.contextmanager
def _progress(verbose: int, epoch: int, epochs: int, steps: int):
    """A tqdm bar over the epoch's batches (verbose=1, stdout a terminal), else a quiet stand-in."""
    if verbose != 1:
        yield _Quiet()
        return
    from tqdm import tqdm

    bar = tqdm(total=steps, desc=f"Epoch {epoch + 1}/{epochs}", unit="batch", file=sys.stdout, disable=None,
               dynamic_ncols=True, leave=True)
    try:
        yield bar
    finally:
        bar.close()
