"""fastnn.nn.Perceptron: converges on separable data within Novikoff's mistake bound, follows
the perceptron rule exactly, accepts {0, 1} and {-1, 1} labels, and rejects bad input."""

import numpy as np
import pytest

from fastnn.nn import Perceptron
from fastnn._backend import to_numpy


def separable(rng, n=300, features=4, margin=0.2):
    """Points labelled by a random hyperplane, with those closer than ``margin`` removed; returns
    X, y in {0, 1}, and the unit normal u of the hyperplane in the augmented space (w, b)."""
    w, b = rng.standard_normal(features), 0.5
    u = np.append(w, b) / np.linalg.norm(np.append(w, b))
    X = rng.uniform(-3, 3, (n * 3, features))
    distance = np.c_[X, np.ones(len(X))] @ u
    keep = np.abs(distance) > margin
    X, distance = X[keep][:n], distance[keep][:n]
    return X, (distance > 0).astype(int), u


@pytest.mark.parametrize("seed", range(4))
def test_converges_on_separable_blobs_within_the_mistake_bound(rng, seed):
    X, y, u = separable(rng)
    model = Perceptron().fit(X, y, epochs=1000, seed=seed)
    assert model.converged and model.mistakes[-1] == 0
    np.testing.assert_array_equal(model.predict(X), y)  # zero training errors
    augmented = np.c_[X, np.ones(len(X))]
    R = np.linalg.norm(augmented, axis=1).max()
    gamma = np.min((2 * y - 1) * (augmented @ u))
    assert gamma > 0
    assert sum(model.mistakes) <= (R / gamma) ** 2


def test_two_gaussian_blobs_with_minus_one_plus_one_labels(rng):
    X = np.r_[rng.normal(-2, 0.5, (100, 2)), rng.normal(2, 0.5, (100, 2))]
    y = np.r_[-np.ones(100, int), np.ones(100, int)]
    model = Perceptron().fit(X, y, seed=0)
    assert model.converged and set(model.predict(X).tolist()) == {-1, 1}
    np.testing.assert_array_equal(model.predict(X), y)
    z = model.decision_function(X)
    np.testing.assert_allclose(z, X @ model.weight + model.bias)
    assert np.all((z >= 0) == (y == 1))


def test_follows_the_perceptron_rule_step_by_step():
    # hand-run of the rule, in order, lr = 0.5, from w = 0, b = 0 (H(0) = 1):
    # x1=(1, 2) y=0: z=0 -> 1, error -1: w=(-0.5, -1), b=-0.5
    # x2=(2, -1) y=1: z=-1+1-0.5=-0.5 -> 0, error +1: w=(0.5, -1.5), b=0
    # x3=(-1, 1) y=0: z=-0.5-1.5=-2 -> 0, right
    X = np.array([[1.0, 2.0], [2.0, -1.0], [-1.0, 1.0]])
    y = np.array([0, 1, 0])
    model = Perceptron().fit(X, y, epochs=1, lr=0.5, shuffle=False)
    np.testing.assert_allclose(model.weight, [0.5, -1.5])
    assert model.bias == 0.0 and model.mistakes == [2] and not model.converged
    model = Perceptron().fit(X, y, epochs=10, lr=0.5, shuffle=False)
    assert model.converged and list(model.predict(X)) == [0, 1, 0]


def test_not_separable_runs_all_epochs(rng):
    X = np.array([[0.0, 0.0], [1.0, 1.0], [1.0, 0.0], [0.0, 1.0]])  # XOR
    model = Perceptron().fit(X, np.array([0, 0, 1, 1]), epochs=25, seed=0)
    assert not model.converged and len(model.mistakes) == 25 and min(model.mistakes) > 0


def test_reproducible_with_a_seed(rng):
    X, y, _ = separable(rng, n=100)
    a = Perceptron().fit(X, y, seed=3)
    b = Perceptron().fit(X, y, seed=3)
    np.testing.assert_array_equal(a.weight, b.weight)
    assert a.mistakes == b.mistakes


def test_errors():
    X = np.zeros((4, 2))
    with pytest.raises(ValueError, match=r"\{0, 1\} or \{-1, 1\}"):
        Perceptron().fit(X, np.array([0, 1, 2, 1]))
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        Perceptron().fit(X, np.array([0, 1]))
    with pytest.raises(RuntimeError, match="not fitted"):
        Perceptron().predict(X)
    with pytest.raises(ValueError, match="lr"):
        Perceptron().fit(X, np.array([0, 1, 0, 1]), lr=0)
    model = Perceptron().fit(np.eye(2), np.array([0, 1]))
    with pytest.raises(ValueError, match="fitted on 2 features"):
        model.predict(np.zeros((3, 3)))


@pytest.mark.gpu
def test_cupy_inputs(rng):
    import cupy

    X, y, _ = separable(rng, n=100)
    model = Perceptron().fit(cupy.asarray(X), cupy.asarray(y), seed=0)
    predicted = model.predict(cupy.asarray(X))
    assert isinstance(predicted, cupy.ndarray)
    np.testing.assert_array_equal(to_numpy(predicted), y)
