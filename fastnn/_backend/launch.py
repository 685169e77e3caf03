"""Running a kernel: which path an op on an array takes, the CUDA stream it is ordered on, the
per-stream GPU buffers kernels need beside their arguments, and the call into ``fastnn._C``.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from . import native
from .arrays import CudaView, cupy_module, device_of, on_device


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
    """The CUDA stream work on ``a`` is ordered on: CuPy's current stream on ``a``'s device for
    CuPy arrays, the producer's stream for ``__cuda_array_interface__`` views (0, the default
    stream, if none)."""
    if isinstance(a, CudaView):
        return a.stream
    cuda = sys.modules["cupy"].cuda
    index = a.device.id
    if cuda.runtime.getDevice() == index:
        return int(cuda.get_current_stream().ptr)
    with cuda.Device(index):  # CuPy keeps a current stream per device
        return int(cuda.get_current_stream().ptr)


# GPU buffers the kernels need beside their arguments (workspace, a status word), kept per
# (device, stream, role) and reused: kernels on one stream run in order, so a stream's buffer
# for one role is never in use twice at once, and a step allocates nothing once warm.
_stream_buffers: dict = {}


def stream_buffer(like: Any, role: str, nbytes: int):
    """A CuPy uint8 array of at least ``nbytes`` on ``like``'s device, reserved for ``role`` on
    ``like``'s stream and reused by later calls (a larger request replaces it)."""
    key = (device_of(like).index, stream_of(like), role)
    buf = _stream_buffers.get(key)
    if buf is None or buf.nbytes < nbytes:
        with on_device(like):
            buf = _stream_buffers[key] = cupy_module().empty(nbytes, dtype=np.uint8)
    return buf


def workspace_pointer(like: Any, nbytes: int) -> int:
    """The address of at least ``nbytes`` of kernel workspace on ``like``'s device and stream
    (0 when none is needed), shared by every kernel family."""
    return int(stream_buffer(like, "workspace", nbytes).data.ptr) if nbytes else 0


def stream_buffers(device_index: int, stream: int) -> list:
    """The buffers currently held for one device and stream (a captured CUDA graph keeps their
    addresses, so it holds them too)."""
    return [buf for (device, s, _), buf in _stream_buffers.items() if (device, s) == (device_index, stream)]


def launch(path: str, name: str, a: Any, *args: Any) -> None:
    """Call compiled kernel ``name`` for the dtype of ``a``; on CUDA, on ``a``'s device with its
    current stream appended."""
    C = native._C
    if path == "cpu":
        getattr(C.cpu, name)(a.dtype.name, *args)
        return
    kernel = getattr(C.cuda, name)
    index = device_of(a).index
    current = C.cuda.get_device()
    if current == index:
        kernel(a.dtype.name, *args, stream_of(a))
        return
    C.cuda.set_device(index)
    try:
        kernel(a.dtype.name, *args, stream_of(a))
    finally:
        C.cuda.set_device(current)
