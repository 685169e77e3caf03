"""Batch normalization over a batch of feature vectors (Ioffe & Szegedy 2015), in plain xp code.

x: (N, C); gamma, beta, running_mean, running_var: (C,). Statistics are per column (feature)
and computed in float64 here; results come back in x's dtype. The conventions are PyTorch's
``torch.nn.functional.batch_norm`` (and ``BatchNorm1d``):

- training: normalise with the batch mean and the biased batch variance; update
  ``running = (1 - momentum) running + momentum stat`` in place, with the UNBIASED variance
  var N / (N - 1) going into ``running_var``;
- eval: normalise with the running statistics, which are left alone.
"""

from ._xp import xp_of

__all__ = ["batchnorm_forward", "batchnorm_backward"]


def batchnorm_forward(x, gamma, beta, running_mean, running_var, training, momentum=0.1,
                      eps=1e-5, relu=False):
    """y = (x - mean) / sqrt(var + eps) * gamma + beta, then max(y, 0) when ``relu``.
    Returns ``(y, (mean, invstd))``, the pair the backward needs (each (C,)). In training,
    ``running_mean`` / ``running_var`` (may be None: not tracked) are updated in place."""
    xp = xp_of(x)
    n = x.shape[0]
    if training:
        mean = x.mean(axis=0, dtype=xp.float64)
        var = ((x - mean) ** 2).mean(axis=0)
        if running_mean is not None:
            running_mean[...] = (1 - momentum) * running_mean + momentum * mean
            running_var[...] = (1 - momentum) * running_var + momentum * var * n / (n - 1)
    else:
        mean = running_mean.astype(xp.float64)
        var = running_var.astype(xp.float64)
    invstd = 1 / xp.sqrt(var + eps)
    y = (x - mean) * invstd * gamma + beta
    if relu:
        y = xp.maximum(y, 0)
    return y.astype(x.dtype), (mean.astype(x.dtype), invstd.astype(x.dtype))


def batchnorm_backward(dy, x, gamma, saved, relu=False, y=None, training=True):
    """Gradients of batch norm from the forward's ``saved = (mean, invstd)``.

    dz = dy, or dy where y > 0 (else 0) when ``relu`` (y: the forward output);
    xhat = (x - mean) invstd; dbeta = sum_rows dz; dgamma = sum_rows dz xhat;
    training: dx = gamma invstd / N (N dz - dbeta - xhat dgamma) (the statistics depend on x);
    eval: dx = dz gamma invstd. Returns ``(dx, dgamma, dbeta)``.
    """
    xp = xp_of(dy)
    mean, invstd = (s.astype(xp.float64) for s in saved)
    dz = xp.where(y > 0, dy, 0).astype(xp.float64) if relu else dy.astype(xp.float64)
    xhat = (x - mean) * invstd
    dbeta = dz.sum(axis=0)
    dgamma = (dz * xhat).sum(axis=0)
    scale = gamma * invstd
    if training:
        n = dy.shape[0]
        dx = scale / n * (n * dz - dbeta - xhat * dgamma)
    else:
        dx = dz * scale
    return dx.astype(dy.dtype), dgamma.astype(dy.dtype), dbeta.astype(dy.dtype)
