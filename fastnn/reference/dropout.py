"""Dropout, in plain xp code, with the counter-based generator the kernels use.

Inverted dropout (Srivastava et al. 2014, scaled at training time as in PyTorch):
y = x * keep / (1 - p), where keep_i = (u_i >= p) and u_i = word_i / 2^32 is element i's
uniform number. word_i comes from Philox4x32-10 (Salmon et al. 2011), a pure function of
(seed, counter, i), so the mask is never stored: forward and backward regenerate it, and every
path and device computes the same one.

    key     = (seed mod 2^32, seed div 2^32)
    counter = (b mod 2^32, b div 2^32, counter mod 2^32, counter div 2^32),  b = i div 4
    word_i  = output word (i mod 4) of Philox4x32-10(counter, key)

u_i >= p is evaluated exactly as word_i >= ceil(p 2^32) (:func:`keep_threshold`).
The arithmetic below is 32-bit words held in uint64 arrays, so the 32 x 32-bit products are
exact.
"""

import math

import numpy as np

from ._xp import xp_of

__all__ = ["philox4x32_10", "dropout_words", "keep_threshold", "dropout_mask",
           "dropout_forward", "dropout_backward"]

_M0, _M1 = 0xD2511F53, 0xCD9E8D57  # round multipliers
_W0, _W1 = 0x9E3779B9, 0xBB67AE85  # key increments (golden ratio, sqrt(3) - 1)
_LOW = 0xFFFFFFFF


def philox4x32_10(counter, key, xp=np):
    """Philox4x32-10 of a counter (4 uint32 words: ints or arrays, broadcast) and a key
    (2 uint32 ints). Returns the 4 output words as uint32 arrays, as Random123's
    ``philox4x32_R(10, ctr, key)``."""
    c0, c1, c2, c3 = (xp.asarray(w, dtype=xp.uint64) for w in counter)
    k0, k1 = int(key[0]) & _LOW, int(key[1]) & _LOW
    m0, m1, low = xp.uint64(_M0), xp.uint64(_M1), xp.uint64(_LOW)
    for r in range(10):
        if r:
            k0, k1 = (k0 + _W0) & _LOW, (k1 + _W1) & _LOW
        p0, p1 = c0 * m0, c2 * m1
        c0, c1, c2, c3 = ((p1 >> xp.uint64(32)) ^ c1 ^ xp.uint64(k0), p1 & low,
                          (p0 >> xp.uint64(32)) ^ c3 ^ xp.uint64(k1), p0 & low)
    return tuple(w.astype(xp.uint32) for w in (c0, c1, c2, c3))


def dropout_words(n, seed, counter, xp=np):
    """The random words of elements 0 .. n-1 of the stream (seed, counter), as uint32."""
    blocks = xp.arange((n + 3) // 4, dtype=xp.uint64)
    words = philox4x32_10(
        (blocks & xp.uint64(_LOW), blocks >> xp.uint64(32), counter & _LOW, counter >> 32),
        (seed & _LOW, seed >> 32), xp)
    return xp.stack(words, axis=1).reshape(-1)[:n]


def keep_threshold(p):
    """The smallest word kept at drop probability p: ceil(p 2^32) (exact in binary floating
    point), so word >= threshold <=> word / 2^32 >= p."""
    return math.ceil(float(p) * 2.0**32)


def dropout_mask(shape, p, seed, counter, xp=np):
    """keep (bool, ``shape``): element i is kept when u_i >= p, u_i = word_i / 2^32."""
    shape = tuple(shape)
    words = dropout_words(math.prod(shape), seed, counter, xp)
    return (words.astype(xp.uint64) >= keep_threshold(p)).reshape(shape)


def dropout_forward(x, p, seed, counter):
    """y = x * keep / (1 - p). A dropped element is x * 0 (NaN stays NaN, as in PyTorch)."""
    xp = xp_of(x)
    keep = dropout_mask(x.shape, p, seed, counter, xp)
    factor = xp.where(keep, xp.asarray(1.0 / (1.0 - p), dtype=x.dtype), xp.asarray(0, dtype=x.dtype))
    return x * factor


def dropout_backward(dy, p, seed, counter):
    """dx = dy * keep / (1 - p), the mask of :func:`dropout_forward` regenerated."""
    return dropout_forward(dy, p, seed, counter)

