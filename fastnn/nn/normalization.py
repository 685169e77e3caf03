"""``BatchNorm``: batch normalization over the batch axis of (N, C) inputs."""

from __future__ import annotations

import numpy as np

from .. import _backend as B
from .. import functional as F
from .module import Module, float_dtype, positive_int
from .parameter import Parameter

__all__ = ["BatchNorm"]


class BatchNorm(Module):
    """Batch normalization (Ioffe & Szegedy 2015): y = gamma (x - mean) / sqrt(var + eps) + beta
    per feature, x (N, C).

    ``training=True`` normalizes with the batch mean and biased variance and updates the
    running statistics in place, with PyTorch's convention: r = (1 - momentum) r + momentum s,
    the running variance unbiased (times N / (N - 1)); a batch of one sample is refused.
    ``training=False`` (the default) normalizes with the running statistics and updates
    nothing.
    Parameters ``weight`` (gamma, ones) and ``bias`` (beta, zeros); buffers ``running_mean``
    (zeros) and ``running_var`` (ones), saved by ``state_dict``. (torch.nn.BatchNorm1d)
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, *, dtype=np.float32):
        super().__init__()
        self.num_features = positive_int(num_features, "BatchNorm: num_features")
        self.in_features = self.out_features = self.num_features
        self.eps = B.check_scalar(eps, "BatchNorm: eps", low=0, low_open=True)
        self.momentum = B.check_scalar(momentum, "BatchNorm: momentum", low=0, high=1)
        dtype = float_dtype(dtype, "BatchNorm: dtype")
        self.weight = Parameter(np.ones(self.num_features, dtype), "weight")
        self.bias = Parameter(np.zeros(self.num_features, dtype), "bias")
        self.register_buffer("running_mean", np.zeros(self.num_features, dtype))
        self.register_buffer("running_var", np.ones(self.num_features, dtype))

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps:g}, momentum={self.momentum:g}"

    def forward(self, x, training: bool = False):
        """y (N, C) = gamma xhat + beta (batch statistics when training, running ones else)."""
        return self._forward(x, training, False)

    def _forward(self, x, training, relu: bool):
        """The forward, followed by max(., 0) in the same kernel when ``relu``."""
        x = self._check_input(x, ndim=2, features=self.num_features, like=self.weight.data)
        training = bool(training)
        if training and x.shape[0] < 2:
            raise ValueError(f"{self._where()}: training needs more than one sample per feature, got an input of "
                             f"shape {tuple(x.shape)} (as PyTorch; use training=False for single samples)")
        c = self.num_features
        kept = (self._buffer("mean", (c,), x, True), self._buffer("invstd", (c,), x, True)) if training else None
        y, saved = F.batchnorm_forward(x, self.weight.data, self.bias.data, self.running_mean, self.running_var,
                                       training=training, momentum=self.momentum, eps=self.eps, relu=relu,
                                       out=self._output(x.shape, x, training), saved=kept)
        if training:
            self._saved = (x, y, saved, relu)
        return y

    def backward(self, dout, *, need_input_grad: bool = True):
        """weight.grad += sum(dz xhat), bias.grad += sum(dz) (dz = dout, masked by y > 0 when
        fused with a ReLU); returns dx (the training-mode closed form), or None when
        ``need_input_grad=False``."""
        x, y, saved, relu = self._saved_state()
        dout = self._check_grad(dout, y)
        dx = self._buffer("dx", x.shape, x, self._reuse_dx or not need_input_grad)
        dx = F.batchnorm_backward(dout, x, self.weight.data, saved, dgamma=self.weight.grad, dbeta=self.bias.grad,
                                  relu=relu, y=y, training=True, dx=dx)
        return dx if need_input_grad else None
