"""Bridges to other frameworks, each imported on first use so that fastnn never imports them
itself: ``fastnn.integrations.torch`` (fastnn's fused optimizers as ``torch.optim.Optimizer``
subclasses)."""

import importlib

__all__ = ["torch"]


def __getattr__(name: str):
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
