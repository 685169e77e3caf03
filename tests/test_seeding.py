"""``fastnn.seed(n)``: every unseeded initializer, dropout, shuffle, split and search derives from
one seed; explicit seeds still win."""

from __future__ import annotations

import numpy as np
import pytest

import fastnn as fnn
from fastnn import nn


@pytest.fixture
def global_seed():
    """fastnn.seed, reset to fresh entropy after the test (the other tests must not see it)."""
    yield fnn.seed
    fnn.seed(None)


def train_unseeded(epochs=2):
    """A small model trained with nothing seeded explicitly: Dense inits, Dropout, the
    Trainer's shuffling and the validation split all draw from fastnn's generators."""
    X, y = fnn.datasets.spirals(80, classes=3, seed=0)
    X_train, X_val, y_train, y_val = fnn.data.train_test_split(X.astype(np.float32), y, test_size=0.25)
    model = nn.Sequential(nn.Dense(2, 32), nn.BatchNorm(32), nn.ReLU(), nn.Dropout(0.3), nn.Dense(32, 3))
    trainer = fnn.train.Trainer(model, nn.SoftmaxCrossEntropy(), fnn.optim.Adam(model.parameters(), lr=1e-2))
    trainer.fit(X_train, y_train, epochs=epochs, batch_size=32, validation_data=(X_val, y_val), verbose=0)
    return model.state_dict(), trainer.history.history


def test_the_same_seed_trains_the_same_model_bit_for_bit(global_seed):
    global_seed(3)
    first, history = train_unseeded()
    global_seed(3)
    second, again = train_unseeded()
    assert first.keys() == second.keys()
    for name in first:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)
    assert history == again
    global_seed(4)
    other, _ = train_unseeded()
    assert not np.array_equal(other["0.weight"], first["0.weight"])
    global_seed(None)
    fresh, _ = train_unseeded(epochs=1)
    assert not np.array_equal(fresh["0.weight"], first["0.weight"])


def test_explicit_seeds_win_and_take_nothing_from_the_sequence(global_seed):
    global_seed(5)
    a = nn.Dense(4, 3).weight.data.copy()
    global_seed(5)
    explicit = nn.Dense(4, 3, seed=11).weight.data
    np.testing.assert_array_equal(explicit, nn.Dense(4, 3, seed=11).weight.data)
    np.testing.assert_array_equal(nn.Dense(4, 3).weight.data, a)  # the first unseeded draw, as before
    global_seed(5)
    drop = nn.Dropout(0.5)
    global_seed(5)
    assert nn.Dropout(0.5).seed == drop.seed and nn.Dropout(0.5, seed=1).seed == 1


def test_searches_and_splits_follow_the_seed(global_seed):
    space = {"lr": fnn.tune.LogUniform(1e-4, 1e-1)}
    runs = []
    for _ in range(2):
        global_seed(7)
        result = fnn.tune.random_search(lambda params: params["lr"], space, trials=4)
        split = fnn.data.train_test_split(np.arange(20), test_size=5)
        runs.append((result.seed, [t.params["lr"] for t in result.trials], split[1].tolist()))
    assert runs[0] == runs[1]
    assert fnn.data.train_test_split(np.arange(20), test_size=5, seed=1)[1].tolist() == \
        fnn.data.train_test_split(np.arange(20), test_size=5, seed=1)[1].tolist()


@pytest.mark.parametrize("bad", [-1, 1.5, "3", True])
def test_bad_seeds_are_refused(bad):
    with pytest.raises(ValueError, match="fastnn.seed: expected an int >= 0 or None"):
        fnn.seed(bad)
