"""fastnn.nn layers: forward and backward of every layer against the reference ops (float32 and
float64, every path), layer semantics (BatchNorm train/eval, Dropout masks), bad input."""

import numpy as np
import pytest

from fastnn import functional as F
from fastnn import nn
from fastnn import reference as R
from fastnn._backend import to_numpy
from fastnn.nn import fusion
from fastnn.nn.dense import DenseSaved
from util import assert_close, randn

DTYPES = [np.float32, np.float64]
ACTIVATIONS = [None, "relu", "leaky_relu", "sigmoid", "tanh", "gelu", "gelu_tanh"]


def on(xp, module):
    return module if xp is np else module.to("cuda")


def host(a):
    return to_numpy(a).astype(np.float64)


def close(actual, expected, dtype):
    """Compare with a float64 host computation: float32 loses ~1e-7 per op."""
    tol = dict(rtol=2e-5, atol=2e-5) if np.dtype(dtype) == np.float32 else dict(rtol=1e-12, atol=1e-12)
    assert to_numpy(actual).dtype == np.dtype(dtype)
    assert_close(host(actual), expected, **tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("bias", [True, False])
def test_dense_matches_reference(xp, path, rng, dtype, activation, bias):
    layer = on(xp, nn.Dense(7, 5, activation, bias=bias, alpha=0.2, dtype=dtype, seed=1))
    layer.weight.data[...] = randn(xp, rng, (7, 5), dtype)
    if bias:
        layer.bias.data[...] = randn(xp, rng, (5,), dtype)
    x, dy = randn(xp, rng, (9, 7), dtype), randn(xp, rng, (9, 5), dtype)
    W, b = host(layer.weight.data), host(layer.bias.data) if bias else 0.0
    name = activation or "identity"
    z = host(x) @ W + b
    close(layer(x), R.activation_forward(z, name, 0.2), dtype)  # inference: the same y, nothing kept
    assert layer._saved is None
    y = layer(x, training=True)
    close(y, R.activation_forward(z, name, 0.2), dtype)

    dx = layer.backward(dy)
    saved = R.activation_forward(z, name, 0.2) if name in F.activations.SAVES_OUTPUT else z
    dz = R.activation_backward(host(dy), saved, name, 0.2)
    close(dx, dz @ W.T, dtype)
    close(layer.weight.grad, host(x).T @ dz, dtype)
    if bias:
        close(layer.bias.grad, dz.sum(axis=0), dtype)
    assert layer.backward(dy, need_input_grad=False) is None
    close(layer.weight.grad, 2 * host(x).T @ dz, dtype)  # accumulated (+=)


@pytest.mark.parametrize("chained", [False, True])
def test_dense_keeps_its_forward_by_name(rng, request, monkeypatch, chained):
    layer = nn.Dense(6, 5, "gelu", dtype=np.float64, seed=0)
    x = rng.standard_normal((4, 6))
    y = layer(x, training=True)
    saved = layer._saved
    assert isinstance(saved, DenseSaved) and saved._fields == ("x", "y", "aux", "activation", "alpha", "x16", "W16")
    assert saved.x is x and saved.y is y and (saved.activation, saved.alpha) == ("gelu", 0.01)
    assert saved.x16 is None and saved.W16 is None  # float64: no bf16 GEMMs
    assert_close(saved.aux, x @ layer.weight.data + layer.bias.data, rtol=1e-12, atol=1e-12)
    relu = nn.Dense(6, 5, "relu", dtype=np.float64, seed=0)
    relu(x, training=True)
    assert relu._saved.aux is None and relu._saved.activation == "relu"  # relu's backward reads y

    # In a Sequential, the activation fused into a Dense is the one it keeps, on either path.
    if chained:
        request.getfixturevalue("chain_threads")
    else:
        monkeypatch.setattr(fusion.FusionPlan, "use_chains", lambda self, x: False)
    model = nn.Sequential(nn.Dense(6, 5, dtype=np.float64, seed=0), nn.LeakyReLU(0.2),
                          nn.Dense(5, 3, "tanh", dtype=np.float64, seed=1))
    y = model(x, training=True)
    assert model._plan.chained == chained
    first, second = model[0]._saved, model[2]._saved
    assert (first.activation, first.alpha) == ("leaky_relu", 0.2)
    assert (second.activation, second.aux) == ("tanh", None)
    assert first.x is x and second.x is first.y and second.y is y
    z = x @ model[0].weight.data + model[0].bias.data
    assert_close(first.aux, z, rtol=1e-12, atol=1e-12)
    assert_close(first.y, np.where(z > 0, z, 0.2 * z), rtol=1e-12, atol=1e-12)


ELEMENTWISE = [
    (nn.ReLU(), "relu", 0.01), (nn.LeakyReLU(0.2), "leaky_relu", 0.2), (nn.Sigmoid(), "sigmoid", 0.01),
    (nn.Tanh(), "tanh", 0.01), (nn.GELU(), "gelu", 0.01), (nn.GELU("tanh"), "gelu_tanh", 0.01),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layer,name,alpha", ELEMENTWISE, ids=[e[1] for e in ELEMENTWISE])
def test_activation_layers_match_reference(xp, path, rng, dtype, layer, name, alpha):
    x, dy = randn(xp, rng, (3, 4, 5), dtype, scale=2.0), randn(xp, rng, (3, 4, 5), dtype)
    y = layer(x, training=True)
    expected = R.activation_forward(host(x), name, alpha)
    close(y, expected, dtype)
    saved = expected if name in F.activations.SAVES_OUTPUT else host(x)
    close(layer.backward(dy), R.activation_backward(host(dy), saved, name, alpha), dtype)
    assert layer.backward(dy, need_input_grad=False) is None


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels", [1, 4])
def test_prelu_layer_learns_its_slope(xp, path, rng, dtype, channels):
    layer = on(xp, nn.PReLU(channels, init=0.3, dtype=dtype))
    assert layer.alpha.shape == (channels,) and float(layer.alpha.data[0]) == pytest.approx(0.3)
    layer.alpha.data[...] = xp.asarray(rng.uniform(0.1, 0.5, channels).astype(dtype))
    x, dy = randn(xp, rng, (6, 4), dtype), randn(xp, rng, (6, 4), dtype)
    alpha = host(layer.alpha.data)
    close(layer(x, training=True), R.prelu_forward(host(x), alpha), dtype)
    dx, dalpha = R.prelu_backward(host(dy), host(x), alpha)
    close(layer.backward(dy), dx, dtype)
    close(layer.alpha.grad, dalpha, dtype)
    assert layer.backward(dy, need_input_grad=False) is None
    close(layer.alpha.grad, 2 * dalpha, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_layer(xp, path, rng, dtype):
    layer = nn.Softmax()
    x, dy = randn(xp, rng, (5, 7), dtype, scale=3.0), randn(xp, rng, (5, 7), dtype)
    y = layer(x, training=True)
    close(y, R.softmax_forward(host(x)), dtype)
    close(layer.backward(dy), R.softmax_backward(host(dy), host(y)), dtype)
    with pytest.raises(ValueError, match="only the last axis"):
        nn.Softmax(dim=0)(x)


def batchnorm_reference(x, gamma, beta, mean, var, eps):
    return gamma * (x - mean) / np.sqrt(var + eps) + beta


@pytest.mark.parametrize("dtype", DTYPES)
def test_batchnorm_layer_training_then_eval(xp, path, rng, dtype):
    layer = on(xp, nn.BatchNorm(6, eps=1e-3, momentum=0.2, dtype=dtype))
    gamma, beta = rng.uniform(0.5, 2, 6), rng.standard_normal(6)
    layer.weight.data[...] = xp.asarray(gamma.astype(dtype))
    layer.bias.data[...] = xp.asarray(beta.astype(dtype))
    running_mean, running_var = np.zeros(6), np.ones(6)
    for _ in range(3):
        x = randn(xp, rng, (10, 6), dtype, scale=3.0) + 1.5
        xs = host(x)
        y = layer.forward(x, training=True)
        close(y, batchnorm_reference(xs, gamma.astype(dtype), beta.astype(dtype), xs.mean(0), xs.var(0), 1e-3),
              dtype)
        running_mean = 0.8 * running_mean + 0.2 * xs.mean(0)
        running_var = 0.8 * running_var + 0.2 * xs.var(0, ddof=1)  # unbiased, as PyTorch
        close(layer.running_mean, running_mean, dtype)
        close(layer.running_var, running_var, dtype)

    x = randn(xp, rng, (4, 6), dtype)
    y = layer.forward(x, training=False)
    close(y, batchnorm_reference(host(x), gamma.astype(dtype), beta.astype(dtype), running_mean, running_var, 1e-3),
          dtype)
    close(layer.running_mean, running_mean, dtype)  # eval updates nothing
    assert layer.forward(x) is not y and layer._saved[0].shape == (10, 6)  # inference keeps nothing
    fresh = on(xp, nn.BatchNorm(6, dtype=dtype))
    fresh.forward(x)
    with pytest.raises(RuntimeError, match=r"needs a training forward first, forward\(x, training=True\)"):
        fresh.backward(randn(xp, rng, (4, 6), dtype))
    single = layer.forward(x[:1], training=False)
    assert single.shape == (1, 6)
    with pytest.raises(ValueError, match=r"more than one sample.*\(1, 6\)"):
        layer.forward(x[:1], training=True)


def test_batchnorm_layer_backward_matches_reference(xp, path, rng):
    layer = on(xp, nn.BatchNorm(5, dtype=np.float64))
    layer.weight.data[...] = xp.asarray(rng.uniform(0.5, 2, 5))
    x, dy = randn(xp, rng, (8, 5), scale=2.0), randn(xp, rng, (8, 5))
    layer(x, training=True)
    dx = layer.backward(dy)
    xs, g, d = host(x), host(layer.weight.data), host(dy)
    xhat = (xs - xs.mean(0)) / np.sqrt(xs.var(0) + 1e-5)
    n = xs.shape[0]
    expected = g / np.sqrt(xs.var(0) + 1e-5) / n * (n * d - d.sum(0) - xhat * (d * xhat).sum(0))
    close(dx, expected, np.float64)
    close(layer.weight.grad, (d * xhat).sum(0), np.float64)
    close(layer.bias.grad, d.sum(0), np.float64)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_layer_masks(xp, rng, dtype):
    p = 0.3
    layer = nn.Dropout(p, seed=1234)
    x = randn(xp, rng, (64, 50), dtype)
    steps = []
    for counter in range(3):
        y = to_numpy(layer.forward(x, training=True))
        keep = to_numpy(F.dropout_mask(x.shape, p, seed=1234, counter=counter))
        close(y, host(x) * keep / (1 - p), dtype)
        dy = randn(xp, rng, x.shape, dtype)
        close(layer.backward(dy), host(dy) * keep / (1 - p), dtype)  # the forward's mask
        steps.append(keep)
    assert layer.counter == 3
    assert not np.array_equal(steps[0], steps[1]) and not np.array_equal(steps[1], steps[2])

    again = nn.Dropout(p, seed=1234)
    for keep in steps:  # the same seed replays the same sequence of masks
        np.testing.assert_array_equal(to_numpy(again.forward(x, training=True)) != 0, keep & (to_numpy(x) != 0))
    assert not np.array_equal(to_numpy(nn.Dropout(p, seed=99).forward(x, training=True)) != 0, steps[0])

    assert layer.forward(x, training=False) is x  # identity, and no step taken
    assert layer.forward(x) is x  # inference is the default
    assert layer.counter == 3
    no_drop = nn.Dropout(0.0)
    assert no_drop.forward(x, training=True) is x and no_drop.backward(x) is x


def test_dropout_statistics(rng):
    p = 0.25
    layer = nn.Dropout(p, seed=7)
    x = np.ones((400, 500))
    y = layer(x, training=True)
    kept = (y != 0).mean()
    bound = 5 * np.sqrt(p * (1 - p) / x.size)
    assert abs(kept - (1 - p)) < bound
    assert abs(y.mean() - 1.0) < bound / (1 - p)  # inverted dropout keeps the expectation
    assert set(np.unique(y)) == {0.0, 1 / (1 - p)}


def test_dropout_seeds_from_rng_are_reproducible():
    a = nn.Dropout(0.5, rng=np.random.default_rng(3))
    b = nn.Dropout(0.5, rng=np.random.default_rng(3))
    assert a.seed == b.seed
    x = np.ones((10, 10))
    np.testing.assert_array_equal(a(x, training=True), b(x, training=True))
    assert nn.Dropout(0.0).forward(x, training=True) is x


@pytest.mark.parametrize("dtype", DTYPES)
def test_residual_identity_and_projection(xp, rng, dtype):
    block = nn.Sequential(nn.Dense(6, 6, seed=1, dtype=dtype), nn.Tanh())
    same = on(xp, nn.Residual(block))
    assert same.projection is None
    x, dy = randn(xp, rng, (5, 6), dtype), randn(xp, rng, (5, 6), dtype)
    close(same(x), host(block(x)) + host(x), dtype)
    close(same(x, training=True), host(block(x)) + host(x), dtype)
    block.forward(x, training=True)
    block_dx = host(block.backward(dy))
    same.zero_grad()
    close(same.backward(dy), block_dx + host(dy), dtype)

    wide = on(xp, nn.Residual(nn.Sequential(nn.Dense(6, 4, seed=2, dtype=dtype), nn.ReLU()), seed=3))
    assert wide.projection is not None and wide.projection.bias is None
    assert wide.projection.weight.shape == (6, 4) and wide.projection.dtype == dtype
    P = host(wide.projection.weight.data)
    h = host(wide.block(x, training=True))
    dy = randn(xp, rng, (5, 4), dtype)
    block_dx = host(wide.block.backward(dy))
    wide.zero_grad()
    close(wide(x, training=True), h + host(x) @ P, dtype)
    close(wide.backward(dy), block_dx + host(dy) @ P.T, dtype)
    close(wide.projection.weight.grad, host(x).T @ host(dy), dtype)


def test_residual_refuses_shape_mismatch_it_cannot_see():
    class Widen(nn.Module):
        def forward(self, x, training=False):
            return np.concatenate([x, x], axis=1)

    with pytest.raises(ValueError, match=r"maps shape \(2, 3\) to \(2, 6\)"):
        nn.Residual(Widen())(np.ones((2, 3)))


def test_sequential_runs_the_layers_in_order(rng):
    layers = [nn.Dense(4, 6, seed=1, dtype="float64"), nn.Sigmoid(), nn.Dense(6, 3, seed=2, dtype="float64")]
    model = nn.Sequential(*layers, fuse=False)
    x = rng.standard_normal((5, 4))
    expected = x
    for layer in layers:
        expected = layer(expected).copy()
    assert_close(model(x), expected)
    assert len(model) == 3 and model[1] is layers[1] and list(model) == layers
    assert nn.Sequential()(x) is x


def test_sequential_refuses_bad_layers():
    relu = nn.ReLU()
    with pytest.raises(ValueError, match="appears twice"):
        nn.Sequential(relu, relu)
    with pytest.raises(TypeError, match="layer 1 must be a fastnn.nn.Module"):
        nn.Sequential(relu, lambda x: x)


BAD_INPUTS = [
    (lambda: nn.Dense(784, 256)(np.ones((8, 100), np.float32)), ValueError,
     r"^Dense\(784, 256\): input has 100 features, expected 784"),
    (lambda: nn.Dense(3, 2)(np.ones((4, 3), np.int64)), TypeError, r"Dense\(3, 2\): input: expected dtype float32 or float64, got int64.*astype"),
    (lambda: nn.Dense(3, 2)(np.ones((4, 3), np.float64)), TypeError, r"input: expected dtype float32 \(the dtype of the parameters\), got float64"),
    (lambda: nn.Dense(3, 2)(np.ones(3, np.float32)), ValueError, r"input: expected a 2-d array, got shape \(3,\)"),
    (lambda: nn.Dense(3, 2)([[1.0, 2.0, 3.0]]), TypeError, r"Dense\(3, 2\): input must be an array"),
    (lambda: nn.ReLU()(np.ones(3, np.float16)), TypeError, r"ReLU\(\): input: expected dtype float32 or float64, got float16"),
    (lambda: nn.BatchNorm(4)(np.ones((5, 3), np.float32)), ValueError, r"BatchNorm\(4.*3 features, expected 4"),
    (lambda: nn.PReLU(3)(np.ones((2, 4), np.float32)), ValueError, r"needs 3 channels on axis 1"),
    (lambda: nn.Dense(3, 2).backward(np.ones((1, 2), np.float32)), RuntimeError, "backward needs a training forward first"),
    (lambda: nn.Dense(3, 2, "swish"), ValueError, "activation must be None or one of"),
    (lambda: nn.Dense(3, 2, init="lecun"), ValueError, "init must be a callable or one of"),
    (lambda: nn.Dense(0, 2), ValueError, "in_features must be a positive integer"),
    (lambda: nn.Dense(3, 2, dtype=np.int32), TypeError, "Dense: dtype: expected float32 or float64"),
    (lambda: nn.Dropout(1.0), ValueError, r"Dropout: p must be < 1"),
    (lambda: nn.Dropout(-0.1), ValueError, r"Dropout: p must be >= 0"),
    (lambda: nn.BatchNorm(4, momentum=2), ValueError, "momentum must be <= 1"),
    (lambda: nn.GELU("erf"), ValueError, "approximate must be 'none' or 'tanh'"),
    (lambda: nn.Dense(3, 2, seed=1, rng=np.random.default_rng()), ValueError, "not both"),
]


@pytest.mark.parametrize("call,error,message", BAD_INPUTS, ids=[m[:40] for _, _, m in BAD_INPUTS])
def test_bad_input_is_refused_with_a_clear_message(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_errors_inside_a_model_name_the_layer_position():
    model = nn.Sequential(nn.Dense(4, 8), nn.ReLU(), nn.Sequential(nn.Dense(8, 3)))
    model(np.ones((2, 4), np.float32), training=True)
    with pytest.raises(ValueError, match=r"^\(0\) Dense\(4, 8\): input has 5 features, expected 4"):
        model(np.ones((2, 5), np.float32))
    with pytest.raises(ValueError, match=r"^\(2.0\) Dense\(8, 3\): dout: expected shape \(2, 3\), got \(2, 4\)"):
        model.backward(np.ones((2, 4), np.float32))


def test_backward_checks_the_gradient_against_the_output():
    layer = nn.Tanh()
    layer(np.ones((2, 3), np.float32), training=True)
    with pytest.raises(TypeError, match=r"Tanh\(\): dout: expected dtype float32"):
        layer.backward(np.ones((2, 3), np.float64))


def test_nan_check_is_opt_in():
    model = nn.Sequential(nn.Dense(3, 2), nn.ReLU())
    x = np.ones((4, 3), np.float32)
    x[2, 1] = np.nan
    with np.errstate(invalid="ignore"):
        assert np.isnan(model(x)).any()  # off by default: no pass over the data
    model.check_nan()
    with pytest.raises(ValueError, match=r"^\(0\) Dense\(3, 2\): input contains NaN \(first at index \(2, 1\)"):
        model(x)
    x[2, 1] = np.inf
    with pytest.raises(ValueError, match="contains infinity"):
        model(x)
    model.check_nan(False)
    with np.errstate(invalid="ignore"):
        model(x)


def test_non_contiguous_inputs_are_copied(rng):
    layer = nn.Dense(3, 4, dtype=np.float64, seed=0)
    x = rng.standard_normal((3, 6))
    view = x.T[::2]  # (3, 3), strided
    assert not view.flags.c_contiguous
    assert_close(layer(view, training=True), np.ascontiguousarray(view) @ layer.weight.data)
    dy = np.asfortranarray(rng.standard_normal((3, 4)))
    assert_close(layer.backward(dy), dy @ layer.weight.data.T)
