"""Losses as classes: ``forward(pred, target)`` returns the mean loss as a Python float and
computes d loss / d pred in the same pass; ``backward()`` returns that gradient.

The float is the step's one host synchronisation; ``forward(..., sync=False)`` returns the
0-d array on pred's device instead. The gradient is a new array on every forward, or a reused
buffer after ``reuse_outputs(True)``.
"""

from __future__ import annotations

from .. import _backend as B
from .. import functional as F
from .module import Module

__all__ = ["Loss", "SoftmaxCrossEntropy", "BCEWithLogits", "MSE", "Hinge", "L1"]


class Loss(Module):
    """Base of the losses: subclasses name their fused ``functional`` forward in ``kernel``
    and say whether ``target`` holds integer class labels (``labels``).

    ``name`` is the loss's key in ``functional.CHAIN_LOSSES`` (its kernel is
    ``functional.<name>_forward``), what a fused training step (``Sequential.fused_step``)
    computes in place of :meth:`forward`; None for a loss no fused step knows. A subclass that
    sets its own ``kernel`` without setting ``name`` gets None, so a fused step never stands in
    for a kernel it does not compute. The fused step uses :meth:`check_target`,
    :meth:`fused_out` and :meth:`fused_done`."""

    kernel = None
    labels = False
    name: str | None = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "kernel" in cls.__dict__ and "name" not in cls.__dict__:
            cls.name = None

    def __init__(self, *, check_nan: bool = False):
        super().__init__()
        self._check_nan = bool(check_nan)

    def forward(self, pred, target, *, sync: bool = True, out=None):
        """The mean loss over the batch (a float, or with ``sync=False`` a 0-d array on pred's
        device); d loss / d pred is computed in the same pass for :meth:`backward`. ``out``: a
        0-d array of pred's dtype and device that receives the loss (no allocation: what a
        captured CUDA graph needs)."""
        pred, target = self._check(pred, target)
        grad = self._output(pred.shape, pred)
        loss = self.kernel(pred, target, grad_out=grad, out=out)
        self._saved = grad
        return float(loss) if sync else loss

    def backward(self):
        """d loss / d pred of the most recent forward (pred's shape and dtype)."""
        return self._saved_state()

    def check_target(self, target, batch):
        """``target`` validated for a step whose prediction is not computed yet, returned as
        the kernel takes it. ``batch`` (N, features), the model's input, stands for pred: the
        prediction will have its rows, dtype and device. With ``labels``: integer class labels
        of shape (N,) on batch's device, as int32 or int64 (other integer dtypes converted to
        int64), contiguous. Else: a float array of batch's dtype on its device (a contiguous
        copy where needed); its shape against pred is checked where pred is known (the
        kernel). ``TypeError``/``ValueError`` naming the loss otherwise."""
        if self.labels:
            return self._check_labels(batch, target)
        return self._check_input(target, name="target", like=batch, like_name="pred")

    def fused_out(self, like):
        """The 0-d array (``like``'s dtype and device) into which a fused step writes this
        loss's mean, as :meth:`forward`'s ``out``: one buffer, kept by the loss and reused by
        every fused step."""
        return self._buffer("fused loss", (), like)

    def fused_done(self) -> None:
        """Record that a fused step computed this loss in place of :meth:`forward`. It keeps no
        gradient, so :meth:`backward` raises (as before any forward) until the next forward."""
        self._saved = None

    def _check(self, pred, target):
        pred = self._check_input(pred, name="pred")
        if self.labels:
            return pred, self._check_labels(pred, target)
        target = self._check_input(target, name="target", like=pred, like_name="pred")
        if tuple(target.shape) != tuple(pred.shape):
            raise ValueError(f"{self._where()}: target has shape {tuple(target.shape)}, pred {tuple(pred.shape)}; "
                             "they must match")
        return pred, target

    def _check_labels(self, pred, target):
        if pred.ndim != 2:
            raise ValueError(f"{self._where()}: pred must be 2-d (batch, classes), got shape {tuple(pred.shape)}")
        return B.check_labels(target, "target", rows=pred.shape[0], like=("pred", pred), convert=True,
                              where=self._where)


class SoftmaxCrossEntropy(Loss):
    """Cross-entropy of softmax(pred) against integer labels, fused and stable for large
    logits: loss = mean_i (logsumexp(pred_i) - pred_i[y_i]); d/dpred = (softmax(pred) -
    onehot(y)) / N. pred (N, C) logits, target (N,) integer labels in [0, C) (out of range is a
    ``ValueError``). (torch.nn.CrossEntropyLoss)"""

    kernel = staticmethod(F.softmax_cross_entropy_forward)
    name = "softmax_cross_entropy"
    labels = True


class BCEWithLogits(Loss):
    """Binary cross-entropy on logits: loss = mean(max(z, 0) - z t + log(1 + e^-|z|)),
    d/dz = (sigmoid(z) - t) / numel; pred z and target t (floats in [0, 1]) of one shape.
    (torch.nn.BCEWithLogitsLoss)"""

    kernel = staticmethod(F.bce_with_logits_forward)
    name = "bce_with_logits"


class MSE(Loss):
    """Mean squared error over all elements: loss = mean((pred - target)^2),
    d/dpred = 2 (pred - target) / numel. (torch.nn.MSELoss)"""

    kernel = staticmethod(F.mse_forward)
    name = "mse"


class Hinge(Loss):
    """Multiclass SVM loss (Weston & Watkins; cs231n): loss = mean_i sum_{j != y_i}
    max(0, s_ij - s_iy_i + 1), subgradient 0 at the kink; pred s (N, C) scores, target (N,)
    integer labels. (C times torch.nn.MultiMarginLoss(p=1, margin=1))"""

    kernel = staticmethod(F.hinge_forward)
    name = "hinge"
    labels = True


class L1(Loss):
    """Mean absolute error over all elements: loss = mean |pred - target|,
    d/dpred = sign(pred - target) / numel (0 where they are equal). (torch.nn.L1Loss)"""

    kernel = staticmethod(F.l1_forward)
    name = "l1"
