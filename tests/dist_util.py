"""Shared pieces of the data-parallel tests: the problem and model both sides train (the MPI
ranks in ``dist_worker.py`` and the single process in the test), and launching ranks.

Launching: ``mpiexec`` is resolved to its real path (MPICH's hydra looks for its proxy beside
the binary it was started as, and a symlinked ``mpiexec`` elsewhere leaves it hanging); the
ranks get one OpenMP thread each (two ranks share the machine's cores) and settings that let
MPICH and Open MPI start anywhere (fork launcher, root allowed, oversubscription); if
mpi4py cannot find an MPI library by itself (a virtual environment that only sees another
one's packages), the ranks are pointed at the library installed beside ``mpiexec``. Every
launch runs in its own process group, killed whole on timeout, so a hang fails the test
instead of the suite.
"""

from __future__ import annotations

import functools
import glob
import os
import shutil
import signal
import subprocess
import sys

import numpy as np

import fastnn as fnn
from fastnn import nn

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "dist_worker.py")
SAMPLES, FEATURES, CLASSES = 100, 6, 3
LR = 1e-2


def problem(dtype, samples: int = SAMPLES):
    """(X (samples, FEATURES) of ``dtype``, integer labels), the same on every process."""
    rng = np.random.default_rng(7)
    X = rng.standard_normal((samples, FEATURES)).astype(dtype)
    y = rng.integers(0, CLASSES, samples)
    return X, y


def build(dtype, batchnorm: bool = False):
    """Dense-Tanh-Dense(-BatchNorm)-ReLU-Dense, seeded."""
    dtype = np.dtype(dtype)
    layers = [nn.Dense(FEATURES, 16, seed=1, dtype=dtype), nn.Tanh(), nn.Dense(16, 12, seed=2, dtype=dtype)]
    if batchnorm:
        layers.append(nn.BatchNorm(12, dtype=dtype))
    layers += [nn.ReLU(), nn.Dense(12, CLASSES, seed=3, dtype=dtype)]
    return nn.Sequential(*layers)


def trainer(model, *, distributed: bool = False, callbacks=()):
    """Adam on ``model`` with softmax cross-entropy, shuffling seeded."""
    return fnn.train.Trainer(model, nn.SoftmaxCrossEntropy(), fnn.optim.Adam(model.parameters(), lr=LR),
                             metrics=["accuracy"], callbacks=list(callbacks), seed=3, distributed=distributed)


def parameters(model) -> dict:
    """{name: host copy} of the parameters and buffers."""
    return {k: fnn._backend.to_numpy(v).copy() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------------------------
# Launching.


def launcher() -> str | None:
    found = shutil.which("mpiexec") or shutil.which("mpirun")
    return os.path.realpath(found) if found else None


def _environment(extra: dict | None = None) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", HYDRA_LAUNCHER="fork",
               OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1", PRTE_MCA_rmaps_default_mapping_policy=":oversubscribe")
    env.update(extra or {})
    return env


def run(command: list[str], timeout: float, env: dict | None = None, cwd: str | None = None):
    """(return code, stdout, stderr) of ``command`` in a process group of its own; the return
    code is None when it ran past ``timeout`` seconds (the whole group is then killed)."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=env, cwd=cwd or HERE, start_new_session=True)
    try:
        out, err = process.communicate(timeout=timeout)
        return process.returncode, out, err
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        return None, out, err


def _is_elf(path: str) -> bool:
    """A shared library, not the linker script some installs put under the plain .so name."""
    with open(path, "rb") as f:
        return f.read(4) == b"\x7fELF"


def _probe(env: dict):
    code = "from mpi4py import MPI; import sys; sys.exit(0 if MPI.COMM_WORLD.Get_size() == 2 else 3)"
    return run([launcher(), "-n", "2", sys.executable, "-c", code], timeout=60, env=env)


@functools.lru_cache(maxsize=None)
def mpi_setup() -> tuple[dict | None, str]:
    """(environment for the ranks, "") when ``mpiexec -n 2`` starts two mpi4py processes here,
    else (None, why not)."""
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return None, "mpi4py is not installed (pip install 'fastnn[mpi]')"
    if launcher() is None:
        return None, "no mpiexec or mpirun on PATH (pip install mpich)"
    env = _environment()
    code, _, err = _probe(env)
    if code != 0 and "cannot load MPI library" in err:
        libraries = [path for path in sorted(glob.glob(os.path.join(os.path.dirname(launcher()), "..", "lib",
                                                                    "libmpi.so*"))) if _is_elf(path)]
        if libraries:
            env = _environment({"MPI4PY_LIBMPI": os.path.realpath(libraries[0])})
            code, _, err = _probe(env)
    if code != 0:
        return None, f"MPI cannot start two processes here (mpiexec -n 2: {'timeout' if code is None else code}): " \
                     f"{err.strip()[-300:]}"
    return env, ""


def mpirun(ranks: int, args: list[str], timeout: float = 180, cwd: str | None = None):
    """``mpiexec -n ranks python args`` (args: a script and its arguments, or ``-m module ...``):
    (code, stdout, stderr), code None on timeout."""
    env, _ = mpi_setup()
    return run([launcher(), "-n", str(ranks), sys.executable, *args], timeout, env, cwd)
