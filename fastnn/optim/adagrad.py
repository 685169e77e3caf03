"""Adagrad (``torch.optim.Adagrad``)."""

from __future__ import annotations

from .. import _backend as B
from .optimizer import Optimizer


class Adagrad(Optimizer):
    r"""Adagrad (Duchi et al., 2011): each element's step shrinks with the sum of its squared
    gradients. ``torch.optim.Adagrad``'s rule and defaults. With t the step count (from 1)::

        g = -g                                   if maximize
        g = g + weight_decay * p                 if weight_decay != 0
        clr = lr / (1 + (t - 1) * lr_decay)
        s = s + g^2                              (s starts at initial_accumulator_value)
        p = p - clr * g / (sqrt(s) + eps)

    Args: ``params``, ``lr=1e-2``, ``lr_decay=0`` (>= 0), ``weight_decay=0`` (>= 0),
    ``initial_accumulator_value=0`` (>= 0), ``eps=1e-10`` (>= 0, as torch),
    ``maximize=False``, ``capturable=False``, ``state_dtype=None`` (the parameters' dtype;
    ``"float32"``, ``"bfloat16"`` or ``"int8"``: see :class:`Optimizer`),
    ``stochastic_rounding=False`` and ``seed=None`` (bfloat16 state). State: ``"step"``,
    ``"sum"`` (created on the first step; torch creates it at construction; with int8 state
    also ``"sum_absmax"``). Rounded to nearest, a low-bit sum stops growing once
    g^2 falls below half its step (1/512 of the sum in bfloat16, 1/16 in int8); stochastic
    rounding keeps bfloat16 sums unbiased.
    """

    rule = "adagrad"

    def __init__(self, params, lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0, eps=1e-10,
                 *, maximize=False, capturable=False, state_dtype=None, stochastic_rounding=False, seed=None):
        B.check_scalar(initial_accumulator_value, "initial_accumulator_value", low=0.0)
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value, eps=eps, maximize=maximize),
                         capturable=capturable, state_dtype=state_dtype, stochastic_rounding=stochastic_rounding,
                         seed=seed)

    @staticmethod
    def _hyper(group):
        return dict(lr=group["lr"], lr_decay=group["lr_decay"], weight_decay=group["weight_decay"], eps=group["eps"],
                    maximize=group["maximize"])

    @staticmethod
    def _initial_value(key, group):
        return B.check_scalar(group["initial_accumulator_value"], "initial_accumulator_value", low=0.0)
