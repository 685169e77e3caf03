"""Stochastic gradient descent with momentum (``torch.optim.SGD``)."""

from __future__ import annotations

from . import functional as OF
from .optimizer import Optimizer


class SGD(Optimizer):
    r"""Stochastic gradient descent, with optional momentum, Nesterov momentum and L2 weight
    decay: ``torch.optim.SGD``'s rule and defaults. Per parameter p with gradient g::

        g = -g                              if maximize
        g = g + weight_decay * p            if weight_decay != 0
        if momentum != 0:
            b = g                           on the first step (no dampening, as torch)
            b = momentum * b + (1 - dampening) * g   afterwards
            g = g + momentum * b            if nesterov, else g = b
        p = p - lr * g

    Args: ``params`` (see :class:`Optimizer`), ``lr=1e-3``, ``momentum=0`` (>= 0),
    ``dampening=0``, ``weight_decay=0`` (>= 0), ``nesterov=False`` (needs momentum > 0 and
    dampening = 0 here; like torch, a group changed later is not checked again),
    ``maximize=False``, ``capturable=False`` (lr read on the device; see :class:`Optimizer`),
    ``state_dtype=None`` (the parameters' dtype; ``"float32"``, ``"bfloat16"`` or ``"int8"``:
    see :class:`Optimizer`), ``stochastic_rounding=False`` and ``seed=None`` (bfloat16 state).
    State: ``"momentum_buffer"`` when momentum != 0 (and its ``"_absmax"`` with int8 state;
    ``"step"`` with stochastic rounding).

    >>> opt = fastnn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    """

    rule = "sgd"

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, *,
                 maximize=False, capturable=False, state_dtype=None, stochastic_rounding=False, seed=None):
        OF.check_nesterov(momentum, dampening, nesterov)
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                      nesterov=nesterov, maximize=maximize), capturable=capturable,
                         state_dtype=state_dtype, stochastic_rounding=stochastic_rounding, seed=seed)

    @staticmethod
    def _hyper(group):
        return dict(lr=group["lr"], momentum=group["momentum"], dampening=group["dampening"],
                    weight_decay=group["weight_decay"], nesterov=group["nesterov"], maximize=group["maximize"])
