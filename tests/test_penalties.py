"""fastnn.penalties: the L1/L2 penalty and its gradient against their NumPy formulas, and which
parameters count as weights."""

import numpy as np
import pytest

import fastnn.train
from fastnn import nn, penalties
from fastnn._backend import to_numpy
from fastnn.nn.parameter import Parameter
from fastnn.penalties import add_penalty_grad, penalty, weight_parameters


def parameters(xp, dtype, rng):
    """Random weights of a few shapes, one with exact zeros (sign(0) = 0), and random grads."""
    shapes = [(4, 3), (5, 2, 3), (7,)]
    params = []
    for shape in shapes:
        data = rng.standard_normal(shape).astype(dtype)
        data.reshape(-1)[::4] = 0.0
        p = Parameter(xp.asarray(data))
        p.grad[...] = xp.asarray(rng.standard_normal(shape).astype(dtype))
        params.append(p)
    return params


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("l1, l2", [(0.0, 0.0), (0.03, 0.0), (0.0, 0.2), (0.03, 0.2)])
def test_penalty_and_its_gradient_follow_the_formula(xp, dtype, l1, l2):
    rng = np.random.default_rng(0)
    params = parameters(xp, dtype, rng)
    weights = [to_numpy(p.data).astype(np.float64) for p in params]
    grads = [to_numpy(p.grad).astype(np.float64) for p in params]
    expected = sum(l1 * np.abs(w).sum() + l2 / 2 * (w * w).sum() for w in weights)
    rtol = 1e-12 if dtype == np.float64 else 1e-5
    assert float(penalty(params, l1, l2)) == pytest.approx(expected, rel=rtol, abs=0.0)
    add_penalty_grad(params, l1, l2)
    for p, w, g in zip(params, weights, grads):
        assert p.grad.dtype == dtype
        np.testing.assert_allclose(to_numpy(p.grad), g + l1 * np.sign(w) + l2 * w, rtol=rtol, atol=1e-7)


def test_the_penalty_stays_on_the_device_and_is_zero_without_l1_and_l2(xp):
    params = parameters(xp, np.float32, np.random.default_rng(1))
    assert penalty(params) == 0.0
    value = penalty(params, l2=0.1)
    assert value.shape == () and isinstance(value, (np.ndarray, np.generic) if xp is np else xp.ndarray)


def test_weight_parameters_are_the_parameters_with_two_or_more_dimensions():
    model = nn.Sequential(nn.Dense(4, 5, seed=0), nn.BatchNorm(5), nn.PReLU(), nn.Dense(5, 3, seed=1))
    assert [name for name, _ in weight_parameters(model)] == ["0.weight", "3.weight"]
    assert all(p.data.ndim >= 2 for _, p in weight_parameters(model))
    assert {name for name, p in model.named_parameters() if p.data.ndim < 2} == {
        "0.bias", "1.weight", "1.bias", "2.alpha", "3.bias"}


def test_fastnn_train_still_exports_them():
    for name in penalties.__all__:
        assert getattr(fastnn.train, name) is getattr(penalties, name)
