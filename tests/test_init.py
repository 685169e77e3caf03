"""Initializers: the statistics each promises (within sampling bounds), orthogonality,
reproducibility from seeds, Dense(init=...), LSUV reaching unit variance, and the modules'
imports (``init`` needs no layer; no cycle among ``fastnn.nn``'s modules)."""

import ast
import math
import pathlib
import warnings

import numpy as np
import pytest

from fastnn import nn
from fastnn._backend import to_numpy
from fastnn.nn import init

SHAPE = (400, 300)  # 120,000 draws: the sample variance is within ~1.5% with certainty


def assert_variance(w, expected, distribution="normal"):
    """The sample variance of w is expected within 6 standard errors (and the mean ~0)."""
    w = to_numpy(w).astype(np.float64).ravel()
    kurtosis = 3.0 if distribution == "normal" else 1.8
    stderr = expected * math.sqrt((kurtosis - 1) / w.size)
    assert abs(w.var() - expected) < 6 * stderr, (w.var(), expected)
    assert abs(w.mean()) < 6 * math.sqrt(expected / w.size)


@pytest.mark.parametrize("distribution", ["normal", "uniform"])
@pytest.mark.parametrize("gain", [1.0, 2.5])
def test_xavier_variance(xp, distribution, gain):
    w = xp.empty(SHAPE, np.float32)
    assert init.xavier(w, gain, distribution=distribution, seed=0) is w
    assert_variance(w, gain**2 * 2 / sum(SHAPE), distribution)
    if distribution == "uniform":
        bound = gain * math.sqrt(6 / sum(SHAPE))
        assert float(abs(w).max()) <= bound * (1 + 1e-6) and float(abs(w).max()) > 0.99 * bound
    assert init.glorot is init.xavier


@pytest.mark.parametrize("distribution", ["normal", "uniform"])
@pytest.mark.parametrize("mode", ["fan_in", "fan_out"])
def test_he_variance(xp, distribution, mode):
    w = xp.empty(SHAPE, np.float64)
    init.he(w, distribution=distribution, mode=mode, seed=1)
    fan = SHAPE[0] if mode == "fan_in" else SHAPE[1]
    assert_variance(w, 2 / fan, distribution)
    assert init.kaiming is init.he
    init.he(w, gain=1.0, seed=1)
    assert_variance(w, 1 / SHAPE[0])


def test_normal_and_uniform(xp):
    w = xp.empty(SHAPE, np.float32)
    init.normal(w, seed=2)
    assert_variance(w, 0.01**2)
    init.normal(w, 0.5, mean=3.0, seed=2)
    assert abs(float(w.mean()) - 3.0) < 0.01
    init.uniform(w, -2.0, 4.0, seed=3)
    assert float(w.min()) >= -2.0 and float(w.max()) < 4.0
    assert abs(float(w.mean()) - 1.0) < 0.05
    with pytest.raises(ValueError, match="low must be below high"):
        init.uniform(w, 1.0, 1.0)


@pytest.mark.parametrize("shape", [(64, 16), (16, 64), (32, 32)])
def test_orthogonal(xp, shape):
    w = xp.empty(shape, np.float64)
    init.orthogonal(w, gain=1.5, seed=4)
    w = to_numpy(w)
    small = min(shape)
    gram = w.T @ w if shape[0] >= shape[1] else w @ w.T
    np.testing.assert_allclose(gram, 1.5**2 * np.eye(small), atol=1e-12)


def test_orthogonal_is_uniformly_signed():
    # Without the sign fix of diag(R), QR of a Gaussian matrix gives a biased Q (e.g. a
    # positive diagonal trend from Householder conventions). With it, Q's diagonal averages 0.
    diagonals = [np.diag(init.orthogonal(np.empty((8, 8)), seed=s)) for s in range(400)]
    assert abs(np.mean(diagonals)) < 0.05


def test_zeros_warns_for_weights_only():
    with pytest.warns(UserWarning, match="stay identical"):
        init.zeros(np.ones((3, 2)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        b = init.zeros(np.ones(3))
    assert not b.any()
    with pytest.warns(UserWarning, match="symmetry"):
        layer = nn.Dense(3, 2, init="zeros")
    assert not layer.weight.data.any()


def test_seeds_and_generators(xp):
    a = init.he(xp.empty((5, 4)), seed=11)
    b = init.he(xp.empty((5, 4)), seed=11)
    np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    np.testing.assert_array_equal(to_numpy(a), init.he(np.empty((5, 4)), seed=11))  # same on any device
    rng = np.random.default_rng(11)
    first, second = init.he(np.empty((5, 4)), rng=rng), init.he(np.empty((5, 4)), rng=rng)
    assert not np.array_equal(first, second)  # the generator advances
    with pytest.raises(ValueError, match="not both"):
        init.he(np.empty((5, 4)), seed=1, rng=rng)
    with pytest.raises(TypeError, match="numpy.random.Generator"):
        init.he(np.empty((5, 4)), rng=np.random.RandomState(0))
    with pytest.raises(ValueError, match=r"2-d weight.*shape \(5,\)"):
        init.he(np.empty(5))


def test_initializers_fill_parameters_in_place():
    p = nn.Parameter(np.zeros((4, 3)))
    data = p.data
    assert init.orthogonal(p, seed=0) is p and p.data is data and data.any()


@pytest.mark.parametrize("name,variance", [
    ("he", lambda i, o: 2 / i), ("kaiming_uniform", lambda i, o: 2 / i), ("xavier", lambda i, o: 2 / (i + o)),
    ("glorot_uniform", lambda i, o: 2 / (i + o)), ("normal", lambda i, o: 1e-4),
    ("orthogonal", lambda i, o: 1 / i),  # orthonormal columns of length in: entries of variance 1/in
])
def test_dense_init_names(name, variance):
    layer = nn.Dense(*SHAPE, init=name, seed=5)
    w = layer.weight.data
    assert_variance(w, variance(*SHAPE), "uniform" if "uniform" in name else "normal")
    assert not layer.bias.data.any()
    np.testing.assert_array_equal(nn.Dense(*SHAPE, init=name, seed=5).weight.data, w)


def test_dense_init_callable_gets_the_generator():
    seen = []

    def constant(w, rng):
        seen.append(rng)
        w[...] = 0.5

    layer = nn.Dense(3, 2, init=constant, seed=9)
    assert isinstance(seen[0], np.random.Generator)
    assert (layer.weight.data == 0.5).all()


def dense_outputs(model, x):
    """The variance of each Dense layer's x @ W + b on the batch, in forward order (the model
    has no BatchNorm or Dropout: training and inference agree)."""
    model.forward(x, training=True)
    dense = [m for m in model.modules() if isinstance(m, nn.Dense)]
    variances = []
    for layer in dense:
        z = layer._saved.x.astype(np.float64) @ layer.weight.data
        variances.append(float((z if layer.bias is None else z + layer.bias.data).var()))
    return variances


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lsuv_reaches_unit_variance(dtype):
    rng = np.random.default_rng(0)
    model = nn.Sequential(
        nn.Dense(20, 64, "tanh", dtype=dtype), nn.Dense(64, 64, "relu", dtype=dtype),
        nn.Dense(64, 32, dtype=dtype), nn.GELU(),
        nn.Residual(nn.Sequential(nn.Dense(32, 16, "sigmoid", dtype=dtype)), seed=1),
        nn.Dense(16, 10, dtype=dtype))
    x = (rng.standard_normal((256, 20)) * 5).astype(dtype)
    assert any(abs(v - 1) > 0.5 for v in dense_outputs(model, x))
    assert nn.lsuv(model, x, tol=0.05, seed=3) is model
    variances = dense_outputs(model, x)
    assert len(variances) == 6  # the Residual's projection included
    assert all(abs(v - 1) < 0.05 for v in variances), variances
    w = model[2].weight.data.astype(np.float64)  # orthogonal start, then only rescaled
    gram = w.T @ w
    np.testing.assert_allclose(gram / gram[0, 0], np.eye(32), atol=1e-5)


def test_lsuv_refuses_models_without_dense_layers():
    with pytest.raises(ValueError, match="no Dense layer"):
        nn.lsuv(nn.Sequential(nn.ReLU()), np.ones((4, 3), np.float32))
    with pytest.raises(ValueError, match="tol must be > 0"):
        nn.lsuv(nn.Dense(3, 3), np.ones((4, 3), np.float32), tol=0)


def nn_imports() -> dict[str, set[str]]:
    """{module of fastnn.nn: the fastnn.nn modules it imports, at any depth of its code}, read
    from the sources (``__init__``, which imports them all, left out)."""
    folder = pathlib.Path(nn.__file__).parent
    names = {path.stem for path in folder.glob("*.py")} - {"__init__"}
    graph = {}
    for name in names:
        found = set()
        for node in ast.walk(ast.parse((folder / f"{name}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                found |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
        graph[name] = found & names
    return graph


def test_init_needs_no_layer_and_nn_has_no_import_cycle():
    graph = nn_imports()
    assert graph["init"] == {"parameter"}
    assert {"dense", "init"} <= graph["lsuv_init"] and "init" in graph["dense"]
    assert nn.lsuv.__module__ == "fastnn.nn.lsuv_init" and not hasattr(init, "lsuv")
    done, active = set(), []

    def visit(name):
        assert name not in active, f"import cycle: {' -> '.join(active[active.index(name):] + [name])}"
        if name not in done:
            active.append(name)
            for imported in sorted(graph[name]):
                visit(imported)
            active.pop()
            done.add(name)

    for name in sorted(graph):
        visit(name)
