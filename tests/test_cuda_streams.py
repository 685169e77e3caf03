"""Which CUDA stream a kernel runs on, and the GPU buffers kept per stream.

- A PyTorch CUDA tensor's kernels run on torch's current stream, ordered after the work that
  produced it and before torch's next use of it (its ``__cuda_array_interface__`` names no
  stream, so CuPy's current stream would race with a torch side stream).
- Per-stream buffers are keyed by the stream's id (``cudaStreamGetId``), never by its handle,
  and at most ``MAX_STREAMS`` streams per device keep them.

The host logic runs here with stand-ins (a fake torch tensor, a fake stream id and allocator);
the gpu-marked tests run it on a device."""

from __future__ import annotations

import contextlib
import importlib
import sys
import threading
from types import SimpleNamespace

import numpy as np
import pytest

from fastnn import _backend as B
from fastnn._backend import arrays, native
from fastnn.optim import functional as OF

launch = importlib.import_module("fastnn._backend.launch")  # the name alone is launch(), the function


# ---------------------------------------------------------------------------------------------
# A PyTorch CUDA tensor, faked: the launch stream is torch's current stream on its device.


class _FakeTensor:
    """Looks like a torch CUDA tensor on GPU 1 to fastnn (never dereferenced)."""

    is_cuda = True
    device = SimpleNamespace(index=1)

    def __init__(self, shape=(4, 6), strides=None):
        self.__cuda_array_interface__ = dict(data=(0x7F0000001000, False), shape=shape, typestr="<f4",
                                             strides=strides, version=2)


@pytest.fixture
def fake_torch(monkeypatch):
    streams = {0: 0xA0, 1: 0xB1}  # torch's current stream per device
    torch = SimpleNamespace(Tensor=_FakeTensor,
                            cuda=SimpleNamespace(current_stream=lambda i: SimpleNamespace(cuda_stream=streams[i])))
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setattr(arrays, "cuda_device_count", lambda: 0)  # no pointer query on the fake address
    return streams


def test_torch_tensors_viewed_without_cupy_launch_on_torchs_stream(fake_torch, monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy now raises ImportError
    view = B.as_array(_FakeTensor(), "p")
    assert isinstance(view, B.CudaView)
    assert B.stream_of(view) == 0xB1
    fake_torch[1] = 0  # torch's default stream
    assert B.stream_of(B.as_array(_FakeTensor(), "p")) == 0


def test_torch_tensors_viewed_by_cupy_launch_on_torchs_current_stream(fake_torch):
    pytest.importorskip("cupy")
    a = B.as_array(_FakeTensor(), "p")
    assert B.is_cupy(a) and a.shape == (4, 6) and a.dtype == np.float32
    assert B.pointer(a) == 0x7F0000001000
    assert arrays.torch_device(a) == 1 and arrays.torch_device(a[1:]) == 1
    assert B.stream_of(a) == 0xB1 and B.stream_of(a[2:].reshape(-1)) == 0xB1
    fake_torch[1] = 0xC3  # read when the kernel launches, not when the view was made
    assert B.stream_of(a) == 0xC3
    strided = B.as_array(_FakeTensor(shape=(4, 3), strides=(24, 4)), "p")  # every other column
    assert strided.strides == (24, 4) and strided.data.mem.size == 3 * 24 + 2 * 4 + 4  # first to last element


def test_other_cupy_arrays_are_not_torchs(fake_torch):
    cupy = pytest.importorskip("cupy")
    B.as_array(_FakeTensor(), "p")  # torch's memory class exists from now on
    memory = cupy.cuda.UnownedMemory(0x7F0000002000, 64, None, 0)
    other = cupy.ndarray((16,), np.float32, cupy.cuda.MemoryPointer(memory, 0))
    assert arrays.torch_device(other) is None


# ---------------------------------------------------------------------------------------------
# Per-stream buffers, with a fake stream id and allocator.


class _Like:
    """An array on GPU 0 whose kernels run on stream ``handle``."""

    def __init__(self, handle):
        self.handle = handle


@pytest.fixture
def fake_streams(monkeypatch):
    """stream_buffer's CUDA calls replaced: ``ids[handle]`` is the id of the stream the handle
    names now (a test changes it to reuse a handle); allocations are NumPy arrays."""
    ids = {}
    monkeypatch.setattr(launch, "stream_of", lambda a: a.handle)
    monkeypatch.setattr(launch, "device_of", lambda a: B.Device("cuda", 0))
    monkeypatch.setattr(launch, "_on_array_device", lambda a, call, *args: call(*args))
    monkeypatch.setattr(native, "_C", SimpleNamespace(cuda=SimpleNamespace(stream_id=lambda h: ids[h])))
    monkeypatch.setattr(launch, "on_device", lambda a: contextlib.nullcontext())
    monkeypatch.setattr(launch, "_allocating_on", lambda ptr, device: contextlib.nullcontext())
    monkeypatch.setattr(launch, "cupy_module", lambda: np)
    monkeypatch.setattr(launch, "_stream_buffers", type(launch._stream_buffers)())
    return ids


def test_a_reused_stream_handle_gets_new_buffers(fake_streams):
    fake_streams[0x10] = 1
    old = B.stream_buffer(_Like(0x10), "workspace", 64)
    assert B.stream_buffer(_Like(0x10), "workspace", 32) is old  # the same stream reuses its buffer
    fake_streams[0x10] = 2  # the stream was destroyed and a new one got its handle
    new = B.stream_buffer(_Like(0x10), "workspace", 64)
    assert new is not old and not np.shares_memory(new, old)


def test_per_thread_default_streams_get_buffers_each(fake_streams):
    fake_streams[2] = 7  # cudaStreamPerThread in one thread ...
    first = B.stream_buffer(_Like(2), "loss status", 8)
    fake_streams[2] = 8  # ... and in another: one handle, two streams
    second = B.stream_buffer(_Like(2), "loss status", 8)
    assert first is not second
    assert B.stream_buffers(_Like(2)) == [second]


def test_buffers_are_kept_for_a_bounded_number_of_streams(fake_streams):
    for handle in range(3 * launch.MAX_STREAMS):
        fake_streams[handle] = 100 + handle
        B.stream_buffer(_Like(handle), "workspace", 16)
        if handle == 1:
            B.stream_buffer(_Like(0), "workspace", 16)  # stream 0 used again: the most recent
    assert len(launch._stream_buffers) == launch.MAX_STREAMS
    kept = {sid for _, sid in launch._stream_buffers}
    assert kept == {100 + h for h in range(2 * launch.MAX_STREAMS, 3 * launch.MAX_STREAMS)}


def test_a_larger_request_replaces_the_buffer(fake_streams):
    fake_streams[5] = 50
    small = B.stream_buffer(_Like(5), "workspace", 16)
    large = B.stream_buffer(_Like(5), "workspace", 4096)
    assert large.nbytes >= 4096 and B.stream_buffer(_Like(5), "workspace", 16) is large
    assert small.nbytes == 16


# ---------------------------------------------------------------------------------------------
# On a GPU.


@pytest.mark.gpu
@pytest.mark.parametrize("with_cupy", [True, False])
def test_sgd_on_torch_tensors_is_ordered_with_torchs_side_stream(monkeypatch, with_cupy):
    # The tensors are filled on a torch side stream behind a long sleep, updated by fastnn
    # and read back on the same stream: fastnn's kernel must run between the two.
    torch = pytest.importorskip("torch")
    if not with_cupy:
        monkeypatch.setitem(sys.modules, "cupy", None)
    p = torch.zeros(1 << 20, device="cuda")
    g = torch.zeros_like(p)
    side = torch.cuda.Stream()
    torch.cuda.synchronize()
    with torch.cuda.stream(side):
        torch.cuda._sleep(200_000_000)  # about 0.1 s of spinning on `side` before the fills
        p.fill_(1.0)
        g.fill_(2.0)
        OF.sgd_([p], [g], lr=0.25)
        after = p.clone()
        p.fill_(5.0)  # a later write on torch's stream: the update must not land after it
    torch.cuda.synchronize()
    assert torch.all(after == 0.5)
    assert torch.all(p == 5.0)


@pytest.mark.gpu
def test_cupy_streams_keep_buffers_by_id_and_at_most_max_streams():
    import cupy

    x = cupy.zeros(4, np.float32)
    streams = [cupy.cuda.Stream(non_blocking=True) for _ in range(launch.MAX_STREAMS + 4)]
    first = []
    for stream in streams:
        with stream:
            first.append(B.stream_buffer(x, "test role", 64))
            assert B.stream_buffer(x, "test role", 64) is first[-1]
    assert len({id(b) for b in first}) == len(streams)
    device = x.device.id
    assert sum(1 for d, _ in launch._stream_buffers if d == device) <= launch.MAX_STREAMS
    ids = []

    def in_thread():
        with cupy.cuda.Stream.ptds:
            ids.append(launch._stream_key(x)[2])

    for _ in range(2):
        t = threading.Thread(target=in_thread)
        t.start()
        t.join()
    assert len(set(ids)) == 2  # one handle, a stream per thread
