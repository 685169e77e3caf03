# PLACEHOLDER: replaced at merge by the kernel helper's module
"""Batch normalization over the batch axis of (N, C) arrays, forward and backward.

Reference-only stand-in with the signatures and semantics of API_CORE.md. Running statistics
follow PyTorch (momentum 0.1, unbiased running variance); dgamma and dbeta accumulate (``+=``),
dx is written (``=``).
"""

from __future__ import annotations

from .. import _backend as B

__all__ = ["batchnorm_forward", "batchnorm_backward"]


def batchnorm_forward(x, gamma, beta, running_mean, running_var, *, training, momentum=0.1,
                      eps=1e-5, relu=False, out=None):
    """y = gamma (x - mean) invstd + beta (then relu when ``relu``); returns (y, (mean, invstd))."""
    x = B.check_float(x, "x", ndim=2)
    channels = (x.shape[1],)
    gamma = B.check_float(gamma, "gamma", like=("x", x), shape=channels)
    beta = B.check_float(beta, "beta", like=("x", x), shape=channels)
    running_mean = B.check_float(running_mean, "running_mean", like=("x", x), shape=channels, writable=True)
    running_var = B.check_float(running_var, "running_var", like=("x", x), shape=channels, writable=True)
    momentum = B.check_scalar(momentum, "momentum", low=0, high=1)
    eps = B.check_scalar(eps, "eps", low=0, low_open=True)
    xp = B.array_module(x)
    n = x.shape[0]
    if training:
        if n == 1:
            raise ValueError("batchnorm_forward: training needs more than one sample per channel, got x of shape "
                             f"{tuple(x.shape)}")
        mean = x.mean(axis=0)
        var = x.var(axis=0)
        running_mean *= 1 - momentum
        running_mean += momentum * mean
        running_var *= 1 - momentum
        running_var += momentum * var * (n / (n - 1))
    else:
        mean, var = running_mean.copy(), running_var.copy()
    invstd = (1 / xp.sqrt(var + eps)).astype(x.dtype)
    y = gamma * (x - mean) * invstd + beta
    if relu:
        y = xp.maximum(y, 0)
    return B.finish(out, y.astype(x.dtype, copy=False)), (mean.astype(x.dtype), invstd)


def batchnorm_backward(dy, x, gamma, saved, *, dgamma, dbeta, relu=False, y=None, training=True,
                       dx=None):
    """dx = gamma invstd / N (N dz - sum dz - xhat sum(dz xhat)) in training, dz gamma invstd in
    eval; dgamma += sum(dz xhat), dbeta += sum(dz); dz = dy masked by y > 0 when ``relu``."""
    x = B.check_float(x, "x", ndim=2)
    dy = B.check_float(dy, "dy", like=("x", x), shape=x.shape)
    mean, invstd = saved
    if relu:
        if y is None:
            raise ValueError("batchnorm_backward: relu=True needs y=, the forward output")
        dy = dy * (B.check_float(y, "y", like=("x", x), shape=x.shape) > 0)
    xhat = (x - mean) * invstd
    sum_dz = dy.sum(axis=0)
    sum_dz_xhat = (dy * xhat).sum(axis=0)
    dgamma += sum_dz_xhat
    dbeta += sum_dz
    if training:
        n = x.shape[0]
        result = gamma * invstd / n * (n * dy - sum_dz - xhat * sum_dz_xhat)
    else:
        result = dy * gamma * invstd
    return B.finish(dx, result.astype(x.dtype, copy=False))
