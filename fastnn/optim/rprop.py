"""Rprop (``torch.optim.Rprop``)."""

from __future__ import annotations

from .. import _backend as B
from .optimizer import Optimizer, pair


class Rprop(Optimizer):
    r"""Resilient backpropagation (Riedmiller & Braun, 1993): each element moves by its own step
    size, in the direction of its gradient's sign; the size grows while the sign holds and
    shrinks when it flips. ``torch.optim.Rprop``'s rule and defaults::

        g = -g                                          if maximize
        f = etaplus   where g * prev > 0                (same sign: grow)
            etaminus  where g * prev < 0                (flipped: shrink)
            1         elsewhere
        size = clip(size * f, step_size_min, step_size_max)   (size starts at lr)
        g = 0         where g * prev < 0                (skip this step; forget the sign)
        p = p - sign(g) * size
        prev = g

    Args: ``params``, ``lr=1e-2`` (only the initial step size: changing lr later has no
    effect, as in torch), ``etas=(0.5, 1.2)`` (0 < etaminus < 1 < etaplus),
    ``step_sizes=(1e-6, 50)`` (0 <= min <= max), ``maximize=False``, ``capturable=False``,
    ``state_dtype=None`` (or ``"float32"`` for half-precision parameters: Rprop's step sizes,
    multiplied and clamped every step, stay float; low-bit state is refused). State:
    ``"step"``, ``"prev"``, ``"step_size"``.
    """

    rule = "rprop"

    def __init__(self, params, lr=1e-2, etas=(0.5, 1.2), step_sizes=(1e-6, 50.0), *, maximize=False,
                 capturable=False, state_dtype=None):
        super().__init__(params, dict(lr=lr, etas=pair(etas, "etas"),
                                      step_sizes=pair(step_sizes, "step_sizes"), maximize=maximize),
                         capturable=capturable, state_dtype=state_dtype)

    @staticmethod
    def _hyper(group):
        B.check_scalar(group["lr"], "lr", low=0.0)
        etaminus, etaplus = pair(group["etas"], "etas")
        step_size_min, step_size_max = pair(group["step_sizes"], "step_sizes")
        return dict(etaminus=etaminus, etaplus=etaplus, step_size_min=step_size_min, step_size_max=step_size_max,
                    maximize=group["maximize"])

    @staticmethod
    def _initial_value(key, group):
        return B.check_scalar(group["lr"], "lr", low=0.0) if key == "step_size" else 0.0
