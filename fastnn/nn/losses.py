"""Losses as classes: ``forward(pred, target)`` returns the mean loss as a Python float and
computes d loss / d pred in the same pass; ``backward()`` returns that gradient.
``value(pred, target)`` is the loss alone (evaluation: no gradient, nothing kept).

The float is the step's one host synchronisation (``functional.loss_item``, which also raises
the ``ValueError`` for a bad class label that the GPU kernels record);
``forward(..., sync=False)`` returns the 0-d array on pred's device instead. The gradient is a
new array on every forward, or a reused buffer after ``reuse_outputs(True)``.

The classification losses (``SoftmaxCrossEntropy``, ``Hinge``) need two or more classes: over
one class the softmax is 1 and the loss 0 whatever the model does, so a (N, 1) prediction is a
``ValueError`` (use ``BCEWithLogits`` for one logit per sample).
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
    # A loss's forward always computes its gradient; training and inference differ only in
    # whether backward follows, so it is not held per thread as layers are (evaluation uses
    # value(), which keeps nothing).
    _guard_calls = False
    _forward_first = "a forward first"

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
        grad = self._output(pred.shape, pred, True)
        loss = self.kernel(pred, target, grad_out=grad, out=out)
        self._saved = grad
        return F.loss_item(loss) if sync else loss

    def value(self, pred, target):
        """The mean loss over the batch, a 0-d array on pred's device, without its gradient:
        nothing is kept, so evaluating never disturbs a training step's :meth:`backward` (and
        may run from several threads at once). Read it with ``functional.loss_item``."""
        if self.kernel is None:
            return self.forward(pred, target, sync=False)
        return self.kernel(*self._check(pred, target))

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
        return self._buffer("fused loss", (), like, True)

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

    def check_classes(self, classes: int) -> None:
        """A ``ValueError`` when a classification loss gets fewer than two classes (see the
        module's docstring)."""
        if self.labels and classes < 2:
            raise ValueError(f"{self._where()}: the model gives {classes} output per sample, but "
                             f"{type(self).__name__} needs one score per class and two or more classes (over one class "
                             "the loss is 0 whatever the model does); give the last layer C >= 2 outputs, or use "
                             "BCEWithLogits for one logit per sample")

    def _check_labels(self, pred, target):
        if pred.ndim != 2:
            raise ValueError(f"{self._where()}: pred must be 2-d (batch, classes), got shape {tuple(pred.shape)}")
        self.check_classes(pred.shape[1])
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
