"""Learning-rate and momentum schedules, with ``torch.optim.lr_scheduler``'s interface.

A schedule sets a hyperparameter of every parameter group from the epoch count:
``scheduler.step()`` (after ``optimizer.step()``, usually once per epoch) advances
``last_epoch`` by one and writes the new values into ``optimizer.param_groups``. Construction
performs the first step (epoch 0), as in PyTorch, and records each group's starting lr as
``group["initial_lr"]``. ``get_last_lr()`` returns the values last written;
``state_dict()`` / ``load_state_dict()`` save and restore everything but the optimizer.

Values come from closed forms of the epoch (the formulas in each docstring, PyTorch's), so a
schedule does not read back ``group["lr"]``: a value set by hand lasts until the next
``step()``. Alone, each schedule gives torch's values to rounding (torch computes some
recursively); to combine a warm-up with another schedule wrap it in :class:`LinearWarmup`.
After writing lr, schedules call the optimizer's ``sync_lr()`` (capturable mode: the device
copy of lr that captured CUDA graphs read).
"""

from __future__ import annotations

import math

from .. import _backend as B

__all__ = ["LRScheduler", "StepLR", "ExponentialLR", "CosineAnnealingLR", "LinearWarmup", "MomentumSchedule"]


def _check_last_epoch(last_epoch) -> None:
    if isinstance(last_epoch, bool) or not isinstance(last_epoch, int) or last_epoch < -1:
        raise ValueError(f"last_epoch must be an integer >= -1, got {last_epoch!r}")


class _Schedule:
    """A per-group value set from the epoch: subclasses define :meth:`values_at`."""

    def __init__(self, optimizer, last_epoch: int = -1):
        if not hasattr(optimizer, "param_groups"):
            raise TypeError(f"{type(optimizer).__name__} is not an optimizer (it has no param_groups)")
        _check_last_epoch(last_epoch)
        self.optimizer = optimizer
        self.last_epoch = last_epoch
        self.step()

    def values_at(self, epoch: int) -> list[float]:
        """The value of each parameter group at ``epoch``."""
        raise NotImplementedError

    def _write(self, values: list[float]) -> None:
        raise NotImplementedError

    def step(self) -> None:
        """Advance one epoch and write the new values into the optimizer's groups."""
        self.last_epoch += 1
        values = self.values_at(self.last_epoch)
        self._write(values)
        self._last_values = list(values)
        sync = getattr(self.optimizer, "sync_lr", None)
        if sync is not None:
            sync()

    def state_dict(self) -> dict:
        """Everything but the optimizer (as torch)."""
        return {k: v for k, v in self.__dict__.items() if k != "optimizer"}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore a :meth:`state_dict`."""
        self.__dict__.update(state_dict)


class LRScheduler(_Schedule):
    """Base class of the learning-rate schedules: ``base_lrs`` are the groups' ``initial_lr``
    (their lr when the first schedule was attached)."""

    def __init__(self, optimizer, last_epoch: int = -1):
        _check_last_epoch(last_epoch)  # (before the groups are read: a bad value names itself)
        for i, group in enumerate(getattr(optimizer, "param_groups", [])):
            if last_epoch == -1:
                group.setdefault("initial_lr", group["lr"])
            elif "initial_lr" not in group:
                raise KeyError(f"param_groups[{i}] has no 'initial_lr': resuming with last_epoch >= 0 needs the "
                               "optimizer state the schedule was saved with")
        self.base_lrs = [float(g["initial_lr"]) for g in getattr(optimizer, "param_groups", [])]
        super().__init__(optimizer, last_epoch)

    def _write(self, values: list[float]) -> None:
        for group, lr in zip(self.optimizer.param_groups, values):
            group["lr"] = lr

    def get_last_lr(self) -> list[float]:
        """The learning rates last written, one per group."""
        return list(self._last_values)

    def get_lr(self) -> list[float]:
        """The learning rates of the current epoch, one per group."""
        return self.values_at(self.last_epoch)


class StepLR(LRScheduler):
    """``lr = base_lr * gamma ** (epoch // step_size)``: decay by ``gamma`` every ``step_size``
    epochs (``torch.optim.lr_scheduler.StepLR``; gamma defaults to 0.1)."""

    def __init__(self, optimizer, step_size: int, gamma: float = 0.1, last_epoch: int = -1):
        if isinstance(step_size, bool) or not isinstance(step_size, int) or step_size < 1:
            raise ValueError(f"step_size must be a positive integer, got {step_size!r}")
        self.step_size = step_size
        self.gamma = B.check_scalar(gamma, "gamma", low=0.0, low_open=True)
        super().__init__(optimizer, last_epoch)

    def values_at(self, epoch: int) -> list[float]:
        return [base * self.gamma ** (epoch // self.step_size) for base in self.base_lrs]


class ExponentialLR(LRScheduler):
    """``lr = base_lr * gamma ** epoch`` (``torch.optim.lr_scheduler.ExponentialLR``)."""

    def __init__(self, optimizer, gamma: float, last_epoch: int = -1):
        self.gamma = B.check_scalar(gamma, "gamma", low=0.0, low_open=True)
        super().__init__(optimizer, last_epoch)

    def values_at(self, epoch: int) -> list[float]:
        return [base * self.gamma ** epoch for base in self.base_lrs]


class CosineAnnealingLR(LRScheduler):
    """``lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * epoch / T_max)) / 2``: half a
    cosine from base_lr down to eta_min over ``T_max`` epochs, then back up if stepped further
    (``torch.optim.lr_scheduler.CosineAnnealingLR``, without restarts)."""

    def __init__(self, optimizer, T_max: int, eta_min: float = 0.0, last_epoch: int = -1):  # noqa: N803 (torch's name)
        if isinstance(T_max, bool) or not isinstance(T_max, int) or T_max < 1:
            raise ValueError(f"T_max must be a positive integer, got {T_max!r}")
        self.T_max = T_max
        self.eta_min = B.check_scalar(eta_min, "eta_min", low=0.0)
        super().__init__(optimizer, last_epoch)

    def values_at(self, epoch: int) -> list[float]:
        c = (1 + math.cos(math.pi * epoch / self.T_max)) / 2
        return [self.eta_min + (base - self.eta_min) * c for base in self.base_lrs]


class LinearWarmup(LRScheduler):
    """Linear warm-up, alone or wrapped around another schedule:
    ``lr = factor(epoch) * inner_lr(epoch)`` with
    ``factor = start_factor + (1 - start_factor) * min(epoch, warmup_epochs) / warmup_epochs``,
    so the factor rises from ``start_factor`` to 1 over ``warmup_epochs`` epochs and stays 1.

    ``schedule`` is an optimizer (warm up to its constant lr: the same values as
    ``torch.optim.lr_scheduler.LinearLR(opt, start_factor, total_iters=warmup_epochs)``) or an
    LR schedule built on it (``LinearWarmup(CosineAnnealingLR(opt, T_max=100), 5)``; both run
    on the same epoch count, like torch's ``ChainedScheduler`` of the two). ``start_factor``
    defaults to LinearLR's 1/3. Step only the warm-up; it steps the wrapped schedule.
    """

    def __init__(self, schedule, warmup_epochs: int, start_factor: float = 1 / 3, last_epoch: int = -1):
        if isinstance(warmup_epochs, bool) or not isinstance(warmup_epochs, int) or warmup_epochs < 1:
            raise ValueError(f"warmup_epochs must be a positive integer, got {warmup_epochs!r}")
        self.warmup_epochs = warmup_epochs
        self.start_factor = B.check_scalar(start_factor, "start_factor", low=0.0, high=1.0, low_open=True)
        self.inner = schedule if isinstance(schedule, LRScheduler) else None
        super().__init__(schedule.optimizer if self.inner is not None else schedule, last_epoch)

    def factor(self, epoch: int) -> float:
        """The warm-up multiplier at ``epoch``."""
        return self.start_factor + (1 - self.start_factor) * min(epoch, self.warmup_epochs) / self.warmup_epochs

    def values_at(self, epoch: int) -> list[float]:
        lrs = self.base_lrs if self.inner is None else self.inner.values_at(epoch)
        return [self.factor(epoch) * lr for lr in lrs]

    def step(self) -> None:
        super().step()
        if self.inner is not None:  # keep the wrapped schedule's own view in step
            self.inner.last_epoch = self.last_epoch
            self.inner._last_values = list(self._last_values)

    def state_dict(self) -> dict:
        state = {k: v for k, v in super().state_dict().items() if k != "inner"}
        state["inner"] = None if self.inner is None else self.inner.state_dict()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        state = dict(state_dict)
        inner = state.pop("inner", None)
        super().load_state_dict(state)
        if self.inner is not None and inner is not None:
            self.inner.load_state_dict(inner)


class MomentumSchedule(_Schedule):
    """Ramps momentum from ``start`` toward ``end`` over ``epochs`` epochs, then holds it: the
    practice of starting momentum at 0.5 and raising it to 0.99 as training settles.

    ``mode="linear"``: ``m = start + (end - start) * min(epoch, epochs) / epochs``;
    ``mode="geometric"``: ``1 - m`` falls geometrically (evenly on a log scale, the natural
    scale for momentum: 0.5, ..., 0.9, ..., 0.99).

    It sets ``group["momentum"]`` (SGD, RMSprop) or ``beta1`` in ``group["betas"]`` (Adam,
    AdamW), whichever the group has. ``get_last_momentum()`` returns the values last written.
    """

    def __init__(self, optimizer, start: float = 0.5, end: float = 0.99, epochs: int = 10, mode: str = "linear",
                 last_epoch: int = -1):
        self.start, self.end, self.epochs, self.mode = self.check_options(start, end, epochs, mode)
        for i, group in enumerate(getattr(optimizer, "param_groups", [])):
            if "momentum" not in group and "betas" not in group:
                raise ValueError(f"param_groups[{i}] has neither 'momentum' nor 'betas' to schedule")
        super().__init__(optimizer, last_epoch)

    @staticmethod
    def check_options(start, end, epochs, mode) -> tuple[float, float, int, str]:
        """The schedule's options checked (momenta in [0, 1), a positive number of epochs, a
        known mode), as ``(start, end, epochs, mode)``; ValueError naming the bad one."""
        start = B.check_scalar(start, "start", low=0.0, high=1.0, high_open=True)
        end = B.check_scalar(end, "end", low=0.0, high=1.0, high_open=True)
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
        if mode not in ("linear", "geometric"):
            raise ValueError(f"mode must be 'linear' or 'geometric', got {mode!r}")
        return start, end, epochs, mode

    def value(self, epoch: int) -> float:
        """The momentum at ``epoch``."""
        t = min(epoch, self.epochs) / self.epochs
        if self.mode == "linear":
            return self.start + (self.end - self.start) * t
        return 1 - (1 - self.start) * ((1 - self.end) / (1 - self.start)) ** t

    def values_at(self, epoch: int) -> list[float]:
        return [self.value(epoch)] * len(self.optimizer.param_groups)

    def _write(self, values: list[float]) -> None:
        for group, m in zip(self.optimizer.param_groups, values):
            if "betas" in group:
                group["betas"] = (m, group["betas"][1])
            else:
                group["momentum"] = m

    def get_last_momentum(self) -> list[float]:
        """The momentum (or beta1) values last written, one per group."""
        return list(self._last_values)
