"""The engines that move the data: MPI (mpi4py), NCCL (CuPy's binding), an existing
``torch.distributed`` process group, and a single process that needs none.

Every backend offers the same few collectives, in place, on contiguous arrays:

- on the model's device (``device_*``): ``device_allreduce(a)`` (a = sum over ranks),
  ``device_allreduce_start(a)`` (the same, returning a :class:`Pending` to ``wait()`` on, so
  that backward can go on meanwhile) and ``device_broadcast(a, root)``;
- on the host (``host_*``, NumPy arrays): ``host_allreduce(a)`` and ``host_broadcast(a, root)``,
  for the small things the trainer agrees on (metric sums, stop requests, states as bytes).

Sums are the only reduction: what needs a maximum or a choice is written as a sum (each rank
fills its own slot of a vector). ``abort(code)`` ends every rank at once. fastnn never writes
its own transport: MPI carries CPU arrays and the host side, NCCL the GPU arrays.
"""

from __future__ import annotations

import os
import sys

import numpy as np

from .. import _backend as B

__all__ = ["Backend", "Pending", "LocalBackend", "MPIBackend", "NCCLBackend", "TorchBackend", "launch_size",
           "torchrun_size", "BACKENDS"]

BACKENDS = ("auto", "mpi", "nccl", "torch", "local")

# The world size MPI launchers put in each process's environment: MPICH/Intel MPI (and Slurm's
# PMI), Open MPI, MVAPICH.
_MPI_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def launch_size() -> tuple[int, str | None]:
    """(world size, variable) an MPI launcher announced in the environment; (1, None) when none did."""
    for name in _MPI_SIZE_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value), name
    return 1, None


def torchrun_size() -> int:
    """The world size ``torchrun`` (or any launcher following its variables: RANK, WORLD_SIZE,
    MASTER_ADDR, MASTER_PORT) announced; 1 when it did not."""
    value = os.environ.get("WORLD_SIZE", "")
    if value.isdigit() and "RANK" in os.environ and "MASTER_ADDR" in os.environ:
        return int(value)
    return 1


class Pending:
    """A collective started on the device; ``wait()`` makes later work wait for it (it blocks
    the host on MPI, and only orders the current CUDA stream after it with NCCL); ``test()``
    lets the transport make progress and says whether it is done (MPI moves a nonblocking
    collective forward only inside MPI calls)."""

    def wait(self) -> None:
        pass

    def test(self) -> bool:
        return True


class Backend:
    """The collectives of one process among ``world_size`` (see the module's docstring).
    ``rank`` (0 ... world_size - 1), ``local_rank`` (its index among the processes of its
    machine, which picks its GPU), ``device`` (``"cpu"`` or ``"cuda:N"``: where
    ``device_*`` collectives take their arrays), ``name`` and ``describe()``."""

    name = ""
    rank, world_size, local_rank = 0, 1, 0
    device = "cpu"

    def describe(self) -> str:
        """One line: the backend, the process count and the library behind it."""
        return f"{self.name}: {self.world_size} process{'es' if self.world_size > 1 else ''}"

    def device_allreduce(self, a) -> None:
        self.device_allreduce_start(a).wait()

    def device_allreduce_start(self, a) -> Pending:
        raise NotImplementedError

    def device_broadcast(self, a, root: int = 0) -> None:
        raise NotImplementedError

    def host_allreduce(self, a: np.ndarray) -> None:
        raise NotImplementedError

    def host_broadcast(self, a: np.ndarray, root: int = 0) -> None:
        raise NotImplementedError

    def abort(self, code: int = 1) -> None:
        """End every process of the job now (after a failure on this one)."""
        os._exit(code)

    def close(self) -> None:
        """Release what the backend holds (its communicators)."""

    def check_device_array(self, a, name: str):
        """``a`` as an array the device collectives take: on this backend's device, contiguous
        (a ``ValueError`` naming ``name`` otherwise)."""
        a = B.as_array(a, name)
        where = str(B.device_of(a))
        if where != self.device:
            raise ValueError(f"{name} is on {where}, but the {self.name} backend of this process reduces arrays on "
                             f"{self.device}" + (" (GPU models need init(backend='nccl') or a torch process group)"
                                                 if self.device == "cpu" else ""))
        if not B.is_contiguous(a):
            raise ValueError(f"{name} must be contiguous for a collective (np.ascontiguousarray)")
        return a


# ---------------------------------------------------------------------------------------------
# One process: nothing to move.


class LocalBackend(Backend):
    """A single process (world size 1): every collective is the identity, on arrays of any
    device (``device`` is the kind, "cpu" or "cuda")."""

    name = "local"

    def __init__(self, device: str = "cpu"):
        self.device = device

    def check_device_array(self, a, name: str):
        return B.as_array(a, name)

    def describe(self) -> str:
        return "local: 1 process (no communication)"

    def device_allreduce_start(self, a) -> Pending:
        return Pending()

    def device_broadcast(self, a, root: int = 0) -> None:
        pass

    def host_allreduce(self, a: np.ndarray) -> None:
        pass

    def host_broadcast(self, a: np.ndarray, root: int = 0) -> None:
        pass


# ---------------------------------------------------------------------------------------------
# MPI.


def import_mpi():
    """``mpi4py.MPI`` (which initialises MPI), or an ImportError that says how to get it."""
    try:
        from mpi4py import MPI
    except ImportError:
        raise ImportError("fastnn.distributed: the MPI backend needs mpi4py and an MPI library: "
                          "pip install \"fastnn[mpi]\" (mpi4py and the MPICH wheel), or mpi4py against your "
                          "cluster's MPI") from None
    except RuntimeError as exc:  # mpi4py 4 found no libmpi to load
        raise ImportError(f"fastnn.distributed: mpi4py could not load an MPI library ({str(exc).splitlines()[0]}); "
                          "install one (pip install mpich) or point MPI4PY_LIBMPI at the libmpi of the mpiexec "
                          "you launch with") from None
    return MPI


class _MPIPending(Pending):
    def __init__(self, request):
        self.request = request

    def wait(self) -> None:
        self.request.Wait()

    def test(self) -> bool:
        return bool(self.request.Test())


class MPIBackend(Backend):
    """MPI through mpi4py on ``MPI.COMM_WORLD``, for NumPy arrays (host and device side are the
    same). ``local_rank`` is the rank within the machine (``COMM_TYPE_SHARED``)."""

    name = "mpi"

    def __init__(self):
        MPI = import_mpi()
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD
        self.rank, self.world_size = self.comm.Get_rank(), self.comm.Get_size()
        announced, variable = launch_size()
        if variable is not None and announced != self.world_size:
            raise RuntimeError(f"fastnn.distributed: the launcher started {announced} processes ({variable}="
                               f"{announced}) but MPI sees a world of {self.world_size}: mpi4py loaded another MPI "
                               "library than the mpiexec that started this one (run the mpiexec of the MPI mpi4py "
                               "uses, or set MPI4PY_LIBMPI)")
        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED)
        self.local_rank = node.Get_rank()
        node.Free()

    def describe(self) -> str:
        library = " ".join(self.MPI.Get_library_version().splitlines()[0].split())
        return f"{super().describe()} (MPI: {library})"

    def device_allreduce_start(self, a) -> Pending:
        return _MPIPending(self.comm.Iallreduce(self.MPI.IN_PLACE, a, op=self.MPI.SUM))

    def device_allreduce(self, a) -> None:
        self.comm.Allreduce(self.MPI.IN_PLACE, a, op=self.MPI.SUM)

    def device_broadcast(self, a, root: int = 0) -> None:
        self.comm.Bcast(a, root=root)

    host_allreduce = device_allreduce
    host_broadcast = device_broadcast

    def abort(self, code: int = 1) -> None:
        self.comm.Abort(code)


# ---------------------------------------------------------------------------------------------
# NCCL through CuPy.


def _nccl_type(nccl, dtype) -> int:
    types = {"float32": nccl.NCCL_FLOAT32, "float64": nccl.NCCL_FLOAT64, "int64": nccl.NCCL_INT64,
             "uint8": nccl.NCCL_UINT8}
    name = np.dtype(dtype).name
    if name not in types:
        raise TypeError(f"fastnn.distributed: NCCL collectives take {', '.join(types)} arrays here, got {name}")
    return types[name]


class _CudaPending(Pending):
    """The end of a collective on the communication stream, as an event the current stream
    waits for (no host synchronisation)."""

    def __init__(self, done):
        self.done = done

    def wait(self) -> None:
        B.cupy_module().cuda.get_current_stream().wait_event(self.done)


class NCCLBackend(Backend):
    """NCCL through CuPy (``cupy.cuda.nccl``) for CuPy arrays, one GPU per process: the GPU
    ``local_rank % device count``, made CuPy's current device. The communicator is created
    from a unique id that rank 0 sends to the others over MPI (when MPI launched the job); a
    single process needs no bootstrap. The host side goes over MPI (a world of one needs
    none). Collectives started with :meth:`device_allreduce_start` run on a stream of their
    own, after the work queued so far on the current stream, so backward kernels queued later
    overlap them."""

    name = "nccl"

    def __init__(self):
        cp = B.cupy_module()
        try:
            from cupy.cuda import nccl
        except ImportError:
            nccl = None
        if nccl is None or not getattr(nccl, "available", False):
            raise ImportError("fastnn.distributed: CuPy was built without NCCL here; install NCCL for your CUDA "
                              "(pip install nvidia-nccl-cu12 / -cu13) or use a torch.distributed process group")
        self.cp, self.nccl = cp, nccl
        announced, _ = launch_size()
        self.mpi = MPIBackend() if announced > 1 else None
        if self.mpi is not None:
            self.rank, self.world_size, self.local_rank = self.mpi.rank, self.mpi.world_size, self.mpi.local_rank
        count = cp.cuda.runtime.getDeviceCount()
        if count == 0:
            raise RuntimeError("fastnn.distributed: the NCCL backend needs a CUDA GPU, and none is visible")
        index = self.local_rank % count
        cp.cuda.Device(index).use()
        self.device = f"cuda:{index}"
        unique = np.zeros(128, np.int8)  # NCCL_UNIQUE_ID_BYTES
        if self.rank == 0:
            unique[:] = nccl.get_unique_id()
        if self.mpi is not None:
            self.mpi.host_broadcast(unique, 0)
        self.comm = nccl.NcclCommunicator(self.world_size, tuple(int(v) for v in unique), self.rank)
        self.stream = cp.cuda.Stream(non_blocking=True)

    def describe(self) -> str:
        version = self.nccl.get_version()
        return f"{super().describe()} (NCCL {version // 10000}.{version // 100 % 100}.{version % 100} via CuPy, " \
               f"{self.device}{', bootstrapped over MPI' if self.mpi is not None else ''})"

    def _call(self, a, stream, root=None) -> None:
        args = (int(a.data.ptr), int(a.data.ptr), a.size, _nccl_type(self.nccl, a.dtype))
        if root is None:
            self.comm.allReduce(*args, self.nccl.NCCL_SUM, stream.ptr)
        else:
            self.comm.broadcast(*args, root, stream.ptr)

    def device_allreduce_start(self, a) -> Pending:
        ready = self.cp.cuda.get_current_stream().record()
        self.stream.wait_event(ready)
        self._call(a, self.stream)
        return _CudaPending(self.stream.record())

    def device_allreduce(self, a) -> None:
        self._call(a, self.cp.cuda.get_current_stream())

    def device_broadcast(self, a, root: int = 0) -> None:
        self._call(a, self.cp.cuda.get_current_stream(), root)

    def host_allreduce(self, a: np.ndarray) -> None:
        if self.mpi is not None:
            self.mpi.host_allreduce(a)

    def host_broadcast(self, a: np.ndarray, root: int = 0) -> None:
        if self.mpi is not None:
            self.mpi.host_broadcast(a, root)

    def abort(self, code: int = 1) -> None:
        if self.mpi is not None:
            self.mpi.abort(code)
        os._exit(code)

    def close(self) -> None:
        self.comm.destroy()


# ---------------------------------------------------------------------------------------------
# torch.distributed.


class _TorchPending(Pending):
    def __init__(self, work):
        self.work = work

    def wait(self) -> None:
        self.work.wait()

    def test(self) -> bool:
        return bool(self.work.is_completed())


class TorchBackend(Backend):
    """An existing ``torch.distributed`` process group (the default group), or one this
    backend starts from torchrun's environment variables (``nccl`` for a GPU model, ``gloo``
    otherwise) and destroys in :meth:`close`. Arrays are shared with torch through DLPack,
    without a copy (CuPy and torch must both run on their default streams). The host side
    runs on a gloo group (the default group itself when it is gloo)."""

    name = "torch"

    def __init__(self, device_kind: str = "cpu"):
        try:
            import torch
            import torch.distributed as dist
        except ImportError:
            raise ImportError("fastnn.distributed: the torch backend needs PyTorch (pip install torch)") from None
        if not dist.is_available():
            raise ImportError("fastnn.distributed: this PyTorch has no torch.distributed")
        self.torch, self.dist = torch, dist
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device_kind == "cuda":
            cp = B.cupy_module()
            index = self.local_rank % cp.cuda.runtime.getDeviceCount()
            cp.cuda.Device(index).use()
            torch.cuda.set_device(index)
            self.device = f"cuda:{index}"
        self.owns_group = not dist.is_initialized()
        if self.owns_group:
            dist.init_process_group("nccl" if device_kind == "cuda" else "gloo")
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        group_backend = str(dist.get_backend())
        self.group_backend = group_backend
        if (group_backend == "nccl") != (device_kind == "cuda"):
            raise ValueError(f"fastnn.distributed: the torch process group runs {group_backend}, which does not "
                             f"reduce {'GPU' if device_kind == 'cuda' else 'CPU'} arrays; start it with "
                             f"{'nccl' if device_kind == 'cuda' else 'gloo'}")
        self.host_group = None if group_backend == "gloo" else dist.new_group(backend="gloo")

    def describe(self) -> str:
        return f"{super().describe()} (torch.distributed {self.group_backend}, torch {self.torch.__version__})"

    def _tensor(self, a):
        return self.torch.from_numpy(a) if isinstance(a, np.ndarray) else self.torch.from_dlpack(a)

    def device_allreduce_start(self, a) -> Pending:
        return _TorchPending(self.dist.all_reduce(self._tensor(a), async_op=True))

    def device_broadcast(self, a, root: int = 0) -> None:
        self.dist.broadcast(self._tensor(a), src=root)

    def host_allreduce(self, a: np.ndarray) -> None:
        self.dist.all_reduce(self.torch.from_numpy(a), group=self.host_group)

    def host_broadcast(self, a: np.ndarray, root: int = 0) -> None:
        self.dist.broadcast(self.torch.from_numpy(a), src=root, group=self.host_group)

    def close(self) -> None:
        # A group left to the interpreter's exit ends the process with "terminate called
        # without an active exception"; one the user started is the user's to destroy.
        if self.owns_group:
            self.dist.destroy_process_group()

    def abort(self, code: int = 1) -> None:
        # torch.distributed has no abort of the whole group: this process ends, and torchrun
        # ends the others when one of them fails.
        sys.stderr.flush()
        os._exit(code)
