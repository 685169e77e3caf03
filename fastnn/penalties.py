"""L1 / L2 penalties on a model's weights, as ``fastnn.train.Trainer(l1=..., l2=...)`` and
``fastnn.gradcheck(l1=..., l2=...)`` add them.

The penalty is R(W) = l1 * sum |W| + (l2 / 2) * sum W^2 over the weights (the parameters with
two or more dimensions), and its gradient dR/dW = l1 * sign(W) + l2 * W (sign(0) = 0), so
``l2`` is the same number as SGD's ``weight_decay`` (torch.optim.SGD's; L1 has no optimizer
equivalent).

::

    weights = [p for _, p in weight_parameters(model)]
    loss = loss_fn.forward(model(x, training=True), y) + float(penalty(weights, l1=1e-5, l2=1e-4))
    model.backward(loss_fn.backward())
    add_penalty_grad(weights, l1=1e-5, l2=1e-4)
"""

from __future__ import annotations

from . import _backend as B
from .nn.module import Module

__all__ = ["weight_parameters", "penalty", "add_penalty_grad"]


def weight_parameters(model: Module) -> list:
    """(name, Parameter) for the weights that L1/L2 penalise: the parameters with two or more
    dimensions (Dense weights), not biases, BatchNorm's gamma/beta or PReLU slopes."""
    return [(name, p) for name, p in model.named_parameters() if p.data.ndim >= 2]


def penalty(params, l1: float = 0.0, l2: float = 0.0):
    """The penalty l1 * sum |W| + (l2 / 2) * sum W^2 over the arrays W of ``params``
    (Parameters), as a 0-d array on their device (0.0 when both are zero). Its gradient,
    l1 * sign(W) + l2 * W, is what :func:`add_penalty_grad` adds; so ``l2`` is the same number
    as SGD's ``weight_decay``."""
    total = 0.0
    for p in params:
        w = p.data
        xp = B.array_module(w)
        if l1:
            total = total + l1 * xp.abs(w).sum()
        if l2:
            flat = w.reshape(-1)
            total = total + (l2 / 2) * xp.vdot(flat, flat)
    return total


def add_penalty_grad(params, l1: float = 0.0, l2: float = 0.0) -> None:
    """grad += l1 * sign(W) + l2 * W for every Parameter of ``params`` (in place; sign(0) = 0)."""
    for p in params:
        xp = B.array_module(p.data)
        if l1:
            p.grad += l1 * xp.sign(p.data)
        if l2:
            p.grad += l2 * p.data
