"""Batch norm: every path against the reference (float32 and float64, train and eval, with and
without the fused ReLU), float64 finite-difference checks of the backward, PyTorch's running
statistics convention (a formula written here, and torch itself where installed), numerics
with a large mean, repeatability, and bad input."""

import numpy as np
import pytest

from fastnn import functional as F
from fastnn import reference as R
from fastnn._backend import to_numpy
from util import assert_close, assert_grad_close, numeric_grad, randn

DTYPES = [np.float32, np.float64]
# Odd column counts leave partial GPU column tiles; (3000, 7) and (70000, 3) split the rows
# over many GPU blocks; (1000, 40) and (257, 1100) are above the CPU's OpenMP threshold.
SHAPES = [(2, 3), (7, 5), (64, 33), (1000, 40), (3000, 7), (70000, 3), (257, 1100)]
TOL32 = dict(rtol=1e-4, atol=1e-4)


def tol(dtype):
    return TOL32 if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)


def params(xp, rng, c, dtype):
    gamma = xp.asarray(rng.uniform(0.5, 2.0, c).astype(dtype))
    beta = randn(xp, rng, (c,), dtype)
    running_mean = randn(xp, rng, (c,), dtype)
    running_var = xp.asarray(rng.uniform(0.5, 2.0, c).astype(dtype))
    return gamma, beta, running_mean, running_var


def features(xp, rng, shape, dtype):
    """A batch whose columns have different means (in [-3, 3]) and standard deviations 1 to 2."""
    spread = rng.uniform(1, 2, shape[1]) * rng.standard_normal(shape) + rng.uniform(-3, 3, shape[1])
    return xp.asarray(spread.astype(dtype))


def every_case(test):
    """Runs a test for every dtype, shape, mode and ReLU fusion."""
    for name, values in [("relu", [False, True]), ("training", [True, False]), ("shape", SHAPES),
                         ("dtype", DTYPES)]:
        test = pytest.mark.parametrize(name, values)(test)
    return test


@every_case
def test_forward_matches_reference(xp, path, rng, dtype, shape, training, relu):
    c = shape[1]
    x = features(xp, rng, shape, dtype)
    gamma, beta, rm, rv = params(xp, rng, c, dtype)
    ref_rm, ref_rv = rm.copy(), rv.copy()
    y, (mean, invstd) = F.batchnorm_forward(x, gamma, beta, rm, rv, training=training, relu=relu,
                                            momentum=0.2, eps=1e-3)
    ref_y, (ref_mean, ref_invstd) = R.batchnorm_forward(x, gamma, beta, ref_rm, ref_rv, training,
                                                        0.2, 1e-3, relu)
    assert y.dtype == dtype and mean.dtype == dtype and invstd.shape == (c,)
    assert_close(y, ref_y, **tol(dtype))
    assert_close(mean, ref_mean, **tol(dtype))
    assert_close(invstd, ref_invstd, **tol(dtype))
    assert_close(rm, ref_rm, **tol(dtype))
    assert_close(rv, ref_rv, **tol(dtype))


@every_case
def test_backward_matches_reference(xp, path, rng, dtype, shape, training, relu):
    n, c = shape
    x = features(xp, rng, shape, dtype)
    dy = randn(xp, rng, shape, dtype)
    gamma, beta, rm, rv = params(xp, rng, c, dtype)
    y, saved = R.batchnorm_forward(x, gamma, beta, rm.copy(), rv.copy(), training, 0.1, 1e-5, relu)
    start_g, start_b = randn(xp, rng, (c,), dtype), randn(xp, rng, (c,), dtype)
    dgamma, dbeta = start_g.copy(), start_b.copy()
    dx = F.batchnorm_backward(dy, x, gamma, saved, dgamma=dgamma, dbeta=dbeta, relu=relu,
                              y=y if relu else None, training=training)
    ref_dx, ref_dgamma, ref_dbeta = R.batchnorm_backward(dy, x, gamma, saved, relu, y, training)
    assert dx.dtype == dtype and dx.shape == shape
    assert_close(dx, ref_dx, **tol(dtype))
    # Sums over up to 70,000 rows: the bound scales with sqrt(n) for float32.
    sum_tol = dict(rtol=1e-4, atol=1e-5 * max(1.0, np.sqrt(n))) if dtype == np.float32 else dict(rtol=1e-9, atol=1e-9)
    assert_close(dgamma, start_g + ref_dgamma, **sum_tol)  # accumulated (+=)
    assert_close(dbeta, start_b + ref_dbeta, **sum_tol)


def grad_check_case(xp, rng, relu):
    """float64 (6, 4) batch whose normalised values stay 0.05 away from the ReLU kink."""
    while True:
        x = randn(xp, rng, (6, 4)) * 2 + 1
        gamma, beta, rm, rv = params(xp, rng, 4, np.float64)
        dy = randn(xp, rng, (6, 4))
        pre, _ = R.batchnorm_forward(x, gamma, beta, None, None, True, 0.1, 1e-5, False)
        pre_eval, _ = R.batchnorm_forward(x, gamma, beta, rm, rv, False, 0.1, 1e-5, False)
        if not relu or float(xp.abs(xp.concatenate([pre, pre_eval])).min()) > 0.05:
            return x, gamma, beta, rm, rv, dy


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("relu", [False, True])
def test_backward_finite_differences(xp, path, rng, training, relu):
    x, gamma, beta, rm, rv, dy = grad_check_case(xp, rng, relu)
    # In training the running statistics are left out (None), so repeated calls do not move them.
    stats = (None, None) if training else (rm, rv)

    def forward(x_, gamma_, beta_):
        return F.batchnorm_forward(x_, gamma_, beta_, *stats, training=training, relu=relu)[0]

    y, saved = F.batchnorm_forward(x, gamma, beta, *stats, training=training, relu=relu)
    dgamma, dbeta = xp.zeros(4), xp.zeros(4)
    dx = F.batchnorm_backward(dy, x, gamma, saved, dgamma=dgamma, dbeta=dbeta, relu=relu, y=y,
                              training=training)
    assert_grad_close(dx, numeric_grad(lambda v: forward(v, gamma, beta), x, dy), rtol=1e-5, atol=1e-7)
    assert_grad_close(dgamma, numeric_grad(lambda g: forward(x, g, beta), gamma, dy), rtol=1e-5, atol=1e-7)
    assert_grad_close(dbeta, numeric_grad(lambda b: forward(x, gamma, b), beta, dy), rtol=1e-5, atol=1e-7)


def test_running_statistics_follow_pytorch_convention(xp, path, rng):
    c, momentum, eps = 6, 0.3, 1e-4
    gamma, beta, _, _ = params(xp, rng, c, np.float64)
    rm, rv = xp.zeros(c), xp.ones(c)  # BatchNorm1d's initial running statistics
    expected_mean, expected_var = np.zeros(c), np.ones(c)
    for step in range(3):
        x = randn(xp, rng, (10 + step, c)) * (step + 1) + step
        F.batchnorm_forward(x, gamma, beta, rm, rv, training=True, momentum=momentum, eps=eps)
        xh = to_numpy(x)
        expected_mean = (1 - momentum) * expected_mean + momentum * xh.mean(axis=0)
        expected_var = (1 - momentum) * expected_var + momentum * xh.var(axis=0, ddof=1)  # unbiased
        assert_close(rm, expected_mean)
        assert_close(rv, expected_var)
    # Eval normalises with the running statistics and leaves them alone.
    x = randn(xp, rng, (5, c))
    before = to_numpy(rm).copy(), to_numpy(rv).copy()
    y, (mean, invstd) = F.batchnorm_forward(x, gamma, beta, rm, rv, training=False, eps=eps)
    np.testing.assert_array_equal(to_numpy(rm), before[0])
    np.testing.assert_array_equal(to_numpy(rv), before[1])
    expected = (to_numpy(x) - before[0]) / np.sqrt(before[1] + eps) * to_numpy(gamma) + to_numpy(beta)
    assert_close(y, expected)
    assert_close(mean, before[0])
    assert_close(invstd, 1 / np.sqrt(before[1] + eps))
    # Training normalises with the biased batch variance.
    y, _ = F.batchnorm_forward(x, gamma, beta, None, None, training=True, eps=eps)
    xh = to_numpy(x)
    expected = (xh - xh.mean(0)) / np.sqrt(xh.var(0) + eps) * to_numpy(gamma) + to_numpy(beta)
    assert_close(y, expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_statistics_accurate_with_large_mean(xp, path, rng, dtype):
    # A column with mean 1e4 and standard deviation 1: E[x^2] - E[x]^2 would lose the variance
    # to cancellation in float32 (and lose 8 digits in float64).
    x = xp.asarray((1e4 + rng.standard_normal((4099, 3))).astype(dtype))
    c = 3
    ones, zeros = xp.ones(c, dtype), xp.zeros(c, dtype)
    _, (mean, invstd) = F.batchnorm_forward(x, ones, zeros, None, None, training=True, eps=1e-5)
    exact = to_numpy(x).astype(np.float64)
    np.testing.assert_allclose(to_numpy(mean), exact.mean(0), rtol=1e-7 if dtype == np.float32 else 1e-14)
    np.testing.assert_allclose(to_numpy(invstd), 1 / np.sqrt(exact.var(0) + 1e-5),
                               rtol=1e-6 if dtype == np.float32 else 1e-11)


def test_repeatable_bit_for_bit(xp, path, rng):
    x = randn(xp, rng, (5000, 70), np.float32)
    dy = randn(xp, rng, (5000, 70), np.float32)
    gamma, beta, rm, rv = params(xp, rng, 70, np.float32)
    results = []
    for _ in range(2):
        y, saved = F.batchnorm_forward(x, gamma, beta, rm.copy(), rv.copy(), training=True, relu=True)
        dgamma, dbeta = xp.zeros(70, np.float32), xp.zeros(70, np.float32)
        dx = F.batchnorm_backward(dy, x, gamma, saved, dgamma=dgamma, dbeta=dbeta, relu=True, y=y)
        results.append([to_numpy(a) for a in (y, *saved, dx, dgamma, dbeta)])
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_output_buffers_and_in_place(xp, path, rng):
    x = randn(xp, rng, (40, 9), np.float64)
    gamma, beta, rm, rv = params(xp, rng, 9, np.float64)
    expected, (exp_mean, exp_invstd) = R.batchnorm_forward(x, gamma, beta, rm.copy(), rv.copy(), True,
                                                           0.1, 1e-5, True)
    saved = (xp.empty(9), xp.empty(9))
    y, (mean, invstd) = F.batchnorm_forward(x, gamma, beta, rm, rv, training=True, relu=True,
                                            out=x, saved=saved)
    assert y is x and mean is saved[0] and invstd is saved[1]
    assert_close(y, expected)
    assert_close(mean, exp_mean)
    assert_close(invstd, exp_invstd)
    dy = randn(xp, rng, (40, 9))
    xs = randn(xp, rng, (40, 9))
    expected_dx, _, _ = R.batchnorm_backward(dy, xs, gamma, saved, False, None, True)
    dx = F.batchnorm_backward(dy, xs, gamma, saved, dgamma=xp.zeros(9), dbeta=xp.zeros(9), dx=dy)
    assert dx is dy
    assert_close(dx, expected_dx)


def test_empty_batches(xp, path, rng):
    gamma, beta, rm, rv = params(xp, rng, 3, np.float32)
    y, (mean, invstd) = F.batchnorm_forward(xp.ones((0, 3), np.float32), gamma, beta, rm, rv, training=False)
    assert y.shape == (0, 3)
    assert_close(mean, rm)
    assert_close(invstd, 1 / xp.sqrt(rv + np.float32(1e-5)))
    dgamma, dbeta = xp.zeros(3, np.float32), xp.zeros(3, np.float32)
    dx = F.batchnorm_backward(y, y, gamma, (mean, invstd), dgamma=dgamma, dbeta=dbeta, training=False)
    assert dx.shape == (0, 3) and not bool(dgamma.any()) and not bool(dbeta.any())
    none = xp.ones(0, np.float32)
    y, saved = F.batchnorm_forward(xp.ones((4, 0), np.float32), none, none, none, none.copy(), training=True)
    assert y.shape == (4, 0) and saved[0].shape == (0,)


@pytest.mark.parametrize("relu", [False, True])
def test_matches_torch(xp, path, rng, relu):
    torch = pytest.importorskip("torch")
    n, c = 37, 11
    x = rng.standard_normal((n, c)) * 3 + 1
    gamma, beta = rng.uniform(0.5, 2, c), rng.standard_normal(c)
    dy = rng.standard_normal((n, c))
    for training in (True, False):
        rm, rv = rng.standard_normal(c), rng.uniform(0.5, 2, c)
        t_rm, t_rv = torch.tensor(rm), torch.tensor(rv)
        tx = torch.tensor(x, requires_grad=True)
        tg = torch.tensor(gamma, requires_grad=True)
        tb = torch.tensor(beta, requires_grad=True)
        ty = torch.nn.functional.batch_norm(tx, t_rm, t_rv, tg, tb, training=training, momentum=0.1, eps=1e-5)
        if relu:
            ty = torch.relu(ty)
        ty.backward(torch.tensor(dy))
        rm, rv = xp.asarray(rm), xp.asarray(rv)
        args = [xp.asarray(a) for a in (x, gamma, beta)]
        y, saved = F.batchnorm_forward(*args, rm, rv, training=training, relu=relu)
        dgamma, dbeta = xp.zeros(c), xp.zeros(c)
        dx = F.batchnorm_backward(xp.asarray(dy), args[0], args[1], saved, dgamma=dgamma, dbeta=dbeta,
                                  relu=relu, y=y, training=training)
        assert_close(y, ty.detach().numpy(), rtol=1e-10, atol=1e-10)
        assert_close(rm, t_rm.numpy(), rtol=1e-12, atol=1e-12)
        assert_close(rv, t_rv.numpy(), rtol=1e-12, atol=1e-12)
        assert_close(dx, tx.grad.numpy(), rtol=1e-9, atol=1e-10)
        assert_close(dgamma, tg.grad.numpy(), rtol=1e-9, atol=1e-10)
        assert_close(dbeta, tb.grad.numpy(), rtol=1e-9, atol=1e-10)


# ---- bad input --------------------------------------------------------------------------------


def test_rejects_bad_forward_input(xp, rng):
    x = randn(xp, rng, (8, 5), np.float32)
    gamma, beta, rm, rv = params(xp, rng, 5, np.float32)
    before = to_numpy(rm).copy(), to_numpy(rv).copy()

    def call(x_=x, gamma_=gamma, beta_=beta, rm_=rm, rv_=rv, **kwargs):
        kwargs.setdefault("training", True)
        return F.batchnorm_forward(x_, gamma_, beta_, rm_, rv_, **kwargs)

    with pytest.raises(ValueError, match=r"more than one value per feature, got x of shape \(1, 5\)"):
        call(x[:1])
    with pytest.raises(ValueError, match=r"running_mean: expected shape \(5,\), got \(4,\)"):
        call(rm_=rm[:4])
    with pytest.raises(ValueError, match=r"running_var: expected shape \(5,\), got \(5, 1\)"):
        call(rv_=rv.reshape(5, 1))
    with pytest.raises(ValueError, match=r"gamma: expected shape \(5,\)"):
        call(gamma_=xp.ones(6, np.float32))
    with pytest.raises(TypeError, match=r"beta: expected dtype float32 \(the dtype of x\), got float64"):
        call(beta_=xp.zeros(5))
    with pytest.raises(ValueError, match=r"x: expected a 2-d array, got shape \(8, 5, 1\)"):
        call(x.reshape(8, 5, 1))
    with pytest.raises(TypeError, match="x: expected dtype float32 or float64, got int64"):
        call(xp.ones((8, 5), dtype=np.int64))
    with pytest.raises(ValueError, match="C-contiguous"):
        call(xp.ascontiguousarray(x.T).T)
    with pytest.raises(ValueError, match="both be arrays or both be None"):
        call(rv_=None)
    with pytest.raises(ValueError, match="training=False normalises with running_mean"):
        call(rm_=None, rv_=None, training=False)
    with pytest.raises(TypeError, match="training must be True or False"):
        call(training=1)
    with pytest.raises(ValueError, match="momentum must be <= 1.0"):
        call(momentum=1.5)
    with pytest.raises(ValueError, match="eps must be > 0.0"):
        call(eps=0.0)
    with pytest.raises(ValueError, match="out: expected shape"):
        call(out=xp.empty((5, 8), np.float32))
    with pytest.raises(TypeError, match="saved must be the"):
        call(saved=xp.empty(5, np.float32))
    call(x[:1], training=False)  # eval works for a single row, as in PyTorch
    # Only the refused calls and eval calls ran: the running statistics are untouched.
    np.testing.assert_array_equal(to_numpy(rm), before[0])
    np.testing.assert_array_equal(to_numpy(rv), before[1])


def test_refused_calls_modify_nothing(rng):
    x = rng.standard_normal((8, 5)).astype(np.float32)
    gamma, beta = np.ones(5, np.float32), np.zeros(5, np.float32)
    rm, rv = np.zeros(5, np.float32), np.ones(5, np.float32)
    with pytest.raises(ValueError, match="out: expected shape"):
        F.batchnorm_forward(x, gamma, beta, rm, rv, training=True, out=np.empty((5, 8), np.float32))
    np.testing.assert_array_equal(rm, 0)
    np.testing.assert_array_equal(rv, 1)
    frozen = rm.copy()
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="running_mean is read-only"):
        F.batchnorm_forward(x, gamma, beta, frozen, rv, training=True)
    F.batchnorm_forward(x, gamma, beta, frozen, rv, training=False)  # eval only reads them


def test_rejects_bad_backward_input(xp, rng):
    x = randn(xp, rng, (8, 5), np.float32)
    gamma, beta, rm, rv = params(xp, rng, 5, np.float32)
    y, saved = F.batchnorm_forward(x, gamma, beta, rm, rv, training=True, relu=True)
    dy = randn(xp, rng, (8, 5), np.float32)
    grads = dict(dgamma=xp.zeros(5, np.float32), dbeta=xp.zeros(5, np.float32))
    with pytest.raises(ValueError, match="relu=True needs y"):
        F.batchnorm_backward(dy, x, gamma, saved, relu=True, **grads)
    with pytest.raises(ValueError, match=r"x: expected shape \(8, 5\), got \(8, 4\)"):
        F.batchnorm_backward(dy, x[:, :4].copy(), gamma, saved, **grads)
    with pytest.raises(ValueError, match=r"dgamma: expected shape \(5,\)"):
        F.batchnorm_backward(dy, x, gamma, saved, dgamma=xp.zeros(4, np.float32), dbeta=grads["dbeta"])
    with pytest.raises(TypeError, match="dbeta: expected dtype float32"):
        F.batchnorm_backward(dy, x, gamma, saved, dgamma=grads["dgamma"], dbeta=xp.zeros(5))
    with pytest.raises(TypeError, match="saved must be the"):
        F.batchnorm_backward(dy, x, gamma, saved[0], **grads)
    with pytest.raises(ValueError, match=r"saved\[1\] \(invstd\): expected shape"):
        F.batchnorm_backward(dy, x, gamma, (saved[0], saved[1][:3]), **grads)
    with pytest.raises(ValueError, match=r"y: expected shape"):
        F.batchnorm_backward(dy, x, gamma, saved, relu=True, y=y[:4], **grads)
    with pytest.raises(ValueError, match=r"dx: expected shape"):
        F.batchnorm_backward(dy, x, gamma, saved, dx=xp.empty((5, 8), np.float32), **grads)
    with pytest.raises(TypeError, match="dgamma"):
        F.batchnorm_backward(dy, x, gamma, saved)


@pytest.mark.gpu
def test_rejects_mixed_devices():
    import cupy

    x = cupy.ones((4, 3), np.float32)
    with pytest.raises(ValueError, match="never copies between devices"):
        F.batchnorm_forward(x, np.ones(3, np.float32), cupy.zeros(3, np.float32), None, None, training=True)
