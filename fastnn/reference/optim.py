"""Optimizer update rules in plain xp code: the spec the native CPU and CUDA kernels follow.

Each function updates lists of arrays in place, one tensor at a time, in the array's own dtype
(float32 math for float32 parameters), except float16, which is computed in float32 and
rounded once when stored (the native kernels do the same). ``grads`` are read, never written.
The order of operations is torch.optim's single-tensor code, so results agree with PyTorch to
rounding (the native kernels also round ``a * b + c`` once where torch does; NumPy cannot).
``step`` counts updates from 1, this one included. ``g`` below is the gradient, negated when
``maximize``.
"""

from __future__ import annotations

import functools

import numpy as np

from ._xp import xp_of


def _widening(rule):
    """``rule`` run on float32 copies of each float16 parameter's arrays, the results written
    back rounded (gradients are only read)."""

    @functools.wraps(rule)
    def run(params, grads, *lists, **kwargs):
        half = [i for i, p in enumerate(params) if p.dtype == np.float16]
        if not half:
            return rule(params, grads, *lists, **kwargs)
        names = [k for k, v in kwargs.items() if isinstance(v, (list, tuple))]
        written = [params, *(lst for lst in lists if lst is not None), *(kwargs[k] for k in names)]
        wide = [list(lst) for lst in written]
        wide_grads = list(grads)
        for i in half:
            for lst in wide:
                lst[i] = lst[i].astype(np.float32)
            wide_grads[i] = grads[i].astype(np.float32)
        it = iter(wide[1:])
        wide_lists = [None if lst is None else next(it) for lst in lists]
        rule(wide[0], wide_grads, *wide_lists, **{**kwargs, **dict(zip(names, it))})
        for lst, out in zip(written, wide):
            for i in half:
                lst[i][...] = out[i]

    return run


def _lerp(a, b, w):
    """a + w (b - a), from the nearer end (torch.lerp)."""
    return a + w * (b - a) if abs(w) < 0.5 else b + (w - 1) * (b - a)

__all__ = ["sgd_", "adagrad_", "rmsprop_", "adam_", "rprop_"]


@_widening
def sgd_(params, grads, momentum_buffers=None, *, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0,
         nesterov=False, maximize=False, first_step=False):
    """g += wd p; with momentum: b = g on the first step, else mu b + (1 - dampening) g, and
    g = g + mu b (Nesterov) or b; then p -= lr g. ``momentum_buffers`` is unused when
    momentum is 0 (pass None)."""
    buffers = momentum_buffers if momentum != 0 else [None] * len(params)
    for p, g, buf in zip(params, grads, buffers):
        g = -g if maximize else g
        if weight_decay != 0:
            g = g + weight_decay * p
        if momentum != 0:
            if first_step:
                buf[...] = g
            else:
                buf *= momentum
                buf += (1 - dampening) * g
            g = g + momentum * buf if nesterov else buf
        p -= lr * g


@_widening
def adagrad_(params, grads, state_sums, *, step, lr=1e-2, lr_decay=0.0, weight_decay=0.0, eps=1e-10,
             maximize=False):
    """g += wd p; s += g^2; p -= lr / (1 + (step - 1) lr_decay) * g / (sqrt(s) + eps)."""
    clr = lr / (1 + (step - 1) * lr_decay)
    for p, g, s in zip(params, grads, state_sums):
        g = -g if maximize else g
        if weight_decay != 0:
            g = g + weight_decay * p
        s += g * g
        p += (-clr * g) / (xp_of(s).sqrt(s) + eps)


@_widening
def rmsprop_(params, grads, square_avgs, *, momentum_buffers=None, grad_avgs=None, lr=1e-2,
             alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False, maximize=False):
    """g += wd p; v = alpha v + (1 - alpha) g^2; d = sqrt(v - a^2) + eps with the centered
    a = a + (1 - alpha) (g - a), else sqrt(v) + eps; momentum > 0: b = mu b + g / d and
    p -= lr b, else p -= lr g / d."""
    n = len(params)
    buffers = momentum_buffers if momentum > 0 else [None] * n
    averages = grad_avgs if centered else [None] * n
    for p, g, v, buf, a in zip(params, grads, square_avgs, buffers, averages):
        g = -g if maximize else g
        if weight_decay != 0:
            g = g + weight_decay * p
        v *= alpha
        v += (1 - alpha) * g * g
        if centered:
            a[...] = _lerp(a, g, 1 - alpha)
            d = xp_of(v).sqrt(v - a * a) + eps
        else:
            d = xp_of(v).sqrt(v) + eps
        if momentum > 0:
            buf *= momentum
            buf += g / d
            p -= lr * buf
        else:
            p += (-lr * g) / d


@_widening
def adam_(params, grads, exp_avgs, exp_avg_sqs, *, step, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8,
          weight_decay=0.0, decoupled=False, amsgrad=False, max_exp_avg_sqs=None, maximize=False):
    """Adam, or AdamW with ``decoupled``: p *= 1 - lr wd (decoupled) or g += wd p;
    m = m + (1 - beta1) (g - m); v = beta2 v + (1 - beta2) g^2; amsgrad: vmax = max(vmax, v)
    replaces v below; p -= lr / (1 - beta1^step) * m / (sqrt(v) / sqrt(1 - beta2^step) + eps)."""
    step_size = lr / (1 - beta1 ** step)
    bias_correction2_sqrt = (1 - beta2 ** step) ** 0.5
    maxes = max_exp_avg_sqs if amsgrad else [None] * len(params)
    for p, g, m, v, vmax in zip(params, grads, exp_avgs, exp_avg_sqs, maxes):
        g = -g if maximize else g
        if weight_decay != 0:
            if decoupled:
                p *= 1 - lr * weight_decay
            else:
                g = g + weight_decay * p
        m[...] = _lerp(m, g, 1 - beta1)
        v *= beta2
        v += (1 - beta2) * g * g
        if amsgrad:
            xp_of(v).maximum(vmax, v, out=vmax)
            v = vmax
        p += (-step_size * m) / (xp_of(v).sqrt(v) / bias_correction2_sqrt + eps)


@_widening
def rprop_(params, grads, prevs, step_sizes, *, etaminus=0.5, etaplus=1.2, step_size_min=1e-6,
           step_size_max=50.0, maximize=False):
    """f = etaplus where g prev > 0, etaminus where < 0, 1 elsewhere;
    size = clip(size f, step_size_min, step_size_max); g = 0 where g prev < 0;
    p -= sign(g) size; prev = g."""
    for p, g, prev, size in zip(params, grads, prevs, step_sizes):
        xp = xp_of(p)
        g = -g if maximize else g
        product = g * prev
        size *= xp.where(product > 0, etaplus, xp.where(product < 0, etaminus, 1)).astype(size.dtype)
        xp.clip(size, step_size_min, step_size_max, out=size)
        g = xp.where(product < 0, 0, g).astype(g.dtype)
        p -= xp.sign(g) * size
        prev[...] = g
