"""Sequential's backward fused across adjacent Dense layers (the upper layer applies the lower
one's activation derivative and bias gradient to its dx): the same gradients as unfused, for
every activation, with and without biases, on every path."""

from __future__ import annotations

import numpy as np
import pytest

from fastnn import nn
from fastnn._backend import to_numpy
from util import assert_close, randn

ACTIVATIONS = ["relu", "leaky_relu", "sigmoid", "tanh", "gelu", "gelu_tanh", None]


def _chain(fuse: bool, bias: bool):
    layers = [nn.Dense(5 + k, 6 + k, activation, bias=bias or k % 2 == 0, alpha=0.2, dtype=np.float64, seed=k)
              for k, activation in enumerate(ACTIVATIONS)]
    return nn.Sequential(*layers, nn.Dense(6 + len(ACTIVATIONS) - 1, 3, dtype=np.float64, seed=99), fuse=fuse)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("need_input_grad", [True, False])
def test_fused_backward_matches_unfused(xp, path, rng, bias, need_input_grad):
    fused, unfused = _chain(True, bias), _chain(False, bias)
    assert fused._plan.backward_fusion[0] == {"done": True, "below": None}
    assert fused._plan.backward_fusion[1]["below"] is fused[0]
    if xp is not np:
        fused.to("cuda"), unfused.to("cuda")
    x, dy = randn(xp, rng, (9, 5)), randn(xp, rng, (9, 3))
    assert_close(fused(x, training=True), unfused(x, training=True))
    dx_fused = fused.backward(dy, need_input_grad=need_input_grad)
    dx_unfused = unfused.backward(dy, need_input_grad=need_input_grad)
    if need_input_grad:
        assert_close(dx_fused, dx_unfused, rtol=1e-12, atol=1e-12)
    else:
        assert dx_fused is None and dx_unfused is None
    for (name, p), q in zip(fused.named_parameters(), unfused.parameters()):
        np.testing.assert_allclose(to_numpy(p.grad), to_numpy(q.grad), rtol=1e-12, atol=1e-12, err_msg=name)


def test_only_adjacent_dense_steps_fuse():
    model = nn.Sequential(nn.Dense(4, 4, seed=0), nn.ReLU(), nn.Dense(4, 4, seed=1), nn.BatchNorm(4),
                          nn.Dense(4, 2, seed=2))
    # Steps: Dense+ReLU, Dense, BatchNorm, Dense.
    assert model._plan.backward_fusion == [{"done": True, "below": None}, {"done": False, "below": model[0]}, None,
                                      {"done": False, "below": None}]
