"""fastnn: dense neural networks trained fast from Python.

C++/CUDA kernels (GEMM layers with fused epilogues, activations, batch norm, dropout, fused
losses and fused optimizers) behind a small NumPy-style API. The array decides the device:
NumPy arrays run on the CPU, CuPy arrays on the GPU; ``FASTNN_BACKEND=numpy`` forces the
plain NumPy/CuPy reference implementation. See ``fastnn.backend_info()``.
"""

from __future__ import annotations

import importlib

from ._backend import get_backend, set_backend, use_backend
from ._info import backend_info
from ._version import __version__
from ._warnings import FastnnRuntimeWarning, FastnnWarning

# Subpackages and top-level names are imported on first use, so `import fastnn` stays cheap
# and never imports CuPy, PyTorch or matplotlib. `fastnn.sklearn` is imported by name only
# (`from fastnn.sklearn import MLPClassifier`): it needs scikit-learn as soon as it loads.
_SUBMODULES = {
    "functional", "reference", "nn", "optim", "integrations", "cuda_graph", "data", "datasets",
    "preprocessing", "augment", "train", "prediction", "metrics", "callbacks", "sanity", "tune", "plot", "distributed",
    "seeding",
}
_LAZY_NAMES = {
    "set_matmul_precision": "fastnn.functional.dense",
    "get_matmul_precision": "fastnn.functional.dense",
    "save": "fastnn.checkpoint",
    "load": "fastnn.checkpoint",
    "gradcheck": "fastnn.gradient_check",
    "seed": "fastnn.seeding",
    "Ensemble": "fastnn.ensemble",
    "EMA": "fastnn.ensemble",
    "save_model": "fastnn.model_file",
    "load_model": "fastnn.model_file",
    "Predictor": "fastnn.model_file",
}

__all__ = ["__version__", "backend_info", "get_backend", "set_backend", "use_backend", "FastnnWarning",
           "FastnnRuntimeWarning",
           *sorted(_SUBMODULES), *sorted(_LAZY_NAMES)]


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"fastnn.{name}")
    if name in _LAZY_NAMES:
        return getattr(importlib.import_module(_LAZY_NAMES[name]), name)
    raise AttributeError(f"module 'fastnn' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | _SUBMODULES | set(_LAZY_NAMES))
