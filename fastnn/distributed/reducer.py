"""``GradientReducer``: the gradients averaged over the ranks, in flat buckets, each bucket's
allreduce started as soon as backward has completed its gradients.

After ``model.backward(...)`` and :meth:`GradientReducer.synchronize`, every rank holds

    p.grad = (sum over ranks r of p.grad_r) / world_size

for every parameter: the gradient of the mean of the ranks' losses, which is the gradient of
the loss over the global batch when each rank's loss is the mean over an equal share of it.
Optimizers then take identical steps on identical parameters everywhere.

Buckets (Horovod's fusion buffer, PyTorch DDP's gradient buckets): the parameters in reverse
order (the order backward completes them), packed into flat buffers of one dtype and device
up to ``bucket_bytes`` (:data:`BUCKET_BYTES`, 25 MiB, DDP's default; the first bucket is
capped at :data:`FIRST_BUCKET_BYTES`, 1 MiB, so that communication starts early; a parameter
larger than the cap gets a bucket of its own). One allreduce per bucket instead of one per
parameter: a few large messages go at the network's bandwidth, many small ones at its
latency. A ``Sequential`` tells the reducer, through its ``grads_ready_hook``, which
gradients each layer's backward has just completed; a bucket whose gradients are all complete
is copied in and its allreduce started (buckets start strictly in order, so every rank issues
the same collectives in the same order whatever its timing), and the transport works on it
while the layers below compute. Other models reduce every bucket in ``synchronize``.
"""

from __future__ import annotations

import contextlib

import numpy as np

from .. import _backend as B
from .world import current

__all__ = ["GradientReducer", "BUCKET_BYTES", "FIRST_BUCKET_BYTES"]

BUCKET_BYTES = 25 * 2**20
FIRST_BUCKET_BYTES = 2**20


class _Bucket:
    """Parameters reduced together through one flat buffer."""

    def __init__(self, params: list):
        self.params = params
        self.offsets = np.cumsum([0] + [p.size for p in params]).tolist()
        like = params[0].grad
        self.buffer = B.empty((self.offsets[-1],), like)
        self.missing = len(params)
        self.pending = None

    @property
    def nbytes(self) -> int:
        return self.buffer.nbytes

    def pack(self) -> None:
        xp = B.array_module(self.buffer)
        for p, start, stop in zip(self.params, self.offsets, self.offsets[1:]):
            xp.copyto(self.buffer[start:stop], p.grad.reshape(-1))

    def unpack(self, world_size: int) -> None:
        """p.grad = its slice of the summed buffer / world_size."""
        xp = B.array_module(self.buffer)
        for p, start, stop in zip(self.params, self.offsets, self.offsets[1:]):
            xp.divide(self.buffer[start:stop].reshape(p.grad.shape), world_size, out=p.grad)


class GradientReducer:
    """Averages the gradients of ``model``'s parameters over the ranks (see the module's
    docstring); ``model`` a ``fastnn.nn.Module`` (a ``Sequential`` overlaps the reduction with
    its backward, through its ``grads_ready_hook``, which the reducer sets).

    Use::

        reducer = fnn.distributed.GradientReducer(model)
        ...
        model.backward(loss_fn.backward())
        reducer.synchronize()        # every rank now holds the averaged gradients
        opt.step()

    ``synchronize`` must follow each backward (a second backward before it is a
    ``RuntimeError``); gradients accumulated over several backward passes are reduced once
    with ``with reducer.no_sync(): model.backward(...)`` for all but the last. The parameters'
    ``grad`` arrays are read at every step (``model.to`` may replace them); the buckets are
    rebuilt when their device or dtype changes. ``bytes_per_step``: the bytes each rank hands
    to the allreduce per step (the ring algorithm sends and receives 2 (N - 1) / N of it).
    ``close()`` removes the hook. With the local backend (one process without a transport)
    nothing is copied or sent; a world of one under MPI or NCCL goes through every motion.
    (horovod.DistributedOptimizer, torch.nn.parallel.DistributedDataParallel)
    """

    def __init__(self, model, *, bucket_bytes: int = BUCKET_BYTES, first_bucket_bytes: int = FIRST_BUCKET_BYTES):
        from ..nn.containers import Sequential
        from ..nn.module import Module

        if not isinstance(model, Module):
            raise TypeError(f"GradientReducer: model must be a fastnn.nn.Module, got {type(model).__name__}")
        for value, name in ((bucket_bytes, "bucket_bytes"), (first_bucket_bytes, "first_bucket_bytes")):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"GradientReducer: {name} must be a positive int, got {value!r}")
        self.backend = current()
        self.model = model
        self.params = [p for p in model.parameters() if p.size]
        self.bucket_bytes, self.first_bucket_bytes = int(bucket_bytes), int(first_bucket_bytes)
        self._sync = True
        self._layout = None
        self.buckets: list[_Bucket] = []
        self._bucket_of: dict[int, _Bucket] = {}
        self._next = 0  # the first bucket not yet started
        self._started = False  # a backward has reported gradients since the last synchronize
        self._ready: set[int] = set()  # ids of the parameters reported since then
        self._hooked = isinstance(model, Sequential) and self.backend.name != "local"
        if self._hooked:
            if model.grads_ready_hook is not None:
                raise RuntimeError("GradientReducer: the model already has a grads_ready_hook (another reducer?); "
                                   "close() that one first")
            model.grads_ready_hook = self._grads_ready

    @property
    def bytes_per_step(self) -> int:
        return sum(p.size * p.dtype.itemsize for p in self.params)

    def _build(self) -> None:
        """(Re)make the buckets for the gradients' current devices and dtypes."""
        layout = [(str(B.device_of(p.grad)), p.dtype) for p in self.params]
        if layout == self._layout:
            return
        self._layout = layout
        groups: dict = {}
        for p, key in zip(reversed(self.params), reversed(layout)):
            groups.setdefault(key, []).append(p)
        self.buckets = []
        for params in groups.values():
            current_, size = [], 0
            for p in params:
                cap = self.first_bucket_bytes if not self.buckets else self.bucket_bytes
                nbytes = p.size * p.dtype.itemsize
                if current_ and size + nbytes > cap:
                    self.buckets.append(_Bucket(current_))
                    current_, size = [], 0
                current_.append(p)
                size += nbytes
            if current_:
                self.buckets.append(_Bucket(current_))
        self._bucket_of = {id(p): bucket for bucket in self.buckets for p in bucket.params}

    def _start(self, bucket: _Bucket) -> None:
        bucket.pack()
        bucket.pending = self.backend.device_allreduce_start(bucket.buffer)

    def _grads_ready(self, params) -> None:
        """The model's hook: ``params``' gradients are complete."""
        if not self._sync:
            return
        if not self._started:
            self._build()
            self._started = True
        for p in params:
            bucket = self._bucket_of.get(id(p))
            if bucket is None:
                continue
            if id(p) in self._ready:
                raise RuntimeError("GradientReducer: backward ran again before synchronize(); call synchronize() "
                                   "after every backward, or accumulate under reducer.no_sync()")
            self._ready.add(id(p))
            bucket.missing -= 1
        while self._next < len(self.buckets) and self.buckets[self._next].missing == 0:
            self._start(self.buckets[self._next])
            self._next += 1
        for bucket in self.buckets[:self._next]:
            bucket.pending.test()  # lets MPI move the started ones on

    def synchronize(self) -> None:
        """Finish every bucket's allreduce (starting those backward has not) and write the
        averages into the gradients: afterwards ``p.grad`` is the same on every rank."""
        if self.backend.name == "local":
            return
        if not self._started:
            self._build()
        for bucket in self.buckets[self._next:]:
            self._start(bucket)
        for bucket in self.buckets:
            bucket.pending.wait()
            bucket.unpack(self.backend.world_size)
            bucket.pending, bucket.missing = None, len(bucket.params)
        self._next, self._started = 0, False
        self._ready.clear()

    @contextlib.contextmanager
    def no_sync(self):
        """Backward passes inside only accumulate local gradients (no reduction starts); the
        next backward outside, then :meth:`synchronize`, reduces the accumulated sums."""
        previous, self._sync = self._sync, False
        try:
            yield
        finally:
            self._sync = previous

    def close(self) -> None:
        """Remove the hook from the model."""
        if self._hooked and self.model.grads_ready_hook == self._grads_ready:
            self.model.grads_ready_hook = None
        self._hooked = False
