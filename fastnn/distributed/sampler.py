"""Sharding the data over the ranks: each rank's mini-batches of every epoch
(:class:`DistributedBatches`, for training) and each rank's contiguous slice of a data set
(:func:`shard_range`, for evaluation)."""

from __future__ import annotations

from typing import Iterator

import numpy as np

from ..data import _num_samples, _take, as_generator
from .world import current

__all__ = ["DistributedBatches", "batches", "shard_range"]


def _place(rank, world_size) -> tuple[int, int]:
    """(rank, world size): the given ones, else the initialised backend's."""
    if rank is None and world_size is None:
        backend = current()
        return backend.rank, backend.world_size
    if rank is None or world_size is None:
        raise ValueError("give both rank and world_size, or neither (then the initialised backend's are used)")
    for value, name in ((world_size, "world_size"), (rank, "rank")):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size) and world_size >= 1, got rank={rank}, world_size={world_size}")
    return int(rank), int(world_size)


class DistributedBatches:
    """This rank's mini-batches of ``X`` (and ``y``), re-iterable: every ``for`` loop is one
    epoch, and every rank takes the same number of steps with batches of the same size.

    Each epoch draws one order of the N samples (``seed``, as :class:`fastnn.data.Batches`:
    ranks whose generators are in the same state draw the same order). The order is then
    padded by repeating its first samples (``pad=True``, the default: every sample is seen
    every epoch, at most ``world_size - 1`` of them twice) or cut (``pad=False``: at most
    ``world_size - 1`` left out, different ones every epoch) to M samples, a multiple of
    ``world_size``. It is cut into global batches of ``batch_size * world_size`` samples (the
    last one shorter, dropped with ``drop_last``), and each global batch is split in rank
    order into ``world_size`` equal parts: this rank trains on part ``rank``. So step k's
    global batch, the ranks' batches concatenated in rank order, is exactly the batch one
    process would take with ``batch_size * world_size`` and the same seed (when N is a
    multiple of ``world_size``).

    ``rank`` and ``world_size`` default to the initialised backend's. ``len()`` is the number
    of steps per epoch, ``num_samples`` N, ``samples_per_rank`` M / world_size. Yields ``Xb``
    or ``(Xb, yb)`` with ``Xb`` (batch_size, ...) on X's device.
    (torch.utils.data.DistributedSampler, which strides the ranks through the order instead)
    """

    def __init__(self, X, y=None, batch_size: int = 32, shuffle: bool = True, seed=None, drop_last: bool = False, *,
                 pad: bool = True, rank: int | None = None, world_size: int | None = None):
        self.num_samples = _num_samples({"X": X, "y": y})
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.rank, self.world_size = _place(rank, world_size)
        self.pad, self.shuffle, self.drop_last = bool(pad), bool(shuffle), bool(drop_last)
        self.batch_size = int(batch_size)
        w, n = self.world_size, self.num_samples
        self.total = -(-n // w) * w if self.pad else n // w * w
        if self.total == 0:
            raise ValueError(f"pad=False with {n} samples over {w} ranks leaves no sample for any rank")
        if self.drop_last and self.total < self.batch_size * w:
            raise ValueError(f"drop_last=True with batch_size={batch_size} on {w} ranks ({self.batch_size * w} samples "
                             f"per step) > {self.total} samples would yield no batch at all")
        self.samples_per_rank = self.total // w
        self.X, self.y = X, y
        self.rng = as_generator(seed)

    def __len__(self) -> int:
        step = self.batch_size * self.world_size
        return self.total // step if self.drop_last else -(-self.total // step)

    def indices(self) -> Iterator[np.ndarray]:
        """One epoch of this rank's batches as host index arrays (draws the epoch's order)."""
        order = self.rng.permutation(self.num_samples) if self.shuffle else np.arange(self.num_samples)
        order = np.resize(order, self.total)  # pads by repeating from the start, or cuts
        step = self.batch_size * self.world_size
        for start in range(0, len(self) * step, step):
            chunk = order[start:start + step]
            part = len(chunk) // self.world_size
            yield chunk[self.rank * part:(self.rank + 1) * part]

    def __iter__(self) -> Iterator:
        for index in self.indices():
            yield _take(self.X, index) if self.y is None else (_take(self.X, index), _take(self.y, index))


def batches(X, y=None, batch_size: int = 32, shuffle: bool = True, seed=None, drop_last: bool = False, *,
            pad: bool = True, rank: int | None = None, world_size: int | None = None) -> DistributedBatches:
    """This rank's mini-batches of ``X`` (and ``y``): a re-iterable :class:`DistributedBatches`,
    the data-parallel counterpart of :func:`fastnn.data.batches` (``batch_size`` per rank)."""
    return DistributedBatches(X, y, batch_size=batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last, pad=pad,
                              rank=rank, world_size=world_size)


def shard_range(n: int, rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(start, stop) of this rank's contiguous share of n samples: sizes differ by at most one,
    nothing is padded or dropped, and the ranks' slices in rank order tile [0, n). For
    evaluation, where the sums over the slices are added up exactly."""
    rank, world_size = _place(rank, world_size)
    return n * rank // world_size, n * (rank + 1) // world_size
