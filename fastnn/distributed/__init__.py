"""Data-parallel training over several processes: MPI (mpi4py) for CPU models, NCCL (CuPy) for
GPU models, or an existing ``torch.distributed`` process group.

Every process holds the whole model and trains on its share of each global batch; after each
backward the gradients are averaged over the processes, so every replica takes the same
optimizer step and stays identical::

    mpiexec -n 4 python train.py                     # or: mpirun -n 4 fastnn train ...

    # train.py: the trainer does all of it
    trainer = fnn.train.Trainer(model, loss, opt, distributed=True)   # joins the job
    trainer.fit(X, y, batch_size=64)                 # 64 per process: 256 per step

    # or by hand, in a loop of your own
    fnn.distributed.init()                           # "auto": says which backend in .describe()
    fnn.distributed.broadcast_parameters(model)      # rank 0's weights everywhere
    reducer = fnn.distributed.GradientReducer(model)
    for xb, yb in fnn.distributed.batches(X, y, batch_size=64, seed=0):
        opt.zero_grad()
        loss_fn.forward(model.forward(xb), yb)
        model.backward(loss_fn.backward())           # buckets start reducing as layers finish
        reducer.synchronize()                        # p.grad = mean over the processes
        opt.step()

- :mod:`.world`: :func:`init` (which backend), :func:`rank`, :func:`world_size`,
  :func:`local_rank`, :func:`device`, :func:`launched`; :func:`abort` and the exception hook
  that ends every rank when one fails.
- :mod:`.backends`: the transports (MPI, NCCL through CuPy, torch.distributed, local).
- :mod:`.collectives`: :func:`allreduce`, :func:`broadcast`, :func:`broadcast_parameters`,
  :func:`broadcast_optimizer_state`, :func:`broadcast_object`.
- :mod:`.reducer`: :class:`GradientReducer`, the bucketed gradient averaging.
- :mod:`.sampler`: :class:`DistributedBatches` / :func:`batches`, each rank's share of every
  epoch, and :func:`shard_range` for evaluation.
- :mod:`.trainer_sync`: what ``Trainer(distributed=True)`` does differently.

Nothing here imports mpi4py, CuPy or PyTorch before :func:`init` asks for them.
"""

from .backends import Backend
from .collectives import (allreduce, broadcast, broadcast_object, broadcast_optimizer_state,
                          broadcast_parameters)
from .reducer import BUCKET_BYTES, FIRST_BUCKET_BYTES, GradientReducer
from .sampler import DistributedBatches, batches, shard_range
from .world import (abort, abort_on_error, current, device, init, is_initialized, launched, local_rank, rank,
                    shutdown, world_size)

__all__ = ["init", "is_initialized", "current", "rank", "world_size", "local_rank", "device", "launched", "abort",
           "abort_on_error", "shutdown", "Backend", "allreduce", "broadcast", "broadcast_parameters",
           "broadcast_optimizer_state", "broadcast_object", "GradientReducer", "BUCKET_BYTES",
           "FIRST_BUCKET_BYTES", "DistributedBatches", "batches", "shard_range"]
