"""fastnn's warning categories: every warning fastnn gives is a :class:`FastnnWarning`, so that
``warnings.filterwarnings("ignore", category=fastnn.FastnnWarning)`` (or "error") selects them all."""

from __future__ import annotations

__all__ = ["FastnnWarning", "FastnnRuntimeWarning"]


class FastnnWarning(UserWarning):
    """A warning from fastnn about how it is used (e.g. an initialisation that keeps units
    symmetric)."""


class FastnnRuntimeWarning(FastnnWarning, RuntimeWarning):
    """A warning from fastnn about what happened while it ran (a non-finite loss, failed search
    trials, a missing compiled extension)."""
