"""What ``fastnn.train.Trainer(..., distributed=True)`` does differently, gathered in one object
the trainer calls at a few points (see :class:`TrainerSync`)."""

from __future__ import annotations

import numpy as np

from ..metrics import MetricSums, host_floats
from .collectives import agree, broadcast_object, broadcast_optimizer_state, broadcast_parameters, host_sum
from .reducer import GradientReducer
from .sampler import DistributedBatches, shard_range
from .world import init

__all__ = ["TrainerSync"]


class TrainerSync:
    """The data-parallel side of a ``Trainer``: joins the job (:func:`fastnn.distributed.init`,
    with the model's device kind) and, when the trainer asks,

    - :meth:`begin` (each ``fit``): checks that every rank runs the same fit (sample counts,
      batch size, epochs, options: a ``ValueError`` on every rank otherwise), then gives every
      rank rank 0's parameters and buffers, optimizer state and trainer state (epochs and steps
      done, generator, dropout counters, History), so a checkpoint that rank 0 alone loaded
      resumes everywhere; hooks a :class:`GradientReducer` into the model (:meth:`end` unhooks);
    - :meth:`batches`: this rank's share of every epoch (:class:`DistributedBatches`, padded);
    - :meth:`totals`: metric sums and sample counts added up over the ranks (the epoch's
      training metrics, validation and ``evaluate``), so every rank logs the same means;
    - :meth:`shard`: this rank's contiguous slice of an evaluation set;
    - :meth:`average_buffers`: BatchNorm's running statistics averaged over the ranks (each
      rank's come from its own batches) before validation, so every rank evaluates, and rank 0
      saves, the same model;
    - :meth:`agree_stop`: a stop requested on any rank stops every rank at the same point.
    """

    def __init__(self, model, optimizer):
        device = model.device or "cpu"
        self.backend = init(device="cuda" if device.startswith("cuda") else "cpu")
        self.model, self.optimizer = model, optimizer
        self.reducer: GradientReducer | None = None

    @property
    def rank(self) -> int:
        return self.backend.rank

    @property
    def world_size(self) -> int:
        return self.backend.world_size

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0 (the one that shows progress and writes checkpoints)."""
        return self.backend.rank == 0

    def begin(self, trainer, run: dict) -> None:
        """Collective start of a ``fit`` (see the class docstring); ``run``: what every rank must
        agree on (JSON values)."""
        self.end()  # a fit that failed before it began training left its reducer hooked
        theirs = broadcast_object(run)
        differing = [k for k in sorted(set(run) | set(theirs)) if run.get(k) != theirs.get(k)]
        ranks = agree(bool(differing))
        if ranks:
            here = "".join(f"; {k}={run.get(k)!r} here (rank {self.rank}), {theirs.get(k)!r} on rank 0"
                           for k in differing)
            raise ValueError(f"Trainer.fit(distributed=True): ranks {ranks} fit other data or settings than rank 0"
                             f"{here}; every rank must call fit with data of the same size and the same settings")
        broadcast_parameters(self.model)
        if callable(getattr(self.optimizer, "state_dict", None)):
            broadcast_optimizer_state(self.optimizer)
        state = broadcast_object(trainer.state_dict())
        if not self.is_main:
            trainer.load_state_dict(state)
        self.reducer = GradientReducer(self.model)

    def end(self) -> None:
        if self.reducer is not None:
            self.reducer.close()
            self.reducer = None

    def batches(self, X, y, *, batch_size: int, shuffle: bool, seed, drop_last: bool) -> DistributedBatches:
        return DistributedBatches(X, y, batch_size=batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last,
                                  rank=self.rank, world_size=self.world_size)

    def totals(self, sums: MetricSums, names) -> MetricSums:
        """``sums`` (this rank's) added up over the ranks, for ``names`` (absent ones count 0)."""
        names = list(names)
        local = host_floats({name: sums.sums.get(name, 0.0) for name in names})
        total = host_sum([sums.count] + [local[name] for name in names])
        out = MetricSums()
        out.count = int(total[0])
        out.sums = dict(zip(names, (float(v) for v in total[1:])))
        return out

    def shard(self, X, y):
        """This rank's rows of an evaluation set: contiguous, nothing repeated or left out."""
        start, stop = shard_range(X.shape[0], self.rank, self.world_size)
        return X[start:stop], y[start:stop]

    def average_buffers(self) -> None:
        """Every float buffer (BatchNorm's running mean and variance) = its mean over the ranks."""
        for _, buffer in self.model.named_buffers():
            if np.dtype(buffer.dtype).kind == "f":
                self.backend.device_allreduce(buffer)
                buffer /= self.world_size

    def agree_stop(self, trainer) -> None:
        """If any rank requested a stop, every rank stops (with the lowest such rank's reason)."""
        ranks = agree(trainer.stop_training)
        if not ranks:
            return
        reason = broadcast_object(trainer.stop_reason, root=ranks[0])
        if not trainer.stop_training:
            trainer.request_stop(f"{reason} (on rank {ranks[0]})")
