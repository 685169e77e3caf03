"""The CUDA multi-tensor launcher (csrc/cuda/multi_tensor.cuh) over many tensors: one call spans
the 4 KB parameter table (up to ~80 Adam tensors), the 32 KB one (CUDA 12.1+: ~700) and
several launches of it; tensors above a chunk (65536 elements), tiny ones, empty ones and
ones whose address is not 16-byte aligned. Every element must match the reference update.
(The launch configuration, occupancy-sized grids, has no host logic to check without a GPU;
ptxas' register counts are recorded in the launcher's header comment.)"""

from __future__ import annotations

import numpy as np
import pytest

import fastnn
from fastnn import optim
from fastnn.optim import functional as OF

pytestmark = pytest.mark.gpu


def _tensors(cupy, rng, count, dtype):
    """``count`` tensors of mixed sizes (every 97th above a chunk, some empty), every third one
    starting one element past a 16-byte boundary."""
    sizes = rng.integers(1, 300, count)
    sizes[::97] = 65536 + rng.integers(1, 5000, len(sizes[::97]))
    sizes[5::211] = 0
    out = []
    for k, n in enumerate(sizes):
        shift = 1 if k % 3 == 0 else 0
        base = cupy.asarray(rng.standard_normal(int(n) + shift).astype(dtype))
        out.append(base[shift:])
    return out


def _copies(lists):
    return [[a.copy() for a in lst] for lst in lists]


@pytest.mark.parametrize("count", [1, 80, 81, 700, 1600])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("amsgrad", [False, True])
def test_adam_over_many_tensors_matches_the_reference(rng, count, dtype, amsgrad):
    import cupy

    lists = [_tensors(cupy, rng, count, dtype)]
    rng2 = np.random.default_rng(int(rng.integers(2**31)))
    lists += [[cupy.asarray(rng2.standard_normal(a.size).astype(dtype)) for a in lists[0]] for _ in range(2)]
    lists += [[cupy.abs(cupy.asarray(rng2.standard_normal(a.size).astype(dtype))) for a in lists[0]]
              for _ in range(2 if amsgrad else 1)]
    expected = _copies(lists)
    hyper = dict(step=3, lr=1e-2, weight_decay=0.01, amsgrad=amsgrad)

    def run(ls):
        OF.adam_(ls[0], ls[1], ls[2], ls[3], max_exp_avg_sqs=ls[4] if amsgrad else None, **hyper)

    run(lists)
    with fastnn.use_backend("reference"):
        run(expected)
    tol = dict(rtol=2e-5, atol=2e-6) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-13)  # as test_optim
    for name, got, want in zip(["param", "grad", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"], lists, expected):
        for k, (a, b) in enumerate(zip(got, want)):
            np.testing.assert_allclose(cupy.asnumpy(a), cupy.asnumpy(b), err_msg=f"{name} {k}", **tol)


@pytest.mark.parametrize("count", [50, 900])
def test_sgd_momentum_over_many_tensors_matches_the_reference(rng, count):
    import cupy

    params = _tensors(cupy, rng, count, np.float32)
    grads = [cupy.asarray(rng.standard_normal(p.size).astype(np.float32)) for p in params]
    bufs = [cupy.asarray(rng.standard_normal(p.size).astype(np.float32)) for p in params]
    want = _copies([params, grads, bufs])
    OF.sgd_(params, grads, bufs, lr=0.1, momentum=0.9, nesterov=True)
    with fastnn.use_backend("reference"):
        OF.sgd_(*want, lr=0.1, momentum=0.9, nesterov=True)
    for got, exp in zip([params, bufs], [want[0], want[2]]):
        for a, b in zip(got, exp):
            np.testing.assert_allclose(cupy.asnumpy(a), cupy.asnumpy(b), rtol=2e-5, atol=2e-6)


def test_capturable_adam_over_many_tensors_counts_one_step_per_call(rng):
    # Several launches for one call must count the shared device step once.
    import cupy

    params = _tensors(cupy, rng, 1600, np.float32)
    twins = [p.copy() for p in params]
    grads = [cupy.asarray(rng.standard_normal(p.size).astype(np.float32)) for p in params]
    device, host = optim.Adam(params, lr=1e-2, capturable=True), optim.Adam(twins, lr=1e-2)
    for _ in range(3):
        device.step(grads)
        host.step(grads)
    assert device.state_dict()["state"][0]["step"] == 3
    for a, b in zip(params, twins):
        np.testing.assert_allclose(cupy.asnumpy(a), cupy.asnumpy(b), rtol=2e-5, atol=2e-6)
