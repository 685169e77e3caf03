"""One data-parallel training run, started by tests/test_distributed.py under ``mpiexec -n N``
(or ``torchrun``): every rank trains ``dist_util``'s model with ``Trainer(distributed=True)``
and writes what it ended with to ``<out>/rank<r>.npz`` (parameters and buffers) and
``<out>/rank<r>.json`` (History, stop reason, backend).

    python dist_worker.py OUT [--dtype float64] [--epochs 3] [--batch 8] [--samples 100]
        [--batchnorm] [--resume CKPT [--resume-on root|all]] [--checkpoint CKPT]
        [--fail-rank R] [--stop-rank R] [--validation-split F] [--uneven] [--backend auto]

The ranks other than 0 scramble their initial weights first: ``fit`` must start from rank 0's.
``--fail-rank R`` makes rank R raise in the middle of the first epoch (the others are then
waiting in a collective); ``--stop-rank R`` makes rank R alone request a stop after its second
batch; ``--uneven`` gives the ranks other than 0 four samples fewer.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

import fastnn as fnn
from fastnn.callbacks import Callback, ModelCheckpoint

from dist_util import build, parameters, problem, trainer


class FailOn(Callback):
    """Rank ``rank`` raises before its third optimizer step."""

    def __init__(self, rank):
        self.rank = rank

    def on_before_step(self, batch, logs):
        if fnn.distributed.rank() == self.rank and batch == 2:
            raise RuntimeError(f"rank {self.rank} fails on purpose")


class StopOn(Callback):
    """Rank ``rank`` alone asks to stop after its second batch."""

    def __init__(self, rank):
        self.rank = rank

    def on_batch_end(self, batch, logs):
        if fnn.distributed.rank() == self.rank and batch == 1:
            self.trainer.request_stop(f"StopOn: rank {self.rank} asked")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--dtype", default="float64")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--batchnorm", action="store_true")
    parser.add_argument("--resume")
    parser.add_argument("--resume-on", choices=["root", "all"], default="root")
    parser.add_argument("--checkpoint")
    parser.add_argument("--fail-rank", type=int)
    parser.add_argument("--stop-rank", type=int)
    parser.add_argument("--validation-split", type=float, default=0.2)
    parser.add_argument("--uneven", action="store_true")
    parser.add_argument("--backend", default="auto")
    args = parser.parse_args()

    backend = fnn.distributed.init(args.backend)
    rank = backend.rank
    X, y = problem(args.dtype, args.samples - (4 if args.uneven and rank != 0 else 0))
    model = build(args.dtype, batchnorm=args.batchnorm)
    if rank != 0:
        for p in model.parameters():
            p.data[...] = np.random.default_rng(rank).standard_normal(p.shape)
    callbacks = [ModelCheckpoint(args.checkpoint)] if args.checkpoint else []
    callbacks += [FailOn(args.fail_rank)] if args.fail_rank is not None else []
    callbacks += [StopOn(args.stop_rank)] if args.stop_rank is not None else []
    run = trainer(model, distributed=True, callbacks=callbacks)
    if args.resume and (rank == 0 or args.resume_on == "all"):
        extras = fnn.load(args.resume, model=model, optimizer=run.optimizer)
        run.load_state_dict(extras["trainer"])
    history = run.fit(X, y, epochs=args.epochs, batch_size=args.batch, validation_split=args.validation_split,
                      verbose=0)
    np.savez(os.path.join(args.out, f"rank{rank}.npz"), **parameters(model))
    with open(os.path.join(args.out, f"rank{rank}.json"), "w") as f:
        json.dump({"history": history.history, "stop_reason": history.stop_reason, "epoch": run.epoch,
                   "params": history.params, "backend": backend.describe(), "world_size": backend.world_size}, f)


if __name__ == "__main__":
    main()
