"""Inference is the default (``forward(x, training=False)``): deterministic, changes nothing in
the model, keeps nothing for a backward, and may run from several threads on one model; training
calls are one thread's at a time, and a second thread gets ConcurrentTrainingError."""

from __future__ import annotations

import copy
import pickle
import threading

import numpy as np
import pytest

from fastnn import nn
from fastnn.nn import ConcurrentTrainingError, fusion

from util import assert_close


def model_with_everything(seed=0):
    return nn.Sequential(nn.Dense(12, 32, seed=seed, dtype=np.float64), nn.BatchNorm(32, dtype=np.float64), nn.ReLU(),
                         nn.Dropout(0.5, seed=seed + 1), nn.Dense(32, 16, "gelu", seed=seed + 2, dtype=np.float64),
                         nn.Residual(nn.Sequential(nn.Dense(16, 16, "tanh", seed=seed + 3, dtype=np.float64))),
                         nn.PReLU(dtype=np.float64), nn.Dense(16, 5, seed=seed + 4, dtype=np.float64))


def state(model):
    return {name: a.copy() for name, a in model.state_dict().items()}


def test_model_of_x_is_inference_and_deterministic(rng):
    model = model_with_everything()
    x = rng.standard_normal((64, 12))
    model.forward(x, training=True)  # running statistics away from 0 and 1
    before, counter = state(model), model[3].counter
    first = model(x)
    assert first is not model(x)  # a new array each call
    np.testing.assert_array_equal(model(x), first)
    np.testing.assert_array_equal(model.forward(x), first)
    after = state(model)
    assert all(np.array_equal(after[k], before[k]) for k in before)  # BatchNorm's running statistics untouched
    assert model[3].counter == counter  # no dropout mask drawn
    # What inference computes: running statistics, no dropout.
    bn, h = model[1], x @ model[0].weight.data + model[0].bias.data
    h = np.maximum((h - bn.running_mean) / np.sqrt(bn.running_var + bn.eps) * bn.weight.data + bn.bias.data, 0)
    for layer in model.layers[4:]:
        h = layer(h)
    assert_close(first, h, rtol=1e-12, atol=1e-12)
    trained = model(x, training=True)
    assert not np.allclose(trained, first)  # batch statistics and a dropout mask


@pytest.mark.parametrize("chained", [False, True])
def test_inference_keeps_nothing_and_leaves_a_training_step_intact(rng, request, monkeypatch, chained):
    if chained:
        request.getfixturevalue("chain_threads")
    else:
        monkeypatch.setattr(fusion.FusionPlan, "use_chains", lambda self, x: False)
    model = nn.Sequential(nn.Dense(6, 8, dtype=np.float64, seed=0), nn.LeakyReLU(0.2),
                          nn.Dense(8, 3, "gelu", dtype=np.float64, seed=1)).reuse_outputs()
    twin = copy.deepcopy(model)
    x, other, dy = rng.standard_normal((5, 6)), rng.standard_normal((7, 6)), rng.standard_normal((5, 3))
    assert all(m._saved is None for m in model.modules())
    model(x)
    assert all(m._saved is None for m in model.modules()) and all(not m._workspace for m in model.modules())
    with pytest.raises(RuntimeError, match=r"backward needs a training forward first, forward\(x, training=True\)"):
        model.backward(dy)

    y = model(x, training=True)
    assert model._plan.chained == chained
    kept = {id(a) for m in model.modules() for a in m._workspace.values()}
    model(other)  # an inference forward between a training forward and its backward
    assert model._plan.chained == chained
    assert {id(a) for m in model.modules() for a in m._workspace.values()} == kept
    dx = model.backward(dy)
    twin.forward(x, training=True)
    assert_close(dx, twin.backward(dy), rtol=1e-12, atol=1e-12)
    assert_close(y, twin.forward(x, training=True), rtol=1e-12, atol=1e-12)


def run_threads(target, count):
    errors, results = [], [None] * count
    start = threading.Barrier(count)

    def body(i):
        try:
            start.wait()
            results[i] = target(i)
        except BaseException as exc:  # collected, so that the test can look at it
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, errors


@pytest.mark.parametrize("chained", [False, True])
def test_concurrent_inference_on_one_model_gives_the_right_outputs(rng, request, monkeypatch, chained):
    if chained:
        request.getfixturevalue("chain_threads")
    else:
        monkeypatch.setattr(fusion.FusionPlan, "use_chains", lambda self, x: False)
    model = model_with_everything().reuse_outputs()
    model.forward(rng.standard_normal((32, 12)), training=True)
    inputs = [rng.standard_normal((40 + i, 12)) for i in range(4)]
    expected = [model(x).copy() for x in inputs]

    def work(i):
        return [model(inputs[i]).copy() for _ in range(30)]

    results, errors = run_threads(work, 4)
    assert not errors
    for i, outputs in enumerate(results):
        for y in outputs:
            np.testing.assert_array_equal(y, expected[i])


def test_a_second_thread_training_the_same_model_is_refused(rng):
    model = nn.Sequential(nn.Dense(6, 4, dtype=np.float64, seed=0), nn.ReLU(), nn.Dense(4, 3, dtype=np.float64))
    x, dy = rng.standard_normal((5, 6)), rng.standard_normal((5, 3))

    # Overlapping calls: the other thread is inside a training forward when this one starts.
    inside, release = threading.Event(), threading.Event()
    first = model[0]
    original = first._check_input  # the first thing every path of the first layer's forward does

    def slow_check(*args, **kwargs):
        if not inside.is_set():  # the other thread's call waits inside its forward
            inside.set()
            release.wait(5)
        return original(*args, **kwargs)

    first._check_input = slow_check
    other = threading.Thread(target=lambda: model.forward(x, training=True))
    other.start()
    assert inside.wait(5)
    try:
        with pytest.raises(ConcurrentTrainingError, match="another thread is inside a training call"):
            model.forward(x, training=True)
        with pytest.raises(ConcurrentTrainingError, match="another thread"):
            model.backward(dy)
        np.asarray(model(x))  # inference is not held up
    finally:
        release.set()
        other.join()
    del first._check_input

    # Interleaved calls: a backward would read what another thread's forward kept.
    model.forward(x, training=True)
    thread = threading.Thread(target=lambda: model.forward(x + 1, training=True))
    thread.start()
    thread.join()
    with pytest.raises(ConcurrentTrainingError, match="what a training forward in another thread kept"):
        model.backward(dy)
    # One thread after another is fine.
    model.forward(x, training=True)
    assert model.backward(dy).shape == x.shape


def test_the_training_guard_survives_copies_and_pickles(rng):
    model = model_with_everything()
    x = rng.standard_normal((8, 12))
    model.forward(x, training=True)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert clone._training_use is not model._training_use
        np.testing.assert_array_equal(clone(x), model(x))
        clone.forward(x, training=True)
        clone.backward(np.ones((8, 5)))


def test_one_class_softmax_is_refused(rng):
    x = rng.standard_normal((4, 3))
    with pytest.raises(ValueError, match=r"1 output per sample.*two or more classes.*BCEWithLogits"):
        nn.SoftmaxCrossEntropy()(x[:, :1], np.zeros(4, np.int64))
    with pytest.raises(ValueError, match="two or more classes"):
        nn.Hinge()(x[:, :1], np.zeros(4, np.int64))
    model = nn.Sequential(nn.Dense(3, 1, dtype=np.float64))
    with pytest.raises(ValueError, match="two or more classes"):
        model.fused_step(x, np.zeros(4, np.int64), nn.SoftmaxCrossEntropy())


def test_loss_value_keeps_nothing(rng):
    loss = nn.SoftmaxCrossEntropy()
    pred, labels = rng.standard_normal((6, 4)), rng.integers(0, 4, 6)
    value = loss.value(pred, labels)
    assert value.shape == () and float(value) == pytest.approx(loss.forward(pred, labels), rel=1e-12)
    grad = loss.backward()
    loss.value(pred + 1, labels)
    assert loss.backward() is grad
