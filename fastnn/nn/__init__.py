"""Layers, losses, initializers and containers."""

from .parameter import Parameter
from .perceptron import Perceptron

__all__ = ["Parameter"]
