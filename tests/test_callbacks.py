"""Callbacks: early stopping restores the best weights, checkpoints on improvement, schedules,
the NaN guard stops at the right batch with finite weights, the update-ratio monitor."""

import math
import warnings

import numpy as np
import pytest

import fastnn as fnn
from fastnn import nn
from fastnn.callbacks import (Callback, EarlyStopping, LRScheduler, ModelCheckpoint, MomentumRamp, NaNGuard,
                              UpdateRatioMonitor)
from fastnn.optim.lr_scheduler import ExponentialLR
from fastnn.train import Trainer

from workflow_util import assert_same_state, digits, mlp, snapshot


class EpochSnapshots(Callback):
    """The test's own copy of the weights after every epoch."""

    def __init__(self):
        self.states = []

    def on_epoch_end(self, epoch, logs):
        self.states.append(snapshot(self.model))


def overfitting_run(callbacks, epochs=40):
    """A wide net on 100 training samples with a large lr: validation loss turns up early."""
    X, X_val, y, y_val = digits()
    model = mlp(hidden=128, dropout=0.0)
    trainer = Trainer(model, nn.SoftmaxCrossEntropy(), fnn.optim.Adam(model.parameters(), lr=1e-2),
                      callbacks=callbacks, seed=0)
    history = trainer.fit(X[:100], y[:100], epochs=epochs, batch_size=20, validation_data=(X_val, y_val), verbose=0)
    return model, trainer, history


def test_early_stopping_restores_the_best_weights():
    snapshots = EpochSnapshots()
    stopper = EarlyStopping(monitor="val_loss", patience=3)
    model, trainer, history = overfitting_run([snapshots, stopper])
    val = history.history["val_loss"]
    best = int(np.argmin(val))
    assert stopper.stopped_epoch is not None and stopper.stopped_epoch == best + 3
    assert len(val) == best + 4 < 40  # stopped early, three epochs without improvement
    assert stopper.best_epoch == best and stopper.best == val[best]
    assert_same_state(model, snapshots.states[best])
    assert not np.array_equal(snapshots.states[-1]["0.weight"], snapshots.states[best]["0.weight"])
    assert trainer.stop_reason.startswith("EarlyStopping: val_loss has not improved for 3 epochs")
    assert history.stop_reason == trainer.stop_reason


def test_early_stopping_without_restoring_keeps_the_last_weights_and_mode_auto_maximizes_accuracy():
    snapshots = EpochSnapshots()
    stopper = EarlyStopping(monitor="val_accuracy", patience=2, restore_best=False)
    model, _, history = overfitting_run([snapshots, stopper])
    acc = history.history["val_accuracy"]
    assert stopper.best == max(acc[:stopper.best_epoch + 1]) and stopper.best_epoch == int(np.argmax(acc))
    assert_same_state(model, snapshots.states[-1])
    with pytest.raises(ValueError, match="monitors 'val_loss'.*validation_data"):
        Trainer(model, nn.SoftmaxCrossEntropy(), fnn.optim.SGD(model.parameters(), lr=0.1),
                callbacks=[EarlyStopping()]).fit(*digits()[::2], epochs=1, verbose=0)
    with pytest.raises(ValueError, match="patience"):
        EarlyStopping(patience=0)
    with pytest.raises(ValueError, match="mode"):
        EarlyStopping(mode="up")


def test_model_checkpoint_saves_on_improvement_and_resumes(tmp_path):
    saved = []

    class Spy(Callback):
        def on_epoch_end(self, epoch, logs):
            if checkpoint.last_path is not None and (not saved or saved[-1][1] != checkpoint.last_path):
                saved.append((epoch, checkpoint.last_path, snapshot(self.model)))

    checkpoint = ModelCheckpoint(tmp_path / "best-{epoch:02d}-{val_loss:.3f}.npz", save_best_only=True)
    model, trainer, history = overfitting_run([checkpoint, Spy()], epochs=12)
    val = history.history["val_loss"]
    improved = [e for e in range(len(val)) if val[e] < min(val[:e], default=math.inf)]
    assert [e for e, _, _ in saved] == improved
    epoch, path, state = saved[-1]
    assert path.endswith(f"best-{epoch + 1:02d}-{val[epoch]:.3f}.npz")
    restored = mlp(hidden=128, dropout=0.0)
    opt = fnn.optim.Adam(restored.parameters())
    extras = fnn.load(path, model=restored, optimizer=opt)
    assert_same_state(restored, state)
    assert extras["epoch"] == epoch and extras["logs"]["val_loss"] == val[epoch]
    assert extras["trainer"]["epoch"] == epoch + 1 and len(extras["trainer"]["history"]["epoch"]) == epoch + 1

    every = ModelCheckpoint(tmp_path / "last.npz")
    overfitting_run([every], epochs=2)
    assert every.last_path == str(tmp_path / "last.npz") and fnn.load(every.last_path)["epoch"] == 1


def test_lr_scheduler_per_epoch_and_per_batch():
    X, _, y, _ = digits()
    model = mlp()
    opt = fnn.optim.SGD(model.parameters(), lr=0.1)
    per_batch = LRScheduler(ExponentialLR(opt, gamma=0.9), interval="batch")
    history = Trainer(model, nn.SoftmaxCrossEntropy(), opt, callbacks=[per_batch]).fit(
        X[:128], y[:128], epochs=3, batch_size=32, verbose=0)
    np.testing.assert_allclose(history.history["lr"], [0.1 * 0.9 ** (4 * e) for e in range(3)])
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.9 ** 12)
    with pytest.raises(ValueError, match="interval"):
        LRScheduler(ExponentialLR(opt, gamma=0.9), interval="step")
    with pytest.raises(TypeError, match="step"):
        LRScheduler(0.1)


def test_momentum_ramp_raises_the_momentum_and_records_it():
    X, _, y, _ = digits()
    for opt_class, read in ((fnn.optim.SGD, lambda g: g["momentum"]), (fnn.optim.Adam, lambda g: g["betas"][0])):
        model = mlp()
        opt = opt_class(model.parameters(), lr=0.01)
        history = Trainer(model, nn.SoftmaxCrossEntropy(), opt, callbacks=[MomentumRamp(0.5, 0.9, epochs=4)]).fit(
            X[:64], y[:64], epochs=6, batch_size=32, verbose=0)
        np.testing.assert_allclose(history.history["momentum"], [0.5, 0.6, 0.7, 0.8, 0.9, 0.9])
        assert read(opt.param_groups[0]) == pytest.approx(0.9)


def nan_at(epoch, batch, batches_per_epoch):
    """An augment that puts a NaN into the training batch (epoch, batch)."""
    calls = [0]

    def augment(xb, rng):
        if calls[0] == epoch * batches_per_epoch + batch:
            xb = xb.copy()
            xb[0, 0] = np.nan
        calls[0] += 1
        return xb
    return augment


class StopAfter(Callback):
    def __init__(self, epoch, batch):
        self.at = (epoch, batch)

    def on_epoch_begin(self, epoch, logs):
        self.epoch = epoch

    def on_batch_end(self, batch, logs):
        if (self.epoch, batch) == self.at:
            self.trainer.request_stop("reference stops here")


def guarded_run(callbacks, augment=None, epochs=4, optimizer=None):
    X, _, y, _ = digits()
    model = mlp(dropout=0.2)
    opt = optimizer(model.parameters()) if optimizer else fnn.optim.Adam(model.parameters(), lr=1e-3)
    trainer = Trainer(model, nn.SoftmaxCrossEntropy(), opt, callbacks=callbacks, seed=0, augment=augment)
    history = trainer.fit(X[:256], y[:256], epochs=epochs, batch_size=32, verbose=0)
    return model, trainer, history


def test_nan_guard_stops_at_the_bad_batch_and_keeps_the_last_good_weights():
    guard = NaNGuard()
    with pytest.warns(RuntimeWarning, match=r"epoch 2, batch 4 the loss is nan"):
        model, trainer, history = guarded_run([guard], augment=nan_at(1, 3, 8))
    assert (guard.epoch, guard.batch) == (1, 3)
    assert "the step was not applied" in trainer.stop_reason
    assert len(history) == 1 and trainer.epoch == 1  # the unfinished epoch is not recorded
    state = snapshot(model)
    assert all(np.isfinite(a).all() for a in state.values())
    # the same run without the NaN, stopped after the batch before it: identical weights and statistics
    reference, _, _ = guarded_run([StopAfter(1, 2)])
    assert_same_state(model, snapshot(reference))


def test_nan_guard_catches_an_update_that_overflows_the_weights():
    class HugeGradient(Callback):
        """A finite gradient so large that SGD's update overflows float32 at epoch 2, batch 3."""

        def on_epoch_begin(self, epoch, logs):
            self.epoch = epoch
            if epoch == 1:
                self.start = snapshot(self.model)

        def on_before_step(self, batch, logs):
            if (self.epoch, batch) == (1, 2):
                self.model.parameters()[0].grad[...] = 3e38
                self.trainer.optimizer.param_groups[0]["lr"] = 2.0

    guard, huge = NaNGuard(), HugeGradient()
    with np.errstate(over="ignore"), pytest.warns(RuntimeWarning, match=r"epoch 2, batch 3 the update made 0.weight "
                                                  "non-finite"):
        model, trainer, history = guarded_run([huge, guard], optimizer=lambda p: fnn.optim.SGD(p, lr=0.05))
    assert (guard.epoch, guard.batch) == (1, 2) and len(history) == 1
    assert_same_state(model, huge.start)


def test_nan_guard_names_a_non_finite_gradient():
    class BadGradient(Callback):
        def on_before_step(self, batch, logs):
            if batch == 5:
                self.model.parameters()[2].grad[1] = np.inf

    guard = NaNGuard()
    with pytest.warns(RuntimeWarning, match=r"epoch 1, batch 6 the gradient of 1.weight is not finite"):
        model, _, _ = guarded_run([BadGradient(), guard])
    reference, _, _ = guarded_run([StopAfter(0, 4)])
    assert_same_state(model, snapshot(reference))


class StepRatios(Callback):
    """||w_after - w_before|| / ||w_after|| of every weight, computed here independently."""

    def __init__(self):
        self.ratios = []

    def on_before_step(self, batch, logs):
        self.before = {n: p.data.copy() for n, p in self.model.named_parameters() if p.data.ndim == 2}

    def on_batch_end(self, batch, logs):
        if "update_ratios" in logs:
            mine = {n: np.linalg.norm(p.data - self.before[n]) / np.linalg.norm(p.data)
                    for n, p in self.model.named_parameters() if n in self.before}
            self.ratios.append((mine, {n: float(r) for n, r in logs["update_ratios"].items()}))


def test_update_ratio_monitor_measures_records_and_warns(tmp_path):
    check = StepRatios()
    monitor = UpdateRatioMonitor(every=3, low=1e-4, high=1e-2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # lr=1e-3 with Adam is healthy: no warning
        _, trainer, history = guarded_run([monitor, check], epochs=2)
    assert monitor.steps == list(range(0, 16, 3))
    assert set(monitor.ratios) == {"0.weight", "4.weight"} and all(len(v) == 6 for v in monitor.ratios.values())
    for mine, logged in check.ratios:
        for name in mine:
            assert logged[name] == pytest.approx(mine[name], rel=1e-5)
    first_epoch = [r for step, r in zip(monitor.steps, monitor.ratios["0.weight"]) if step < 8]
    assert history.update_ratios["0.weight"][0] == pytest.approx(np.mean(first_epoch))
    geometric = math.exp(np.mean([math.log(history.update_ratios[n][1]) for n in ("0.weight", "4.weight")]))
    assert history.history["update_ratio"][1] == pytest.approx(geometric)

    with pytest.warns(RuntimeWarning, match=r"\d.weight moves by .* high.*too high"):
        guarded_run([UpdateRatioMonitor(every=1)], epochs=1, optimizer=lambda p: fnn.optim.SGD(p, lr=50.0))
    with pytest.warns(RuntimeWarning, match=r"\d.weight moves by .* low.*too low"):
        guarded_run([UpdateRatioMonitor(every=1)], epochs=1, optimizer=lambda p: fnn.optim.SGD(p, lr=1e-7))

    pytest.importorskip("matplotlib")
    assert fnn.plot.update_ratios(monitor.ratios, tmp_path / "ratios.png").exists()
    assert fnn.plot.update_ratios(history, tmp_path / "epochs.png").exists()
    assert fnn.plot.history(history, tmp_path / "history.png").exists()


def test_without_a_monitor_the_trainer_measures_the_last_batch_of_each_epoch():
    check = StepRatios()
    _, trainer, history = guarded_run([check], epochs=3)
    assert len(check.ratios) == 3 and [s for s, _ in trainer.measured_update_ratios] == [23]
    for epoch, (mine, _) in enumerate(check.ratios):
        assert history.update_ratios["4.weight"][epoch] == pytest.approx(mine["4.weight"], rel=1e-5)


def test_callback_misuse_is_refused_before_any_training(tmp_path, monkeypatch):
    """Errors that would otherwise surface after an epoch of training, or as a bare Python
    error: a ModelCheckpoint folder that cannot be made (under a file), momenta outside [0, 1)
    in a MomentumRamp, one callback given instead of a list. A missing folder is made, as
    Keras makes it, also one named by the epoch."""
    X, _, y, _ = digits()
    (tmp_path / "a_file").write_text("")
    model = mlp()
    before = snapshot(model)
    trainer = Trainer(model, nn.SoftmaxCrossEntropy(), fnn.optim.Adam(model.parameters()),
                      callbacks=[ModelCheckpoint(str(tmp_path / "a_file" / "ck.npz"))])
    with pytest.raises(ValueError, match=r"ModelCheckpoint: the folder '.*a_file': is a file, not a folder"):
        trainer.fit(X[:64], y[:64], epochs=2, verbose=0)
    assert_same_state(model, before)  # refused before the first step
    monkeypatch.chdir(tmp_path)
    for path, written in ((tmp_path / "new" / "deeper" / "ck.npz", tmp_path / "new" / "deeper" / "ck.npz"),
                          (tmp_path / "e{epoch}" / "ck.npz", tmp_path / "e1" / "ck.npz"),
                          ("bare.npz", tmp_path / "bare.npz")):  # (the working folder)
        model = mlp()
        Trainer(model, nn.SoftmaxCrossEntropy(), fnn.optim.Adam(model.parameters()),
                callbacks=[ModelCheckpoint(str(path))]).fit(X[:64], y[:64], epochs=1, verbose=0, validation_split=0.25)
        assert written.exists()
    for options, message in ((dict(start=1.5), "start"), (dict(end=1.0), "end"), (dict(epochs=0), "epochs"),
                             (dict(start=math.nan), "start"), (dict(mode="cosine"), "mode")):
        with pytest.raises(ValueError, match=message):
            MomentumRamp(**options)
    with pytest.raises(TypeError, match=r"callbacks must be a list .* wrap it: callbacks=\[EarlyStopping\(...\)\]"):
        Trainer(model, nn.SoftmaxCrossEntropy(), fnn.optim.Adam(model.parameters()), callbacks=EarlyStopping())
