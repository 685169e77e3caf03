"""Sanity checks: the initial loss against chance level, and overfitting a small batch."""

import math

import numpy as np
import pytest

import fastnn as fnn
from fastnn.gradient_check import inspection_copy
from fastnn import nn
from fastnn.sanity import initial_loss, overfit_small_batch

from workflow_util import break_backward, digits, mlp, snapshot


def zero_output(classes, outputs=None):
    """An MLP whose last layer is zero: every logit is 0, the loss is exactly chance level."""
    model = nn.Sequential(nn.Dense(64, 32, seed=0), nn.BatchNorm(32), nn.ReLU(), nn.Dropout(0.5, seed=1),
                          nn.Dense(32, outputs or classes, seed=2))
    model[4].weight.data[...] = 0
    return model


def test_initial_loss_at_chance_level():
    X, _, y, _ = digits()
    result = fnn.sanity.initial_loss(zero_output(10), nn.SoftmaxCrossEntropy(), X[:200], y[:200])
    assert result.expected == math.log(10)
    assert result.value == pytest.approx(math.log(10), rel=1e-6) and result.ratio == pytest.approx(1, rel=1e-6)
    assert result.ok is True and "chance level 2.303" in str(result)

    hinge = initial_loss(zero_output(10), nn.Hinge(), X[:200], y[:200])
    assert hinge.expected == 9 and hinge.value == pytest.approx(9, rel=1e-6) and hinge.ok

    binary = initial_loss(zero_output(2, outputs=1), nn.BCEWithLogits(), X[:200],
                          (y[:200] % 2).astype(np.float32)[:, None])
    assert binary.expected == math.log(2) and binary.value == pytest.approx(math.log(2), rel=1e-5) and binary.ok


def test_too_large_initial_weights_are_reported_and_the_model_is_untouched():
    X, _, y, _ = digits()
    model = mlp(seed=0, hidden=64, dropout=0.2)
    model[4].weight.data *= 20  # logits of ~20 units: the loss is far above ln 10
    before, counter = snapshot(model), model[3].counter
    result = initial_loss(model, nn.SoftmaxCrossEntropy(), X[:200], y[:200])
    manual = nn.SoftmaxCrossEntropy().forward(inspection_copy(model).forward(X[:200], training=True), y[:200])
    assert result.value == pytest.approx(manual, rel=1e-6)
    assert result.ratio > 2 and result.ok is False and "too large" in str(result)
    after = snapshot(model)
    assert all(np.array_equal(after[k], before[k]) for k in before)  # running statistics untouched
    assert model[3].counter == counter and model[3].p == 0.2

    mse = initial_loss(nn.Sequential(nn.Dense(64, 1, seed=0)), nn.MSE(), X[:20], np.ones((20, 1), np.float32))
    assert mse.expected is None and mse.ok is None and "no chance-level" in str(mse)


def test_overfitting_twenty_digits():
    X, _, y, _ = digits()
    result = overfit_small_batch(lambda: mlp(seed=0, hidden=64, dropout=0.5), X[:20], y[:20], epochs=150, lr=1e-2)
    assert result.ok, str(result)
    assert result.final_loss < 1e-2 and result.accuracy == 1.0
    assert len(result.losses) == 150 and result.losses[0] > 1.0 > 0.05 > result.losses[-1]
    assert all(m.p == 0.0 for m in result.model.modules() if isinstance(m, nn.Dropout))
    assert "-> ok" in str(result)


def test_a_model_that_cannot_learn_is_reported(monkeypatch):
    X, _, y, _ = digits()
    break_backward(monkeypatch, nn.Dense, "weight", 0.0)
    result = overfit_small_batch(lambda: mlp(seed=0), X[:20], y[:20], epochs=50)
    assert not result.ok and result.final_loss > 0.1 and "NOT overfitting" in str(result)


def test_regression_and_custom_optimizer():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((20, 5)).astype(np.float32)
    y = rng.standard_normal((20, 1)).astype(np.float32)
    factory = lambda: nn.Sequential(nn.Dense(5, 64, seed=1), nn.Tanh(), nn.Dense(64, 1, seed=2))  # noqa: E731
    result = overfit_small_batch(factory, X, y, epochs=300, lr=0.05,
                                 optimizer=lambda params, lr: fnn.optim.SGD(params, lr=lr, momentum=0.9))
    assert result.accuracy is None and result.ok and result.final_loss < 1e-2
    with pytest.raises(TypeError, match="model_factory"):
        overfit_small_batch(lambda: "model", X, y)
