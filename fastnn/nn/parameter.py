"""``Parameter``: a trainable array and its gradient."""

from __future__ import annotations

import numpy as np

from .. import _backend as B


class Parameter:
    """A trainable array ``data`` with its gradient ``grad`` (same shape, dtype and device) and
    a ``name`` (e.g. ``"0.weight"``, set by the containing model).

    ``grad`` starts at zero and backward passes *accumulate* into it (``+=``), as in PyTorch;
    ``zero_grad()`` resets it. Like ``torch.nn.Parameter``, ``data`` may be replaced (by
    ``model.to(...)`` or an optimizer state load) as long as ``grad`` is replaced with it.
    """

    __slots__ = ("data", "grad", "name")

    def __init__(self, data, name: str = ""):
        data = B.check_float(data, name or "parameter")
        self.data = data
        self.grad = B.array_module(data).zeros_like(data)
        self.name = name

    @property
    def shape(self) -> tuple:
        return tuple(self.data.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.data.dtype)

    @property
    def size(self) -> int:
        return int(self.data.size)

    @property
    def device(self) -> str:
        return str(B.device_of(self.data))

    def zero_grad(self) -> None:
        """Set the gradient to zero, in place."""
        self.grad.fill(0)

    def __repr__(self) -> str:
        return f"Parameter({self.name or '?'}, shape={self.shape}, dtype={self.dtype.name}, device={self.device})"
