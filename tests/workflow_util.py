"""Shared pieces of the training-workflow tests: the digits data, small models, state snapshots."""

from __future__ import annotations

import functools

import numpy as np

import fastnn as fnn
from fastnn import nn
from fastnn._backend import to_numpy
from fastnn.nn import fusion


@functools.lru_cache(maxsize=None)
def _digits():
    X, y = fnn.datasets.load_digits()
    X_train, X_test, y_train, y_test = fnn.data.train_test_split(X / 16, y, test_size=0.2, seed=0, stratify=True)
    scaler = fnn.preprocessing.Standardizer().fit(X_train)
    return scaler.transform(X_train), scaler.transform(X_test), y_train, y_test


def digits():
    """Standardized digits, split 80/20 with a fixed seed: fresh copies of X_train, X_test,
    y_train, y_test."""
    return tuple(a.copy() for a in _digits())


def mlp(seed=0, hidden=32, inputs=64, classes=10, dropout=0.1, dtype=np.float32):
    """Dense -> BatchNorm -> ReLU -> Dropout -> Dense, every random thing seeded."""
    return nn.Sequential(nn.Dense(inputs, hidden, seed=seed, dtype=dtype), nn.BatchNorm(hidden, dtype=dtype),
                         nn.ReLU(), nn.Dropout(dropout, seed=seed + 1),
                         nn.Dense(hidden, classes, seed=seed + 2, dtype=dtype))


def break_backward(monkeypatch, layer_class, parameter, factor, only=None):
    """Make ``layer_class``'s backward wrong: after the real one, multiply the gradient of its
    ``parameter`` by ``factor`` (in layers for which ``only(layer)`` is true, when given).
    Patches ``_backward`` where the class has one (what ``Sequential`` calls when it fuses the
    backward across layers), else ``backward``, and the backward of a run of Dense layers
    chained on the CPU (``fusion.DenseRun.backward``), which calls neither."""
    method = "_backward" if hasattr(layer_class, "_backward") else "backward"
    original = getattr(layer_class, method)

    def spoil(layer):
        if isinstance(layer, layer_class) and (only is None or only(layer)):
            getattr(layer, parameter).grad[...] *= factor

    def wrong(self, *args, **kwargs):
        dx = original(self, *args, **kwargs)
        spoil(self)
        return dx

    original_chain = fusion.DenseRun.backward

    def wrong_chain(self, *args, **kwargs):
        dx = original_chain(self, *args, **kwargs)
        for layer in self.layers:
            spoil(layer)
        return dx

    monkeypatch.setattr(layer_class, method, wrong)
    monkeypatch.setattr(fusion.DenseRun, "backward", wrong_chain)


def snapshot(model):
    """Host copies of the model's parameters and buffers, by name."""
    return {name: to_numpy(a).copy() for name, a in model.state_dict().items()}


def assert_same_state(model, expected):
    """The model's parameters and buffers equal ``expected`` (a snapshot) bit for bit."""
    actual = snapshot(model)
    assert actual.keys() == expected.keys()
    for name in expected:
        np.testing.assert_array_equal(actual[name], expected[name], err_msg=name)


def optimizer_snapshot(optimizer):
    """A host copy of an optimizer's state_dict (arrays copied, hyperparameters kept)."""
    state = optimizer.state_dict()
    return {"state": {i: {k: to_numpy(v).copy() if hasattr(v, "shape") else v for k, v in entry.items()}
                      for i, entry in state["state"].items()},
            "param_groups": [dict(g) for g in state["param_groups"]]}


def assert_same_optimizer(optimizer, expected):
    actual = optimizer_snapshot(optimizer)
    assert actual["param_groups"] == expected["param_groups"]
    assert actual["state"].keys() == expected["state"].keys()
    for i, entry in expected["state"].items():
        assert actual["state"][i].keys() == entry.keys()
        for key, value in entry.items():
            np.testing.assert_array_equal(actual["state"][i][key], value, err_msg=f"{i}/{key}")
