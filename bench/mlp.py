"""MLP benchmark: one full training step (forward, loss, backward, Adam) of the same network,
fastnn against PyTorch (eager and, on a GPU, as a CUDA graph), fastnn's reference path and a
hand-written NumPy step. See fastnn/benchmarks/mlp.py; `python bench/mlp.py --help`."""

import sys

from fastnn.benchmarks.mlp import main

if __name__ == "__main__":
    sys.exit(main())
