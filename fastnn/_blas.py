"""NumPy's BLAS for the compiled dense chain (``csrc/cpu/blas.h``).

The extension links no BLAS: the chain calls the OpenBLAS that NumPy already loaded. This finds
that library among the ones the process has loaded (``/proc/self/maps`` on Linux, NumPy's
bundled ``numpy.libs``/``.dylibs`` elsewhere), looks up its CBLAS GEMMs and thread-count
functions under the names OpenBLAS builds use (NumPy's wheels: ``scipy_cblas_sgemm64_``, 64-bit
integers; distributions: ``cblas_sgemm``), and hands their addresses to the extension once.

Without an OpenBLAS (MKL, Accelerate, a reference BLAS), ``available()`` is False and dense
layers keep using ``np.matmul``: the chain needs OpenBLAS's thread-count switch to run one
GEMM per thread of its own.
"""

from __future__ import annotations

import ctypes
import glob
import os
import sys
import threading

import numpy as np

__all__ = ["available", "describe"]

# (prefix, suffix) of OpenBLAS's exported names: scipy-openblas64 (NumPy's wheels),
# scipy-openblas32 (SciPy's), openblas64_ builds (Debian, Fedora), plain builds.
_NAMINGS = (("scipy_", "64_"), ("scipy_", ""), ("", "64_"), ("", ""))

_lock = threading.Lock()
_found: dict | None = None


def _candidate_paths() -> list[str]:
    """Shared libraries that may be NumPy's BLAS: the one bundled with NumPy's wheel first,
    then the loaded libraries whose name says BLAS (a NumPy built against the system's)."""
    root = os.path.dirname(os.path.dirname(np.__file__))
    paths = []
    for folder in ("numpy.libs", os.path.join("numpy", ".dylibs")):
        paths += sorted(glob.glob(os.path.join(root, folder, "*openblas*")))
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.rsplit(None, 1)[-1] if "/" in line else ""
                if "blas" in os.path.basename(path).lower() and path not in paths:
                    paths.append(path)
    except OSError:
        pass
    return paths


def _symbols(lib: ctypes.CDLL) -> dict | None:
    """The chain's functions in ``lib`` under one of OpenBLAS's namings, or None."""
    for prefix, suffix in _NAMINGS:
        names = dict(sgemm=f"{prefix}cblas_sgemm{suffix}", dgemm=f"{prefix}cblas_dgemm{suffix}",
                     set_threads=f"{prefix}openblas_set_num_threads{suffix}",
                     get_threads=f"{prefix}openblas_get_num_threads{suffix}",
                     config=f"{prefix}openblas_get_config{suffix}")
        try:
            functions = {key: getattr(lib, name) for key, name in names.items()}
        except AttributeError:
            continue
        functions["config"].restype = ctypes.c_char_p
        config = (functions["config"]() or b"").decode(errors="replace")
        address = {key: ctypes.cast(functions[key], ctypes.c_void_p).value
                   for key in ("sgemm", "dgemm", "set_threads", "get_threads")}
        return dict(address, ilp64=suffix == "64_" or "USE64BITINT" in config, config=config.strip(),
                    sgemm_name=names["sgemm"])
    return None


def _find() -> dict:
    for path in _candidate_paths():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        found = _symbols(lib)
        if found is not None:
            return dict(found, path=path, lib=lib)
    return {}


def _register() -> dict:
    """Finds NumPy's OpenBLAS and gives it to the extension, once; {} when there is none."""
    global _found
    if _found is not None:  # the common case, on every chain call: no lock
        return _found
    with _lock:
        if _found is None:
            from . import _backend

            found = {} if _backend._C is None or sys.platform == "win32" else _find()
            if found:
                _backend._C.cpu.set_blas(found["sgemm"], found["dgemm"], found["ilp64"], found["set_threads"],
                                         found["get_threads"])
            _found = found
    return _found


def available() -> bool:
    """Whether the compiled dense chain has NumPy's BLAS to call."""
    return bool(_register())


def describe() -> str | None:
    """The BLAS the chain calls, for ``backend_info()``, or None."""
    found = _register()
    if not found:
        return None
    return f"{found['sgemm_name']} from {os.path.basename(found['path'])} ({found['config']})"
