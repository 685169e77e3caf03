"""``gradcheck``: compare a model's backward pass with centred finite differences of its loss.

The check runs on a float64 copy of the model (the model you pass is not touched), with
dropout off and BatchNorm in training mode (batch statistics: the function the backward
differentiates), so the comparison measures the backward alone. (cs231n's gradient check;
``torch.autograd.gradcheck``)
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np

from . import _backend as B
from .data import as_generator
from .nn.dropout import Dropout
from .nn.losses import Loss
from .nn.module import Module
from .penalties import add_penalty_grad, penalty, weight_parameters

__all__ = ["gradcheck", "GradcheckReport", "ParameterCheck", "verdict"]

# (upper bound of the relative error, verdict), from the usual rules of thumb; above: "wrong".
THRESHOLDS = ((1e-7, "good"), (1e-4, "usually fine"), (1e-2, "suspicious"))


def verdict(rel_error: float) -> str:
    """"good" (< 1e-7), "usually fine" (< 1e-4; also what kinks such as ReLU at 0 give),
    "suspicious" (< 1e-2) or "wrong"."""
    return next((name for bound, name in THRESHOLDS if rel_error < bound), "wrong")


@dataclass
class ParameterCheck:
    """One parameter's comparison: ``checked`` of its ``size`` entries, the largest relative
    error, and where it occurred (flat ``index``, ``analytic`` and ``numeric`` values)."""

    name: str
    shape: tuple
    size: int
    checked: int
    max_rel_error: float
    index: int
    analytic: float
    numeric: float

    @property
    def verdict(self) -> str:
        return verdict(self.max_rel_error)


@dataclass
class GradcheckReport:
    """What :func:`gradcheck` found: ``max_rel_error`` over every checked entry, its ``verdict``,
    ``errors`` (parameter name -> its largest relative error) and ``parameters`` (the details,
    :class:`ParameterCheck`). ``ok`` is True for "good" and "usually fine". Printing it gives a
    table."""

    max_rel_error: float
    eps: float
    loss: float
    parameters: list = field(default_factory=list)

    @property
    def verdict(self) -> str:
        return verdict(self.max_rel_error)

    @property
    def ok(self) -> bool:
        return self.verdict in ("good", "usually fine")

    @property
    def errors(self) -> dict[str, float]:
        return {p.name: p.max_rel_error for p in self.parameters}

    def __str__(self) -> str:
        rows = [("parameter", "shape", "checked", "max rel error", "analytic", "numeric", "verdict")]
        rows += [(p.name, str(p.shape), f"{p.checked}/{p.size}", f"{p.max_rel_error:.2e}", f"{p.analytic:.6g}",
                  f"{p.numeric:.6g}", p.verdict) for p in self.parameters]
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        head = (f"gradcheck: max relative error {self.max_rel_error:.2e} -> {self.verdict} "
                f"(eps={self.eps:g}, loss={self.loss:.6g}; > 1e-2 wrong, 1e-2..1e-4 suspicious, "
                "1e-4..1e-7 usually fine, < 1e-7 good)")
        return "\n".join([head, *lines])


def without_dropout(model: Module) -> Module:
    """Set every Dropout's p to 0 (the identity), in place; returns the model."""
    if not isinstance(model, Module):
        raise TypeError(f"model must be a fastnn.nn.Module, got {type(model).__name__}")
    for module in model.modules():
        if isinstance(module, Dropout):
            module.p = 0.0
    return model


def inspection_copy(model: Module, dtype=None) -> Module:
    """A deep copy of ``model`` without dropout, converted to ``dtype`` when given: the network
    as the checks see it, leaving the original alone."""
    if not isinstance(model, Module):
        raise TypeError(f"model must be a fastnn.nn.Module, got {type(model).__name__}")
    clone = without_dropout(copy.deepcopy(model))
    return clone if dtype is None else clone.to(dtype=dtype)


def _as_model_input(a, like, name: str):
    """``a`` on the device of ``like``, floats converted to ``like``'s dtype (labels kept)."""
    a = B.as_array(a, name)
    if B.device_of(a) != B.device_of(like):
        if B.device_of(a) != B.CPU:
            raise ValueError(f"{name} is on {B.device_of(a)} but the model on {B.device_of(like)}")
        a = B.to_device(a, B.device_of(like))
    return a.astype(like.dtype) if np.dtype(a.dtype).kind in "fb" else a


def gradcheck(model: Module, loss: Loss, x, y, eps: float = 1e-5, *, max_entries: int = 64, seed=0,
              l1: float = 0.0, l2: float = 0.0, tiny: float | None = None) -> GradcheckReport:
    """Check the gradients of every parameter of ``model`` against centred differences.

    On a float64 copy of the model (dropout off, BatchNorm with batch statistics) and of the
    batch (x, y), it runs one forward/backward for the analytic gradients, then for each checked
    entry w of each parameter computes numeric = (L(w + eps) - L(w - eps)) / (2 eps) and
    rel = |analytic - numeric| / max(|analytic|, |numeric|, tiny). Parameters with at most
    ``max_entries`` entries are checked entirely, larger ones at ``max_entries`` positions drawn
    without replacement from ``seed``. ``l1``/``l2`` add the trainer's weight penalty
    (``fastnn.penalties.penalty``) to L.

    ``tiny`` is the smallest gradient the differences resolve: rounding L to float64 moves
    numeric by about ulp(L) / eps, so where both |analytic| and |numeric| are at most
    ``tiny`` (default 100 ulp(L) / eps, about 4e-9 for L near 2 and eps = 1e-5) the entry is a
    zero gradient on both sides and its error counts as 0. That is the case of a gradient that
    is zero in exact arithmetic but not in rounding, e.g. the bias of a Dense layer followed by
    BatchNorm.

    Returns a :class:`GradcheckReport`: ``max_rel_error``, per-parameter ``errors``, the
    ``verdict`` ("good" < 1e-7 <= "usually fine" < 1e-4 <= "suspicious" < 1e-2 <= "wrong").
    """
    if not isinstance(loss, Loss):
        raise TypeError(f"loss must be a fastnn.nn loss, got {type(loss).__name__}")
    eps = B.check_scalar(eps, "eps", low=0.0, low_open=True)
    if isinstance(max_entries, bool) or not isinstance(max_entries, (int, np.integer)) or max_entries < 1:
        raise ValueError(f"max_entries must be a positive int, got {max_entries!r}")
    clone, loss = inspection_copy(model, np.float64), copy.deepcopy(loss)
    named = clone.named_parameters()
    if not named:
        raise ValueError("gradcheck: the model has no parameters")
    like = named[0][1].data
    x, y = _as_model_input(x, like, "x"), _as_model_input(y, like, "y")
    weights = [p for _, p in weight_parameters(clone)]

    def objective() -> float:
        value = loss.forward(clone.forward(x, training=True), y)
        return value + float(penalty(weights, l1, l2))

    clone.zero_grad()
    base = loss.forward(clone.forward(x, training=True), y)
    clone.backward(loss.backward(), need_input_grad=False)
    add_penalty_grad(weights, l1, l2)
    total = base + float(penalty(weights, l1, l2))
    if tiny is None:
        tiny = 100 * float(np.spacing(max(abs(total), 1.0))) / eps
    tiny = B.check_scalar(tiny, "tiny", low=0.0, low_open=True)
    rng = as_generator(seed)
    report = GradcheckReport(max_rel_error=0.0, eps=eps, loss=total)
    for name, p in named:
        analytic = B.to_numpy(p.grad).reshape(-1).copy()
        flat = p.data.reshape(-1)
        size = flat.size
        positions = np.arange(size) if size <= max_entries else np.sort(rng.choice(size, max_entries, replace=False))
        worst = (-1.0, 0, 0.0, 0.0)
        for i in positions:
            original = float(flat[i])
            flat[i] = original + eps
            plus = objective()
            flat[i] = original - eps
            minus = objective()
            flat[i] = original
            numeric = (plus - minus) / (2 * eps)
            a = float(analytic[i])
            scale = max(abs(a), abs(numeric))
            rel = 0.0 if scale <= tiny else abs(a - numeric) / scale
            if math.isnan(rel):
                rel = math.inf
            if rel > worst[0]:
                worst = (rel, int(i), a, numeric)
        check = ParameterCheck(name, p.shape, size, len(positions), *worst)
        report.parameters.append(check)
        report.max_rel_error = max(report.max_rel_error, check.max_rel_error)
    return report
