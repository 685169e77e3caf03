"""Loss classes: values and gradients against float64 formulas written here, the fused
functional path, a float from forward, and bad targets refused."""

import numpy as np
import pytest

from fastnn import functional as F
from fastnn import nn
from fastnn._backend import to_numpy
from util import assert_close, randn

DTYPES = [np.float32, np.float64]


def log_softmax(z):
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def cross_entropy(z, y):
    n = len(y)
    logp = log_softmax(z)
    grad = np.exp(logp)
    grad[np.arange(n), y] -= 1
    return -logp[np.arange(n), y].mean(), grad / n


def bce(z, t):
    sig = 1 / (1 + np.exp(-z))
    return np.mean(-t * np.log(sig) - (1 - t) * np.log(1 - sig)), (sig - t) / z.size


def mse(p, t):
    return np.mean((p - t) ** 2), 2 * (p - t) / p.size


def hinge(s, y):
    n, c = s.shape
    loss, grad = 0.0, np.zeros_like(s)
    for i in range(n):
        for j in range(c):
            margin = s[i, j] - s[i, y[i]] + 1
            if j != y[i] and margin > 0:
                loss += margin
                grad[i, j] += 1
                grad[i, y[i]] -= 1
    return loss / n, grad / n


def l1(p, t):
    return np.mean(np.abs(p - t)), np.sign(p - t) / p.size


CASES = [
    (nn.SoftmaxCrossEntropy, cross_entropy, F.softmax_cross_entropy_forward, "labels"),
    (nn.BCEWithLogits, bce, F.bce_with_logits_forward, "probabilities"),
    (nn.MSE, mse, F.mse_forward, "values"),
    (nn.Hinge, hinge, F.hinge_forward, "labels"),
    (nn.L1, l1, F.l1_forward, "values"),
]


def make_target(xp, rng, kind, shape, dtype):
    if kind == "labels":
        return xp.asarray(rng.integers(0, shape[1], shape[0]))
    if kind == "probabilities":
        return xp.asarray(rng.uniform(0, 1, shape).astype(dtype))
    return randn(xp, rng, shape, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loss_class,formula,kernel,kind", CASES, ids=[c[0].__name__ for c in CASES])
def test_loss_matches_formula_and_functional(xp, path, rng, dtype, loss_class, formula, kernel, kind):
    loss = loss_class()
    pred = randn(xp, rng, (9, 4), dtype, scale=2.0)
    target = make_target(xp, rng, kind, (9, 4), dtype)
    value = loss(pred, target)
    assert type(value) is float
    expected, grad = formula(to_numpy(pred).astype(np.float64), to_numpy(target))
    tol = dict(rel=1e-5, abs=1e-6) if dtype == np.float32 else dict(rel=1e-12, abs=1e-14)
    assert value == pytest.approx(expected, **tol)
    dpred = loss.backward()
    assert dpred.dtype == dtype and dpred.shape == pred.shape
    assert_close(to_numpy(dpred).astype(np.float64), grad, rtol=tol["rel"], atol=tol["abs"])

    out = xp.empty_like(pred)
    assert value == float(kernel(pred, target, grad_out=out))
    assert_close(dpred, out)
    lazy = loss.forward(pred, target, sync=False)
    assert lazy.shape == () and type(lazy) is type(pred) and float(lazy) == value


def test_cross_entropy_is_stable_for_large_logits():
    loss = nn.SoftmaxCrossEntropy()
    logits = np.array([[1e4, 0.0, -1e4], [0.0, 3e4, 0.0]], np.float32)
    value = loss(logits, np.array([0, 0]))
    assert value == pytest.approx(3e4 / 2, rel=1e-6)
    assert np.isfinite(loss.backward()).all()
    assert np.isfinite(nn.BCEWithLogits()(np.array([[-1e4, 1e4]], np.float32), np.array([[1.0, 0.0]], np.float32)))


def test_small_integer_labels_are_accepted():
    logits = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    labels = np.array([0, 2, 1, 2])
    loss = nn.SoftmaxCrossEntropy()
    assert loss(logits, labels.astype(np.uint8)) == loss(logits, labels)


BAD = [
    (nn.SoftmaxCrossEntropy, np.zeros((4, 3), np.float32), np.zeros(4, np.float32), TypeError,
     r"SoftmaxCrossEntropy\(\): target: expected integer class labels, got dtype float32"),
    (nn.SoftmaxCrossEntropy, np.zeros((4, 3), np.float32), np.eye(4, 3, dtype=np.int64), ValueError,
     r"target: expected shape \(4,\) \(one label per row of pred, shape \(4, 3\)\), got \(4, 3\)"),
    (nn.SoftmaxCrossEntropy, np.zeros((4, 3), np.float32), np.array([0, 1, 3, 0]), ValueError, r"3"),
    (nn.Hinge, np.zeros(4, np.float32), np.array([0, 1, 1, 0]), ValueError, r"pred must be 2-d"),
    (nn.Hinge, np.zeros((4, 3), np.int64), np.array([0, 1, 1, 0]), TypeError, r"pred: expected dtype float32 or float64, got int64"),
    (nn.MSE, np.zeros((4, 3), np.float32), np.zeros((4, 2), np.float32), ValueError,
     r"MSE\(\): target has shape \(4, 2\), pred \(4, 3\)"),
    (nn.L1, np.zeros((4, 3), np.float32), np.zeros((4, 3), np.float64), TypeError,
     r"L1\(\): target: expected dtype float32 \(the dtype of pred\), got float64"),
    (nn.BCEWithLogits, np.zeros((4, 3), np.float32), np.zeros((4, 3), np.int64), TypeError,
     r"BCEWithLogits\(\): target: expected dtype float32 or float64, got int64"),
]


@pytest.mark.parametrize("loss_class,pred,target,error,message", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_targets_are_refused(loss_class, pred, target, error, message):
    with pytest.raises(error, match=message):
        loss_class()(pred, target)


def test_backward_before_forward_and_nan_check():
    with pytest.raises(RuntimeError, match=r"MSE\(\): backward needs a forward first"):
        nn.MSE().backward()
    pred = np.array([[0.0, np.nan]], np.float32)
    with pytest.raises(ValueError, match=r"L1\(\): pred contains NaN \(first at index \(0, 1\)"):
        nn.L1(check_nan=True)(pred, np.zeros((1, 2), np.float32))
    with pytest.raises(ValueError, match=r"target contains NaN"):
        nn.MSE(check_nan=True)(np.zeros((1, 2), np.float32), pred)


# ---------------------------------------------------------------------------------------------
# What a fused training step (Sequential.fused_step) uses: the loss's name and its public hooks.


@pytest.mark.parametrize("loss_class,formula,kernel,kind", CASES, ids=[c[0].__name__ for c in CASES])
def test_every_loss_is_named_by_its_chain_kernel(loss_class, formula, kernel, kind):
    assert loss_class.name in F.CHAIN_LOSSES
    assert getattr(F, f"{loss_class.name}_forward") is kernel is loss_class.kernel
    assert loss_class.labels == (kind == "labels")


def test_every_chain_loss_has_a_class_and_others_have_no_name():
    assert sorted(case[0].name for case in CASES) == sorted(F.CHAIN_LOSSES)
    assert nn.Loss.name is None

    class Doubled(nn.MSE):  # its own kernel: no fused step may compute plain MSE for it
        kernel = staticmethod(lambda pred, target, *, grad_out=None, out=None: None)

    class Renamed(nn.MSE):
        pass

    assert Doubled.name is None and Renamed.name == "mse" and nn.MSE.name == "mse"


def test_check_target_returns_what_the_kernel_takes(rng):
    batch = np.zeros((4, 7), np.float32)  # stands for pred: its rows, dtype and device
    labels = nn.SoftmaxCrossEntropy().check_target(np.array([0, 2, 1, 2], np.uint8), batch)
    assert labels.dtype == np.int64 and labels.flags.c_contiguous
    np.testing.assert_array_equal(labels, [0, 2, 1, 2])
    strided = np.arange(8, dtype=np.int32)[::2]
    labels = nn.Hinge().check_target(strided, batch)
    assert labels.dtype == np.int32 and labels.flags.c_contiguous
    np.testing.assert_array_equal(labels, [0, 2, 4, 6])
    values = rng.standard_normal((3, 4)).astype(np.float32).T  # not C-contiguous: copied
    target = nn.MSE().check_target(values, batch)
    assert target.flags.c_contiguous and target.shape == (4, 3)
    np.testing.assert_array_equal(target, values)
    with pytest.raises(ValueError, match=r"Hinge\(\): target: expected shape \(4,\) .*got \(3,\)"):
        nn.Hinge().check_target(np.array([0, 1, 2]), batch)
    with pytest.raises(TypeError, match=r"SoftmaxCrossEntropy\(\): target: expected integer class labels"):
        nn.SoftmaxCrossEntropy().check_target(np.zeros(4, np.float32), batch)
    with pytest.raises(TypeError, match=r"L1\(\): target: expected dtype float32 \(the dtype of pred\), got float64"):
        nn.L1().check_target(np.zeros((4, 3)), batch)
    with pytest.raises(TypeError, match=r"BCEWithLogits\(\): target: expected dtype float32 or float64, got int64"):
        nn.BCEWithLogits().check_target(np.zeros((4, 3), np.int64), batch)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_out_is_one_buffer_and_fused_done_drops_the_gradient(rng, dtype):
    loss = nn.MSE()
    like = rng.standard_normal((5, 3)).astype(dtype)
    out = loss.fused_out(like)
    assert out.shape == () and out.dtype == dtype and isinstance(out, np.ndarray)
    assert loss.fused_out(like) is out
    loss.forward(like, np.zeros_like(like))
    assert_close(loss.backward(), 2 * like / like.size)
    loss.fused_done()
    with pytest.raises(RuntimeError, match=r"MSE\(\): backward needs a forward first"):
        loss.backward()
