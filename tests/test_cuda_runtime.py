"""What the CUDA runtime tells fastnn: why no GPU can be used (a missing driver, a driver older
than the runtime fastnn was built with, no device), and the bound on cuBLASLt's workspaces.

The messages are tested here with a stand-in for ``fastnn._C`` (the CUDA runtime's answers
monkeypatched); the gpu-marked tests use the real runtime."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import pytest

import fastnn.functional as F
from fastnn import _backend
from fastnn._backend import native

from conftest import GPU


@pytest.fixture
def fake_runtime(monkeypatch):
    """Install a stand-in ``_C`` whose CUDA part answers as told; the cached answers are
    dropped before and after."""

    def install(*, count=0, error="", driver=0, runtime=13000):
        cuda = SimpleNamespace(device_count=lambda: count, device_count_error=lambda: error,
                               driver_version=lambda: driver, runtime_version=lambda: runtime)
        monkeypatch.setattr(native, "_C", SimpleNamespace(cuda_compiled=True, cuda=cuda))
        native.cuda_device_count.cache_clear()
        native.cuda_unavailable_reason.cache_clear()

    yield install
    native.cuda_device_count.cache_clear()
    native.cuda_unavailable_reason.cache_clear()


def test_an_old_driver_is_named_with_both_versions_and_the_fix(fake_runtime):
    fake_runtime(error="cudaErrorInsufficientDriver", driver=12020, runtime=13000)
    reason = _backend.gpu_unavailable_reason()
    assert "driver supports CUDA 12.2, older than the CUDA 13.0 runtime" in reason
    assert "install a driver for CUDA 13.0 or newer" in reason and "no newer than 12.2" in reason
    assert "no CUDA GPU is visible" not in reason


def test_a_missing_driver_is_not_called_an_old_one(fake_runtime):
    fake_runtime(error="cudaErrorInsufficientDriver", driver=0)
    assert _backend.gpu_unavailable_reason().startswith("no NVIDIA driver is installed")


@pytest.mark.parametrize("error", ["", "cudaErrorNoDevice"])
def test_no_device(fake_runtime, monkeypatch, error):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    fake_runtime(error=error, driver=13000)
    assert _backend.gpu_unavailable_reason() == "no CUDA GPU is visible on this machine"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    native.cuda_unavailable_reason.cache_clear()
    assert _backend.gpu_unavailable_reason().endswith("(CUDA_VISIBLE_DEVICES is '')")


def test_other_runtime_errors_are_named(fake_runtime):
    fake_runtime(error="cudaErrorDevicesUnavailable", driver=13000)
    assert "cudaErrorDevicesUnavailable" in _backend.gpu_unavailable_reason()


def test_a_visible_gpu_is_no_reason(fake_runtime):
    fake_runtime(count=1, driver=13000)
    assert native.cuda_unavailable_reason() is None


def test_the_real_runtime_answers_consistently():
    if not _backend.native_available("cuda"):
        pytest.skip("built without the CUDA kernels")
    C = _backend._C
    error = C.cuda.device_count_error()
    assert isinstance(error, str)
    assert C.cuda.device_count() == 0 or error == ""
    if C.cuda.device_count() == 0 and error == "cudaErrorInsufficientDriver" and C.cuda.driver_version() == 0:
        assert native.cuda_unavailable_reason().startswith("no NVIDIA driver is installed")


# ---------------------------------------------------------------------------------------------
# On a GPU: no reason is given, and cuBLASLt's workspaces stay bounded and are handed between
# streams in order.


@pytest.mark.gpu
def test_with_a_gpu_the_runtime_reports_no_error():
    C = _backend._C
    assert C.cuda.device_count() > 0 and C.cuda.device_count_error() == ""
    assert C.cuda.driver_version() // 1000 >= C.cuda.runtime_version() // 1000  # minor versions may differ
    assert native.cuda_unavailable_reason() is None and _backend.gpu_unavailable_reason() is None


@pytest.mark.gpu
def test_cublaslt_workspaces_are_bounded_and_reused_in_stream_order(rng):
    # More streams than workspaces, each running GEMMs that need one, some of them destroyed
    # while their work may still run: every result must be right and the count bounded.
    import cupy

    C = _backend._C
    lent_before, _ = C.cuda.lt_workspace_count()
    x = cupy.asarray(rng.standard_normal((256, 512)).astype(np.float32))
    weights = [cupy.asarray(rng.standard_normal((512, 384)).astype(np.float32)) for _ in range(3)]
    expected = [cupy.asnumpy(x) @ cupy.asnumpy(w) for w in weights]
    results = []
    for round_ in range(3):
        streams = [cupy.cuda.Stream(non_blocking=True) for _ in range(20)]
        for k, stream in enumerate(streams):
            with stream:
                results.append((k % 3, F.dense_forward(x, weights[k % 3])))
        del streams  # destroyed with work possibly pending; their workspaces go to the next ones
    cupy.cuda.runtime.deviceSynchronize()
    for k, y in results:
        np.testing.assert_allclose(cupy.asnumpy(y), expected[k], rtol=1e-4, atol=1e-3)
    lent, _ = C.cuda.lt_workspace_count()
    # 8 at most for streams; workspaces that captures pinned and released join them
    assert 1 <= lent <= max(lent_before, 8)


@pytest.mark.gpu
def test_per_thread_default_streams_get_their_own_workspace(rng):
    # The per-thread default stream is one handle (2) for every thread's own stream: two threads
    # running GEMMs on it at once must not share a workspace (or a result).
    import cupy

    x = cupy.asarray(rng.standard_normal((512, 1024)).astype(np.float32))
    w = [cupy.asarray(rng.standard_normal((1024, 1024)).astype(np.float32)) for _ in range(2)]
    expected = [cupy.asnumpy(x) @ cupy.asnumpy(v) for v in w]
    out, errors = [None, None], []

    def work(k):
        try:
            with cupy.cuda.Stream.ptds:
                ys = [F.dense_forward(x, w[k]) for _ in range(20)]
                cupy.cuda.Stream.ptds.synchronize()
            out[k] = [cupy.asnumpy(y) for y in ys]
        except Exception as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for k in range(2):
        for y in out[k]:
            np.testing.assert_allclose(y, expected[k], rtol=1e-4, atol=1e-3)


@pytest.mark.skipif(GPU, reason="checks the message on a machine without a GPU")
def test_without_a_gpu_the_reason_is_not_none():
    assert _backend.gpu_unavailable_reason() is not None
