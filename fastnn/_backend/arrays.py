"""Arrays and devices: which device an array lives on, zero-copy views of foreign arrays, the
explicit moves between devices, allocation beside an array, and raw addresses.

The array decides the device: ``numpy.ndarray`` is the CPU, ``cupy.ndarray`` a GPU. Other
arrays are viewed without a copy through ``__dlpack__``, ``__cuda_array_interface__`` or
``__array_interface__`` (so PyTorch tensors are updated in place). CuPy is imported only when
a GPU array shows up, never at ``import fastnn``.

The stream a GPU array's kernels run on (``launch.stream_of``) must be ordered after the work
that produced the array: a PyTorch CUDA tensor's is torch's current stream on its device (its
``__cuda_array_interface__`` names none), remembered in the view (:func:`torch_device`); other
DLPack producers are asked, through DLPack's stream handshake, to order CuPy's current stream
after their work.
"""

from __future__ import annotations

import contextlib
import math
import sys
from typing import Any, NamedTuple

import numpy as np

from .native import _C, cuda_device_count, cuda_unavailable_reason


class Device(NamedTuple):
    """Where an array lives: ``kind`` is ``"cpu"`` or ``"cuda"``; ``index`` the GPU ordinal."""

    kind: str
    index: int = 0

    def __str__(self) -> str:
        return "cpu" if self.kind == "cpu" else f"cuda:{self.index}"


CPU = Device("cpu")


def cupy_module():
    """CuPy, imported on first use, with a clear message when it is missing."""
    try:
        import cupy
    except ImportError:
        raise ImportError(
            "fastnn: GPU arrays need CuPy. Install it with `pip install \"fastnn[cuda]\"` "
            "(CUDA 13; `fastnn[cuda12]` for CUDA 12)."
        ) from None
    return cupy


def gpu_unavailable_reason() -> str | None:
    """Why GPU arrays cannot be used here, or None when they can: fastnn's CUDA kernels, a
    visible GPU (:func:`native.cuda_unavailable_reason`: no driver, a driver older than the
    CUDA runtime, no device) and CuPy are all needed (CuPy is imported only once the first two
    hold)."""
    reason = cuda_unavailable_reason()
    if reason is not None:
        return reason
    try:
        cupy_module()
    except ImportError:
        return "CuPy is not installed (pip install \"fastnn[cuda]\", or fastnn[cuda12] for CUDA 12)"
    return None


def is_cupy(x: Any) -> bool:
    """Whether ``x`` is a ``cupy.ndarray`` (without importing CuPy)."""
    cp = sys.modules.get("cupy")
    return cp is not None and isinstance(x, cp.ndarray)


class CudaView:
    """A foreign GPU array seen through ``__cuda_array_interface__`` when CuPy is not installed.

    Enough for the compiled kernels (pointer, shape, dtype, stream); ops that must allocate or
    run the reference path on it need CuPy.
    """

    __slots__ = ("ptr", "shape", "dtype", "strides", "readonly", "stream", "owner", "device_index")

    def __init__(self, owner: Any, interface: dict):
        self.owner = owner
        self.ptr, self.readonly = int(interface["data"][0]), bool(interface["data"][1])
        self.shape = tuple(int(s) for s in interface["shape"])
        self.dtype = np.dtype(interface["typestr"])
        self.strides = interface.get("strides")
        stream = interface.get("stream")
        self.stream = 0 if stream is None else int(stream)
        # An empty tensor may have a null pointer, which no device owns.
        self.device_index = _C.cuda.pointer_device(self.ptr) if cuda_device_count() and self.ptr else 0

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def contiguous(self) -> bool:
        if self.strides is None:
            return True
        expected, step = [], self.dtype.itemsize
        for extent in reversed(self.shape):
            expected.append(step)
            step *= extent
        return all(e == 1 or s == x for e, s, x in zip(self.shape, self.strides, reversed(expected)))


def _torch_cuda_device(x: Any) -> int | None:
    """The GPU index of a PyTorch CUDA tensor, None for anything else (torch is not imported)."""
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(x, torch.Tensor) or not x.is_cuda:
        return None
    return x.device.index


def torch_stream(device_index: int) -> int:
    """PyTorch's current stream on a GPU: where torch orders the work that produces and uses
    its tensors there."""
    return int(sys.modules["torch"].cuda.current_stream(device_index).cuda_stream)


_TorchMemory = None  # CuPy's UnownedMemory, marked as a PyTorch tensor's (made on first use)


def _torch_cuda_array(x: Any, interface: dict, device: int):
    """A CuPy array over a PyTorch CUDA tensor's memory (zero-copy), marked so that
    :func:`torch_device` finds it on every view."""
    global _TorchMemory
    cupy = cupy_module()
    if _TorchMemory is None:
        class TorchMemory(cupy.cuda.UnownedMemory):
            """A PyTorch tensor's memory; kernels on it run on torch's current stream."""

        _TorchMemory = TorchMemory
    dtype = np.dtype(interface["typestr"])
    shape = tuple(int(s) for s in interface["shape"])
    strides = interface.get("strides")
    if strides is None:
        nbytes = math.prod(shape) * dtype.itemsize
    else:  # the span from the first element to one past the last (torch strides are >= 0)
        nbytes = 0 if 0 in shape else dtype.itemsize + sum((n - 1) * s for n, s in zip(shape, strides))
    memory = _TorchMemory(int(interface["data"][0]), nbytes, x, device)
    return cupy.ndarray(shape, dtype, cupy.cuda.MemoryPointer(memory, 0), strides)


def torch_device(a: Any) -> int | None:
    """The GPU index when ``a`` is a CuPy array over a PyTorch tensor's memory (as
    :func:`as_array` views torch CUDA tensors), else None."""
    if _TorchMemory is None:
        return None
    memory = getattr(getattr(a, "data", None), "mem", None)
    return memory.device_id if type(memory) is _TorchMemory else None


def _cupy_missing() -> bool:
    try:
        cupy_module()
    except ImportError:
        return True
    return False


def _is_pandas(x: Any) -> bool:
    """A pandas DataFrame, Series or Index (without importing pandas)."""
    return type(x).__module__.partition(".")[0] == "pandas" and hasattr(x, "to_numpy")


def as_array(x: Any, name: str):
    """View ``x`` as a NumPy or CuPy array without copying (a :class:`CudaView` for foreign GPU
    arrays when CuPy is missing). pandas objects become row-major NumPy arrays (a copy for a
    DataFrame, whose memory holds its columns). Raises ``TypeError`` for anything that is not an array."""
    if isinstance(x, (np.ndarray, CudaView)) or is_cupy(x):
        return x
    try:
        torch_gpu = _torch_cuda_device(x)
        if torch_gpu is not None:
            # torch's __cuda_array_interface__ names no stream: the view remembers that its
            # kernels belong on torch's current stream (launch.stream_of).
            interface = x.__cuda_array_interface__
            try:
                return _torch_cuda_array(x, interface, torch_gpu)
            except ImportError:
                return CudaView(x, dict(interface, stream=torch_stream(torch_gpu) or None))
        if hasattr(x, "__dlpack__") and hasattr(x, "__dlpack_device__"):
            device_type = int(x.__dlpack_device__()[0])
            if device_type == 1:  # kDLCPU
                return np.from_dlpack(x)
            if device_type != 2:  # kDLCUDA
                raise TypeError(f"{name}: arrays on DLPack device type {device_type} are not supported "
                                "(fastnn runs on the CPU and on CUDA GPUs)")
            if not (hasattr(x, "__cuda_array_interface__") and _cupy_missing()):
                # CuPy hands the producer its current stream, and the producer orders that
                # stream after its own work (DLPack's stream handshake).
                return cupy_module().from_dlpack(x)
        if hasattr(x, "__cuda_array_interface__"):
            interface = x.__cuda_array_interface__
            try:
                return cupy_module().asarray(x)
            except ImportError:
                return CudaView(x, interface)
        if hasattr(x, "__array_interface__"):
            return np.asarray(x)
        if _is_pandas(x):
            # A frame's columns are its rows in memory: a row-major copy, as data enters fastnn
            # (a Series is a view). pandas objects are inputs, never updated in place.
            return np.ascontiguousarray(x.to_numpy())
    except (RuntimeError, BufferError) as exc:  # e.g. a torch tensor that requires grad
        raise TypeError(f"{name}: cannot view {type(x).__name__} as an array without a copy: {exc}") from None
    raise TypeError(
        f"{name} must be an array (numpy.ndarray, cupy.ndarray, a pandas DataFrame or Series, or an object "
        f"with __dlpack__, __cuda_array_interface__ or __array_interface__), got {type(x).__name__}"
    )


def device_of(a: Any) -> Device:
    """The :class:`Device` of an array returned by :func:`as_array`."""
    if isinstance(a, np.ndarray):
        return CPU
    if isinstance(a, CudaView):
        return Device("cuda", a.device_index)
    if is_cupy(a):
        return Device("cuda", a.device.id)
    return device_of(as_array(a, "array"))


def parse_device(device: Any) -> Device | None:
    """The :class:`Device` named by ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (case and surrounding
    spaces ignored), or None when ``device`` names none."""
    if not isinstance(device, str):
        return None
    kind, _, index = device.strip().lower().partition(":")
    if kind not in ("cpu", "cuda") or (index and not index.isdigit()) or (kind == "cpu" and index):
        return None
    return Device(kind, int(index or 0))


def array_module(a: Any):
    """``numpy`` or ``cupy``, whichever owns the array (the CuPy ``get_array_module`` idiom)."""
    if is_cupy(a):
        return sys.modules["cupy"]
    if isinstance(a, CudaView):
        return cupy_module()
    return np


def to_numpy(a: Any) -> np.ndarray:
    """A NumPy copy of a GPU array, or the NumPy array itself."""
    if is_cupy(a):
        return a.get()
    return np.asarray(a)


def to_device(a: Any, device: Device):
    """``a`` itself when it already lives on ``device``, else a copy there: NumPy for the CPU,
    CuPy on that GPU. The explicit move that fastnn never makes behind the caller's back."""
    if device_of(a) == device:
        return a
    if device.kind == "cpu":
        return to_numpy(a)
    cp = cupy_module()
    with cp.cuda.Device(device.index):
        return cp.array(a)


def on_device(a: Any):
    """A context that makes ``a``'s GPU the current device, where CuPy allocates (a no-op for
    CPU arrays). The kernels run on the array's device whatever device is current."""
    device = device_of(a)
    if device.kind == "cpu":
        return contextlib.nullcontext()
    return cupy_module().cuda.Device(device.index)


def empty(shape, like: Any, dtype=None):
    """A new uninitialised array of ``shape`` with ``like``'s dtype (or ``dtype``), on
    ``like``'s device."""
    with on_device(like):
        return array_module(like).empty(shape, dtype=like.dtype if dtype is None else dtype)


def is_contiguous(a: Any) -> bool:
    """Whether an array from :func:`as_array` is C-contiguous (what the kernels need)."""
    if isinstance(a, CudaView):
        return a.contiguous
    return bool(a.flags.c_contiguous)


def is_writable(a: Any) -> bool:
    """Whether fastnn may write into an array from :func:`as_array` (NumPy's flag; a foreign
    view's read-only bit; CuPy arrays are always writable)."""
    if isinstance(a, CudaView):
        return not a.readonly
    if isinstance(a, np.ndarray):
        return bool(a.flags.writeable)
    return True


def pointer(a: Any) -> int:
    """The address of the first element (validated arrays only)."""
    if isinstance(a, np.ndarray):
        return a.__array_interface__["data"][0]
    if isinstance(a, CudaView):
        return a.ptr
    return int(a.data.ptr)


def shares_memory(a: Any, b: Any) -> bool:
    """Whether two validated (C-contiguous) arrays may share memory: NumPy's own test on the
    CPU, overlapping address ranges elsewhere (CuPy and foreign GPU views alike)."""
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return bool(np.may_share_memory(a, b))
    size_a, size_b = (x.size * np.dtype(x.dtype).itemsize for x in (a, b))
    if size_a == 0 or size_b == 0:
        return False
    pa, pb = pointer(a), pointer(b)
    return pa < pb + size_b and pb < pa + size_a


def partially_overlaps(a: Any, b: Any) -> bool:
    """Whether two arrays share memory without being the very same elements (same start and
    shape), which an elementwise kernel cannot handle; exact aliasing (in place) is fine."""
    if pointer(a) == pointer(b) and tuple(a.shape) == tuple(b.shape):
        return False
    return shares_memory(a, b)
