"""oneDNN's bf16 GEMM for ``set_matmul_precision("medium")`` on the CPU (``csrc/cpu/blas.h``).

"medium" means bfloat16 GEMM operands with float32 sums. On the CPU fastnn runs it through
oneDNN's ``dnnl_gemm_bf16bf16f32`` (row-major, bf16 A and B, float32 C, the BLAS signature),
found at run time as ``fastnn/_blas.py`` finds NumPy's OpenBLAS: the extension links nothing.
oneDNN is the optional extra ``pip install fastnn[bf16]`` (the ``onednn-cpu-gomp`` wheel, which
threads over GNU OpenMP, the runtime fastnn's kernels use); a system oneDNN (Debian's
``libdnnl``) or one named by ``FASTNN_ONEDNN`` (a path to ``libdnnl.so``) serves too. Why oneDNN
and not OpenBLAS's ``sbgemm`` or MKL: ``docs/DECISIONS.md``, "bf16 GEMMs on the CPU".

"medium" runs in bf16 only where :func:`status` says so: the compiled CPU kernels, a CPU with
the AVX512_BF16 instructions (oneDNN runs bf16 without them too, but no faster than float32),
oneDNN found and exporting the GEMM, and ``FASTNN_CPU_BF16`` not set to ``0``. Elsewhere it
computes in float32, and ``fastnn.backend_info()["cpu_medium_precision"]`` says why.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import site
import sys
import threading

__all__ = ["available", "status", "describe", "enable"]

_SYMBOL = "dnnl_gemm_bf16bf16f32"
# dnnl_version_t.cpu_runtime (dnnl_config.h).
_RUNTIMES = {1: "sequential", 2: "OpenMP", 4: "TBB", 8: "threadpool"}

_lock = threading.Lock()
_state: dict | None = None  # found: lib, gemm, path, version; or reason
_enabled = True


class _Version(ctypes.Structure):
    _fields_ = [("major", ctypes.c_int), ("minor", ctypes.c_int), ("patch", ctypes.c_int),
                ("hash", ctypes.c_char_p), ("cpu_runtime", ctypes.c_uint), ("gpu_runtime", ctypes.c_uint)]


def _candidate_paths() -> list[str]:
    """Where a libdnnl may be: ``FASTNN_ONEDNN``, then the ``lib`` folders pip's oneDNN wheels
    install into (this environment's, the user's), then the system's library path."""
    named = os.environ.get("FASTNN_ONEDNN")
    if named:
        return [named]
    paths = []
    for prefix in dict.fromkeys([sys.prefix, sys.base_prefix, site.getuserbase()]):
        paths += sorted(glob.glob(os.path.join(prefix, "lib", "libdnnl.so*")), key=len)
    system = ctypes.util.find_library("dnnl")
    if system:
        paths.append(system)
    return paths


def _find() -> dict:
    """oneDNN's bf16 GEMM, or the reason there is none."""
    from . import _backend

    C = _backend._C
    if C is None:
        return dict(reason="the compiled CPU kernels are not available")
    if os.environ.get("FASTNN_CPU_BF16", "").strip() == "0":
        return dict(reason="turned off by FASTNN_CPU_BF16=0")
    if not C.cpu.cpu_has_avx512_bf16():
        return dict(reason="this CPU has no AVX512_BF16 instructions")
    paths = _candidate_paths()
    if not paths:
        return dict(reason="oneDNN not found (pip install fastnn[bf16], or FASTNN_ONEDNN=path/libdnnl.so)")
    failures = []
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
            gemm = getattr(lib, _SYMBOL)
        except (OSError, AttributeError) as e:
            failures.append(f"{path}: {e}")
            continue
        version = ""
        try:
            lib.dnnl_version.restype = ctypes.POINTER(_Version)
            v = lib.dnnl_version().contents
            runtime = _RUNTIMES.get(v.cpu_runtime, f"runtime {v.cpu_runtime}")
            version = f"oneDNN {v.major}.{v.minor}.{v.patch}, {runtime}"
        except (AttributeError, ValueError):
            version = "oneDNN"
        return dict(lib=lib, gemm=ctypes.cast(gemm, ctypes.c_void_p).value, path=path, version=version)
    return dict(reason="no usable oneDNN: " + "; ".join(failures))


def _register() -> dict:
    """Finds oneDNN and gives its GEMM to the extension, once."""
    global _state
    if _state is not None:  # the common case, on every medium GEMM: no lock
        return _state
    with _lock:
        if _state is None:
            found = _find()
            if "gemm" in found and _enabled:
                from . import _backend

                _backend._C.cpu.set_bf16_gemm(found["gemm"])
            _state = found
    return _state


def available() -> bool:
    """Whether "medium" GEMMs on the CPU run in bf16 (see the module's docstring)."""
    return _enabled and "gemm" in _register()


def status() -> tuple[bool, str]:
    """(whether "medium" runs in bf16 on the CPU, what runs it or why not)."""
    if not _enabled:
        return False, "turned off (fastnn._bf16.enable(False))"
    found = _register()
    if "gemm" not in found:
        return False, found["reason"]
    return True, f"{_SYMBOL} from {found['path']} ({found['version']})"


def describe() -> str:
    """What "medium" precision computes on the CPU, for ``backend_info()``."""
    on, what = status()
    return f"bf16 GEMMs, float32 sums: {what}" if on else f"float32 ({what})"


def enable(flag: bool) -> None:
    """Let "medium" use the bf16 GEMM where it is available (True, the default) or compute in
    float32 as if it were not (False): for tests and comparisons."""
    global _enabled
    found = _register()
    with _lock:
        _enabled = bool(flag)
        if "gemm" in found:
            from . import _backend

            _backend._C.cpu.set_bf16_gemm(found["gemm"] if _enabled else 0)
