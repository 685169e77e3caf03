"""Models as a whole: fused vs unfused Sequential, skipping the input gradient, gradient
accumulation, parameter names, to(device/dtype), state_dict round trips and refusals, buffer
reuse, repr."""

import numpy as np
import pytest

from fastnn import nn
from fastnn._backend import to_numpy
from fastnn.nn import fusion
from util import assert_close, randn

DTYPES = [np.float32, np.float64]


def on(xp, module):
    return module if xp is np else module.to("cuda")


def mlp(dtype=np.float32, *, fuse=True, seed=0):
    """Every fusable pair (Dense + each activation layer, BatchNorm + ReLU) and a few that are
    not (Dense(activation=) + activation layer, PReLU, Softmax)."""
    rng = np.random.default_rng(seed)
    return nn.Sequential(
        nn.Dense(12, 16, dtype=dtype, rng=rng), nn.ReLU(),
        nn.Dense(16, 16, dtype=dtype, rng=rng), nn.BatchNorm(16, dtype=dtype), nn.ReLU(),
        nn.Dense(16, 16, dtype=dtype, rng=rng), nn.GELU(),
        nn.Dense(16, 16, dtype=dtype, rng=rng), nn.GELU("tanh"),
        nn.Dense(16, 16, dtype=dtype, rng=rng), nn.Sigmoid(),
        nn.Dense(16, 16, dtype=dtype, rng=rng), nn.Tanh(),
        nn.Dense(16, 16, dtype=dtype, rng=rng), nn.LeakyReLU(0.2),
        nn.Residual(nn.Sequential(nn.Dense(16, 16, "tanh", dtype=dtype, rng=rng), nn.ReLU())),
        nn.Dense(16, 10, dtype=dtype, rng=rng), nn.PReLU(dtype=dtype), nn.Dense(10, 10, dtype=dtype, rng=rng),
        nn.Softmax(), nn.Dense(10, 5, dtype=dtype, rng=rng),
        fuse=fuse)


def test_sequential_fuses_what_it_can():
    model = mlp()
    skipped = sorted(model._plan.fused_into)
    assert skipped == [1, 4, 6, 8, 10, 12, 14]
    assert model._plan.fused_into[4] == 3  # BatchNorm + ReLU
    assert all(model._plan.fused_into[i] == i - 1 for i in skipped)
    assert mlp(fuse=False)._plan.fused_into == {}
    assert "runs fused into (3)" in repr(model)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_equals_unfused(xp, path, rng, dtype):
    fused, unfused = on(xp, mlp(dtype)), on(xp, mlp(dtype, fuse=False))
    for step in range(2):
        x = randn(xp, rng, (32, 12), dtype)
        dy = randn(xp, rng, (32, 5), dtype)
        for training in (True, False):
            assert_close(fused.forward(x, training=training), unfused.forward(x, training=training))
        fused.forward(x, training=True)
        unfused.forward(x, training=True)
        assert_close(fused.backward(dy), unfused.backward(dy))
        for (name, a), (_, b) in zip(fused.named_parameters(), unfused.named_parameters()):
            assert_close(a.grad, b.grad, err_msg=name)
        for (name, a), (_, b) in zip(fused.named_buffers(), unfused.named_buffers()):
            assert_close(a, b, err_msg=name)


@pytest.mark.parametrize("chained", [False, True])
def test_skipping_the_input_gradient(rng, request, monkeypatch, chained):
    if chained:
        request.getfixturevalue("chain_threads")
    else:
        monkeypatch.setattr(fusion.FusionPlan, "use_chains", lambda self, x: False)
    model = nn.Sequential(nn.Dropout(0.2, seed=0), nn.Dense(6, 4, dtype=np.float64, seed=1), nn.ReLU(),
                          nn.Dense(4, 3, dtype=np.float64, seed=2))
    x, dy = rng.standard_normal((5, 6)), rng.standard_normal((5, 3))
    model(x, training=True)
    assert model._plan.chained == chained
    model.backward(dy)
    grads = [p.grad.copy() for p in model.parameters()]
    model.zero_grad()
    calls = []
    model[0].backward = lambda *a, **k: calls.append("dropout")
    if chained:  # both Dense layers go backward as one chain
        run = model._plan.runs[1]
        chain_backward = run.backward
        run.backward = lambda dout, need: calls.append(need) or chain_backward(dout, need)
    else:
        dense_backward = model[1]._backward  # what Sequential calls, fused with the Dense above
        model[1]._backward = lambda dout, **k: calls.append(k["need_input_grad"]) or dense_backward(dout, **k)
    assert model.backward(dy, need_input_grad=False) is None
    assert calls == [False]  # the dropout before it is not run backward
    for p, grad in zip(model.parameters(), grads):
        assert_close(p.grad, grad)
    assert nn.Sequential(nn.ReLU()).backward(dy, need_input_grad=False) is None


def test_parameter_gradients_accumulate_until_zero_grad(xp, rng):
    model = on(xp, mlp(np.float64))
    x, dy = randn(xp, rng, (8, 12)), randn(xp, rng, (8, 5))
    model(x, training=True)
    model.backward(dy)
    once = [to_numpy(p.grad).copy() for p in model.parameters()]
    assert all(np.abs(g).sum() > 0 for g in once)
    model(x, training=True)
    model.backward(dy)
    for p, g in zip(model.parameters(), once):
        assert_close(p.grad, 2 * g)
    model.zero_grad()
    assert all(not to_numpy(p.grad).any() for p in model.parameters())


def test_parameter_and_module_names():
    inner = nn.Sequential(nn.Dense(3, 3), nn.PReLU())
    model = nn.Sequential(nn.Dense(2, 3), nn.ReLU(), nn.PReLU(), nn.Residual(inner), nn.BatchNorm(3))
    names = [name for name, _ in model.named_parameters()]
    assert names == ["0.weight", "0.bias", "2.alpha", "3.block.0.weight", "3.block.0.bias", "3.block.1.alpha",
                     "4.weight", "4.bias"]
    assert [p.name for p in model.parameters()] == names
    assert [name for name, _ in model.named_buffers()] == ["4.running_mean", "4.running_var"]
    assert inner[0].qualname == "3.block.0"
    assert model.parameter_count() == 6 + 3 + 1 + 12 + 1 + 6
    assert nn.Dense(2, 2).weight.name == "weight"


def test_shared_parameters_are_listed_once():
    a = nn.Dense(3, 3)
    b = nn.Dense(3, 3)
    b.weight = a.weight
    model = nn.Sequential(a, b)
    assert len(model.parameters()) == 3


def test_to_float64_converts_parameters_buffers_and_grads(rng):
    model = mlp(np.float32)
    x = rng.standard_normal((8, 12)).astype(np.float32)
    model(x, training=True)
    model.backward(np.ones((8, 5), np.float32))
    before = {name: p.data.copy() for name, p in model.named_parameters()}
    grads = {name: p.grad.copy() for name, p in model.named_parameters()}
    params = model.parameters()
    assert model.to(dtype=np.float64) is model
    assert model.dtype == np.float64 and model.parameters() == params  # the same Parameter objects
    for name, p in model.named_parameters():
        assert p.data.dtype == p.grad.dtype == np.float64
        np.testing.assert_array_equal(p.data, before[name])
        np.testing.assert_array_equal(p.grad, grads[name])
    assert all(b.dtype == np.float64 for _, b in model.named_buffers())
    with pytest.raises(RuntimeError, match="backward needs a training forward first"):
        model.backward(np.ones((8, 5)))
    assert model(x.astype(np.float64)).dtype == np.float64
    with pytest.raises(TypeError, match=r"input: expected dtype float64 \(the dtype of the parameters\), got float32"):
        model(x)
    assert model.to("float32").dtype == np.float32
    with pytest.raises(TypeError, match="expected float32 or float64"):
        model.to(dtype=np.int32)
    with pytest.raises(ValueError, match="device must be 'cpu', 'cuda' or 'cuda:N'"):
        model.to("tpu")


@pytest.mark.gpu
def test_to_cuda_and_back(rng):
    import cupy

    model = mlp(np.float32)
    x = rng.standard_normal((8, 12)).astype(np.float32)
    expected = model(x).copy()
    model.to("cuda")
    assert model.device == "cuda:0"
    assert all(isinstance(p.data, cupy.ndarray) and isinstance(p.grad, cupy.ndarray) for p in model.parameters())
    assert all(isinstance(b, cupy.ndarray) for _, b in model.named_buffers())
    assert_close(model(cupy.asarray(x)), expected)
    with pytest.raises(ValueError, match="is on cpu but the parameters on cuda:0"):
        model(x)
    model.to("cpu")
    assert all(isinstance(p.data, np.ndarray) for p in model.parameters())
    assert_close(model(x), expected)


def test_state_dict_round_trip(xp, rng):
    model = on(xp, mlp(np.float64))
    model(randn(xp, rng, (16, 12)))  # moves the BatchNorm running statistics away from 0 and 1
    state = model.state_dict()
    names = [n for n, _ in model.named_parameters()]
    assert list(state) == names[:6] + ["3.running_mean", "3.running_var"] + names[6:]
    x = randn(xp, rng, (4, 12))
    expected = to_numpy(model.forward(x, training=False)).copy()

    other = on(xp, mlp(np.float64, seed=1))
    addresses = [id(p.data) for p in other.parameters()]
    assert not np.allclose(to_numpy(other.forward(x, training=False)), expected)
    assert other.load_state_dict(state) == ([], [])
    assert [id(p.data) for p in other.parameters()] == addresses  # loaded in place
    assert_close(other.forward(x, training=False), expected)
    state["0.weight"][...] = 0  # a copy: the model does not change
    assert to_numpy(model[0].weight.data).any()

    host_state = {k: to_numpy(v) for k, v in model.state_dict().items()}
    fresh = on(xp, mlp(np.float64, seed=2))
    fresh.load_state_dict(host_state)  # NumPy values load into a model on any device
    assert_close(fresh.forward(x, training=False), expected)


def test_load_state_dict_refuses_mismatches_and_changes_nothing(rng):
    model = mlp(np.float32)
    before = model.state_dict()
    good = mlp(np.float32, seed=5).state_dict()
    bad = dict(good)
    bad["0.weight"] = np.zeros((16, 12), np.float32)
    bad["2.bias"] = good["2.bias"].astype(np.float64)
    del bad["3.running_var"]
    bad["99.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError) as info:
        model.load_state_dict(bad)
    message = str(info.value)
    assert "nothing was loaded" in message
    assert "0.weight: shape (16, 12) in the state, (12, 16) in the model" in message
    assert "2.bias: dtype float64 in the state, float32 in the model" in message
    assert "3.running_var: missing from the state" in message
    assert "99.weight: not in the model" in message
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[name])

    partial = {k: v for k, v in good.items() if k != "3.running_var"}
    partial["extra"] = np.zeros(1, np.float32)
    result = model.load_state_dict(partial, strict=False)
    assert result.missing_keys == ["3.running_var"] and result.unexpected_keys == ["extra"]
    np.testing.assert_array_equal(model[0].weight.data, good["0.weight"])
    with pytest.raises(ValueError, match="0.weight: shape"):
        model.load_state_dict(bad, strict=False)  # shapes and dtypes are checked either way


def test_returned_arrays_are_fresh_unless_reuse_is_asked(rng):
    model = mlp(np.float64)
    loss = nn.MSE()
    x1, x2 = rng.standard_normal((8, 12)), rng.standard_normal((8, 12))
    t = rng.standard_normal((8, 5))
    y1 = model(x1, training=True)
    kept = y1.copy()
    inner = model[0]._workspace["y"]
    y2 = model(x2, training=True)
    np.testing.assert_array_equal(y1, kept)  # a result held by the caller stays valid
    assert model[0]._workspace["y"] is inner  # the intermediate buffers are reused
    loss(y2, t)
    g1 = loss.backward()
    dx1 = model.backward(g1)
    loss(y2, t)
    assert loss.backward() is not g1 and model.backward(loss.backward()) is not dx1

    model.reuse_outputs()
    loss.reuse_outputs()
    y3 = model(x1, training=True)
    assert model(x2, training=True) is y3
    assert model(x2) is not y3 and model[0]._workspace["y"] is inner  # inference writes into nothing kept
    loss(y3, t)
    grad = loss.backward()
    dx = model.backward(grad)
    loss(y3, t)
    assert loss.backward() is grad and model.backward(grad) is dx
    model.reuse_outputs(False)
    assert model(x1, training=True) is not model(x1, training=True)


def test_a_training_step_allocates_no_new_buffers(rng):
    model = mlp(np.float32).reuse_outputs()
    loss = nn.SoftmaxCrossEntropy().reuse_outputs()
    x = rng.standard_normal((16, 12)).astype(np.float32)
    labels = rng.integers(0, 5, 16)

    def step():
        loss(model(x, training=True), labels)
        model.backward(loss.backward(), need_input_grad=False)
        return [id(a) for m in [*model.modules(), loss] for a in m._workspace.values()]

    first = step()
    assert step() == first


def test_repr_shows_layers_counts_and_totals():
    model = nn.Sequential(nn.Dense(784, 256, "relu"), nn.BatchNorm(256), nn.ReLU(), nn.Dropout(0.5),
                          nn.Residual(nn.Sequential(nn.Dense(256, 128), nn.GELU())), nn.Dense(128, 10))
    text = repr(model)
    lines = text.splitlines()
    assert lines[0] == "Sequential("
    assert lines[1] == "  (0): Dense(784, 256, activation='relu')  # 200,960 parameters"
    assert lines[2] == "  (1): BatchNorm(256, eps=1e-05, momentum=0.1)  # 512 parameters"
    assert lines[3] == "  (2): ReLU()  # runs fused into (1)"
    assert lines[4] == "  (3): Dropout(p=0.5)"
    assert "(projection): Dense(256, 128, bias=False)  # 32,768 parameters" in text
    assert "(1): GELU()  # runs fused into (0)" in text
    total = 200960 + 512 + 256 * 128 + 128 + 256 * 128 + 1290
    assert lines[-1] == f")  # {total:,} parameters (float32, cpu)"
    assert repr(nn.Dense(3, 2)) == "Dense(3, 2)  # 8 parameters (float32, cpu)"
    assert repr(nn.LeakyReLU(0.2)) == "LeakyReLU(alpha=0.2)"
    assert repr(nn.SoftmaxCrossEntropy()) == "SoftmaxCrossEntropy()"
