"""Shared fixtures.

- ``xp``: runs a test on NumPy and, where a CUDA GPU and CuPy are present, on CuPy.
- ``path``: runs a test with fastnn's ops forced onto the reference path and onto the native
  path (native CPU for NumPy arrays, CUDA for CuPy arrays); native is skipped when the
  extension (or its CUDA part) is missing.
- ``rng``: a seeded ``numpy.random.Generator``, different for each test.
- ``chain_threads``: the row-blocked dense chain's conditions (native CPU kernels, NumPy's
  OpenBLAS found, two OpenMP threads, whatever the machine's core count), or a skip.
- the ``gpu`` marker: such tests skip cleanly without a GPU and CuPy.
"""

from __future__ import annotations

import os
import zlib

import numpy as np
import pytest

import fastnn
from fastnn import _backend


def _gpu_available() -> bool:
    try:
        import cupy
    except ImportError:
        return False
    try:
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no driver, or CuPy built for another CUDA version
        return False


GPU = _gpu_available()


def pytest_report_header(config):
    info = fastnn.backend_info()
    return (f"fastnn {info['version']} from {os.path.dirname(fastnn.__file__)}: native_cpu={info['native_cpu']} "
            f"simd={info['simd']} cuda_compiled={info['cuda_compiled']} cuda_devices={info['cuda_devices']} "
            f"gpu_tests={'on' if GPU else 'skipped'}")


def pytest_configure(config):
    # fastnn always builds its CPU kernels, so a fastnn without them is the wrong thing to test
    # (a source folder that was never installed): say so rather than test the reference alone.
    if not _backend.native_available("cpu"):
        raise pytest.UsageError(
            f"fastnn at {os.path.dirname(fastnn.__file__)} has no compiled extension ({_backend.NATIVE_ERROR}). "
            "In a checkout, install it with `pip install -e \".[test]\"` and run `pytest` (or `python -m pytest`)."
        )


def pytest_collection_modifyitems(config, items):
    if GPU:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU and CuPy")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=["numpy", pytest.param("cupy", marks=pytest.mark.gpu)])
def xp(request):
    if request.param == "numpy":
        return np
    import cupy

    return cupy


@pytest.fixture(params=["reference", "native"])
def path(request, xp):
    if request.param == "native":
        device = "cpu" if xp is np else "cuda"
        if not _backend.native_available(device):
            pytest.skip(f"no native {device} kernels in this build")
    with fastnn.use_backend(request.param):
        yield request.param


@pytest.fixture
def rng(request):
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture
def chain_threads():
    from fastnn import _blas

    if not _backend.native_available("cpu") or not _blas.available():
        pytest.skip("the dense chain needs the native CPU kernels and NumPy's OpenBLAS")
    before = _backend._C.cpu.omp_threads()
    _backend._C.cpu.set_omp_threads(2)
    yield
    _backend._C.cpu.set_omp_threads(before)
