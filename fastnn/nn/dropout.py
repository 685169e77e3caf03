"""``Dropout``: inverted dropout with a counter-based random mask."""

from __future__ import annotations

from .. import _backend as B
from .. import functional as F
from .init import generator
from .module import Module

__all__ = ["Dropout"]


class Dropout(Module):
    """Inverted dropout (Srivastava et al. 2014): with ``training=True``, y = x * keep / (1 - p),
    keep_i ~ Bernoulli(1 - p); the identity (the input itself) with ``training=False``.

    The mask is a function of (seed, counter, element index) (``functional.dropout_forward``):
    nothing is stored, the backward regenerates it. ``counter`` starts at 0 and advances by
    one on every training forward, so each step draws a new mask and the sequence of masks is
    reproducible from ``seed`` (or from ``rng``, which draws the seed; fresh entropy when
    neither is given). (torch.nn.Dropout)
    """

    def __init__(self, p: float = 0.5, *, seed: int | None = None, rng=None):
        super().__init__()
        self.p = B.check_scalar(p, "Dropout: p", low=0, high=1, high_open=True)
        self.seed = int(generator(rng, None).integers(2**63)) if seed is None else int(seed)
        if not 0 <= self.seed < 2**63:
            raise ValueError(f"Dropout: seed must be in [0, 2**63), got {seed!r}")
        self.counter = 0

    def extra_repr(self) -> str:
        return f"p={self.p:g}"

    def forward(self, x, training: bool = True):
        """x * keep / (1 - p) when training (a new mask each call), else x."""
        x = self._check_input(x)
        if not training or self.p == 0:
            self._saved = (x, None)
            return x
        counter = self.counter
        self.counter += 1
        y = F.dropout_forward(x, self.p, seed=self.seed, counter=counter, out=self._output(x.shape, x))
        self._saved = (y, counter)
        return y

    def backward(self, dout, *, need_input_grad: bool = True):
        """dx = dout * keep / (1 - p) with the forward's mask (dout itself after an identity
        forward)."""
        y, counter = self._saved_state()
        if not need_input_grad:
            return None
        dout = self._check_grad(dout, y)
        if counter is None:
            return dout
        return F.dropout_backward(dout, self.p, seed=self.seed, counter=counter, out=self._input_grad(y.shape, y))
