"""gradcheck passes correct models, flags a wrong backward, samples large parameters
reproducibly, includes the L1/L2 penalty, and leaves the model alone."""

import importlib
import math

import numpy as np
import pytest

import fastnn as fnn
from fastnn import nn
from fastnn.gradient_check import GradcheckReport, gradcheck, verdict

from workflow_util import break_backward, mlp, snapshot


def batch(rng, n=16, features=64, classes=10):
    return rng.standard_normal((n, features)).astype(np.float32), rng.integers(0, classes, n)


def test_a_correct_model_passes_and_is_left_untouched(rng):
    model = nn.Sequential(nn.Dense(12, 20, seed=1), nn.BatchNorm(20), nn.ReLU(), nn.Dropout(0.5, seed=2),
                          nn.Dense(20, 16, seed=3), nn.Tanh(), nn.Dense(16, 8, seed=4), nn.PReLU(),
                          nn.Dense(8, 5, seed=5))
    x, y = batch(rng, features=12, classes=5)
    before, counter = snapshot(model), model[3].counter
    report = gradcheck(model, nn.SoftmaxCrossEntropy(), x, y)
    assert isinstance(report, GradcheckReport)
    assert report.verdict == "good" and report.ok and report.max_rel_error < 1e-7
    assert set(report.errors) == {name for name, _ in model.named_parameters()}
    assert report.max_rel_error == max(report.errors.values())
    after = snapshot(model)
    assert all(np.array_equal(after[k], before[k]) for k in before)
    assert model.dtype == np.float32 and model[3].p == 0.5 and model[3].counter == counter
    text = str(report)
    assert "-> good" in text and "0.weight" in text and "8.bias" in text


@pytest.mark.parametrize("loss", [nn.SoftmaxCrossEntropy(), nn.Hinge()])
def test_other_losses_and_fnn_gradcheck_entry_point(rng, loss):
    model = mlp(seed=2, inputs=6, hidden=8, classes=4, dropout=0.3)
    x, y = batch(rng, features=6, classes=4)
    report = fnn.gradcheck(model, loss, x, y)
    assert report.ok, str(report)
    # the function's module has its own name, so importing it never shadows fnn.gradcheck
    importlib.import_module("fastnn.gradient_check")
    assert fnn.gradcheck(model, loss, x, y).max_rel_error == report.max_rel_error


def test_regression_with_penalties(rng):
    model = nn.Sequential(nn.Dense(4, 6, seed=0), nn.Tanh(), nn.Dense(6, 2, seed=1))
    x, y = rng.standard_normal((10, 4)), rng.standard_normal((10, 2))
    report = gradcheck(model, nn.MSE(), x, y, l1=0.01, l2=0.3)
    assert report.ok and report.max_rel_error < 1e-5, str(report)


def test_a_wrong_backward_is_flagged(rng, monkeypatch):
    model = mlp(seed=0, inputs=8, hidden=12, classes=3)
    x, y = batch(rng, features=8, classes=3)
    # only the last layer's weight gradient is 10% off
    break_backward(monkeypatch, nn.Dense, "weight", 1.1, only=lambda layer: layer.out_features == 3)
    report = gradcheck(model, nn.SoftmaxCrossEntropy(), x, y)
    assert report.verdict == "wrong" and not report.ok
    assert verdict(report.errors["4.weight"]) == "wrong"
    assert report.errors["4.weight"] == pytest.approx(0.1 / 1.1, rel=1e-3)
    assert report.errors["4.bias"] < 1e-5 and report.errors["0.weight"] < 1e-5


def test_a_subtle_error_is_suspicious(rng, monkeypatch):
    model = mlp(seed=0, inputs=8, hidden=12, classes=3)
    x, y = batch(rng, features=8, classes=3)
    break_backward(monkeypatch, nn.BatchNorm, "bias", 1.001)
    report = gradcheck(model, nn.SoftmaxCrossEntropy(), x, y)
    assert report.verdict == "suspicious" and report.parameters[3].name == "1.bias"
    assert report.errors["1.bias"] == pytest.approx(0.001 / 1.001, rel=1e-2)


def test_large_parameters_are_sampled_reproducibly(rng):
    model = mlp(seed=0, inputs=30, hidden=40, classes=10)
    x, y = batch(rng, features=30)
    report = gradcheck(model, nn.SoftmaxCrossEntropy(), x, y, max_entries=25, seed=7)
    checked = {p.name: (p.checked, p.size) for p in report.parameters}
    assert checked == {"0.weight": (25, 1200), "0.bias": (25, 40), "1.weight": (25, 40), "1.bias": (25, 40),
                       "4.weight": (25, 400), "4.bias": (10, 10)}
    again = gradcheck(model, nn.SoftmaxCrossEntropy(), x, y, max_entries=25, seed=7)
    assert [(p.index, p.max_rel_error) for p in again.parameters] == [(p.index, p.max_rel_error)
                                                                     for p in report.parameters]


def test_verdict_thresholds():
    assert [verdict(e) for e in (0.0, 9e-8, 1e-7, 5e-5, 1e-4, 5e-3, 1e-2, 0.5, math.inf, math.nan)] == [
        "good", "good", "usually fine", "usually fine", "suspicious", "suspicious", "wrong", "wrong", "wrong", "wrong"]


def test_zero_gradients_up_to_rounding_count_as_zero(rng):
    """A Dense bias feeding BatchNorm has gradient 0 exactly; its finite differences are
    rounding noise (~ulp(L)/eps), which must not read as a relative error of 1."""
    model = mlp(seed=1, inputs=12, hidden=20, classes=5)
    x, y = batch(rng, features=12, classes=5)
    report = gradcheck(model, nn.SoftmaxCrossEntropy(), x, y)
    assert report.errors["0.bias"] == 0.0
    noisy = gradcheck(model, nn.SoftmaxCrossEntropy(), x, y, tiny=1e-16)
    assert noisy.errors["0.bias"] > 1e-3  # without the floor the noise looks like an error


def test_bad_arguments(rng):
    model = mlp()
    x, y = batch(rng)
    with pytest.raises(ValueError, match="eps"):
        gradcheck(model, nn.SoftmaxCrossEntropy(), x, y, eps=0)
    with pytest.raises(ValueError, match="max_entries"):
        gradcheck(model, nn.SoftmaxCrossEntropy(), x, y, max_entries=0)
    with pytest.raises(TypeError, match="loss"):
        gradcheck(model, "mse", x, y)
    with pytest.raises(TypeError, match="model"):
        gradcheck(lambda v: v, nn.MSE(), x, y)
