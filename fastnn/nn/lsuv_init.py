"""``lsuv``: data-driven initialization of a model's Dense layers (``fastnn.nn.lsuv``).

It runs the model, so it lives beside the layers rather than in ``init`` (which ``Dense``
imports for its ``init=``), and under another name than the function's, so that importing
this module never shadows ``fastnn.nn.lsuv``.
"""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np

from .. import _backend as B
from .. import functional as F
from .._warnings import FastnnRuntimeWarning
from .dense import Dense
from .dropout import Dropout
from .init import generator, orthogonal

__all__ = ["lsuv"]


def lsuv(model, batch, *, tol: float = 0.1, max_iter: int = 10, rng=None, seed=None):
    """Layer-sequential unit-variance initialization (Mishkin & Matas 2016, "All you need is a
    good init"): every ``Dense`` weight of ``model`` starts orthogonal (biases are left as they
    are), then, layer by layer in forward order, W is divided by sqrt(v), v the variance of
    that layer's output on ``batch``, until |v - 1| < ``tol`` or ``max_iter`` rescalings.

    A layer's output is its pre-activation x @ W + b (a tanh or sigmoid output could never
    reach unit variance), so one rescaling nearly always suffices. The layers' inputs come from
    training forwards of a copy of the model with dropout off (BatchNorm with the batch's
    statistics, as training will normalize; the model's running statistics and dropout
    counters are untouched), which are what a training forward keeps for its backward; the
    rescalings are applied to the copy and the model alike. Returns the model.
    No torch.nn.init equivalent (PyTorch has none built in)."""
    tol = B.check_scalar(tol, "lsuv: tol", low=0, low_open=True)
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise ValueError(f"lsuv: max_iter must be a positive integer, got {max_iter!r}")
    layers = [m for m in model.modules() if isinstance(m, Dense)]
    if not layers:
        raise ValueError(f"lsuv: {type(model).__name__} has no Dense layer to initialize")
    draw = generator(rng, seed)
    for layer in layers:
        orthogonal(layer.weight, rng=draw)
    clone = copy.deepcopy(model)
    for module in clone.modules():
        if isinstance(module, Dropout):
            module.p = 0.0
    twins = [m for m in clone.modules() if isinstance(m, Dense)]
    for layer, twin in zip(layers, twins):
        twin._saved = None
        clone.forward(batch, training=True)
        if twin._saved is None:
            raise ValueError(f"lsuv: {layer._where()} did not run in the model's forward")
        x = twin._saved.x
        for _ in range(max_iter):
            bias = None if twin.bias is None else twin.bias.data
            variance = float(F.dense_forward(x, twin.weight.data, bias).var())
            if abs(variance - 1.0) < tol:
                break
            if not variance > 1e-12:
                warnings.warn(f"lsuv: {layer._where()} gives a constant output on the batch; left unscaled",
                              FastnnRuntimeWarning, stacklevel=2)
                break
            factor = layer.weight.data.dtype.type(1.0 / math.sqrt(variance))
            layer.weight.data *= factor
            twin.weight.data *= factor
    return model
