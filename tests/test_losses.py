"""Losses: every path against the float64 reference on random inputs (loss, the fused gradient
and the separate backward), float64 finite differences of every gradient, stability at large
logits, labels out of range and of the wrong dtype, PyTorch where it is installed, bad input."""

import numpy as np
import pytest

from fastnn import _backend
from fastnn import functional as F
from fastnn import reference as R
from fastnn._backend import to_numpy
from util import assert_close, assert_grad_close, numeric_grad, randn

DTYPES = [np.float32, np.float64]
LABELED = ["softmax_cross_entropy", "hinge"]
PAIRED = ["bce_with_logits", "mse", "l1"]
# (rows, classes); the larger ones go over the OpenMP threshold and span many GPU blocks.
LABELED_SHAPES = [(1, 1), (5, 3), (64, 10), (4000, 37), (3, 1500)]
PAIRED_SHAPES = [(1,), (7, 3), (2, 3, 4), (300, 250)]


def fns(name):
    return getattr(F, f"{name}_forward"), getattr(F, f"{name}_backward")


def refs(name):
    return getattr(R, f"{name}_forward"), getattr(R, f"{name}_backward")


def tol(dtype, n=1):
    if np.dtype(dtype) == np.float64:
        return dict(rtol=1e-10, atol=1e-12)
    return dict(rtol=1e-5 * max(1.0, np.sqrt(n) / 10), atol=1e-6)


def labels_for(xp, rng, rows, classes, dtype=np.int64):
    return xp.asarray(rng.integers(0, classes, rows).astype(dtype))


def targets_for(xp, rng, name, shape, dtype):
    if name == "bce_with_logits":
        return xp.asarray(rng.uniform(0, 1, shape).astype(dtype))
    return randn(xp, rng, shape, dtype)


def host64(a):
    return to_numpy(a).astype(np.float64) if np.dtype(a.dtype).kind == "f" else to_numpy(a)


def check_loss_and_grads(name, pred, target, dtype):
    forward, backward = fns(name)
    ref_forward, ref_backward = refs(name)
    xp = _backend.array_module(pred)
    grad = xp.full(pred.shape, np.nan, dtype)
    loss = forward(pred, target, grad_out=grad)
    assert loss.shape == () and loss.dtype == dtype
    assert _backend.device_of(loss) == _backend.device_of(pred)
    expected_loss = ref_forward(host64(pred), host64(target))
    expected_grad = ref_backward(host64(pred), host64(target))
    assert_close(loss, expected_loss, dtype, **tol(dtype, pred.size))
    assert_close(grad, expected_grad, dtype, **tol(dtype))
    assert_close(backward(pred, target), expected_grad, dtype, **tol(dtype))
    assert_close(forward(pred, target), loss, dtype, rtol=1e-6, atol=0)  # no grad: the same loss
    assert F.loss_item(loss) == pytest.approx(float(expected_loss), rel=1e-4)


@pytest.mark.parametrize("name", LABELED)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", LABELED_SHAPES)
@pytest.mark.parametrize("label_dtype", [np.int32, np.int64])
def test_labeled_losses_match_reference(xp, path, rng, name, dtype, shape, label_dtype):
    scores = randn(xp, rng, shape, dtype, scale=3.0)
    check_loss_and_grads(name, scores, labels_for(xp, rng, *shape, label_dtype), dtype)


@pytest.mark.parametrize("name", PAIRED)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", PAIRED_SHAPES)
def test_paired_losses_match_reference(xp, path, rng, name, dtype, shape):
    pred = randn(xp, rng, shape, dtype, scale=3.0)
    check_loss_and_grads(name, pred, targets_for(xp, rng, name, shape, dtype), dtype)


@pytest.mark.parametrize("name", LABELED + PAIRED)
def test_gradients_finite_differences(xp, path, rng, name):
    forward, backward = fns(name)
    if name in LABELED:
        # scores on a grid of 0.5 plus a small jitter: hinge margins stay far from the kink
        pred = xp.asarray(rng.integers(-6, 6, (5, 4)) * 0.5 + rng.uniform(0.1, 0.2, (5, 4)))
        target = labels_for(xp, rng, 5, 4)
    else:
        pred = randn(xp, rng, (3, 4))
        target = targets_for(xp, rng, name, (3, 4), np.float64)
        if name == "l1":  # |pred - target| >= 0.1: no kink within the step
            target = pred - xp.asarray(rng.uniform(0.1, 1.0, (3, 4)) * rng.choice([-1, 1], (3, 4)))
    numeric = numeric_grad(lambda v: forward(v, target), pred, np.float64(1.0))
    assert_grad_close(backward(pred, target), numeric)
    grad = xp.empty_like(pred)
    forward(pred, target, grad_out=grad)
    assert_grad_close(grad, numeric)


def test_hinge_kink_has_zero_subgradient(xp, path):
    scores = xp.asarray(np.array([[1.0, 0.0, 0.5]]))  # s_1 - s_0 + 1 = 0 exactly: the kink
    grad = F.hinge_backward(scores, xp.asarray(np.array([0])))
    assert_close(grad, np.array([[0.0, 0.0, 1.0]]) - np.array([[1.0, 0.0, 0.0]]))
    assert float(F.hinge_forward(scores, xp.asarray(np.array([0])))) == pytest.approx(0.5)


def test_l1_subgradient_zero_where_equal(xp, path):
    pred = xp.asarray(np.array([1.0, 2.0, 3.0]))
    target = xp.asarray(np.array([1.0, 1.0, 4.0]))
    assert_close(F.l1_backward(pred, target), np.array([0.0, 1.0, -1.0]) / 3)


@pytest.mark.parametrize("dtype", DTYPES)
def test_stable_at_large_logits(xp, path, dtype):
    logits = xp.asarray(np.array([[1e4, 0.0, -1e4], [-1e4, 1e4 - 1, 1e4], [5e3, 5e3, 5e3]], dtype))
    labels = xp.asarray(np.array([0, 1, 2]))
    grad = xp.empty_like(logits)
    loss = F.softmax_cross_entropy_forward(logits, labels, grad_out=grad)
    expected = (0.0 + (1 + np.log1p(np.exp(-1.0))) + np.log(3.0)) / 3
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    assert bool(xp.isfinite(grad).all())
    assert_close(grad, R.softmax_cross_entropy_backward(host64(logits), host64(labels)), dtype, **tol(dtype))
    z = xp.asarray(np.array([1e4, -1e4, 100.0, -100.0], dtype))
    t = xp.asarray(np.array([0.0, 1.0, 1.0, 0.0], dtype))
    loss = F.bce_with_logits_forward(z, t, grad_out=(grad := xp.empty_like(z)))
    assert float(loss) == pytest.approx((1e4 + 1e4) / 4, rel=1e-6)
    assert_close(grad, np.array([1.0, -1.0, 0.0, 0.0]) / 4, dtype, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("classes, column", [(10, 0), (10, 7), (40, 5), (40, 31), (40, 32), (40, 39)])
def test_softmax_cross_entropy_nan_logit_gives_nan(xp, path, rng, dtype, classes, column):
    # A NaN among the first 32 columns is the first value a GPU lane sees; it must not vanish.
    logits = randn(xp, rng, (6, classes), dtype)
    logits[2, column] = np.nan
    labels = xp.asarray(np.full(6, classes - 1 if column == 0 else 0))
    grad = xp.zeros_like(logits)
    loss = F.softmax_cross_entropy_forward(logits, labels, grad_out=grad)
    assert np.isnan(float(loss))
    assert bool(xp.isnan(grad[2]).all())
    assert bool(xp.isfinite(grad[:2]).all()) and bool(xp.isfinite(grad[3:]).all())
    assert np.isnan(float(R.softmax_cross_entropy_forward(host64(logits), host64(labels))))


@pytest.mark.parametrize("where", ["other", "label"])
def test_hinge_nan_score_gives_nan(xp, path, rng, where):
    # max(0, NaN) is NaN: a NaN score, in another class or in the labelled one, must reach the loss.
    scores = randn(xp, rng, (4, 7), np.float32)
    labels = xp.asarray(np.array([0, 3, 6, 2]))
    scores[1, 3 if where == "label" else 5] = np.nan
    loss = F.hinge_forward(scores, labels)
    assert np.isnan(float(loss))
    assert np.isnan(float(R.hinge_forward(host64(scores), host64(labels))))
    healthy = scores[[0, 2, 3]]
    assert np.isfinite(float(F.hinge_forward(healthy, labels[xp.asarray([0, 2, 3])])))


def test_labels_out_of_range_refused_on_the_host(rng):
    logits = rng.standard_normal((6, 5))
    for bad, where in [(np.array([0, 1, 7, 2, 9, 0]), "label 7 at index 2"),
                       (np.array([0, -1, 2, 3, 4, 0], np.int32), "label -1 at index 1")]:
        for fn in [F.softmax_cross_entropy_forward, F.softmax_cross_entropy_backward, F.hinge_forward,
                   F.hinge_backward]:
            with pytest.raises(ValueError, match=rf"{where} is out of range: .*C = 5 classes"):
                fn(logits, bad)


@pytest.mark.gpu
@pytest.mark.parametrize("name", LABELED)
def test_labels_out_of_range_flagged_on_the_gpu(rng, name):
    import cupy

    forward, _ = fns(name)
    scores = cupy.asarray(rng.standard_normal((300, 5)))
    labels = cupy.asarray(rng.integers(0, 5, 300))
    labels[123] = 5
    labels[200] = -3
    grad = cupy.empty_like(scores)
    loss = forward(scores, labels, grad_out=grad)  # queued, no host sync
    assert bool(cupy.isnan(loss))
    assert bool(cupy.isnan(grad[123]).all()) and bool(cupy.isfinite(grad[:123]).all())
    with pytest.raises(ValueError, match=r"label 5 at index 123 is out of range: .*C = 5 classes"):
        F.loss_item(loss)
    labels[123] = 0
    labels[200] = 0
    assert np.isfinite(F.loss_item(forward(scores, labels)))


def test_label_dtypes(xp, rng):
    logits = randn(xp, rng, (4, 3))
    labels = rng.integers(0, 3, 4)
    for fn in [F.softmax_cross_entropy_forward, F.hinge_backward]:
        a = fn(logits, xp.asarray(labels.astype(np.int32)))
        b = fn(logits, xp.asarray(labels.astype(np.int64)))
        assert_close(a, b, rtol=0, atol=0)
        for wrong in [np.uint8, np.float64, np.bool_, np.int16]:
            with pytest.raises(TypeError, match=rf"labels: expected dtype int32 or int64 .*got {np.dtype(wrong)}"):
                fn(logits, xp.asarray(labels.astype(wrong)))


def test_rejects_bad_input(xp, rng):
    logits = randn(xp, rng, (4, 3), np.float32)
    labels = labels_for(xp, rng, 4, 3)
    with pytest.raises(ValueError, match=r"labels: expected shape \(4,\) \(one label per row of the scores, "
                                         r"shape \(4, 3\)\), got \(5,\)"):
        F.softmax_cross_entropy_forward(logits, labels_for(xp, rng, 5, 3))
    with pytest.raises(ValueError, match=r"logits: expected a 2-d array, got shape \(12,\)"):
        F.softmax_cross_entropy_forward(logits.reshape(-1), labels)
    with pytest.raises(ValueError, match=r"logits: expected a non-empty \(N, C\) array, got shape \(0, 3\)"):
        F.softmax_cross_entropy_forward(xp.ones((0, 3), np.float32), labels[:0])
    with pytest.raises(TypeError, match="logits: expected dtype float32 or float64, got int64"):
        F.softmax_cross_entropy_forward(xp.ones((4, 3), np.int64), labels)
    with pytest.raises(ValueError, match=r"grad_out: expected shape \(4, 3\), got \(3, 4\)"):
        F.hinge_forward(logits, labels, grad_out=xp.empty((3, 4), np.float32))
    with pytest.raises(TypeError, match="grad_out: expected dtype float32"):
        F.hinge_forward(logits, labels, grad_out=xp.empty((4, 3), np.float64))
    with pytest.raises(ValueError, match="grad_out shares memory with logits"):
        F.softmax_cross_entropy_forward(logits, labels, grad_out=logits)
    with pytest.raises(ValueError, match=r"out: expected shape \(\), got \(1,\)"):
        F.mse_forward(logits, logits, out=xp.empty(1, np.float32))
    with pytest.raises(ValueError, match=r"target: expected shape \(4, 3\), got \(3, 4\)"):
        F.mse_forward(logits, randn(xp, rng, (3, 4), np.float32))
    with pytest.raises(TypeError, match=r"targets: expected dtype float32 \(the dtype of logits\), got float64"):
        F.bce_with_logits_forward(logits, randn(xp, rng, (4, 3)))
    with pytest.raises(ValueError, match="the mean of an empty array is undefined"):
        F.l1_forward(xp.ones(0, np.float32), xp.ones(0, np.float32))
    with pytest.raises(ValueError, match="C-contiguous"):
        F.l1_backward(logits.T, logits.T)


def test_out_receives_the_loss(xp, path, rng):
    pred = randn(xp, rng, (5, 2))
    out = xp.full((), np.nan)
    assert F.mse_forward(pred, 0 * pred, out=out) is out
    assert float(out) == pytest.approx(float((to_numpy(pred) ** 2).mean()))
    assert F.loss_item(out) == float(out)


@pytest.mark.gpu
def test_gpu_rejects_mixed_devices(rng):
    import cupy

    logits = rng.standard_normal((4, 3))
    with pytest.raises(ValueError, match="labels is on cuda:0 but the scores are on cpu"):
        F.softmax_cross_entropy_forward(logits, cupy.zeros(4, np.int64))
    with pytest.raises(ValueError, match="never copies between devices"):
        F.mse_forward(cupy.asarray(logits), logits)


@pytest.mark.gpu
def test_gpu_losses_are_deterministic(rng):
    import cupy

    logits = cupy.asarray(rng.standard_normal((20000, 10)).astype(np.float32))
    labels = cupy.asarray(rng.integers(0, 10, 20000))
    first = float(F.softmax_cross_entropy_forward(logits, labels))
    assert all(float(F.softmax_cross_entropy_forward(logits, labels)) == first for _ in range(3))
    z = cupy.asarray(rng.standard_normal(1 << 20).astype(np.float32))
    first = float(F.bce_with_logits_forward(z, 0.5 + 0 * z))
    assert float(F.bce_with_logits_forward(z, 0.5 + 0 * z)) == first


# ---- PyTorch -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", LABELED + PAIRED)
def test_matches_torch(path, rng, name):
    torch = pytest.importorskip("torch")
    tf = torch.nn.functional
    if name in LABELED:
        pred = rng.standard_normal((16, 7)) * 2
        target = rng.integers(0, 7, 16)
    else:
        pred = rng.standard_normal((16, 7)) * 2
        target = rng.uniform(0, 1, (16, 7)) if name == "bce_with_logits" else rng.standard_normal((16, 7))
    torch_loss = {
        "softmax_cross_entropy": lambda p, t: tf.cross_entropy(p, t),
        "hinge": lambda p, t: p.shape[1] * tf.multi_margin_loss(p, t, p=1, margin=1.0),
        "bce_with_logits": lambda p, t: tf.binary_cross_entropy_with_logits(p, t),
        "mse": lambda p, t: tf.mse_loss(p, t),
        "l1": lambda p, t: tf.l1_loss(p, t),
    }[name]
    tp = torch.tensor(pred, requires_grad=True)
    expected = torch_loss(tp, torch.tensor(target))
    expected.backward()
    forward, _ = fns(name)
    grad = np.empty_like(pred)
    loss = forward(pred, target, grad_out=grad)
    assert float(loss) == pytest.approx(expected.item(), rel=1e-12)
    assert_close(grad, tp.grad.numpy(), rtol=1e-10, atol=1e-12)
