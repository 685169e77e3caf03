"""Arrays, devices and dtypes, and the choice of implementation path.

Every public op validates its arguments here, once, and then runs on one of three paths:

========== ===================================================== =============================
path       runs when                                             code
========== ===================================================== =============================
reference  always available; ``FASTNN_BACKEND=numpy`` forces it  ``fastnn.reference`` (xp code)
cpu        NumPy arrays and the extension was built              ``fastnn._C.cpu``
cuda       GPU arrays and the extension was built with CUDA      ``fastnn._C.cuda``
========== ===================================================== =============================

The array decides the device: ``numpy.ndarray`` is the CPU, ``cupy.ndarray`` the GPU. Other
arrays are viewed without a copy through ``__cuda_array_interface__``, ``__dlpack__`` or
``__array_interface__`` (so PyTorch tensors are updated in place). Arrays on different devices
are never copied silently: mixing them raises ``ValueError``.

CuPy is imported only when a GPU array shows up, never at ``import fastnn``.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import sys
import warnings
from typing import Any, Iterator, NamedTuple

import numpy as np

# After a parallel region GNU OpenMP threads spin for a while before sleeping; on a machine
# with few cores they then take cores from the BLAS GEMM that usually follows (NumPy's
# OpenBLAS runs its own threads). Ask them to spin briefly. The runtime reads this once, when
# it loads with the extension below; a value the user set wins.
os.environ.setdefault("GOMP_SPINCOUNT", "10000")

try:
    from . import _C
except ImportError as _exc:  # no compiled extension: the reference path still works
    _C = None
    NATIVE_ERROR: str | None = f"{type(_exc).__name__}: {_exc}"
    warnings.warn(
        "fastnn: the compiled extension fastnn._C could not be imported "
        f"({NATIVE_ERROR}); every op runs on the NumPy reference path. "
        "Reinstall with `pip install .` and a C++17 compiler to build it.",
        RuntimeWarning,
        stacklevel=2,
    )
else:
    NATIVE_ERROR = None

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

# ---------------------------------------------------------------------------------------------
# Which path: "auto" picks native where it is built; "reference" forces the reference path.

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


# ---------------------------------------------------------------------------------------------
# Devices and zero-copy views of foreign arrays.


@functools.lru_cache(maxsize=None)
def cuda_device_count() -> int:
    """GPUs the compiled CUDA kernels can see (0 without CUDA kernels, driver or device)."""
    return _C.cuda.device_count() if native_available("cuda") else 0


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
    visible GPU and CuPy are all needed (CuPy is imported only once the first two hold)."""
    if not native_available("cuda"):
        return "this fastnn was built without its CUDA kernels (reinstall with the CUDA toolkit on PATH, FASTNN_CUDA=ON)"
    if cuda_device_count() == 0:
        return "no CUDA GPU is visible on this machine"
    try:
        cupy_module()
    except ImportError:
        return "CuPy is not installed (pip install \"fastnn[cuda]\", or fastnn[cuda12] for CUDA 12)"
    return None


def _is_cupy(x: Any) -> bool:
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


def as_array(x: Any, name: str):
    """View ``x`` as a NumPy or CuPy array without copying (a :class:`CudaView` for foreign GPU
    arrays when CuPy is missing). Raises ``TypeError`` for anything that is not an array."""
    if isinstance(x, (np.ndarray, CudaView)) or _is_cupy(x):
        return x
    try:
        if hasattr(x, "__cuda_array_interface__"):
            interface = x.__cuda_array_interface__
            try:
                return cupy_module().asarray(x)
            except ImportError:
                return CudaView(x, interface)
        if hasattr(x, "__dlpack__") and hasattr(x, "__dlpack_device__"):
            device_type = int(x.__dlpack_device__()[0])
            if device_type == 1:  # kDLCPU
                return np.from_dlpack(x)
            if device_type == 2:  # kDLCUDA
                return cupy_module().from_dlpack(x)
            raise TypeError(f"{name}: arrays on DLPack device type {device_type} are not supported "
                            "(fastnn runs on the CPU and on CUDA GPUs)")
        if hasattr(x, "__array_interface__"):
            return np.asarray(x)
    except (RuntimeError, BufferError) as exc:  # e.g. a torch tensor that requires grad
        raise TypeError(f"{name}: cannot view {type(x).__name__} as an array without a copy: {exc}") from None
    raise TypeError(
        f"{name} must be an array (numpy.ndarray, cupy.ndarray, or an object with __dlpack__, "
        f"__cuda_array_interface__ or __array_interface__), got {type(x).__name__}"
    )


def device_of(a: Any) -> Device:
    """The :class:`Device` of an array returned by :func:`as_array`."""
    if isinstance(a, np.ndarray):
        return CPU
    if isinstance(a, CudaView):
        return Device("cuda", a.device_index)
    if _is_cupy(a):
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


def array_module(a: Any):
    """``numpy`` or ``cupy``, whichever owns the array (the CuPy ``get_array_module`` idiom)."""
    if _is_cupy(a):
        return sys.modules["cupy"]
    if isinstance(a, CudaView):
        return cupy_module()
    return np


def to_numpy(a: Any) -> np.ndarray:
    """A NumPy copy of a GPU array, or the NumPy array itself."""
    if _is_cupy(a):
        return a.get()
    return np.asarray(a)


def _contiguous(a: Any) -> bool:
    if isinstance(a, CudaView):
        return a.contiguous
    return bool(a.flags.c_contiguous)


def _writable(a: Any) -> bool:
    if isinstance(a, CudaView):
        return not a.readonly
    if isinstance(a, np.ndarray):
        return bool(a.flags.writeable)
    return True


# ---------------------------------------------------------------------------------------------
# Validation: once per op, before any pointer is taken.


def check_float(x: Any, name: str, *, like: tuple[str, Any] | None = None, shape=None,
                ndim: int | None = None, writable: bool = False, dtype=None):
    """Validate an array argument and return its zero-copy view.

    - dtype float32 or float64 (``TypeError`` naming the argument, expected and given dtype);
      with ``dtype`` given, exactly that one;
    - with ``like=(other_name, other)``: same device (``ValueError``) and dtype (``TypeError``);
    - ``shape`` / ``ndim`` when given (``ValueError``);
    - C-contiguous (``ValueError``; kernels need it and fastnn does not copy behind your back);
    - writable when it will be written (``ValueError``).
    """
    a = as_array(x, name)
    dt = np.dtype(a.dtype)
    if dtype is not None and dt != np.dtype(dtype):
        raise TypeError(f"{name}: expected dtype {np.dtype(dtype)}, got {dt}")
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected dtype float32 or float64, got {dt}")
    if like is not None:
        other_name, other = like
        if device_of(a) != device_of(other):
            raise ValueError(
                f"{name} is on {device_of(a)} but {other_name} is on {device_of(other)}: fastnn never "
                "copies between devices; move one of them first (cupy.asarray / .get())"
            )
        if dt != np.dtype(other.dtype):
            raise TypeError(f"{name}: expected dtype {np.dtype(other.dtype)} (the dtype of {other_name}), got {dt}")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-d array, got shape {tuple(a.shape)}")
    if shape is not None and tuple(a.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(a.shape)}")
    if not _contiguous(a):
        raise ValueError(
            f"{name} must be C-contiguous (got strides {a.strides} for shape {tuple(a.shape)}); "
            "pass numpy.ascontiguousarray(...) / cupy.ascontiguousarray(...)"
        )
    if writable and not _writable(a):
        raise ValueError(f"{name} is read-only but fastnn writes into it")
    return a


def check_scalar(value: Any, name: str, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False) -> float:
    """A finite real hyperparameter within [low, high] (ends open when asked), else ValueError."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}") from None
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if low is not None and (v < low or (low_open and v == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value!r}")
    if high is not None and (v > high or (high_open and v == high)):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}, got {value!r}")
    return v


def on_device(a: Any):
    """A context that makes ``a``'s GPU the current device, where CuPy allocates (a no-op for
    CPU arrays). The kernels run on the array's device whatever device is current."""
    device = device_of(a)
    if device.kind == "cpu":
        return contextlib.nullcontext()
    return cupy_module().cuda.Device(device.index)


def empty(shape, like: Any):
    """A new uninitialised array of ``shape`` with ``like``'s dtype, on ``like``'s device."""
    with on_device(like):
        return array_module(like).empty(shape, dtype=like.dtype)


def output(out: Any, like: Any, name: str = "out", shape=None):
    """``out`` validated to match ``like`` (device, dtype, shape), or a new empty array on
    ``like``'s device."""
    shape = tuple(like.shape) if shape is None else tuple(shape)
    if out is None:
        if isinstance(like, CudaView):
            raise TypeError(f"{name}: allocating on a foreign GPU array needs CuPy; pass {name}= or install CuPy")
        return empty(shape, like)
    out = check_float(out, name, like=("the input", like), shape=shape, writable=True)
    if partially_overlaps(out, like):
        raise ValueError(f"{name} overlaps the input without being the same array: pass the input itself "
                         "(in place) or a separate array")
    return out


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


def check_disjoint(outputs, inputs) -> None:
    """ValueError when a written array (``outputs``: (name, array) pairs) shares memory with
    another argument (``inputs``; None entries skipped), for kernels that read their inputs
    while writing."""
    may_share, host = np.may_share_memory, np.ndarray  # the common case, without a call per pair
    for out_name, out in outputs:
        out_on_host = isinstance(out, host)
        for name, other in inputs:
            if other is None or name == out_name:
                continue
            if may_share(out, other) if out_on_host and isinstance(other, host) else shares_memory(out, other):
                raise ValueError(f"{out_name} shares memory with {name}: pass a separate array")


def finish(out: Any, result: Any):
    """Return a reference-path ``result``, written into ``out`` (validated like the native
    paths' outputs) when the caller gave one."""
    if out is None:
        return result
    target = check_float(out, "out", like=("the result", result), shape=result.shape, writable=True)
    target[...] = result
    return target


# ---------------------------------------------------------------------------------------------
# Running a kernel.


def path_of(a: Any) -> str:
    """``"reference"``, ``"cpu"`` or ``"cuda"``: where an op on array ``a`` runs."""
    device = device_of(a)
    if _mode == "reference":
        return "reference"
    if native_available(device.kind):
        return device.kind
    if _mode == "native":
        raise RuntimeError(f"fastnn backend 'native': no compiled kernels for {device} "
                           f"({NATIVE_ERROR or 'the extension was built without CUDA'})")
    return "reference"


def pointer(a: Any) -> int:
    """The address of the first element (validated arrays only)."""
    if isinstance(a, np.ndarray):
        return a.__array_interface__["data"][0]
    if isinstance(a, CudaView):
        return a.ptr
    return int(a.data.ptr)


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
    if path == "cpu":
        getattr(_C.cpu, name)(a.dtype.name, *args)
        return
    kernel = getattr(_C.cuda, name)
    index = device_of(a).index
    current = _C.cuda.get_device()
    if current == index:
        kernel(a.dtype.name, *args, stream_of(a))
        return
    _C.cuda.set_device(index)
    try:
        kernel(a.dtype.name, *args, stream_of(a))
    finally:
        _C.cuda.set_device(current)
