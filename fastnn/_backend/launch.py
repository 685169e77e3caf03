"""Running a kernel: which path an op on an array takes, the CUDA stream it is ordered on
(and whether that stream is being captured), the per-stream GPU buffers kernels need beside
their arguments, and the call into ``fastnn._C``.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections import OrderedDict
from typing import Any

import numpy as np

from . import native
from .arrays import CudaView, cupy_module, device_of, on_device, torch_device, torch_stream


def path_of(a: Any) -> str:
    """``"reference"``, ``"cpu"`` or ``"cuda"``: where an op on array ``a`` runs."""
    device = device_of(a)
    mode = native.get_backend()
    if mode == "reference":
        return "reference"
    if native.native_available(device.kind):
        return device.kind
    if mode == "native":
        raise RuntimeError(f"fastnn backend 'native': no compiled kernels for {device} "
                           f"({native.NATIVE_ERROR or 'the extension was built without CUDA'})")
    return "reference"


def stream_of(a: Any) -> int:
    """The CUDA stream work on ``a`` is ordered on: for a view of a PyTorch tensor, torch's
    current stream on its device (so the kernel runs after the work that produced the tensor
    and before torch's next use of it); for other CuPy arrays CuPy's current stream on ``a``'s
    device; for ``__cuda_array_interface__`` views the producer's stream (0, the default
    stream, if none)."""
    if isinstance(a, CudaView):
        return a.stream
    torch_gpu = torch_device(a)
    if torch_gpu is not None:
        return torch_stream(torch_gpu)
    cuda = sys.modules["cupy"].cuda
    index = a.device.id
    if cuda.runtime.getDevice() == index:
        return int(cuda.get_current_stream().ptr)
    with cuda.Device(index):  # CuPy keeps a current stream per device
        return int(cuda.get_current_stream().ptr)


def capturing(a: Any) -> bool:
    """Whether work on GPU array ``a``'s stream is being captured into a CUDA graph (False for
    CPU arrays): what a kernel launched for ``a`` now would be recorded into."""
    if isinstance(a, np.ndarray) or not native.native_available("cuda"):
        return False
    return bool(_on_array_device(a, native._C.cuda.stream_capturing, stream_of(a)))


# GPU buffers the kernels need beside their arguments (workspace, a status word), kept per
# stream and role and reused: kernels on one stream run in order, so a stream's buffer for one
# role is never in use twice at once, and a step allocates nothing once warm.
#
# A stream is known by its cudaStreamGetId, never by its handle: a destroyed stream's handle can
# come back as a new stream's while the old one's work is pending, and the per-thread default
# stream is one handle for every thread's own stream. At most MAX_STREAMS streams per device
# keep buffers; the least recently used one's are dropped for a new stream. They are allocated
# on the stream that uses them, so CuPy's pool (stream-ordered per stream) hands their memory to
# nothing else before that stream's pending work is done. A captured CUDA graph keeps its
# buffers' addresses, so it holds references to them (fastnn.cuda_graph).
MAX_STREAMS = 8
_stream_buffers: OrderedDict = OrderedDict()  # (device, stream id) -> {role: buffer}, oldest first
_stream_buffers_lock = threading.Lock()  # threads on streams of their own share the table


def _on_array_device(a: Any, call, *args):
    """``call(*args)`` with ``a``'s GPU current (the calling thread's current device restored)."""
    C = native._C
    index = device_of(a).index
    current = C.cuda.get_device()
    if current == index:
        return call(*args)
    C.cuda.set_device(index)
    try:
        return call(*args)
    finally:
        C.cuda.set_device(current)


class _StreamHandle:
    """A raw stream handle in the CUDA stream protocol (``__cuda_stream__``), for CuPy."""

    def __init__(self, ptr: int):
        self.ptr = ptr

    def __cuda_stream__(self):
        return (0, self.ptr)


def _allocating_on(ptr: int, device_index: int):
    """A context in which CuPy allocates for stream ``ptr`` of the current GPU (its pool keeps
    freed memory for the stream it was allocated on)."""
    cuda = cupy_module().cuda
    if int(cuda.get_current_stream().ptr) == ptr:
        return contextlib.nullcontext()
    if hasattr(cuda.Stream, "from_external"):  # CuPy 14 deprecates ExternalStream
        return cuda.Stream.from_external(_StreamHandle(ptr))
    return cuda.ExternalStream(ptr, device_index)


def _stream_key(like: Any) -> tuple:
    stream = stream_of(like)
    return device_of(like).index, stream, _on_array_device(like, native._C.cuda.stream_id, stream)


def stream_buffer(like: Any, role: str, nbytes: int):
    """A CuPy uint8 array of at least ``nbytes`` on ``like``'s device, reserved for ``role`` on
    ``like``'s stream and reused by later calls (a larger request replaces it)."""
    device, stream, sid = _stream_key(like)
    key = (device, sid)
    with _stream_buffers_lock:
        buffers = _stream_buffers.get(key)
        if buffers is None:
            buffers = _stream_buffers[key] = {}
            kept = [k for k in _stream_buffers if k[0] == device]
            for old in kept[:max(0, len(kept) - MAX_STREAMS)]:
                del _stream_buffers[old]
        else:
            _stream_buffers.move_to_end(key)
    buf = buffers.get(role)
    if buf is None or buf.nbytes < nbytes:
        with on_device(like), _allocating_on(stream, device):
            buf = buffers[role] = cupy_module().empty(nbytes, dtype=np.uint8)
    return buf


def workspace_pointer(like: Any, nbytes: int) -> int:
    """The address of at least ``nbytes`` of kernel workspace on ``like``'s device and stream
    (0 when none is needed), shared by every kernel family."""
    return int(stream_buffer(like, "workspace", nbytes).data.ptr) if nbytes else 0


def stream_buffers(like: Any) -> list:
    """The buffers currently held for ``like``'s stream (a captured CUDA graph keeps their
    addresses, so it holds them too); none for CPU arrays."""
    if isinstance(like, np.ndarray):
        return []
    device, _, sid = _stream_key(like)
    return list(_stream_buffers.get((device, sid), {}).values())


def launch(path: str, name: str, a: Any, *args: Any) -> None:
    """Call compiled kernel ``name`` for the dtype of ``a``; on CUDA, on ``a``'s device with its
    stream (:func:`stream_of`) appended."""
    C = native._C
    if path == "cpu":
        getattr(C.cpu, name)(a.dtype.name, *args)
        return
    _on_array_device(a, getattr(C.cuda, name), a.dtype.name, *args, stream_of(a))
