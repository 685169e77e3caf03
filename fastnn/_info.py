"""``fastnn.backend_info()``: what this installation can run."""

from __future__ import annotations

import importlib.util

import numpy as np

from . import _backend, _bf16, _blas
from ._version import __version__


def _numpy_blas() -> str | None:
    try:
        deps = np.__config__.CONFIG["Build Dependencies"]
        blas = deps["blas"]
        return f"{blas['name']} {blas.get('version', '')}".strip()
    except (AttributeError, KeyError, TypeError):
        return None


def backend_info() -> dict:
    """What fastnn can run here.

    Keys: ``version``; ``backend`` (the selection in force, ``FASTNN_BACKEND``);
    ``native_cpu`` (compiled CPU kernels importable), ``native_error`` (why not, else None);
    ``simd`` (instruction set the CPU kernels target), ``omp_threads``; ``blas`` (NumPy's BLAS,
    used for CPU GEMMs), ``chain_blas`` (its GEMM the row-blocked dense chain calls, None when
    that chain cannot run); ``cpu_medium_precision`` (what ``set_matmul_precision("medium")``
    computes on the CPU: bf16 GEMMs through oneDNN, or float32 and why, see ``fastnn._bf16``);
    ``cuda_compiled`` (CUDA kernels built in), ``cuda_runtime``,
    ``cuda_driver`` (0 without a driver), ``cuda_devices`` (visible GPUs),
    ``cuda_device_names``, ``cublaslt_version`` (None without CUDA); ``cupy_installed``.
    Nothing here imports CuPy.
    """
    C = _backend._C
    info = {
        "version": __version__,
        "backend": _backend.get_backend(),
        "native_cpu": C is not None,
        "native_error": _backend.NATIVE_ERROR,
        "simd": C.cpu.simd_level() if C is not None else None,
        "omp_threads": C.cpu.omp_threads() if C is not None else None,
        "blas": _numpy_blas(),
        "chain_blas": _blas.describe(),
        "cpu_medium_precision": _bf16.describe(),
        "cuda_compiled": bool(C is not None and C.cuda_compiled),
        "cuda_runtime": None,
        "cuda_driver": None,
        "cuda_devices": 0,
        "cuda_device_names": [],
        "cublaslt_version": None,
        "cupy_installed": importlib.util.find_spec("cupy") is not None,
    }
    if info["cuda_compiled"]:
        runtime = C.cuda.runtime_version()
        info["cuda_runtime"] = f"{runtime // 1000}.{runtime % 1000 // 10}"
        driver = C.cuda.driver_version()
        info["cuda_driver"] = f"{driver // 1000}.{driver % 1000 // 10}" if driver else None
        info["cuda_devices"] = C.cuda.device_count()
        info["cuda_device_names"] = [
            f"{C.cuda.device_name(i)} (sm_{C.cuda.device_capability(i)})" for i in range(info["cuda_devices"])
        ]
        info["cublaslt_version"] = C.cuda.cublaslt_version()
    return info


def format_info(info: dict) -> str:
    """``backend_info()`` as aligned ``key: value`` lines."""
    width = max(len(k) for k in info)
    lines = []
    for key, value in info.items():
        if isinstance(value, list):
            value = ", ".join(value) if value else "-"
        lines.append(f"{key:<{width}}  {'-' if value is None else value}")
    return "\n".join(lines)
