"""Batch normalization of feature batches, validated and dispatched to the reference, native
CPU or CUDA implementation (see ``fastnn._backend``).

x: (N, C), one row per sample, one column per feature; gamma, beta, running_mean,
running_var: (C,), all of x's dtype and device. Conventions are PyTorch's
``torch.nn.functional.batch_norm`` / ``torch.nn.BatchNorm1d``: momentum 0.1, the biased batch
variance normalises, the unbiased one (N / (N - 1)) goes into the running variance.
``relu=True`` fuses the ReLU that usually follows (``relu(batch_norm(x))``) into the same
pass, forward and backward. Parameter gradients accumulate (``+=``); dx is written (``=``).
"""

from __future__ import annotations

from .. import _backend as B
from .. import reference as ref

__all__ = ["batchnorm_forward", "batchnorm_backward"]


def _flag(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def _vector(a, name: str, x, c: int, *, writable: bool = False):
    return B.check_float(a, name, like=("x", x), shape=(c,), writable=writable)


def _saved_pair(saved, x, c: int, *, writable: bool):
    if not isinstance(saved, (tuple, list)) or len(saved) != 2:
        raise TypeError(f"saved must be the (mean, invstd) pair batchnorm_forward returned, got {type(saved).__name__}")
    return (_vector(saved[0], "saved[0] (mean)", x, c, writable=writable),
            _vector(saved[1], "saved[1] (invstd)", x, c, writable=writable))


def _workspace(x, n: int, c: int) -> int:
    """The address of scratch for the CUDA kernels' per-block partial sums: the reused buffer of
    x's device and stream (so a step allocates nothing, as CUDA graph capture needs)."""
    return B.workspace_pointer(x, 8 * B._C.cuda.batchnorm_workspace_size(n, c))


def batchnorm_forward(x, gamma, beta, running_mean, running_var, *, training: bool,
                      momentum: float = 0.1, eps: float = 1e-5, relu: bool = False, out=None,
                      saved=None):
    """Batch norm (Ioffe & Szegedy 2015): y = (x - mean) / sqrt(var + eps) * gamma + beta,
    per column of x (N, C); then max(y, 0) when ``relu``.

    training=True: mean and var are the batch's (biased variance; N >= 2 as in PyTorch), and
    ``running_mean``/``running_var`` are updated in place:
    r = (1 - momentum) r + momentum * stat, with var * N / (N - 1) for the variance. Pass
    None for both to track nothing. training=False: the running statistics normalise and are
    left unchanged.

    Returns ``(y, saved)`` with y (N, C) (=, into ``out`` when given; out may be x) and
    ``saved = (mean, invstd)``, each (C,), invstd = 1 / sqrt(var + eps), for
    :func:`batchnorm_backward` (written into the arrays of ``saved`` when given).
    PyTorch: ``torch.nn.functional.batch_norm(x, running_mean, running_var, gamma, beta,
    training, momentum, eps)``.
    """
    training, relu = _flag(training, "training"), _flag(relu, "relu")
    momentum = B.check_scalar(momentum, "momentum", low=0.0, high=1.0)
    eps = B.check_scalar(eps, "eps", low=0.0, low_open=True)
    x = B.check_float(x, "x", ndim=2)
    n, c = x.shape
    gamma = _vector(gamma, "gamma", x, c)
    beta = _vector(beta, "beta", x, c)
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must both be arrays or both be None")
    if running_mean is None:
        if not training:
            raise ValueError("batchnorm_forward: training=False normalises with running_mean and "
                             "running_var, which are None")
    else:
        running_mean = _vector(running_mean, "running_mean", x, c, writable=training)
        running_var = _vector(running_var, "running_var", x, c, writable=training)
    if training and n < 2:
        raise ValueError(f"batchnorm_forward: training needs more than one value per feature, got x of "
                         f"shape {tuple(x.shape)} (as torch.nn.functional.batch_norm)")
    if saved is not None:
        saved = _saved_pair(saved, x, c, writable=True)
    if out is not None:
        out = B.output(out, x)
    path = B.path_of(x)
    if path == "reference":
        y, stats = ref.batchnorm_forward(x, gamma, beta, running_mean, running_var, training,
                                         momentum, eps, relu)
        if saved is not None:
            for target, value in zip(saved, stats):
                target[...] = value
            stats = saved
        return B.finish(out, y), tuple(stats)
    y = B.output(out, x)
    mean, invstd = saved if saved is not None else (B.output(None, gamma), B.output(None, gamma))
    args = [B.pointer(x), B.pointer(gamma), B.pointer(beta),
            0 if running_mean is None else B.pointer(running_mean),
            0 if running_var is None else B.pointer(running_var),
            B.pointer(y), B.pointer(mean), B.pointer(invstd), n, c, training, momentum, eps, relu]
    if path == "cuda":  # eval reads no partial sums
        args.append(_workspace(x, n, c) if training else 0)
    B.launch(path, "batchnorm_forward", x, *args)
    return y, (mean, invstd)


def batchnorm_backward(dy, x, gamma, saved, *, dgamma, dbeta, relu: bool = False, y=None,
                       training: bool = True, dx=None):
    """Gradients of :func:`batchnorm_forward` from its ``saved = (mean, invstd)``.

    dz = dy (masked by y > 0 when ``relu``; y is the forward output, required then),
    xhat = (x - mean) * invstd:

    - dbeta += sum_rows dz and dgamma += sum_rows dz * xhat (parameter gradients accumulate
      into the (C,) arrays given);
    - training=True: dx = gamma * invstd / N * (N dz - sum_rows dz - xhat sum_rows dz xhat),
      the closed form with the batch statistics' dependence on x;
    - training=False: dx = dz * gamma * invstd (the running statistics are constants).

    dy, x: (N, C). Returns dx (=, into ``dx`` when given; it may be dy).
    """
    relu, training = _flag(relu, "relu"), _flag(training, "training")
    dy = B.check_float(dy, "dy", ndim=2)
    n, c = dy.shape
    x = B.check_float(x, "x", like=("dy", dy), shape=dy.shape)
    gamma = _vector(gamma, "gamma", x, c)
    mean, invstd = _saved_pair(saved, x, c, writable=False)
    dgamma = _vector(dgamma, "dgamma", x, c, writable=True)
    dbeta = _vector(dbeta, "dbeta", x, c, writable=True)
    if relu:
        if y is None:
            raise ValueError("batchnorm_backward: relu=True needs y, the forward output, for the ReLU mask")
        y = B.check_float(y, "y", like=("dy", dy), shape=dy.shape)
    if dx is not None:
        dx = B.output(dx, dy, "dx")
    path = B.path_of(dy)
    if path == "reference":
        grad_x, grad_gamma, grad_beta = ref.batchnorm_backward(dy, x, gamma, (mean, invstd), relu, y,
                                                               training)
        dgamma += grad_gamma
        dbeta += grad_beta
        if dx is None:
            return grad_x
        dx[...] = grad_x
        return dx
    dx = B.output(dx, dy, "dx")
    args = [B.pointer(dy), B.pointer(x), B.pointer(gamma), B.pointer(mean), B.pointer(invstd),
            B.pointer(y) if relu else 0, B.pointer(dx), B.pointer(dgamma), B.pointer(dbeta), n, c,
            training, relu]
    if path == "cuda":
        args.append(_workspace(dy, n, c))
    B.launch(path, "batchnorm_backward", dy, *args)
    return dx
