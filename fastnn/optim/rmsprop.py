"""RMSprop (``torch.optim.RMSprop``)."""

from __future__ import annotations

from .optimizer import Optimizer


class RMSprop(Optimizer):
    r"""RMSprop (Hinton's lecture 6e; centered form of Graves, 2013): steps divided by a running
    root mean square of the gradients. ``torch.optim.RMSprop``'s rule and defaults::

        g = -g                                    if maximize
        g = g + weight_decay * p                  if weight_decay != 0
        v = alpha * v + (1 - alpha) * g^2
        if centered:
            a = a + (1 - alpha) * (g - a)         (running mean of g)
            d = sqrt(v - a^2) + eps
        else:
            d = sqrt(v) + eps
        if momentum > 0:
            b = momentum * b + g / d;  p = p - lr * b
        else:
            p = p - lr * g / d

    Args: ``params``, ``lr=1e-2``, ``alpha=0.99`` (>= 0), ``eps=1e-8`` (>= 0, as
    torch), ``weight_decay=0``, ``momentum=0`` (>= 0), ``centered=False``,
    ``maximize=False``, ``capturable=False``, ``state_dtype=None`` (the parameters' dtype;
    ``"float32"``, ``"bfloat16"`` or ``"int8"``, not int8 with ``centered``: v - a^2 of two
    quantized values can go negative; see :class:`Optimizer`), ``stochastic_rounding=False``
    and ``seed=None`` (bfloat16 state). State: ``"step"``,
    ``"square_avg"``, ``"momentum_buffer"`` (momentum > 0), ``"grad_avg"`` (centered), with
    int8 state also their ``"_absmax"`` entries.
    """

    rule = "rmsprop"

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False, *,
                 maximize=False, capturable=False, state_dtype=None, stochastic_rounding=False, seed=None):
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                                      centered=centered, maximize=maximize), capturable=capturable,
                         state_dtype=state_dtype, stochastic_rounding=stochastic_rounding, seed=seed)

    @staticmethod
    def _hyper(group):
        return dict(lr=group["lr"], alpha=group["alpha"], eps=group["eps"], weight_decay=group["weight_decay"],
                    momentum=group["momentum"], centered=group["centered"], maximize=group["maximize"])
