"""Losses, validated and dispatched to the reference, native CPU or CUDA path.

Each loss has ``<name>_forward(pred, target, *, grad_out=None, out=None) -> loss`` and
``<name>_backward(pred, target, *, out=None) -> dpred``. ``loss`` is a 0-d array of pred's
dtype on pred's device (the GPU path never waits for the GPU: read it with :func:`loss_item`
or ``float(loss)``), the mean over the batch as in PyTorch's ``reduction="mean"``. With
``grad_out`` the forward also writes d loss / d pred into it, in the same pass over the data
(what a training step wants). ``out`` is an optional 0-d array for the loss.

==================== ================================ =========================================
loss                 pred, target                     torch equivalent
==================== ================================ =========================================
softmax_cross_entropy logits (N, C), labels (N,) int  ``F.cross_entropy(logits, labels)``
bce_with_logits      logits, targets in [0, 1]        ``F.binary_cross_entropy_with_logits``
mse                  pred, target (same shape)        ``F.mse_loss``
hinge                scores (N, C), labels (N,) int   ``C * F.multi_margin_loss(scores, labels)``
l1                   pred, target (same shape)        ``F.l1_loss``
==================== ================================ =========================================

Labels are int32 or int64 (other dtypes: ``TypeError``) in [0, C). Out of range is a
``ValueError`` naming the first bad label and C: raised at once on the CPU (checking costs
one pass over N integers). The GPU does not stop to check: a row with a bad label gets a NaN
loss and NaN gradient, the kernel records the first such row on the device, and
:func:`loss_item` raises the ``ValueError`` when it reads that loss.
"""

from __future__ import annotations

import numpy as np

from .. import _backend as B
from .. import reference as ref

# The same names as the reference, plus loss_item.
__all__ = [*ref.losses.__all__, "loss_item"]

_LABELED = frozenset({"softmax_cross_entropy", "hinge"})

# Per (device, stream): the (loss pointer, labels, C) of the latest classification loss computed
# there, whose kernel wrote the first bad row into that stream's status word (``_status``).
_pending: dict = {}


def _loss_output(out, pred, pred_name: str):
    if out is None:
        with B.on_device(pred):
            return B.array_module(pred).empty((), dtype=pred.dtype)
    return B.check_float(out, "out", like=(pred_name, pred), shape=(), writable=True)


def _grad_output(grad, name: str, pred, second, names, required: bool = False):
    """The validated gradient output, which may not overlap the inputs (the kernels read them
    after writing). None stays None unless ``required``: then a new array."""
    if grad is None:
        return B.output(None, pred) if required else None
    grad = B.check_float(grad, name, like=(names[0], pred), shape=pred.shape, writable=True)
    B.check_disjoint([(name, grad)], [(names[0], pred), (names[1], second)])
    return grad


def _check_labels(labels, scores):
    """labels: int32/int64, one per row of the (N, C) ``scores``, on its device."""
    return B.check_labels(labels, "labels", rows=scores.shape[0], like=("the scores", scores))


def _label_error(labels, row: int, classes: int) -> ValueError:
    return ValueError(f"labels: label {int(labels[row])} at index {row} is out of range: labels must be in "
                      f"[0, C) with C = {classes} classes")


def _check_label_range(labels, classes: int) -> None:
    """Immediate range check (a host sync on the GPU: the reference path only)."""
    xp = B.array_module(labels)
    bad = (labels < 0) | (labels >= classes)
    if bool(bad.any()):
        raise _label_error(labels, int(xp.flatnonzero(bad)[0]), classes)


def _status(like):
    """The int64 word where the GPU loss kernels record the first row with a bad label (-1 for
    none), one per device and stream."""
    return B.stream_buffer(like, "loss status", 8).view(np.int64)


def _status_pointer(pred) -> int:
    return int(_status(pred).data.ptr)


def _scores(pred, name: str):
    pred = B.check_float(pred, name, ndim=2)
    if pred.shape[0] == 0 or pred.shape[1] == 0:
        raise ValueError(f"{name}: expected a non-empty (N, C) array, got shape {tuple(pred.shape)}")
    return pred


def _run(name: str, pred, second, grad, loss_out) -> None:
    """Loss ``name`` (its reference, or its ``<name>_forward`` kernel) on pred's path: the loss
    into ``loss_out`` unless None (a backward), the gradient into ``grad`` unless None."""
    labeled = name in _LABELED
    path = B.path_of(pred)
    if labeled and path != "cuda":
        _check_label_range(second, pred.shape[1])
    if path == "reference":
        if grad is not None:
            grad[...] = getattr(ref, f"{name}_backward")(pred, second)
        if loss_out is not None:
            loss_out[...] = getattr(ref, f"{name}_forward")(pred, second)
        return
    loss_ptr = 0 if loss_out is None else B.pointer(loss_out)
    grad_ptr = 0 if grad is None else B.pointer(grad)
    if labeled:
        labels64 = np.dtype(second.dtype) == np.int64
        args = [B.pointer(pred), B.pointer(second), labels64, loss_ptr, grad_ptr, *pred.shape]
    else:
        args = [B.pointer(pred), B.pointer(second), loss_ptr, grad_ptr, pred.size]
    if path == "cpu":
        B.launch(path, f"{name}_forward", pred, *args)
        return
    key = (B.device_of(pred).index, B.stream_of(pred))
    if labeled:
        args.append(0 if loss_out is None else _status_pointer(pred))
    B.launch(path, f"{name}_forward", pred, *args, B.workspace_pointer(pred, B._C.cuda.loss_workspace_bytes()))
    if loss_out is not None and labeled:
        _pending[key] = (loss_ptr, second, pred.shape[1])
    elif loss_out is not None:
        _pending.pop(key, None)


def _pair(pred, target, pred_name: str, target_name: str):
    pred = B.check_float(pred, pred_name)
    if pred.size == 0:
        raise ValueError(f"{pred_name}: the mean of an empty array is undefined (shape {tuple(pred.shape)})")
    target = B.check_float(target, target_name, like=(pred_name, pred), shape=pred.shape)
    return pred, target


def loss_item(loss) -> float:
    """``float(loss)``, the one host sync of a training step. For a GPU classification loss
    it also reads the first bad label the kernel recorded and raises ``ValueError`` (the label
    and C) if there was one."""
    value = float(loss)
    loss = B.as_array(loss, "loss")
    if B.device_of(loss).kind != "cuda":
        return value
    key = (B.device_of(loss).index, B.stream_of(loss))
    pending = _pending.get(key)
    if pending is not None and pending[0] == B.pointer(loss):
        loss_ptr, labels, classes = pending
        row = int(_status(loss)[0])
        if row >= 0:
            del _pending[key]
            raise _label_error(labels, row, classes)
    return value


def _inputs(name: str, pred, second, names):
    if name in _LABELED:
        pred = _scores(pred, names[0])
        return pred, _check_labels(second, pred)
    return _pair(pred, second, *names)


def _forward(name: str, pred, second, grad_out, out, names):
    pred, second = _inputs(name, pred, second, names)
    grad = _grad_output(grad_out, "grad_out", pred, second, names)
    loss = _loss_output(out, pred, names[0])
    _run(name, pred, second, grad, loss)
    return loss


def _backward(name: str, pred, second, out, names):
    pred, second = _inputs(name, pred, second, names)
    grad = _grad_output(out, "out", pred, second, names, required=True)
    _run(name, pred, second, grad, None)
    return grad


# ---------------------------------------------------------------------------------------------


def softmax_cross_entropy_forward(logits, labels, *, grad_out=None, out=None):
    """Softmax cross-entropy from logits (N, C) and integer labels (N,):
    loss = mean_i (logsumexp(logits_i) - logits_i[labels_i]), computed with the row max
    subtracted (stable for logits of any magnitude). With ``grad_out`` (N, C), also writes
    d loss / d logits = (softmax(logits) - onehot(labels)) / N. (torch.nn.functional.cross_entropy)"""
    return _forward("softmax_cross_entropy", logits, labels, grad_out, out, ("logits", "labels"))


def softmax_cross_entropy_backward(logits, labels, *, out=None):
    """d loss / d logits = (softmax(logits) - onehot(labels)) / N, (N, C)."""
    return _backward("softmax_cross_entropy", logits, labels, out, ("logits", "labels"))


def hinge_forward(scores, labels, *, grad_out=None, out=None):
    """Multiclass SVM (hinge) loss with margin 1, scores (N, C), labels (N,):
    loss = mean_i sum_{j != y_i} max(0, s_ij - s_iy_i + 1) (cs231n; C times
    torch.nn.functional.multi_margin_loss). ``grad_out``: the subgradient, 0 at the kink."""
    return _forward("hinge", scores, labels, grad_out, out, ("scores", "labels"))


def hinge_backward(scores, labels, *, out=None):
    """Hinge subgradient: 1/N at each j != y_i with s_ij - s_iy_i + 1 > 0, minus their count / N
    at y_i."""
    return _backward("hinge", scores, labels, out, ("scores", "labels"))


def bce_with_logits_forward(logits, targets, *, grad_out=None, out=None):
    """Binary cross-entropy of sigmoid(logits) against targets in [0, 1] (same shape), from the
    logits: loss = mean(max(z, 0) - z t + log(1 + e^-|z|)), never overflowing. ``grad_out``:
    (sigmoid(z) - t) / numel. (torch.nn.functional.binary_cross_entropy_with_logits)"""
    return _forward("bce_with_logits", logits, targets, grad_out, out, ("logits", "targets"))


def bce_with_logits_backward(logits, targets, *, out=None):
    """d loss / d logits = (sigmoid(logits) - targets) / numel."""
    return _backward("bce_with_logits", logits, targets, out, ("logits", "targets"))


def mse_forward(pred, target, *, grad_out=None, out=None):
    """Mean squared error over all elements: loss = mean((pred - target)^2). ``grad_out``:
    2 (pred - target) / numel. (torch.nn.functional.mse_loss)"""
    return _forward("mse", pred, target, grad_out, out, ("pred", "target"))


def mse_backward(pred, target, *, out=None):
    """d loss / d pred = 2 (pred - target) / numel."""
    return _backward("mse", pred, target, out, ("pred", "target"))


def l1_forward(pred, target, *, grad_out=None, out=None):
    """Mean absolute error over all elements: loss = mean|pred - target|. ``grad_out``: the
    subgradient sign(pred - target) / numel, 0 where they are equal. (torch.nn.functional.l1_loss)"""
    return _forward("l1", pred, target, grad_out, out, ("pred", "target"))


def l1_backward(pred, target, *, out=None):
    """d loss / d pred = sign(pred - target) / numel (0 where equal)."""
    return _backward("l1", pred, target, out, ("pred", "target"))
