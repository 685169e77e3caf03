"""Trainer: a real accuracy on the digits, the History's bookkeeping (weighted means, validation,
lr, update ratios), the L1/L2 penalty (value and gradient), evaluate/predict, reproducibility,
devices and bad input."""

import math

import numpy as np
import pytest

import fastnn as fnn
from fastnn import metrics, nn
from fastnn.callbacks import Callback, LRScheduler
from fastnn.metrics import probabilities
from fastnn.optim.lr_scheduler import StepLR
from fastnn.penalties import add_penalty_grad, penalty, weight_parameters
from fastnn.train import History, Trainer

from workflow_util import assert_same_state, digits, mlp, snapshot


def test_mlp_reaches_95_percent_on_the_digits_test_set():
    """64-128-10 with BatchNorm, ReLU, Dropout; Adam, 25 epochs: >= 0.95 on held-out digits
    (about 0.97 in practice; a second or so on one CPU core)."""
    X_train, X_test, y_train, y_test = digits()
    model = nn.Sequential(nn.Dense(64, 128, seed=1), nn.BatchNorm(128), nn.ReLU(), nn.Dropout(0.2, seed=2),
                          nn.Dense(128, 10, seed=3))
    trainer = Trainer(model, nn.SoftmaxCrossEntropy(), fnn.optim.Adam(model.parameters(), lr=1e-3), seed=0)
    history = trainer.fit(X_train, y_train, epochs=25, batch_size=32, validation_split=0.1, verbose=0)
    result = trainer.evaluate(X_test, y_test)
    assert result["accuracy"] >= 0.95
    assert result["accuracy"] == metrics.accuracy(y_test, trainer.predict(X_test))
    assert history.history["loss"][-1] < history.history["loss"][0] / 5
    assert history.history["val_accuracy"][-1] >= 0.9


class BatchRecorder(Callback):
    """Keeps every batch's loss (a float), size, and the training predictions' correct count."""

    def __init__(self):
        self.losses, self.sizes = [], []

    def on_before_step(self, batch, logs):
        self.losses.append(float(logs["loss"]))
        self.sizes.append(logs["size"])


def test_epoch_loss_is_the_batch_size_weighted_mean():
    X, _, y, _ = digits()
    X, y = X[:70], y[:70]  # batches of 32, 32, 6: an unweighted mean would differ
    recorder = BatchRecorder()
    model = mlp(dropout=0.0)
    trainer = Trainer(model, nn.SoftmaxCrossEntropy(), fnn.optim.SGD(model.parameters(), lr=0.1),
                      callbacks=[recorder], seed=0, l2=0.01)
    history = trainer.fit(X, y, epochs=2, batch_size=32, verbose=0)
    assert recorder.sizes == [32, 32, 6] * 2
    for epoch in range(2):
        losses = np.array(recorder.losses[3 * epoch:3 * epoch + 3])
        expected = float((losses * np.array([32, 32, 6])).sum() / 70)
        assert history.history["loss"][epoch] == pytest.approx(expected, rel=1e-6)
        assert expected != pytest.approx(losses.mean(), rel=1e-6)


def test_history_records_every_series_per_epoch():
    X, _, y, _ = digits()
    model = mlp()
    opt = fnn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    trainer = Trainer(model, nn.SoftmaxCrossEntropy(), opt, metrics=["accuracy", "top_3_accuracy"], l1=1e-4,
                      callbacks=[LRScheduler(StepLR(opt, step_size=2, gamma=0.1))], seed=0)
    history = trainer.fit(X[:400], y[:400], epochs=5, batch_size=64, validation_data=(X[400:500], y[400:500]),
                          verbose=0)
    assert isinstance(history, History) and history is trainer.history
    assert list(history.history) == ["loss", "accuracy", "top_3_accuracy", "val_loss", "val_accuracy",
                                     "val_top_3_accuracy", "lr", "update_ratio", "penalty"]
    assert all(len(v) == 5 for v in history.history.values()) and history.epoch == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(history.history["lr"], [0.1, 0.1, 0.01, 0.01, 0.001])
    assert all(1e-6 < r < 1 for r in history.history["update_ratio"])
    assert set(history.update_ratios) == {"0.weight", "4.weight"} == {n for n, _ in weight_parameters(model)}
    assert all(a >= b for a, b in zip(history.history["top_3_accuracy"], history.history["accuracy"]))
    assert history.params == {"epochs": 5, "batch_size": 64, "steps": 7, "samples": 400, "validation_samples": 100,
                              "metrics": ["accuracy", "top_3_accuracy"], "l1": 1e-4, "l2": 0.0}
    # validation is evaluate() with the epoch's final weights
    assert history.history["val_loss"][-1] == pytest.approx(trainer.evaluate(X[400:500], y[400:500])["loss"])

    more = trainer.fit(X[:400], y[:400], epochs=2, batch_size=64, verbose=0)  # continues, no validation now
    assert more.epoch == [0, 1, 2, 3, 4, 5, 6] and trainer.epoch == 7
    assert math.isnan(more.history["val_loss"][5]) and len(more.history["loss"]) == 7


def test_validation_split_holds_out_the_last_samples():
    X, _, y, _ = digits()
    X, y = X[:200], y[:200]
    model = mlp()
    trainer = Trainer(model, nn.SoftmaxCrossEntropy(), fnn.optim.Adam(model.parameters()), seed=0)
    history = trainer.fit(X, y, epochs=1, batch_size=32, validation_split=0.25, verbose=0)
    assert history.params["samples"] == 150 and history.params["validation_samples"] == 50
    assert history.history["val_loss"][0] == pytest.approx(trainer.evaluate(X[150:], y[150:])["loss"])
    with pytest.raises(ValueError, match="not both"):
        trainer.fit(X, y, validation_split=0.2, validation_data=(X, y), verbose=0)


def test_evaluate_and_predict_agree_with_the_model():
    X, _, y, _ = digits()
    model = mlp()
    trainer = Trainer(model, nn.SoftmaxCrossEntropy(), fnn.optim.Adam(model.parameters()), seed=0)
    trainer.fit(X[:300], y[:300], epochs=2, verbose=0)
    logits = trainer.predict_outputs(X[:300], batch_size=64)
    direct = model.forward(X[:300], training=False)
    np.testing.assert_allclose(logits, direct, rtol=1e-6, atol=1e-6)
    labels = trainer.predict(X[:300], batch_size=64)
    assert labels.dtype == np.int64 and labels.shape == (300,)
    np.testing.assert_array_equal(labels, direct.argmax(axis=1))  # labels, as scikit-learn's predict
    result = trainer.evaluate(X[:300], y[:300], batch_size=64)
    assert result["loss"] == pytest.approx(nn.SoftmaxCrossEntropy().forward(direct, y[:300]), rel=1e-5)
    assert result["accuracy"] == metrics.accuracy(y[:300], direct)
    proba = trainer.predict_proba(X[:300])
    np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=1e-5)
    e = np.exp(direct.astype(np.float64) - direct.max(axis=1, keepdims=True))
    np.testing.assert_allclose(proba, e / e.sum(axis=1, keepdims=True), rtol=1e-5, atol=1e-7)


def test_probabilities_softmax_and_sigmoid():
    logits = np.array([[1000.0, 0.0], [0.0, 0.0]])
    np.testing.assert_allclose(probabilities(logits), [[1, 0], [0.5, 0.5]])
    np.testing.assert_allclose(probabilities(np.array([[0.0], [2.0]])), [[0.5], [1 / (1 + math.exp(-2))]])
    with pytest.raises(ValueError):
        probabilities(np.zeros((2, 2, 2)))


def penalised_loss(model, loss, x, y, weights, l1, l2):
    return loss.forward(model.forward(x, training=True), y) + float(penalty(weights, l1, l2))


def test_l1_l2_gradients_match_finite_differences_of_the_penalised_loss():
    rng = np.random.default_rng(0)
    model = nn.Sequential(nn.Dense(5, 6, seed=0, dtype=np.float64), nn.BatchNorm(6, dtype=np.float64), nn.Tanh(),
                          nn.Dense(6, 3, seed=1, dtype=np.float64))
    x, y = rng.standard_normal((8, 5)), rng.integers(0, 3, 8)
    loss = nn.SoftmaxCrossEntropy()
    weights = [p for _, p in weight_parameters(model)]
    assert [p.name for p in weights] == ["0.weight", "3.weight"]
    l1, l2 = 0.03, 0.2
    model.zero_grad()
    loss.forward(model.forward(x, training=True), y)
    model.backward(loss.backward())
    add_penalty_grad(weights, l1, l2)
    eps = 1e-6
    for _, p in model.named_parameters():
        flat, grad = p.data.reshape(-1), p.grad.reshape(-1).copy()
        for i in range(flat.size):
            old = flat[i]
            flat[i] = old + eps
            plus = penalised_loss(model, loss, x, y, weights, l1, l2)
            flat[i] = old - eps
            minus = penalised_loss(model, loss, x, y, weights, l1, l2)
            flat[i] = old
            assert grad[i] == pytest.approx((plus - minus) / (2 * eps), rel=1e-6, abs=1e-9), (p.name, i)
    w = [p.data for p in weights]
    expected = sum(l1 * np.abs(a).sum() + l2 / 2 * (a * a).sum() for a in w)
    assert float(penalty(weights, l1, l2)) == pytest.approx(expected, rel=1e-12)


def test_trainer_applies_the_penalty_to_weights_only_and_reports_it():
    rng = np.random.default_rng(1)
    X, y = rng.standard_normal((16, 4)), rng.integers(0, 3, 16)
    model = nn.Sequential(nn.Dense(4, 5, seed=0, dtype=np.float64), nn.BatchNorm(5, dtype=np.float64), nn.ReLU(),
                          nn.Dense(5, 3, seed=1, dtype=np.float64))
    before = snapshot(model)
    lr, l1, l2 = 0.1, 0.01, 0.5
    trainer = Trainer(model, nn.SoftmaxCrossEntropy(), fnn.optim.SGD(model.parameters(), lr=lr), l1=l1, l2=l2)
    history = trainer.fit(X, y, epochs=1, batch_size=16, shuffle=False, verbose=0)

    reference = nn.Sequential(nn.Dense(4, 5, seed=0, dtype=np.float64), nn.BatchNorm(5, dtype=np.float64),
                              nn.ReLU(), nn.Dense(5, 3, seed=1, dtype=np.float64))
    loss = nn.SoftmaxCrossEntropy()
    data_loss = loss.forward(reference.forward(X, training=True), y)
    reference.backward(loss.backward())
    penalty_value = sum(l1 * np.abs(before[n]).sum() + l2 / 2 * (before[n] ** 2).sum() for n in ("0.weight", "3.weight"))
    assert history.history["loss"][0] == pytest.approx(data_loss + penalty_value, rel=1e-12)
    assert history.history["penalty"][0] == pytest.approx(penalty_value, rel=1e-12)
    after = snapshot(model)
    for name, p in reference.named_parameters():
        extra = l1 * np.sign(before[name]) + l2 * before[name] if p.data.ndim == 2 else 0.0
        np.testing.assert_allclose(after[name], before[name] - lr * (p.grad + extra), rtol=1e-12, atol=1e-15,
                                   err_msg=name)


def test_same_seed_same_run_and_augment_uses_the_trainers_generator():
    X, _, y, _ = digits()
    calls = []

    def noisy(xb, rng):
        calls.append(xb.shape[0])
        return xb + rng.normal(0, 0.1, xb.shape).astype(xb.dtype)

    runs = []
    for _ in range(2):
        model = mlp(seed=3, dropout=0.3)
        trainer = Trainer(model, nn.SoftmaxCrossEntropy(), fnn.optim.Adam(model.parameters()), seed=11, augment=noisy)
        history = trainer.fit(X[:256], y[:256], epochs=2, batch_size=64, verbose=0)
        runs.append((history.history, snapshot(model)))
    assert calls == [64] * 16
    assert runs[0][0] == runs[1][0]
    model = mlp(seed=3, dropout=0.3)
    model.load_state_dict(runs[1][1])
    assert_same_state(model, runs[0][1])
    other = mlp(seed=3, dropout=0.3)
    Trainer(other, nn.SoftmaxCrossEntropy(), fnn.optim.Adam(other.parameters()), seed=12,
            augment=noisy).fit(X[:256], y[:256], epochs=2, batch_size=64, verbose=0)
    assert not np.array_equal(snapshot(other)["0.weight"], runs[0][1]["0.weight"])

    pipelines = []
    for _ in range(2):
        model = mlp(seed=3)
        augment = fnn.augment.Augment(fnn.augment.RandomShift(1), fnn.augment.GaussianNoise(0.05), image_shape=(8, 8))
        trainer = Trainer(model, nn.SoftmaxCrossEntropy(), fnn.optim.Adam(model.parameters()), seed=5, augment=augment)
        pipelines.append(trainer.fit(X[:256], y[:256], epochs=2, batch_size=64, verbose=0).history)
    assert pipelines[0] == pipelines[1] and pipelines[0]["loss"] != runs[0][0]["loss"]


def test_regression_metrics_and_user_functions():
    rng = np.random.default_rng(2)
    X = rng.standard_normal((128, 3)).astype(np.float32)
    y = (X @ np.array([[1.0], [-2.0], [0.5]], np.float32) + 0.3).astype(np.float32)
    model = nn.Sequential(nn.Dense(3, 16, seed=0), nn.Tanh(), nn.Dense(16, 1, seed=1))

    def max_error(y_true, y_pred):
        return float(np.abs(y_true - y_pred).max())

    trainer = Trainer(model, nn.MSE(), fnn.optim.Adam(model.parameters(), lr=1e-2),
                      metrics=["mse", "mae", max_error, ("worst", max_error)], seed=0)
    history = trainer.fit(X, y, epochs=30, batch_size=32, verbose=0)
    assert history.history["mse"][-1] == pytest.approx(history.history["loss"][-1], rel=1e-5)
    result = trainer.evaluate(X, y)
    pred = trainer.predict(X)
    assert result["mse"] == pytest.approx(metrics.mse(y, pred), rel=1e-6)
    assert result["mae"] == pytest.approx(metrics.mae(y, pred), rel=1e-6)
    assert result["max_error"] == result["worst"]
    assert history.history["loss"][-1] < history.history["loss"][0] / 10
    with pytest.raises(ValueError, match="need class labels.*metrics=\\['mse'\\]"):
        Trainer(model, nn.MSE(), fnn.optim.Adam(model.parameters())).fit(X, y, verbose=0)


def test_binary_accuracy_thresholds_logits_at_zero():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((200, 2)).astype(np.float32)
    y = (X[:, :1] + X[:, 1:] > 0).astype(np.float32)
    model = nn.Sequential(nn.Dense(2, 1, seed=0))
    trainer = Trainer(model, nn.BCEWithLogits(), fnn.optim.Adam(model.parameters(), lr=0.05), seed=0)
    trainer.fit(X, y, epochs=20, batch_size=50, verbose=0)
    result = trainer.evaluate(X, y)
    assert result["accuracy"] == metrics.accuracy(y, trainer.predict(X), threshold=0.0)
    assert result["accuracy"] > 0.95


def test_verbose_modes(capsys):
    X, _, y, _ = digits()
    model = mlp()
    trainer = Trainer(model, nn.SoftmaxCrossEntropy(), fnn.optim.Adam(model.parameters()), seed=0)
    trainer.fit(X[:128], y[:128], epochs=2, batch_size=32, verbose=1)  # stdout is captured: no terminal, no bar
    assert capsys.readouterr().out == ""
    trainer.fit(X[:128], y[:128], epochs=3, batch_size=32, verbose=2)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[0].startswith("Epoch 3/5 - ") and "samples/s" in lines[0]
    assert "loss=" in lines[0] and "accuracy=" in lines[0]
    trainer.fit(X[:128], y[:128], epochs=1, verbose=0)
    assert capsys.readouterr().out == ""


def test_bad_arguments_are_refused():
    X, _, y, _ = digits()
    model = mlp()
    opt = fnn.optim.Adam(model.parameters())
    loss = nn.SoftmaxCrossEntropy()
    with pytest.raises(ValueError, match="none of the model's parameters"):
        Trainer(model, loss, fnn.optim.Adam(mlp(seed=1).parameters()))
    with pytest.raises(TypeError, match="loss must be"):
        Trainer(model, lambda a, b: 0.0, opt)
    with pytest.raises(ValueError, match="unknown metric"):
        Trainer(model, loss, opt, metrics=["precision"])
    with pytest.raises(ValueError, match="l1 must be >= 0"):
        Trainer(model, loss, opt, l1=-1)
    with pytest.raises(TypeError, match=r"distributed must be True or False .* got 'nccl'"):
        Trainer(model, loss, opt, distributed="nccl")
    trainer = Trainer(model, loss, opt)
    with pytest.raises(ValueError, match="verbose"):
        trainer.fit(X, y, verbose=3)
    with pytest.raises(ValueError, match="batch_size"):
        trainer.fit(X, y, batch_size=0)
    with pytest.raises(ValueError, match="same number of samples"):
        trainer.fit(X, y[:-1], verbose=0)
    with pytest.raises(ValueError, match="out of range"):
        trainer.fit(X, y + 5, verbose=0)
    for split in (1.0, 0.0, math.nan, -0.5):  # named as the argument given, not as train_test_split's test_size
        with pytest.raises((ValueError, TypeError), match="validation_split"):
            trainer.fit(X, y, validation_split=split, verbose=0)
    with pytest.raises(ValueError, match=r"validation_split=0\.9 of 2 samples leaves no training data"):
        trainer.fit(X[:2], y[:2], validation_split=0.9, verbose=0)
    assert trainer.epoch == 0 and len(trainer.history) == 0


def test_integer_and_float64_inputs_are_converted_to_the_models_dtype():
    X, _, y, _ = digits()
    model = mlp()
    trainer = Trainer(model, nn.SoftmaxCrossEntropy(), fnn.optim.Adam(model.parameters()), seed=0)
    trainer.fit(X[:64].astype(np.float64), y[:64].astype(np.int32), epochs=1, verbose=0)
    assert trainer.predict_outputs((X[:4] > 0).astype(np.uint8)).dtype == np.float32


@pytest.mark.gpu
def test_numpy_data_trains_a_gpu_model_batch_by_batch():
    import cupy

    X_train, X_test, y_train, y_test = digits()
    model = mlp(hidden=64).to("cuda")
    trainer = Trainer(model, nn.SoftmaxCrossEntropy(), fnn.optim.Adam(model.parameters()), seed=0)
    history = trainer.fit(X_train, y_train, epochs=10, batch_size=64, validation_data=(X_test, y_test), verbose=0)
    assert history.history["val_accuracy"][-1] > 0.9
    assert isinstance(trainer.predict(X_test), cupy.ndarray) and trainer.predict(X_test).shape == (len(X_test),)
    cpu_model = mlp()
    cpu_trainer = Trainer(cpu_model, nn.SoftmaxCrossEntropy(), fnn.optim.Adam(cpu_model.parameters()))
    with pytest.raises(ValueError, match="never copies"):
        cpu_trainer.fit(cupy.asarray(X_train), y_train, verbose=0)


def test_class_labels_given_as_whole_floats_or_booleans_train_as_integers():
    """Keras accepts sparse labels as floats: whole-number float (and boolean) labels train and
    evaluate exactly as their integer twins, with a label-taking loss."""
    X_train, _, y_train, _ = digits()
    X, y = X_train[:256], y_train[:256]
    binary = (y % 2).astype(np.int64)
    for loss, given, labels in ((nn.SoftmaxCrossEntropy(), y.astype(np.float64), y),
                                (nn.Hinge(), y.astype(np.float32), y),
                                (nn.SoftmaxCrossEntropy(), binary.astype(bool), binary)):
        classes = int(labels.max()) + 1
        runs = []
        for targets in (labels, given):
            model = mlp(seed=3, classes=classes)
            trainer = Trainer(model, loss, fnn.optim.Adam(model.parameters(), lr=1e-2), metrics=["accuracy"], seed=0)
            trainer.fit(X, targets, epochs=2, batch_size=64, verbose=0)
            runs.append((snapshot(model), trainer.evaluate(X, targets)))
        assert_same_state(model, runs[0][0])
        assert runs[1][1] == runs[0][1]


@pytest.mark.parametrize("y,message", [
    (lambda y: np.eye(10)[y], r"shape \(N,\); y is float64 of shape \(64, 10\) \(one-hot .* y\.argmax\(axis=1\)\)"),
    (lambda y: np.where(np.arange(64) == 5, 2.5, y), r"y is float64 of shape \(64,\) and holds 2\.5 at index 5 "
                                                     r"\(for regression targets, use a regression loss"),
    (lambda y: np.where(np.arange(64) == 7, np.nan, y), r"holds nan at index 7"),
])
def test_float_labels_that_are_not_class_labels_are_refused_saying_what_they_hold(y, message):
    X_train, _, y_train, _ = digits()
    model = mlp()
    trainer = Trainer(model, nn.SoftmaxCrossEntropy(), fnn.optim.Adam(model.parameters()))
    bad = y(y_train[:64])
    for call in (lambda: trainer.fit(X_train[:64], bad, verbose=0), lambda: trainer.evaluate(X_train[:64], bad),
                 lambda: fnn.sanity.initial_loss(model, nn.SoftmaxCrossEntropy(), X_train[:64], bad)):
        with pytest.raises(TypeError, match=message):
            call()
