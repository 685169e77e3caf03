"""Dropout: the Philox generator against its published known answers, every path against the
reference (bit for bit: the mask is a pure function of seed, counter and index), keep-rate
statistics, scaling, reproducibility, and bad input."""

import math

import numpy as np
import pytest

import fastnn
from fastnn import functional as F
from fastnn import reference as R
from fastnn._backend import to_numpy
from util import randn

DTYPES = [np.float32, np.float64]
# Odd sizes leave a partial Philox block; the last is above the CPU's OpenMP threshold.
SHAPES = [(1,), (3,), (5, 7), (2, 3, 5), (333, 301)]
KEYS = [(0, 0), (12345, 1), (2**64 - 1, 2**64 - 1), (0x0123456789ABCDEF, 2**32)]

# Random123's kat_vectors for philox4x32 10: counter words, key words, output words.
PHILOX_KAT = [
    ((0x00000000, 0x00000000, 0x00000000, 0x00000000), (0x00000000, 0x00000000),
     (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF),
     (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


def host(a):
    return to_numpy(a)


@pytest.mark.parametrize("counter,key,expected", PHILOX_KAT)
def test_reference_philox_known_answers(xp, counter, key, expected):
    words = R.philox4x32_10(counter, key, xp)
    assert [int(w) for w in words] == list(expected)


def test_kernel_words_match_known_answer(xp, path):
    # Elements 0..3 of stream (seed 0, counter 0) are Philox4x32-10 of an all-zero counter and
    # key. A word w is kept at p = w / 2^32 (u >= p) and dropped at p = (w + 1) / 2^32, which
    # pins every word down exactly through the public mask.
    for k, word in enumerate(PHILOX_KAT[0][2]):
        kept = F.dropout_mask(4, word / 2**32, seed=0, counter=0, xp=xp)
        dropped = F.dropout_mask(4, (word + 1) / 2**32, seed=0, counter=0, xp=xp)
        assert bool(kept[k]) and not bool(dropped[k]), f"word {k}"


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.97])
@pytest.mark.parametrize("seed,counter", KEYS)
def test_mask_matches_reference(xp, path, shape, p, seed, counter):
    mask = F.dropout_mask(shape, p, seed=seed, counter=counter, xp=xp)
    assert mask.dtype == bool and mask.shape == shape
    np.testing.assert_array_equal(host(mask), host(R.dropout_mask(shape, p, seed, counter, xp)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("p", [0.0, 0.25, 0.8])
def test_forward_backward_match_reference(xp, path, rng, dtype, shape, p):
    x = randn(xp, rng, shape, dtype)
    dy = randn(xp, rng, shape, dtype)
    seed, counter = 987654321, 42
    y = F.dropout_forward(x, p, seed=seed, counter=counter)
    assert y.dtype == dtype and y.shape == shape
    np.testing.assert_array_equal(host(y), host(R.dropout_forward(x, p, seed, counter)))
    dx = F.dropout_backward(dy, p, seed=seed, counter=counter)
    np.testing.assert_array_equal(host(dx), host(R.dropout_backward(dy, p, seed, counter)))
    # The backward applies the forward's mask and scale.
    keep = host(F.dropout_mask(shape, p, seed=seed, counter=counter, xp=xp))
    scale = dtype(1.0 / (1.0 - p))
    np.testing.assert_array_equal(host(dx), np.where(keep, host(dy) * scale, dtype(0)))
    np.testing.assert_array_equal(host(y), np.where(keep, host(x) * scale, dtype(0)))


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_rate_is_binomial(xp, path, p):
    n = 1_000_000
    keep = host(F.dropout_mask(n, p, seed=2024, counter=7, xp=xp))
    # Five standard deviations of Binomial(n, 1 - p): a correct generator fails this about once
    # in 1.7 million runs.
    sigma = math.sqrt(n * p * (1 - p))
    assert abs(int(keep.sum()) - n * (1 - p)) < 5 * sigma
    # Each of the four words of a Philox block is used, and none is biased.
    lanes = keep.reshape(-1, 4).sum(axis=0)
    assert np.all(np.abs(lanes - n / 4 * (1 - p)) < 5 * math.sqrt(n / 4 * p * (1 - p)))
    # Successive calls (counter + 1) are independent: they agree at rate p^2 + (1 - p)^2.
    other = host(F.dropout_mask(n, p, seed=2024, counter=8, xp=xp))
    agree = p * p + (1 - p) * (1 - p)
    assert abs(int((keep == other).sum()) - n * agree) < 5 * math.sqrt(n * agree * (1 - agree))


def test_scaling_preserves_the_mean(xp, path):
    n, p = 1_000_000, 0.3
    x = xp.ones(n, np.float64)
    y = host(F.dropout_forward(x, p, seed=1, counter=2))
    assert set(np.unique(y).tolist()) == {0.0, 1.0 / (1.0 - p)}
    # E[y] = 1; the standard error of the mean is sqrt(p / (1 - p) / n).
    assert abs(y.mean() - 1.0) < 5 * math.sqrt(p / (1 - p) / n)


def test_reproducible_and_keyed(xp, path):
    shape, p = (64, 100), 0.5
    a = host(F.dropout_mask(shape, p, seed=3, counter=10, xp=xp))
    np.testing.assert_array_equal(a, host(F.dropout_mask(shape, p, seed=3, counter=10, xp=xp)))
    for seed, counter in [(3, 11), (4, 10), (3 + 2**32, 10), (3, 10 + 2**32)]:
        b = host(F.dropout_mask(shape, p, seed=seed, counter=counter, xp=xp))
        assert (a != b).mean() > 0.4, (seed, counter)


def test_mask_is_independent_of_thread_count(rng):
    if not fastnn.backend_info()["native_cpu"]:
        pytest.skip("no native CPU kernels")
    from fastnn import _C

    x = rng.standard_normal(200_001).astype(np.float32)
    threads = _C.cpu.omp_threads()
    try:
        _C.cpu.set_omp_threads(1)
        one = F.dropout_forward(x, 0.4, seed=9, counter=9)
        _C.cpu.set_omp_threads(max(2, threads))
        many = F.dropout_forward(x, 0.4, seed=9, counter=9)
    finally:
        _C.cpu.set_omp_threads(threads)
    np.testing.assert_array_equal(one, many)


def test_p_zero_is_the_identity(xp, path, rng):
    x = randn(xp, rng, (33, 9), np.float32)
    x[0, 0] = np.nan
    y = F.dropout_forward(x, 0.0, seed=1, counter=1)
    assert y is not x
    np.testing.assert_array_equal(host(y), host(x))
    before = host(x).copy()
    assert F.dropout_forward(x, 0.0, seed=1, counter=1, out=x) is x
    np.testing.assert_array_equal(host(x), before)
    assert bool(host(F.dropout_mask((5, 5), 0.0, seed=1, counter=1, xp=xp)).all())


def test_out_in_place_and_nan(xp, path, rng):
    x = randn(xp, rng, (50, 41), np.float64)
    x[::7, ::3] = np.nan
    expected = host(R.dropout_forward(x, 0.6, 77, 5))
    assert F.dropout_forward(x, 0.6, seed=77, counter=5, out=x) is x
    np.testing.assert_array_equal(host(x), expected)  # NaN compares equal here; dropped NaN stays NaN
    keep = host(F.dropout_mask(x.shape, 0.6, seed=77, counter=5, xp=xp))
    assert np.isnan(host(x)[::7, ::3][~keep[::7, ::3]]).all()


def test_unaligned_views(xp, path, rng):
    # base[1:] is contiguous but off the 16-byte boundary the GPU's vector loads need.
    base = randn(xp, rng, (1030,), np.float32)
    out_base = xp.zeros(1030, np.float32)
    y = F.dropout_forward(base[1:], 0.5, seed=5, counter=6, out=out_base[1:])
    np.testing.assert_array_equal(host(y), host(R.dropout_forward(base[1:], 0.5, 5, 6)))
    assert float(out_base[0]) == 0.0


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_cpu_and_gpu_give_identical_results(rng, dtype):
    import cupy

    x = rng.standard_normal((1001, 517)).astype(dtype)
    for p in [0.2, 0.5]:
        cpu_mask = F.dropout_mask(x.shape, p, seed=31337, counter=12, xp=np)
        gpu_mask = F.dropout_mask(x.shape, p, seed=31337, counter=12, xp=cupy)
        np.testing.assert_array_equal(cpu_mask, gpu_mask.get())
        cpu = F.dropout_forward(x, p, seed=31337, counter=12)
        gpu = F.dropout_forward(cupy.asarray(x), p, seed=31337, counter=12)
        np.testing.assert_array_equal(cpu, gpu.get())


# ---- bad input --------------------------------------------------------------------------------


def test_rejects_bad_p(xp):
    x = xp.ones(4, np.float32)
    for p in [1.0, 1.5, -0.1]:
        with pytest.raises(ValueError, match=r"p must be"):
            F.dropout_forward(x, p, seed=0, counter=0)
    with pytest.raises(ValueError, match="p must be finite"):
        F.dropout_backward(x, float("nan"), seed=0, counter=0)
    with pytest.raises(TypeError, match="p must be a real number"):
        F.dropout_mask(4, "half", seed=0, counter=0, xp=xp)


def test_rejects_bad_seed_counter_and_shape(xp):
    x = xp.ones(4, np.float32)
    with pytest.raises(ValueError, match=r"seed must be in \[0, 2\*\*64\)"):
        F.dropout_forward(x, 0.5, seed=-1, counter=0)
    with pytest.raises(ValueError, match="counter must be in"):
        F.dropout_forward(x, 0.5, seed=0, counter=2**64)
    with pytest.raises(TypeError, match="seed must be an integer"):
        F.dropout_forward(x, 0.5, seed=1.5, counter=0)
    with pytest.raises(TypeError, match="counter must be an integer"):
        F.dropout_backward(x, 0.5, seed=0, counter=True)
    with pytest.raises(ValueError, match="shape must be non-negative integers"):
        F.dropout_mask((3, -1), 0.5, seed=0, counter=0, xp=xp)
    assert F.dropout_forward(x, 0.5, seed=np.uint64(2**64 - 1), counter=np.int32(3)).shape == (4,)


def test_rejects_bad_arrays(xp):
    with pytest.raises(TypeError, match="x: expected dtype float32 or float64, got int64"):
        F.dropout_forward(xp.arange(4), 0.5, seed=0, counter=0)
    with pytest.raises(TypeError, match="dy: expected dtype float32 or float64, got float16"):
        F.dropout_backward(xp.ones(4, xp.float16), 0.5, seed=0, counter=0)
    x = xp.ones((4, 6), np.float32)
    with pytest.raises(ValueError, match="out: expected shape"):
        F.dropout_forward(x, 0.5, seed=0, counter=0, out=xp.empty((6, 4), np.float32))
    with pytest.raises(TypeError, match="expected dtype float32"):
        F.dropout_forward(x, 0.5, seed=0, counter=0, out=xp.empty((4, 6), np.float64))
    with pytest.raises(ValueError, match="C-contiguous"):
        F.dropout_forward(x.T, 0.5, seed=0, counter=0)


@pytest.mark.gpu
def test_rejects_mixed_devices():
    import cupy

    with pytest.raises(ValueError, match="never copies between devices"):
        F.dropout_forward(cupy.ones(4, np.float32), 0.5, seed=0, counter=0, out=np.empty(4, np.float32))


def test_empty_arrays(xp, path):
    for shape in [(0,), (3, 0)]:
        x = xp.ones(shape, np.float32)
        assert F.dropout_forward(x, 0.5, seed=1, counter=1).shape == shape
        assert F.dropout_mask(shape, 0.5, seed=1, counter=1, xp=xp).shape == shape
