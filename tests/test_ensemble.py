"""Ensemble averages probabilities; EMA follows its formula, swaps weights in place and back."""

import numpy as np
import pytest

import fastnn as fnn
from fastnn import nn
from fastnn.train import Trainer

from workflow_util import digits, mlp, snapshot


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_ensemble_averages_softmax_probabilities():
    X, _, _, _ = digits()
    models = [mlp(seed=s) for s in (0, 10, 20)]
    ensemble = fnn.Ensemble(models)
    expected = np.mean([softmax(m.forward(X, training=False).astype(np.float64)) for m in models], axis=0)
    proba = ensemble.predict_proba(X, batch_size=100)
    np.testing.assert_allclose(proba, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=1e-6)
    np.testing.assert_array_equal(ensemble.predict(X), expected.argmax(axis=1))
    assert len(ensemble) == 3


def test_ensemble_of_binary_models_averages_sigmoids():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((50, 3)).astype(np.float32)
    models = [nn.Sequential(nn.Dense(3, 1, seed=s)) for s in range(4)]
    sigmoids = [1 / (1 + np.exp(-m.forward(X, training=False).astype(np.float64))) for m in models]
    expected = np.mean(sigmoids, axis=0)
    np.testing.assert_allclose(fnn.Ensemble(models).predict_proba(X), expected, rtol=1e-5)
    np.testing.assert_array_equal(fnn.Ensemble(models).predict(X), (expected > 0.5).astype(np.int64))  # per output
    explicit = fnn.Ensemble(models, loss=nn.BCEWithLogits())
    np.testing.assert_array_equal(explicit.predict(X), fnn.Ensemble(models).predict(X))


def test_ensemble_of_regressors_averages_their_outputs_and_has_no_probabilities():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((40, 3))
    models = [nn.Sequential(nn.Dense(3, 2, seed=s, dtype=np.float64)) for s in range(3)]
    ensemble = fnn.Ensemble(models, loss=nn.MSE())
    expected = np.mean([m(X) for m in models], axis=0)
    np.testing.assert_allclose(ensemble.predict(X), expected, rtol=1e-12)
    np.testing.assert_allclose(ensemble.predict_outputs(X), expected, rtol=1e-12)
    with pytest.raises(TypeError, match="predict_proba: MSE is a regression loss"):
        ensemble.predict_proba(X)


def test_ensemble_of_hinge_classifiers_votes_with_their_mean_scores():
    X = digits()[0]
    models = [mlp(seed=s) for s in (0, 10)]
    ensemble = fnn.Ensemble(models, loss=nn.Hinge())
    scores = np.mean([m(X).astype(np.float64) for m in models], axis=0)
    np.testing.assert_array_equal(ensemble.predict(X), scores.argmax(axis=1))
    with pytest.raises(TypeError, match="Hinge is a margin loss"):
        ensemble.predict_proba(X)
    with pytest.raises(TypeError, match="loss must be the fastnn.nn loss"):
        fnn.Ensemble(models, loss="hinge")


def test_ensemble_of_trained_models_is_at_least_as_good_as_its_average_member():
    X_train, X_test, y_train, y_test = digits()
    models, scores = [], []
    for seed in range(3):
        model = mlp(seed=seed * 10, hidden=32)
        trainer = Trainer(model, nn.SoftmaxCrossEntropy(), fnn.optim.Adam(model.parameters(), lr=2e-3), seed=seed)
        trainer.fit(X_train, y_train, epochs=4, batch_size=64, verbose=0)
        models.append(model)
        scores.append(trainer.evaluate(X_test, y_test)["accuracy"])
    ensemble = fnn.Ensemble(models)
    assert fnn.metrics.accuracy(y_test, ensemble.predict(X_test)) >= np.mean(scores)


def test_ensemble_refuses_bad_members():
    with pytest.raises(ValueError, match="at least one"):
        fnn.Ensemble([])
    with pytest.raises(TypeError, match="models\\[1\\]"):
        fnn.Ensemble([mlp(), "model"])
    with pytest.raises(ValueError, match="shape"):
        fnn.Ensemble([mlp(classes=10), mlp(classes=3)]).predict_proba(digits()[0])


def test_ema_follows_the_formula():
    model = nn.Sequential(nn.Dense(3, 2, seed=0, dtype=np.float64))
    w, b = model.parameters()
    rng = np.random.default_rng(1)
    ema = fnn.EMA(model, decay=0.9)
    shadow = {"0.weight": w.data.copy(), "0.bias": b.data.copy()}
    for _ in range(5):
        w.data[...] = rng.standard_normal(w.shape)
        b.data[...] = rng.standard_normal(b.shape)
        ema.update()
        for name, p in (("0.weight", w), ("0.bias", b)):
            shadow[name] = 0.9 * shadow[name] + 0.1 * p.data
    for name in shadow:
        np.testing.assert_allclose(ema.shadow[name], shadow[name], rtol=1e-14)
    assert ema.num_updates == 5


def test_ema_warmup_uses_the_tensorflow_schedule():
    model = nn.Sequential(nn.Dense(2, 2, seed=0, dtype=np.float64))
    w = model.parameters()[0]
    ema = fnn.EMA(model, decay=0.99, warmup=True)
    s = w.data.copy()
    decays = []
    for t in range(1, 8):
        decays.append(ema.current_decay())
        w.data += 1.0
        ema.update()
        s = decays[-1] * s + (1 - decays[-1]) * w.data
    assert decays == [min(0.99, (1 + t) / (10 + t)) for t in range(1, 8)]
    np.testing.assert_allclose(ema.shadow["0.weight"], s, rtol=1e-14)


def test_average_parameters_swaps_in_place_and_restores_even_on_error():
    model = mlp(seed=0)
    ema = fnn.EMA(model, decay=0.5)
    arrays = [p.data for p in model.parameters()]
    for p in model.parameters():
        p.data += 1.0
    ema.update()
    live = snapshot(model)
    with ema.average_parameters() as averaged:
        assert averaged is model
        assert all(p.data is a for p, a in zip(model.parameters(), arrays))
        for name, p in model.named_parameters():
            np.testing.assert_array_equal(p.data, ema.shadow[name])
            assert not np.array_equal(p.data, live[name])
    for name, p in model.named_parameters():
        np.testing.assert_array_equal(p.data, live[name])
    with pytest.raises(RuntimeError, match="inside"):
        with ema.average_parameters():
            raise RuntimeError("inside")
    for name, p in model.named_parameters():
        np.testing.assert_array_equal(p.data, live[name])


def test_ema_as_a_trainer_callback_and_its_state():
    X, _, y, _ = digits()
    model = mlp(seed=0)
    ema = fnn.EMA(model, decay=0.9)
    trainer = Trainer(model, nn.SoftmaxCrossEntropy(), fnn.optim.Adam(model.parameters()), callbacks=[ema], seed=0)
    trainer.fit(X[:256], y[:256], epochs=2, batch_size=32, verbose=0)
    assert ema.num_updates == 16 and ema.model is model
    with ema.average_parameters():
        averaged = trainer.evaluate(X[:256], y[:256])["loss"]
    assert np.isfinite(averaged)

    other = fnn.EMA(mlp(seed=5), decay=0.1)
    other.load_state_dict(ema.state_dict())
    assert other.decay == 0.9 and other.num_updates == 16
    for name in ema.shadow:
        np.testing.assert_array_equal(other.shadow[name], ema.shadow[name])
    with pytest.raises(ValueError, match="0.weight: shape"):
        fnn.EMA(mlp(hidden=8)).load_state_dict(ema.state_dict())
    model.to(dtype=np.float64)
    with pytest.raises(ValueError, match="no longer matches"):
        ema.update()
