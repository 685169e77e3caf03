"""Optimizer update rules in plain xp code: the spec the native CPU and CUDA kernels follow.

Each function updates lists of arrays in place, one tensor at a time, in the array's own dtype
(float32 math for float32 parameters), except float16, which is computed in float32 and
rounded once when stored (the native kernels do the same). ``grads`` are read, never written.
The order of operations is torch.optim's single-tensor code, so results agree with PyTorch to
rounding (the native kernels also round ``a * b + c`` once where torch does; NumPy cannot).
``step`` counts updates from 1, this one included. ``g`` below is the gradient, negated when
``maximize``.

Low-bit state (``state_dtype``, ``fastnn.optim.functional``) is stored by the functions at the
end of this file: bfloat16 (``round_bfloat16``, ``round_bfloat16_stochastic``,
``widen_bfloat16``) and int8 blocks (``quantize_state``, ``dequantize_state``), the
spec of the kernels' codes (csrc/optim_math.h), bit for bit. The rules above run on the
state decoded to float32; the encoded results are what is kept.
"""

from __future__ import annotations

import functools

import numpy as np

from ._xp import xp_of
from .dropout import philox4x32_10


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

__all__ = ["sgd_", "adagrad_", "rmsprop_", "adam_", "rprop_", "round_bfloat16", "round_bfloat16_stochastic",
           "widen_bfloat16", "quantize_state", "dequantize_state", "QUANT_BLOCK"]


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


# ---------------------------------------------------------------------------------------------
# Low-bit state. bfloat16 is kept as its bit patterns (uint16: NumPy has no bfloat16).


def widen_bfloat16(bits):
    """float32 values of bfloat16 bit patterns (uint16): the top half of a float32, exact."""
    xp = xp_of(bits)
    return (bits.astype(xp.uint32) << xp.uint32(16)).view(xp.float32)


def round_bfloat16(x):
    """float32 ``x`` rounded to bfloat16, to nearest, ties to even (subnormals kept; NaN becomes
    0x7fc0): uint16 bit patterns, as torch's ``.bfloat16()``."""
    xp = xp_of(x)
    u = xp.ascontiguousarray(x, dtype=xp.float32).view(xp.uint32)
    rounded = (u + xp.uint32(0x7FFF) + ((u >> xp.uint32(16)) & xp.uint32(1))) >> xp.uint32(16)
    return xp.where((u & xp.uint32(0x7FFFFFFF)) > xp.uint32(0x7F800000), 0x7FC0, rounded).astype(xp.uint16)


def round_bfloat16_stochastic(x, seed: int, stream: int, step: int):
    """float32 ``x`` (flat order) rounded to bfloat16 stochastically: element i adds 16 random
    bits r_i to its float32 bits and keeps the top half, so it rounds up with probability
    (x - down) / (up - down), an unbiased rounding. r_i is half i % 2 of word (i / 2) % 4 of
    Philox4x32-10 keyed by ``seed`` with counter (i / 8, stream << 32 | step mod 2^32); the
    kernels give a state list the stream (its tensor's index in the call) * 4 + (the list's
    index among the rule's state lists). NaN becomes 0x7fc0."""
    xp = xp_of(x)
    u = xp.ascontiguousarray(x, dtype=xp.float32).reshape(-1).view(xp.uint32)
    i = xp.arange(u.size, dtype=xp.uint64)
    groups = i >> xp.uint64(3)
    counter = ((int(stream) << 32) | (int(step) & 0xFFFFFFFF)) & 0xFFFFFFFFFFFFFFFF
    low = xp.uint64(0xFFFFFFFF)
    words = xp.stack(philox4x32_10((groups & low, groups >> xp.uint64(32), counter & 0xFFFFFFFF, counter >> 32),
                                   (int(seed) & 0xFFFFFFFF, (int(seed) >> 32) & 0xFFFFFFFF), xp), axis=1)
    word = xp.take_along_axis(words, ((i >> xp.uint64(1)) & xp.uint64(3)).astype(xp.int64)[:, None], axis=1)[:, 0]
    r = (word >> ((i & xp.uint64(1)) * xp.uint64(16)).astype(xp.uint32)) & xp.uint32(0xFFFF)
    out = xp.where((u & xp.uint32(0x7FFFFFFF)) > xp.uint32(0x7F800000), 0x7FC0, (u + r) >> xp.uint32(16))
    return out.astype(xp.uint16).reshape(xp.shape(x))


# int8 blocks: one code per element and one float32 absmax per QUANT_BLOCK elements. The codes
# are 8-bit floats scaled so that a block's absmax is the largest code, 1.875:
#   signed   s eeee mmm, bias 15 (first moments, momentum buffers, grad_avg);
#   unsigned eeeee mmm, bias 31 (second moments, Adagrad's sums, Rprop's step sizes);
#   value = (1 + m/8) 2^(e - bias), or (m/8) 2^(1 - bias) for e = 0.
QUANT_BLOCK = 256
_CODE_MAX = np.float32(1.875)


def _bias(signed: bool) -> int:
    return 15 if signed else 31


def _code_values(xp, signed: bool):
    """The float32 value of each of the 256 codes (before the block's scale)."""
    bias = _bias(signed)
    c = xp.arange(256, dtype=xp.uint32)
    m = c & xp.uint32(0x7F if signed else 0xFF)
    normal = ((m << xp.uint32(20)) + xp.uint32((127 - bias) << 23)).view(xp.float32)
    values = xp.where(m >= 8, normal, (m * xp.float32(2.0 ** (-2 - bias))).astype(xp.float32))
    return xp.where(c >= 128, -values, values) if signed else values


def _encode(y, signed: bool):
    """The code of each float32 ``y`` (|y| <= 1.875, finite): y 2^(bias - 127) as a float32 (a
    float32 subnormal for the code's subnormal range, rounded there to nearest even), whose bits
    (s) eeee(e) mmm sit at 27(26)..20; the low 20 bits are rounded away to nearest, ties away
    from zero. In the unsigned code a nonzero y never becomes 0 (a second moment is a
    divisor)."""
    xp = xp_of(y)
    bias = _bias(signed)
    y = xp.ascontiguousarray(y, dtype=xp.float32)
    a = (y * xp.float32(2.0 ** (bias - 127))).view(xp.uint32) & xp.uint32(0x7FFFFFFF)
    m = (a + xp.uint32(0x80000)) >> xp.uint32(20)  # |y| <= 1.875 (1 + 2^-23): never past the largest code
    bits = y.view(xp.uint32)
    if signed:
        return (m | ((bits >> xp.uint32(24)) & xp.uint32(0x80))).astype(xp.uint8)
    return xp.maximum(m, (bits & xp.uint32(0x7FFFFFFF)) != 0).astype(xp.uint8)


def quantize_state(x, signed: bool = True):
    """float32 ``x`` (any shape, flat order) as int8 blocks: ``(codes, absmax)``, codes uint8 of
    x's shape, absmax float32 of ceil(size / QUANT_BLOCK). Each block's absmax is the largest
    |x| of the block (found as the largest float bits: NaN counts above infinity); its values are
    scaled by 1.875 / absmax (float32) and rounded to the nearest code. A block whose absmax is
    below 2^-126 is stored as zeros (absmax 0); one with an infinite or NaN value as absmax NaN
    and codes 0, so it decodes to NaN."""
    xp = xp_of(x)
    flat = xp.ascontiguousarray(x, dtype=xp.float32).reshape(-1)
    n = flat.size
    blocks = xp.zeros(-(-n // QUANT_BLOCK) * QUANT_BLOCK, xp.float32)
    blocks[:n] = flat
    blocks = blocks.reshape(-1, QUANT_BLOCK)
    largest = (blocks.view(xp.uint32) & xp.uint32(0x7FFFFFFF)).max(axis=1) if n else xp.zeros(0, xp.uint32)
    finite = (largest >= 0x00800000) & (largest < 0x7F800000)
    absmax = xp.where(largest < 0x00800000, xp.float32(0), xp.where(finite, largest.view(xp.float32),
                                                                    xp.float32(np.nan)))
    to_code = _CODE_MAX / xp.where(finite, absmax, xp.float32(1))
    scaled = xp.where(finite[:, None], blocks, xp.float32(0)) * to_code[:, None]
    codes = xp.where(finite[:, None], _encode(scaled, signed), 0).astype(xp.uint8)
    return codes.reshape(-1)[:n].reshape(xp.shape(x)), absmax.astype(xp.float32)


def dequantize_state(codes, absmax, signed: bool = True):
    """float32 values of int8 blocks: code value * (absmax / 1.875) of its block."""
    xp = xp_of(codes)
    flat = codes.reshape(-1)
    scale = (absmax / _CODE_MAX).astype(xp.float32)
    block = xp.arange(flat.size) // QUANT_BLOCK
    return (_code_values(xp, signed)[flat] * scale[block]).reshape(codes.shape)
