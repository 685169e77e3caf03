"""Optimizer benchmark: fastnn's fused optimizers against the reference path, PyTorch's
foreach and fused optimizers and (on a GPU) CuPy elementwise kernels. See
fastnn/benchmarks/optim.py; `python bench/optim.py --help`."""

import sys

from fastnn.benchmarks.optim import main

if __name__ == "__main__":
    sys.exit(main())
