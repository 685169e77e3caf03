"""``Dropout``: inverted dropout with a counter-based random mask."""

from __future__ import annotations

import contextlib

import numpy as np

from .. import _backend as B
from .. import functional as F
from ..functional.dropout import _check_word
from .init import generator
from .module import Module

__all__ = ["Dropout"]


class Dropout(Module):
    """Inverted dropout (Srivastava et al. 2014): with ``training=True``, y = x * keep / (1 - p),
    keep_i ~ Bernoulli(1 - p); the identity (the input itself) with ``training=False``, the
    default.

    The mask is a function of (seed, counter, element index) (``functional.dropout_forward``):
    nothing is stored, the backward regenerates it. ``counter`` starts at 0 and advances by
    one on every training forward, so each step draws a new mask and the sequence of masks is
    reproducible from ``seed`` (or from ``rng``, which draws the seed; with neither, a draw from
    ``fastnn.seed``'s sequence when it was called, else fresh entropy). After
    :meth:`counter_on_device` the counter lives beside the data and a kernel advances it,
    which a captured CUDA graph needs; the masks are the same.
    (torch.nn.Dropout)
    """

    def __init__(self, p: float = 0.5, *, seed: int | None = None, rng=None):
        super().__init__()
        self.p = B.check_scalar(p, "Dropout: p", low=0, high=1, high_open=True)
        self.seed = int(generator(rng, None).integers(2**63)) if seed is None else int(seed)
        if not 0 <= self.seed < 2**63:
            raise ValueError(f"Dropout: seed must be in [0, 2**63), got {seed!r}")
        self._counter = 0
        self._on_device = False
        self._words = None  # uint64 [next, current] beside the data, with the counter on the device

    def extra_repr(self) -> str:
        return f"p={self.p:g}"

    @property
    def counter(self) -> int:
        """The counter the next training forward uses (read back from the device when it is
        kept there: a synchronisation)."""
        return self._counter if self._words is None else int(self._words[0])

    @counter.setter
    def counter(self, value: int) -> None:
        self._counter = _check_word(value, "Dropout: counter")
        if self._words is not None:
            self._words[0] = np.uint64(self._counter)

    def counter_on_device(self, enabled: bool = True) -> "Dropout":
        """Keep the counter in a uint64 array ``[next, current]`` on the input's device, read by
        the dropout kernels when they run and advanced by a one-thread kernel on every training
        forward (``functional.dropout_next_counter``), so a captured CUDA graph draws a new mask
        on every replay. ``enabled=False`` brings it back to the host. The same counter gives
        the same mask either way. ``fastnn.cuda_graph.capture`` turns it on. Returns the layer."""
        if not enabled and self._words is not None:
            self._counter = self.counter
            self._words = None
        self._on_device = bool(enabled)
        return self

    def _counter_words(self, like):
        """The device counter pair on ``like``'s device (created, or moved, with the current
        counter)."""
        words = self._words
        if words is None or type(words) is not type(like) or B.device_of(words) != B.device_of(like):
            value = self.counter
            with like.device if B.is_cupy(like) else contextlib.nullcontext():
                words = B.array_module(like).array([value, 0], dtype=np.uint64)
            self._words = words
        return words

    def forward(self, x, training: bool = False):
        """x * keep / (1 - p) when training (a new mask each call), else x."""
        x = self._check_input(x)
        if not training:
            return x
        if self.p == 0:
            self._saved = (x, None)
            return x
        if self._on_device:
            words = self._counter_words(x)
            F.dropout_next_counter(words)
            counter = words[1:]
        else:
            counter = self._counter
            self._counter += 1
        y = F.dropout_forward(x, self.p, seed=self.seed, counter=counter, out=self._output(x.shape, x, True))
        self._saved = (y, counter)
        return y

    def backward(self, dout, *, need_input_grad: bool = True):
        """dx = dout * keep / (1 - p) with the forward's mask (dout itself when p = 0)."""
        y, counter = self._saved_state()
        if not need_input_grad:
            return None
        dout = self._check_grad(dout, y)
        if counter is None:
            return dout
        return F.dropout_backward(dout, self.p, seed=self.seed, counter=counter, out=self._input_grad(y.shape, y))
