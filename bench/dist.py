"""Data-parallel benchmark: samples/s of the MLP training step in one process and in two
(mpiexec -n 2), scaling efficiency, bytes per step, and a model on paper of N nodes. See
fastnn/benchmarks/dist.py; `python bench/dist.py --help`."""

import sys

from fastnn.benchmarks.dist import main

if __name__ == "__main__":
    sys.exit(main())
