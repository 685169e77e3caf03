"""The compiled extension and the choice of path: ``fastnn._C`` if it was built, and whether ops
run on it ("auto", "native") or on the reference implementation ("reference").

``FASTNN_BACKEND=numpy`` (or ``reference``) forces the reference path for the whole process;
:func:`set_backend` / :func:`use_backend` change the selection at run time.
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from pathlib import Path
from typing import Iterator

from .._warnings import FastnnRuntimeWarning

# After a parallel region GNU OpenMP threads spin for a while before sleeping; on a machine
# with few cores they then take cores from the BLAS GEMM that usually follows (NumPy's
# OpenBLAS runs its own threads). Ask them to spin briefly. The runtime reads this once, when
# it loads with the extension below; a value the user set wins.
os.environ.setdefault("GOMP_SPINCOUNT", "10000")


def _missing_extension_advice() -> str:
    """What to do when ``fastnn._C`` is missing: in fastnn's own source folder (a checkout, not
    an install), the fix is an editable install of that checkout."""
    package = Path(__file__).resolve().parents[1]
    if (package.parent / "csrc").is_dir() and (package.parent / "pyproject.toml").is_file():
        return (f"this fastnn is the source folder {package}, which holds no compiled extension: install the "
                "checkout with `pip install -e .` (it then imports its own build), or run from another folder "
                "to use an installed fastnn")
    return "reinstall with `pip install fastnn` and a C++17 compiler to build it"


try:
    from .. import _C
except ImportError as _exc:  # no compiled extension: the reference path still works
    _C = None
    NATIVE_ERROR: str | None = f"{type(_exc).__name__}: {_exc}"
    warnings.warn(
        f"fastnn: the compiled extension fastnn._C could not be imported ({NATIVE_ERROR}), so every op runs on "
        f"the NumPy reference path; {_missing_extension_advice()}.",
        FastnnRuntimeWarning,
        stacklevel=2,
    )
else:
    NATIVE_ERROR = None

_BACKENDS = {"auto": "auto", "native": "native", "numpy": "reference", "reference": "reference"}


def _parse_backend(name: str) -> str:
    key = str(name).strip().lower()
    if key not in _BACKENDS:
        raise ValueError(
            f"fastnn backend must be one of {sorted(_BACKENDS)}, got {name!r} "
            "(from FASTNN_BACKEND or set_backend)"
        )
    return _BACKENDS[key]


_mode = _parse_backend(os.environ.get("FASTNN_BACKEND", "auto") or "auto")


def get_backend() -> str:
    """The path selection in force: ``"auto"``, ``"native"`` or ``"reference"``."""
    return _mode


def set_backend(name: str) -> None:
    """Select the path for every op: ``"auto"`` (native where built, else reference),
    ``"native"`` (fail if the compiled kernels are missing) or ``"reference"``/``"numpy"``."""
    global _mode
    mode = _parse_backend(name)
    if mode == "native" and _C is None:
        raise RuntimeError(f"fastnn backend 'native' requested but fastnn._C is missing: {NATIVE_ERROR}")
    _mode = mode


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Context manager form of :func:`set_backend`; restores the previous selection."""
    global _mode
    previous = _mode
    set_backend(name)
    try:
        yield
    finally:
        _mode = previous


def native_available(device: str = "cpu") -> bool:
    """Whether compiled kernels exist for ``device`` ("cpu" or "cuda")."""
    if _C is None:
        return False
    return True if device == "cpu" else bool(_C.cuda_compiled)


@functools.lru_cache(maxsize=None)
def cuda_device_count() -> int:
    """GPUs the compiled CUDA kernels can see (0 without CUDA kernels, driver or device)."""
    return _C.cuda.device_count() if native_available("cuda") else 0


def _cuda_version(code: int) -> str:
    """CUDA's version code (12040) as "12.4"."""
    return f"{code // 1000}.{code % 1000 // 10}"


@functools.lru_cache(maxsize=None)
def cuda_unavailable_reason() -> str | None:
    """Why fastnn's CUDA kernels cannot run here, with what to do, or None when a GPU is
    visible to them. The CUDA runtime reports a missing driver and a driver too old for the
    runtime fastnn was built with alike (cudaErrorInsufficientDriver); the driver's version
    (0 when none is installed) tells them apart."""
    if not native_available("cuda"):
        return ("this fastnn was built without its CUDA kernels (reinstall with the CUDA toolkit on PATH, "
                "FASTNN_CUDA=ON)")
    if cuda_device_count() > 0:
        return None
    error = _C.cuda.device_count_error()
    runtime = _cuda_version(_C.cuda.runtime_version())
    if error == "cudaErrorInsufficientDriver":
        driver = _C.cuda.driver_version()
        if driver == 0:
            return "no NVIDIA driver is installed (the CUDA driver library libcuda could not be loaded)"
        return (f"the NVIDIA driver supports CUDA {_cuda_version(driver)}, older than the CUDA {runtime} runtime "
                f"fastnn was built with: install a driver for CUDA {runtime} or newer, or build fastnn with a "
                f"CUDA toolkit no newer than {_cuda_version(driver)}")
    if error in ("", "cudaErrorNoDevice"):
        hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
        return "no CUDA GPU is visible on this machine" + (
            f" (CUDA_VISIBLE_DEVICES is {hidden!r})" if hidden is not None else "")
    return f"the CUDA runtime {runtime} cannot use the GPUs: {error}"
