"""Layers, losses, initializers and containers."""

from .parameter import Parameter

__all__ = ["Parameter"]
