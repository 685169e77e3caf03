"""Activation layers: ReLU, LeakyReLU, PReLU, Sigmoid, Tanh, GELU, Softmax.

Elementwise ones take any shape. In a ``Sequential``, ReLU, LeakyReLU, Sigmoid, Tanh and GELU
right after a ``Dense`` without activation run inside that Dense's GEMM epilogue, and ReLU
right after a ``BatchNorm`` inside the batch-norm kernel.
"""

from __future__ import annotations

import numpy as np

from .. import _backend as B
from .. import functional as F
from .module import Module, float_dtype, positive_int
from .parameter import Parameter

__all__ = ["ReLU", "LeakyReLU", "PReLU", "Sigmoid", "Tanh", "GELU", "Softmax"]


class Elementwise(Module):
    """y = f(x) for the ``functional.ACTIVATIONS`` entry ``kind`` (subclasses set it)."""

    kind = "identity"

    def __init__(self, alpha: float = 0.01):
        super().__init__()
        self.alpha = alpha

    @property
    def fusable(self) -> tuple[str, float]:
        """(activation, alpha) for ``functional.dense_forward`` when fused into a Dense."""
        return self.kind, self.alpha

    def forward(self, x, training: bool = False):
        """y = f(x), same shape and dtype as x (x and y kept for the backward when training)."""
        x = self._check_input(x)
        y = F.activation_forward(x, self.kind, alpha=self.alpha, out=self._output(x.shape, x, training))
        if training:
            self._saved = (x, y)
        return y

    def backward(self, dout, *, need_input_grad: bool = True):
        """dx = dout * f'(.) (None when ``need_input_grad=False``)."""
        x, y = self._saved_state()
        if not need_input_grad:
            return None
        dout = self._check_grad(dout, y)
        saved = y if self.kind in F.activations.SAVES_OUTPUT else x
        return F.activation_backward(dout, saved, self.kind, alpha=self.alpha, out=self._input_grad(x.shape, x))


class ReLU(Elementwise):
    """y = max(x, 0); relu'(0) = 0. (torch.nn.ReLU)"""

    kind = "relu"


class LeakyReLU(Elementwise):
    """y = x if x > 0 else alpha x (Maas et al. 2013), alpha = 0.01 by default.
    (torch.nn.LeakyReLU(negative_slope=alpha))"""

    kind = "leaky_relu"

    def __init__(self, alpha: float = 0.01):
        super().__init__(B.check_scalar(alpha, "LeakyReLU: alpha"))

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


class Sigmoid(Elementwise):
    """y = 1 / (1 + e^-x). (torch.nn.Sigmoid)"""

    kind = "sigmoid"


class Tanh(Elementwise):
    """y = tanh x. (torch.nn.Tanh)"""

    kind = "tanh"


class GELU(Elementwise):
    """y = x Phi(x) (Hendrycks & Gimpel 2016), or its tanh approximation with
    ``approximate="tanh"``. (torch.nn.GELU)"""

    def __init__(self, approximate: str = "none"):
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate must be 'none' or 'tanh' (as in PyTorch), got {approximate!r}")
        super().__init__()
        self.approximate = approximate
        self.kind = "gelu" if approximate == "none" else "gelu_tanh"

    def extra_repr(self) -> str:
        return "" if self.approximate == "none" else "approximate='tanh'"


class PReLU(Module):
    """y = x if x > 0 else alpha[c] x with a learned slope (He et al. 2015): one shared slope
    (``num_parameters=1``) or one per channel c on axis 1, starting at ``init``.
    (torch.nn.PReLU, whose parameter is called ``weight``)"""

    def __init__(self, num_parameters: int = 1, init: float = 0.25, *, dtype=np.float32):
        super().__init__()
        self.num_parameters = positive_int(num_parameters, "PReLU: num_parameters")
        init = B.check_scalar(init, "PReLU: init")
        self.alpha = Parameter(np.full(self.num_parameters, init, float_dtype(dtype, "PReLU: dtype")), "alpha")
        if self.num_parameters > 1:
            self.in_features = self.out_features = self.num_parameters

    def extra_repr(self) -> str:
        return f"{self.num_parameters}" if self.num_parameters > 1 else ""

    def forward(self, x, training: bool = False):
        """y = prelu(x, alpha); x of any shape (channels on axis 1 when per-channel)."""
        x = self._check_input(x, like=self.alpha.data)
        if self.num_parameters > 1 and (x.ndim < 2 or x.shape[1] != self.num_parameters):
            raise ValueError(f"{self._where()}: input of shape {tuple(x.shape)} needs {self.num_parameters} "
                             "channels on axis 1")
        y = F.prelu_forward(x, self.alpha.data, out=self._output(x.shape, x, training))
        if training:
            self._saved = (x, y)
        return y

    def backward(self, dout, *, need_input_grad: bool = True):
        """alpha.grad += sum of dout x where x <= 0; returns dx = dout (1 or alpha)."""
        x, y = self._saved_state()
        dout = self._check_grad(dout, y)
        dx = self._buffer("dx", x.shape, x, self._reuse_dx or not need_input_grad)
        dx, _ = F.prelu_backward(dout, x, self.alpha.data, dalpha=self.alpha.grad, out=dx)
        return dx if need_input_grad else None


class Softmax(Module):
    """y = e^x / sum e^x along the last axis (``dim=-1``, the only axis supported).
    (torch.nn.Softmax(dim=-1))"""

    def __init__(self, dim: int = -1):
        super().__init__()
        self.dim = dim

    def extra_repr(self) -> str:
        return f"dim={self.dim}"

    def forward(self, x, training: bool = False):
        """y = softmax(x) along the last axis (y kept for the backward when training)."""
        x = self._check_input(x)
        if self.dim not in (-1, x.ndim - 1):
            raise ValueError(f"{self._where()}: only the last axis is supported, got dim={self.dim} for an input "
                             f"of shape {tuple(x.shape)}")
        y = F.softmax_forward(x, out=self._output(x.shape, x, training))
        if training:
            self._saved = y
        return y

    def backward(self, dout, *, need_input_grad: bool = True):
        """dx = y (dout - sum(dout y)) along the last axis."""
        y = self._saved_state()
        if not need_input_grad:
            return None
        dout = self._check_grad(dout, y)
        return F.softmax_backward(dout, y, out=self._input_grad(y.shape, y))
