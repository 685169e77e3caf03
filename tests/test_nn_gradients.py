"""float64 finite-difference checks of every layer's backward (input and parameter gradients)
and of whole models: Dense + BatchNorm + Residual + every activation + dropout (with its mask
held fixed) under every loss, fused and unfused."""

import numpy as np
import pytest

from fastnn import nn
from util import assert_grad_close, away_from_zero, numeric_grad, randn

F64 = np.float64


def on(xp, module):
    return module if xp is np else module.to("cuda")


def hold_dropout_masks(model):
    """Rewind every Dropout so that the next forward draws the same masks as the last one."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.counter = 0


def check_module(module, x, dy):
    """d/d(x, parameters) of sum(module(x) * dy) in training: backward against centred
    differences."""
    def run(v):
        hold_dropout_masks(module)
        return module.forward(v, training=True)

    module.zero_grad()
    run(x)
    dx = module.backward(dy)
    analytic = [p.grad.copy() for p in module.parameters()]
    assert_grad_close(dx, numeric_grad(run, x, dy))
    for p, grad in zip(module.parameters(), analytic):
        assert_grad_close(grad, numeric_grad(lambda _: run(x), p.data, dy))


LAYERS = {
    "dense": lambda: nn.Dense(4, 3, dtype=F64, seed=0),
    "dense_nobias": lambda: nn.Dense(4, 3, bias=False, dtype=F64, seed=0),
    "dense_relu": lambda: nn.Dense(4, 3, "relu", dtype=F64, seed=0),
    "dense_leaky_relu": lambda: nn.Dense(4, 3, "leaky_relu", alpha=0.2, dtype=F64, seed=0),
    "dense_sigmoid": lambda: nn.Dense(4, 3, "sigmoid", dtype=F64, seed=0),
    "dense_tanh": lambda: nn.Dense(4, 3, "tanh", dtype=F64, seed=0),
    "dense_gelu": lambda: nn.Dense(4, 3, "gelu", dtype=F64, seed=0),
    "dense_gelu_tanh": lambda: nn.Dense(4, 3, "gelu_tanh", dtype=F64, seed=0),
    "relu": lambda: nn.ReLU(),
    "leaky_relu": lambda: nn.LeakyReLU(0.1),
    "prelu": lambda: nn.PReLU(dtype=F64),
    "prelu_channels": lambda: nn.PReLU(4, init=0.1, dtype=F64),
    "sigmoid": lambda: nn.Sigmoid(),
    "tanh": lambda: nn.Tanh(),
    "gelu": lambda: nn.GELU(),
    "gelu_tanh": lambda: nn.GELU("tanh"),
    "softmax": lambda: nn.Softmax(),
    "batchnorm": lambda: nn.BatchNorm(4, dtype=F64),
    "dropout": lambda: nn.Dropout(0.4, seed=3),
    "residual": lambda: nn.Residual(nn.Sequential(nn.Dense(4, 4, dtype=F64, seed=1), nn.Tanh())),
    "residual_projection": lambda: nn.Residual(nn.Sequential(nn.Dense(4, 3, "relu", dtype=F64, seed=1)), seed=2),
    "sequential_bn_relu": lambda: nn.Sequential(nn.BatchNorm(4, dtype=F64), nn.ReLU()),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_gradients_finite_differences(xp, path, rng, name):
    layer = on(xp, LAYERS[name]())
    x = away_from_zero(xp, rng, (6, 4))
    y = layer.forward(x)
    check_module(layer, x, randn(xp, rng, y.shape))


def model(out, *, fuse=True, seed=0):
    """Every layer kind: BatchNorm (fused with ReLU), residual blocks with and without a
    projection, every activation (as layers and as Dense(activation=)), a live dropout."""
    rng = np.random.default_rng(seed)
    return nn.Sequential(
        nn.Dense(5, 8, dtype=F64, rng=rng), nn.BatchNorm(8, dtype=F64), nn.ReLU(),
        nn.Residual(nn.Sequential(nn.Dense(8, 8, dtype=F64, rng=rng), nn.Tanh())),
        nn.Dense(8, 7, dtype=F64, rng=rng), nn.GELU(),
        nn.Dropout(0.3, seed=1),
        nn.Residual(nn.Sequential(nn.Dense(7, 6, "sigmoid", dtype=F64, rng=rng), nn.BatchNorm(6, dtype=F64)),
                    rng=rng),
        nn.Dense(6, 6, dtype=F64, rng=rng), nn.LeakyReLU(0.1), nn.PReLU(6, dtype=F64),
        nn.Dense(6, 6, "gelu_tanh", dtype=F64, rng=rng), nn.Dense(6, 6, dtype=F64, rng=rng), nn.Sigmoid(),
        nn.Dense(6, 6, "leaky_relu", dtype=F64, rng=rng), nn.Softmax(), nn.GELU("tanh"),
        nn.Dense(6, out, dtype=F64, rng=rng),
        fuse=fuse)


def targets(xp, rng, loss, n, classes):
    if loss.labels:
        return xp.asarray(rng.integers(0, classes, n))
    if isinstance(loss, nn.BCEWithLogits):
        return xp.asarray(rng.uniform(0, 1, (n, classes)))
    return randn(xp, rng, (n, classes))


LOSSES = [nn.SoftmaxCrossEntropy, nn.BCEWithLogits, nn.MSE, nn.Hinge, nn.L1]


@pytest.mark.parametrize("loss_class,fuse", [(c, True) for c in LOSSES] + [(nn.SoftmaxCrossEntropy, False)],
                         ids=[c.__name__ for c in LOSSES] + ["SoftmaxCrossEntropy-unfused"])
def test_whole_model_gradients_finite_differences(xp, path, rng, loss_class, fuse):
    net = on(xp, model(4, fuse=fuse))
    loss = loss_class()
    x = randn(xp, rng, (10, 5))
    t = targets(xp, rng, loss, 10, 4)

    def objective(v):
        hold_dropout_masks(net)
        return np.asarray(loss.forward(net.forward(v, training=True), t))

    objective(x)
    dx = net.backward(loss.backward())
    analytic = [p.grad.copy() for p in net.parameters()]
    one = np.ones(())
    assert_grad_close(dx, numeric_grad(objective, x, one))
    for p, grad in zip(net.parameters(), analytic):
        assert_grad_close(grad, numeric_grad(lambda _: objective(x), p.data, one), rtol=1e-5)
