"""Adam and AdamW (``torch.optim.Adam``, ``torch.optim.AdamW``)."""

from __future__ import annotations

from .optimizer import Optimizer, pair


class Adam(Optimizer):
    r"""Adam (Kingma & Ba, 2015), with AMSGrad (Reddi et al., 2018) as an option:
    ``torch.optim.Adam``'s rule and defaults. With t the step count (from 1)::

        g = -g                                    if maximize
        p = p * (1 - lr * weight_decay)           if decoupled_weight_decay (AdamW)
        g = g + weight_decay * p                  otherwise, if weight_decay != 0 (L2)
        m = beta1 * m + (1 - beta1) * g           (computed as m + (1 - beta1) (g - m))
        v = beta2 * v + (1 - beta2) * g^2
        v_max = max(v_max, v);  v = v_max         if amsgrad
        p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

    Args: ``params``, ``lr=1e-3``, ``betas=(0.9, 0.999)`` (each in [0, 1)), ``eps=1e-8``
    (>= 0, as torch), ``weight_decay=0`` (>= 0), ``amsgrad=False``,
    ``maximize=False``, ``decoupled_weight_decay=False`` (True is :class:`AdamW`),
    ``capturable=False`` (lr and t read on the device, bias corrections computed there; see
    :class:`Optimizer`), ``state_dtype=None`` (the parameters' dtype; ``"float32"``,
    ``"bfloat16"`` or ``"int8"``: see :class:`Optimizer`), ``stochastic_rounding=False`` and
    ``seed=None`` (bfloat16 state). State: ``"step"``, ``"exp_avg"``, ``"exp_avg_sq"``,
    ``"max_exp_avg_sq"`` (amsgrad); with int8 state also their ``"_absmax"`` entries
    (``exp_avg`` in the signed code, the others in the unsigned one).

    >>> opt = fastnn.optim.Adam(model.parameters(), lr=1e-3, state_dtype="int8")  # ~2 bytes/param
    """

    rule = "adam"

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, *,
                 maximize=False, capturable=False, decoupled_weight_decay=False, state_dtype=None,
                 stochastic_rounding=False, seed=None):
        super().__init__(params, dict(lr=lr, betas=pair(betas, "betas"), eps=eps, weight_decay=weight_decay,
                                      amsgrad=amsgrad, maximize=maximize,
                                      decoupled_weight_decay=decoupled_weight_decay), capturable=capturable,
                         state_dtype=state_dtype, stochastic_rounding=stochastic_rounding, seed=seed)

    @staticmethod
    def _hyper(group):
        beta1, beta2 = pair(group["betas"], "betas")
        return dict(lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"],
                    amsgrad=group["amsgrad"], decoupled=group["decoupled_weight_decay"], maximize=group["maximize"])


class AdamW(Adam):
    r"""AdamW (Loshchilov & Hutter, 2019): Adam with decoupled weight decay, as
    ``torch.optim.AdamW`` (default ``weight_decay=1e-2``). Before the Adam update each step::

        p = p * (1 - lr * weight_decay)

    then the Adam rule of :class:`Adam` without the L2 term. The decay is multiplied by the
    current lr, as in PyTorch: with lr=1e-3 and weight_decay=1e-2 a weight shrinks by a factor
    1 - 1e-5 per step, and an LR schedule scales the decay with it (the paper decays by
    eta_t * lambda, with eta_t the schedule's multiplier, not lr * lambda). To keep the same
    effective decay when you change lr, scale weight_decay inversely.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, *,
                 maximize=False, capturable=False, state_dtype=None, stochastic_rounding=False, seed=None):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize, capturable=capturable,
                         decoupled_weight_decay=True, state_dtype=state_dtype,
                         stochastic_rounding=stochastic_rounding, seed=seed)

    @staticmethod
    def _hyper(group):
        return dict(Adam._hyper(group), decoupled=True)
