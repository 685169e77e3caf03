"""This process's place in a data-parallel job: :func:`init` picks the backend, :func:`rank`,
:func:`world_size`, :func:`local_rank` and :func:`device` say where the process stands, and a
failure on one rank ends them all (:func:`abort`) instead of leaving the others waiting in a
collective forever."""

from __future__ import annotations

import atexit
import contextlib
import sys
import time
import traceback

from .backends import (BACKENDS, Backend, LocalBackend, MPIBackend, NCCLBackend, TorchBackend, launch_size,
                       torchrun_size)

__all__ = ["init", "is_initialized", "current", "rank", "world_size", "local_rank", "device", "launched", "abort",
           "abort_on_error", "shutdown"]

_current: Backend | None = None
# How long a failing rank waits, its output flushed, before it ends the job: the launcher's
# proxies forward each rank's stderr through a pipe, and MPI_Abort kills them with whatever they
# have not forwarded yet (a loaded machine lost the traceback's end and the failure line).
_OUTPUT_GRACE_S = 1.0
_previous_excepthook = None
_exit_registered = False


def launched() -> bool:
    """Whether a launcher started this process as one of several: ``mpiexec``/``mpirun``/``srun``
    (PMI_SIZE, OMPI_COMM_WORLD_SIZE or MV2_COMM_WORLD_SIZE above 1) or ``torchrun`` (WORLD_SIZE
    above 1 with RANK and MASTER_ADDR)."""
    return launch_size()[0] > 1 or torchrun_size() > 1


def _torch_group_ready() -> bool:
    dist = sys.modules.get("torch.distributed")
    return dist is not None and dist.is_available() and dist.is_initialized()


def _choose(backend: str, kind: str) -> str:
    """The backend "auto" stands for (see :func:`init`)."""
    if backend != "auto":
        return backend
    if _torch_group_ready():
        return "torch"
    if launch_size()[0] > 1:
        return "nccl" if kind == "cuda" else "mpi"
    if torchrun_size() > 1:
        return "torch"
    return "local"


def init(backend: str = "auto", *, device: str = "cpu") -> Backend:
    """Join the job this process was launched into, once; returns the :class:`Backend`, whose
    ``describe()`` says which backend it is, for how many processes, over which library.

    ``device``: ``"cpu"`` or ``"cuda"``, where the model lives (it decides the transport of
    the gradients). ``backend="auto"`` picks, in this order:

    - ``"torch"``, when a ``torch.distributed`` process group already exists (DLPack views of
      the arrays go through it: NCCL for GPU models, gloo for CPU ones);
    - ``"mpi"`` (mpi4py, ``MPI.COMM_WORLD``) for a CPU model, or ``"nccl"`` (CuPy's NCCL,
      bootstrapped over MPI) for a GPU model, when an MPI launcher started this process as one
      of several (``mpiexec -n 4 python train.py``);
    - ``"torch"`` when ``torchrun`` did (the group is started from its environment variables);
    - ``"local"``, a single process: every collective is the identity.

    Naming a backend forces it (``"mpi"`` in a lone process is a world of one; ``"nccl"`` in a
    lone process runs NCCL on one GPU). With the NCCL backend each process takes the GPU
    ``local_rank % device count`` and makes it CuPy's current device (:func:`device` names it:
    move the model there). With more than one process, an exception that nothing catches ends
    every rank (:func:`abort`) after its traceback is printed.

    Calling it again returns the same backend (``backend`` "auto" or its name, and the same
    kind of ``device``); anything else is a ``RuntimeError``. (horovod.init,
    torch.distributed.init_process_group)
    """
    global _current, _exit_registered
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda' (where the model lives), got {device!r}")
    if _current is not None:
        if backend in ("auto", _current.name) and _current.device.startswith(device):
            return _current
        raise RuntimeError(f"fastnn.distributed is already initialised with {_current.describe()} on "
                           f"{_current.device}; it cannot switch to backend={backend!r}, device={device!r} "
                           "(shutdown() first)")
    chosen = _choose(backend, device)
    if chosen == "mpi" and device == "cuda":
        raise ValueError("backend 'mpi' reduces CPU arrays; a GPU model needs 'nccl' or 'torch'")
    if chosen == "nccl" and device == "cpu":
        raise ValueError("backend 'nccl' reduces GPU arrays; a CPU model needs 'mpi' (or a gloo torch group)")
    if chosen == "local":
        _current = LocalBackend(device)
    elif chosen == "mpi":
        _current = MPIBackend()
    elif chosen == "nccl":
        _current = NCCLBackend()
    else:
        _current = TorchBackend(device)
    if _current.world_size > 1:
        _install_excepthook()
    if not _exit_registered:
        atexit.register(shutdown)
        _exit_registered = True
    return _current


def is_initialized() -> bool:
    """Whether :func:`init` has run (and :func:`shutdown` has not)."""
    return _current is not None


def current() -> Backend:
    """The backend :func:`init` chose; a ``RuntimeError`` before it."""
    if _current is None:
        raise RuntimeError("fastnn.distributed is not initialised: call fastnn.distributed.init() first")
    return _current


def rank() -> int:
    """This process's rank, 0 ... world_size() - 1 (rank 0 writes files and prints)."""
    return current().rank


def world_size() -> int:
    """The number of processes training together."""
    return current().world_size


def local_rank() -> int:
    """This process's index among the job's processes on its machine."""
    return current().local_rank


def device() -> str:
    """Where this process's model goes: ``"cpu"``, or ``"cuda:N"`` (its own GPU) with the
    NCCL and torch-NCCL backends: ``model.to(fastnn.distributed.device())``."""
    return current().device


def abort(code: int = 1) -> None:
    """End every process of the job now (MPI_Abort under MPI), with exit status ``code``: what
    a rank that cannot go on must do, since the others would wait for it in their next
    collective forever. A single process just exits; several wait a second first, so that the
    launcher forwards what this one printed before the job ends."""
    sys.stdout.flush()
    sys.stderr.flush()
    if _current is None:
        sys.exit(code)
    if _current.world_size > 1:
        time.sleep(_OUTPUT_GRACE_S)
    _current.abort(code)


@contextlib.contextmanager
def abort_on_error():
    """A block in which any exception, on a job of several processes, is printed and ends every
    rank (:func:`abort`); a single process sees the exception as usual. For code that would
    otherwise turn the error into an exit status that leaves the other ranks waiting (a
    command line's error handling)."""
    try:
        yield
    except BaseException as exc:
        if _current is None or _current.world_size == 1 or (isinstance(exc, SystemExit) and not exc.code):
            raise
        traceback.print_exc()
        print(_failure_line(exc), file=sys.stderr)
        abort(1)


def _failure_line(exc: BaseException) -> str:
    return (f"fastnn.distributed: rank {_current.rank} of {_current.world_size} failed ({type(exc).__name__}); "
            "ending every rank")


def _abort_on_uncaught(kind, value, tb) -> None:
    """sys.excepthook while several processes train: the traceback, then every rank ends."""
    _previous_excepthook(kind, value, tb)
    if _current is not None and _current.world_size > 1:
        print(_failure_line(value), file=sys.stderr)
        abort(1)


def _install_excepthook() -> None:
    global _previous_excepthook
    if sys.excepthook is not _abort_on_uncaught:
        _previous_excepthook = sys.excepthook
        sys.excepthook = _abort_on_uncaught


def shutdown() -> None:
    """Leave the job: release the backend's communicators (a process group the torch backend
    started is destroyed) and restore ``sys.excepthook``; it runs by itself when Python
    exits (MPI itself is finalised then too). :func:`init` may run again afterwards."""
    global _current
    if _current is None:
        return
    backend, _current = _current, None
    if sys.excepthook is _abort_on_uncaught:
        sys.excepthook = _previous_excepthook
    backend.close()
