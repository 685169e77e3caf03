"""Collectives over the job's processes: sums of arrays, and what rank 0 holds sent to every
rank (a model's parameters and buffers, an optimizer's state, any checkpoint-like value).

Every function here is collective: all ranks call it, in the same order, or the job waits.
"""

from __future__ import annotations

import json

import numpy as np

from ..checkpoint import _decode, _Encoder
from .world import current

__all__ = ["allreduce", "broadcast", "broadcast_parameters", "broadcast_optimizer_state", "broadcast_object",
           "host_sum", "agree"]


def allreduce(a, *, average: bool = False):
    """a = the sum of ``a`` over the ranks (``average=True``: divided by the world size), in
    place, on the model's device (NumPy under MPI, CuPy under NCCL); returns ``a``.
    (horovod.allreduce, torch.distributed.all_reduce)"""
    backend = current()
    a = backend.check_device_array(a, "allreduce: a")
    if np.dtype(a.dtype).kind not in "fiu":
        raise TypeError(f"allreduce: a must hold numbers, got dtype {np.dtype(a.dtype)}")
    backend.device_allreduce(a)
    if average:
        a /= backend.world_size
    return a


def broadcast(a, root: int = 0):
    """a = rank ``root``'s ``a`` on every rank, in place; returns ``a``."""
    backend = current()
    a = backend.check_device_array(a, "broadcast: a")
    backend.device_broadcast(a, _root(root, backend.world_size))
    return a


def _root(root, world: int) -> int:
    if isinstance(root, bool) or not isinstance(root, (int, np.integer)) or not 0 <= root < world:
        raise ValueError(f"root must be a rank in [0, {world}), got {root!r}")
    return int(root)


def broadcast_parameters(model, root: int = 0) -> None:
    """Give every rank rank ``root``'s parameters and buffers (BatchNorm's running statistics),
    in place: what makes the replicas start identical, whatever each initialised. ``model``:
    a ``fastnn.nn.Module``. Every rank's model must have the same parameter names, shapes
    and dtypes (checked: a ``ValueError`` on every rank, naming the differences, before
    anything moves). (horovod.broadcast_parameters)"""
    backend = current()
    root = _root(root, backend.world_size)
    arrays = {name: p.data for name, p in model.named_parameters()}
    arrays.update(model.named_buffers())
    spec = {name: [list(a.shape), np.dtype(a.dtype).str] for name, a in arrays.items()}
    theirs = broadcast_object(spec, root)
    differing = agree(theirs != spec)
    if differing:
        raise ValueError(f"broadcast_parameters: the models of ranks {differing} differ from rank {root}'s (parameter "
                         "names, shapes or dtypes); every rank must build the same model")
    for name, a in arrays.items():
        backend.device_broadcast(backend.check_device_array(a, name), root)


def broadcast_optimizer_state(optimizer, root: int = 0) -> None:
    """Load rank ``root``'s optimizer state (``state_dict()``: moments, step counts,
    hyperparameters of every group) into the optimizer of every other rank: what resuming from
    a checkpoint that only rank 0 read needs. (horovod.broadcast_optimizer_state)"""
    state = broadcast_object(optimizer.state_dict(), root)
    if current().rank != root:
        optimizer.load_state_dict(state)


def broadcast_object(value, root: int = 0):
    """Rank ``root``'s ``value`` on every rank: anything :func:`fastnn.save` can store (numbers,
    strings, None, lists, tuples, dicts, arrays, objects with ``state_dict()``, stored as their
    state dict), sent as the checkpoint format's JSON manifest plus the raw arrays (no pickle).
    Arrays come back as NumPy arrays, tuples as tuples. The other ranks' ``value`` is unused."""
    backend = current()
    root = _root(root, backend.world_size)
    encoder = _Encoder()
    manifest = b""
    if backend.rank == root:
        tree = encoder.tree(value, "value")
        specs = [[list(a.shape), a.dtype.str] for _, a in encoder.arrays]
        manifest = json.dumps({"tree": tree, "arrays": specs}).encode("utf-8")
    size = np.array([len(manifest)], np.int64)
    backend.host_broadcast(size, root)
    data = np.frombuffer(manifest, np.uint8).copy() if backend.rank == root else np.empty(int(size[0]), np.uint8)
    backend.host_broadcast(data, root)
    received = json.loads(data.tobytes().decode("utf-8"))
    if backend.rank == root:
        arrays = [a for _, a in encoder.arrays]
    else:
        arrays = [np.empty(shape, np.dtype(dtype)) for shape, dtype in received["arrays"]]
    for a in arrays:
        if a.size:
            backend.host_broadcast(a.reshape(-1).view(np.uint8), root)
    return _decode(received["tree"], arrays, "broadcast_object")


def host_sum(values) -> np.ndarray:
    """The sum over the ranks of a host vector of numbers (a new float64 array)."""
    total = np.array(values, dtype=np.float64).reshape(-1)
    current().host_allreduce(total)
    return total


def agree(flag: bool) -> list[int]:
    """The ranks whose ``flag`` is true (every rank gets the same list): one host allreduce of
    a vector with a slot per rank."""
    backend = current()
    flags = np.zeros(backend.world_size, np.float64)
    flags[backend.rank] = 1.0 if flag else 0.0
    backend.host_allreduce(flags)
    return [int(r) for r in np.flatnonzero(flags)]
