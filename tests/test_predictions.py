"""What Trainer.predict / predict_proba / predict_outputs return (scikit-learn's meaning), the
Trainer's edges (empty data, one-class softmax, bad labels on either device) and what a
non-finite training loss does."""

from __future__ import annotations

import numpy as np
import pytest

import fastnn as fnn
from fastnn import nn
from fastnn.train import LossWatch, NonFiniteLossError, Trainer

from workflow_util import digits, mlp


def trained(loss, outputs, y, seed=0):
    X = np.random.default_rng(seed).standard_normal((len(y), 4)).astype(np.float32)
    model = nn.Sequential(nn.Dense(4, 8, seed=seed), nn.Tanh(), nn.Dense(8, outputs, seed=seed + 1))
    trainer = Trainer(model, loss, fnn.optim.Adam(model.parameters(), lr=1e-2), metrics=[], seed=seed)
    trainer.fit(X, y, epochs=2, batch_size=16, verbose=0)
    return trainer, X


def sigmoid(z):
    return 1 / (1 + np.exp(-z.astype(np.float64)))


def test_predict_gives_labels_for_classifiers_and_values_for_regressors():
    rng = np.random.default_rng(0)
    trainer, X = trained(nn.SoftmaxCrossEntropy(), 3, rng.integers(0, 3, 40))
    logits = trainer.predict_outputs(X)
    assert logits.shape == (40, 3)
    np.testing.assert_array_equal(trainer.predict(X), logits.argmax(axis=1))
    assert trainer.predict(X).dtype == np.int64
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(trainer.predict_proba(X), e / e.sum(axis=1, keepdims=True), rtol=1e-5)
    np.testing.assert_array_equal(fnn.train.predict_outputs(trainer.model, X), logits)  # the function stays

    trainer, X = trained(nn.BCEWithLogits(), 2, rng.integers(0, 2, (40, 2)).astype(np.float32))
    logits = trainer.predict_outputs(X)
    np.testing.assert_array_equal(trainer.predict(X), (sigmoid(logits) > 0.5).astype(np.int64))  # per output
    np.testing.assert_allclose(trainer.predict_proba(X), sigmoid(logits), rtol=1e-5)

    trainer, X = trained(nn.Hinge(), 3, rng.integers(0, 3, 40))
    np.testing.assert_array_equal(trainer.predict(X), trainer.predict_outputs(X).argmax(axis=1))
    with pytest.raises(TypeError, match="Hinge is a margin loss: its scores are not probabilities; use predict"):
        trainer.predict_proba(X)

    for loss in (nn.MSE(), nn.L1()):
        trainer, X = trained(loss, 2, rng.standard_normal((40, 2)).astype(np.float32))
        np.testing.assert_array_equal(trainer.predict(X), trainer.model(X))
        with pytest.raises(TypeError, match=f"{type(loss).__name__} is a regression loss"):
            trainer.predict_proba(X)


def test_predicting_on_no_rows_gives_empty_arrays():
    rng = np.random.default_rng(1)
    trainer, X = trained(nn.SoftmaxCrossEntropy(), 3, rng.integers(0, 3, 40))
    assert trainer.predict_outputs(X[:0]).shape == (0, 3)
    assert trainer.predict(X[:0]).shape == (0,) and trainer.predict(X[:0]).dtype == np.int64
    assert trainer.predict_proba(X[:0]).shape == (0, 3)
    model = mlp(dropout=0.3)  # BatchNorm and Dropout on an empty batch too
    assert fnn.train.predict_outputs(model, np.zeros((0, 64), np.float32)).shape == (0, 10)
    assert nn.Sequential(nn.Dense(4, 3), nn.PReLU())(np.zeros((0, 4), np.float32)).shape == (0, 3)
    regressor, X = trained(nn.MSE(), 2, rng.standard_normal((40, 2)).astype(np.float32))
    assert regressor.predict(X[:0]).shape == (0, 2)


def test_evaluate_on_an_empty_set_is_a_clear_error():
    rng = np.random.default_rng(2)
    trainer, X = trained(nn.SoftmaxCrossEntropy(), 3, rng.integers(0, 3, 40))
    with pytest.raises(ValueError, match=r"evaluate: X and y are empty \(0 samples\)"):
        trainer.evaluate(X[:0], np.zeros(0, np.int64))


def test_a_one_output_softmax_model_is_refused_not_thresholded():
    X, _, y, _ = digits()
    model = mlp(classes=1)
    trainer = Trainer(model, nn.SoftmaxCrossEntropy(), fnn.optim.Adam(model.parameters()))
    with pytest.raises(ValueError, match="1 output per sample.*two or more classes"):
        trainer.fit(X, (y > 4).astype(np.int64), verbose=0)
    with pytest.raises(ValueError, match="two or more classes"):
        trainer.evaluate(X, (y > 4).astype(np.int64))
    # A one-logit model with BCEWithLogits thresholds its logit at 0 (probability 0.5).
    binary = mlp(classes=1)
    trainer = Trainer(binary, nn.BCEWithLogits(), fnn.optim.Adam(binary.parameters()))
    target = (y > 4).astype(np.float32)[:, None]
    trainer.fit(X, target, epochs=2, verbose=0)
    expected = ((binary(X) > 0) == (target > 0.5)).mean()
    assert trainer.evaluate(X, target)["accuracy"] == pytest.approx(expected)


def test_a_bad_label_names_its_row_in_y_before_any_step():
    X, X_test, y, y_test = digits()
    model = mlp()
    before = [p.data.copy() for p in model.parameters()]
    trainer = Trainer(model, nn.SoftmaxCrossEntropy(), fnn.optim.Adam(model.parameters()), seed=0)
    bad = y.copy()
    bad[517] = 12
    with pytest.raises(ValueError, match=r"fit: y: label 12 at index 517 is out of range: .*C = 10 classes"):
        trainer.fit(X, bad, batch_size=64, verbose=0)
    assert all(np.array_equal(p.data, b) for p, b in zip(model.parameters(), before))
    bad_test = y_test.copy()
    bad_test[3] = -1
    with pytest.raises(ValueError, match=r"fit: validation y: label -1 at index 3"):
        trainer.fit(X, y, validation_data=(X_test, bad_test), verbose=0)
    with pytest.raises(ValueError, match=r"evaluate: y: label -1 at index 3"):
        trainer.evaluate(X_test, bad_test)


@pytest.mark.gpu
def test_a_bad_label_on_the_gpu_raises_as_on_the_cpu():
    import cupy

    X, _, y, _ = digits()
    bad = y.copy()
    bad[517] = 12
    model = mlp().to("cuda")
    trainer = Trainer(model, nn.SoftmaxCrossEntropy(), fnn.optim.Adam(model.parameters()), seed=0)
    with pytest.raises(ValueError, match=r"fit: y: label 12 at index 517 is out of range"):
        trainer.fit(X, bad, batch_size=64, verbose=0)
    with pytest.raises(ValueError, match=r"fit: y: label 12 at index 517 is out of range"):
        trainer.fit(cupy.asarray(X), cupy.asarray(bad), batch_size=64, verbose=0)
    # The loss layer reads its value with functional.loss_item, which raises what the kernel recorded.
    logits = cupy.asarray(np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32))
    labels = cupy.asarray(np.array([0, 1, 2, 3, 9, 1, 2, 0]))
    for loss in (nn.SoftmaxCrossEntropy(), nn.Hinge()):
        with pytest.raises(ValueError, match=r"label 9 at index 4 is out of range"):
            loss.forward(logits, labels)


def nan_rows(X, rows):
    X = X.copy()
    X[rows, 0] = np.nan
    return X


def test_a_nonfinite_loss_stops_fit_naming_the_epoch_and_batch():
    X, _, y, _ = digits()
    X, y = X[:256], y[:256]
    model = mlp()
    trainer = Trainer(model, nn.SoftmaxCrossEntropy(), fnn.optim.SGD(model.parameters(), lr=0.01), seed=0)
    trainer.fit(X, y, epochs=1, batch_size=64, shuffle=False, verbose=0)
    before = [p.data.copy() for p in model.parameters()]
    with pytest.raises(NonFiniteLossError, match=r"training loss is nan at epoch 2, batch 3\. Lower the learning rate") as info:
        trainer.fit(nan_rows(X, [150]), y, epochs=3, batch_size=64, shuffle=False, verbose=0)
    assert isinstance(info.value, FloatingPointError) and (info.value.epoch, info.value.batch) == (1, 2)
    assert len(trainer.history) == 1 and trainer.epoch == 1  # the finished epochs are kept
    assert trainer.stop_reason == trainer.history.stop_reason == str(info.value)
    # On the CPU the bad batch's step is not applied: the weights are those after batch 2.
    twin = mlp()
    replay = Trainer(twin, nn.SoftmaxCrossEntropy(), fnn.optim.SGD(twin.parameters(), lr=0.01), seed=0)
    replay.fit(X, y, epochs=1, batch_size=64, shuffle=False, verbose=0)
    assert all(np.array_equal(p.data, b) for p, b in zip(twin.parameters(), before))
    replay.fit(X[:128], y[:128], epochs=1, batch_size=64, shuffle=False, verbose=0)
    for p, q in zip(model.parameters(), twin.parameters()):
        np.testing.assert_array_equal(p.data, q.data)


def test_with_a_penalty_the_cpu_still_stops_before_the_bad_step():
    X, _, y, _ = digits()
    model = mlp()
    trainer = Trainer(model, nn.SoftmaxCrossEntropy(), fnn.optim.SGD(model.parameters(), lr=0.01), l2=1e-3)
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, batch 2\. Lower") as info:
        trainer.fit(nan_rows(X[:256], [100]), y[:256], batch_size=64, shuffle=False, verbose=0)
    assert "found when the epoch's loss was read" not in str(info.value)
    assert all(np.isfinite(p.data).all() for p in model.parameters())


def test_nonfinite_policies_warn_once_or_ignore():
    X, _, y, _ = digits()
    X, y = nan_rows(X[:256], [10, 200]), y[:256]
    model = mlp()
    trainer = Trainer(model, nn.SoftmaxCrossEntropy(), fnn.optim.SGD(model.parameters()), on_nonfinite="warn")
    with pytest.warns(fnn.FastnnRuntimeWarning, match="epoch 1, batch 1") as caught:
        trainer.fit(X, y, epochs=2, batch_size=64, shuffle=False, verbose=0)
    assert len([w for w in caught if issubclass(w.category, fnn.FastnnRuntimeWarning)]) == 1
    assert trainer.epoch == 2  # went on
    quiet_model = mlp()
    quiet = Trainer(quiet_model, nn.SoftmaxCrossEntropy(), fnn.optim.SGD(quiet_model.parameters()),
                    on_nonfinite="ignore")
    quiet.fit(X, y, epochs=1, batch_size=64, shuffle=False, verbose=0)
    assert np.isnan(quiet.history.history["loss"][0])
    with pytest.raises(ValueError, match="on_nonfinite must be one of"):
        Trainer(model, nn.SoftmaxCrossEntropy(), fnn.optim.SGD(model.parameters()), on_nonfinite="stop")


def test_the_deferred_search_finds_the_first_bad_batch_of_an_epoch():
    """The GPU's path, whose logic is on the host: device losses are kept, not read, and looked
    at only when the epoch's summed loss is read and is not finite (stand-in: NumPy 0-d arrays
    passed as deferred)."""
    watch = LossWatch("raise")
    watch.start_epoch(4)
    for batch, value in enumerate([0.5, 0.4, np.inf, np.nan, 0.3]):
        watch.add(batch, np.asarray(value), deferred=True)
    with pytest.raises(NonFiniteLossError, match=r"loss is inf at epoch 5, batch 3 \(found when the epoch's loss was "
                                                 r"read.*NaNGuard") as info:
        watch.end_epoch(float("nan"))
    assert (info.value.epoch, info.value.batch) == (4, 2)
    watch.start_epoch(5)
    watch.add(0, np.asarray(np.nan), deferred=True)
    watch.end_epoch(1.0)  # a finite sum: nothing kept is even looked at
    warn = LossWatch("warn")
    for epoch in range(2):
        warn.start_epoch(epoch)
        warn.add(0, np.asarray(np.nan), deferred=True)
        if epoch == 0:
            with pytest.warns(fnn.FastnnRuntimeWarning, match="epoch 1, batch 1"):
                warn.end_epoch(float("nan"))
        else:
            warn.end_epoch(float("nan"))  # once per fit
    ignore = LossWatch("ignore")
    ignore.add(0, np.asarray(np.nan), deferred=False)
    ignore.end_epoch(float("nan"))
