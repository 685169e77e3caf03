"""Low-bit optimizer state (state_dtype "bfloat16" and "int8"): the codes against their
definition and the reference bit for bit, the native steps against the reference (bit for bit
where the update's arithmetic rounds alike on both paths), the AVX512_BF16 and portable loops
against each other, each step's error against the float32-state step, state dicts and
checkpoints, the refusals, and training quality against float32 state."""

import copy

import numpy as np
import pytest

import fastnn
from fastnn import _backend, optim
from fastnn import reference as R
from fastnn._backend import to_numpy
from fastnn.optim import functional as F

native_cpu = pytest.mark.skipif(not _backend.native_available("cpu"), reason="no native CPU kernels")
BLOCK = F.QUANT_BLOCK


def wide_range(rng, n, decades=12):
    """Values of both signs spread over `decades` decades, some exact zeros."""
    x = rng.standard_normal(n) * 10.0 ** rng.uniform(-decades, 1, n)
    x[rng.random(n) < 0.03] = 0.0
    return x.astype(np.float32)


def code_table(signed):
    """The 256 code values, from the definition written out: (1 + m/8) 2^(e - bias), or
    (m/8) 2^(1 - bias) for e = 0, and the sign bit of the signed code."""
    bias = 15 if signed else 31
    values = []
    for c in range(256):
        m = c & (0x7F if signed else 0xFF)
        e, f = m >> 3, m & 7
        v = (1 + f / 8) * 2.0 ** (e - bias) if e else f / 8 * 2.0 ** (1 - bias)
        values.append(-v if signed and c & 0x80 else v)
    return np.array(values)


# ---------------------------------------------------------------------------------------------
# The int8 codes.


@pytest.mark.parametrize("signed", [True, False])
def test_code_values_are_the_8_bit_floats_written_out(signed):
    np.testing.assert_array_equal(R.optim._code_values(np, signed).astype(np.float64), code_table(signed))
    values = code_table(signed)
    assert values.max() == 1.875 and values[0] == 0.0
    # Each code decodes to its value and encodes back to itself (absmax 1.875: scale 1).
    codes = np.arange(256, dtype=np.uint8)
    if not signed:
        codes = codes[1:]  # (code 0 is 0, which keeps code 0; checked below)
    for c in codes:
        if signed and c == 0x80:
            continue  # -0
        x = np.zeros(BLOCK, np.float32)
        x[0], x[1] = 1.875, values[c]
        q, absmax = R.quantize_state(x, signed)
        assert absmax[0] == np.float32(1.875) and q[1] == c, (c, values[c], q[1])


@pytest.mark.parametrize("signed", [True, False])
def test_quantize_rounds_to_the_nearest_code_within_a_sixteenth(rng, signed):
    x = wide_range(rng, 40 * BLOCK, decades=6)
    if not signed:
        x = np.abs(x)
    codes, absmax = R.quantize_state(x, signed)
    back = R.dequantize_state(codes, absmax, signed).astype(np.float64)
    scale = np.repeat(absmax.astype(np.float64) / 1.875, BLOCK)[:x.size]
    y = x / scale
    values = code_table(signed)
    # Nearest code value (ties away from zero), from the table, in float64.
    order = np.argsort(values, kind="stable")
    nearest = values[order][np.abs(values[order][None, :] - y[:, None]).argmin(axis=1)]
    chosen = values[codes.astype(int)]
    normal = np.abs(y) >= 2.0 ** ((1 - 15) if signed else (1 - 31))
    assert (np.abs(chosen - y) <= np.abs(nearest - y) + 1e-12 * np.abs(y))[normal].all()
    # The documented bound: 1/16 of |x|, or half the smallest step near 0 (absmax / 1.875 times
    # 2^-18 signed, 2^-34 unsigned), plus float32 rounding of the scale.
    floor = scale * 2.0 ** (-18 if signed else -34)
    assert (np.abs(back - x) <= np.abs(x) / 16 * (1 + 1e-6) + floor * 1.01).all()
    if not signed:
        assert ((codes == 0) == (x == 0)).all()  # a positive value never becomes 0


def test_special_blocks():
    x = np.zeros(3 * BLOCK + 5, np.float32)
    x[BLOCK + 7] = np.inf  # block 1: not finite
    x[2 * BLOCK + 3] = 1e-40  # block 2: below 2^-126
    x[3 * BLOCK + 1] = -2.5  # the short last block
    for signed in (True, False):
        codes, absmax = R.quantize_state(x if signed else np.abs(x), signed)
        assert absmax[0] == 0 and np.isnan(absmax[1]) and absmax[2] == 0 and absmax[3] == 2.5
        assert (codes[:3 * BLOCK] == 0).all()
        back = R.dequantize_state(codes, absmax, signed)
        assert (back[:BLOCK] == 0).all() and np.isnan(back[BLOCK:2 * BLOCK]).all()
        assert back[3 * BLOCK + 1] == (-2.5 if signed else 2.5)


@native_cpu
@pytest.mark.parametrize("signed", [True, False])
def test_native_quantize_is_the_reference_bit_for_bit(xp, rng, signed):
    x = wide_range(rng, 37 * BLOCK + 19)
    x[5 * BLOCK:6 * BLOCK] *= 1e30
    x[7 * BLOCK + 2], x[9 * BLOCK] = np.nan, -np.inf
    if not signed:
        x = np.abs(x)
    q = F.quantize_state(xp.asarray(x), signed=signed)
    codes, absmax = R.quantize_state(x, signed)
    np.testing.assert_array_equal(to_numpy(q.codes), codes)
    np.testing.assert_array_equal(to_numpy(q.absmax), absmax)
    np.testing.assert_array_equal(to_numpy(F.dequantize_state(q, signed=signed)),
                                  R.dequantize_state(codes, absmax, signed))
    with fastnn.use_backend("reference"):
        r = F.quantize_state(xp.asarray(x), signed=signed)
    np.testing.assert_array_equal(to_numpy(r.codes), codes)


@native_cpu
def test_codes_ignore_the_callers_flush_to_zero_mode():
    """Subnormal codes pass through float32 subnormals; the kernels turn flush-to-zero and
    denormals-are-zero off while they run (torch.set_flush_denormal sets both)."""
    torch = pytest.importorskip("torch")
    x = np.full(BLOCK, 1.0, np.float32)
    x[1:10] = 2.0 ** -np.arange(16, 25)  # the signed code's subnormal range
    want = R.quantize_state(x, True)
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush denormals")
    try:
        got = F.quantize_state(x, signed=True)
        back = F.dequantize_state(got, signed=True)
    finally:
        torch.set_flush_denormal(False)
    np.testing.assert_array_equal(got.codes, want[0])
    np.testing.assert_array_equal(back, R.dequantize_state(*want, True))


# ---------------------------------------------------------------------------------------------
# bfloat16 state.


def bf16_cases(rng, n=4000):
    x = wide_range(rng, n, decades=40)
    bits = np.array([0x00000001, 0x007FFFFF, 0x80400000, 0x7FC00001, 0xFFA00001, 0x7F7FFFFF, 0x3F808000,
                     0x3F818000, 0x7F800000, 0xFF800000, 0x00008000, 0x00018000], np.uint32)
    x[:bits.size] = bits.view(np.float32)
    return x


@native_cpu
@pytest.mark.parametrize("instructions", [True, False], ids=["avx512", "portable"])
def test_bfloat16_state_rounds_to_nearest_even_as_torch(rng, instructions):
    # SGD's first momentum step stores the gradient itself: the state is round(g).
    g = bf16_cases(rng)
    p, buf = np.zeros_like(g), np.zeros(g.size, np.uint16)
    before = _backend._C.cpu.set_optim_avx512_loops(instructions)
    try:
        F.sgd_([p], [g], [buf], lr=0.0, momentum=0.9, first_step=True, state_dtype="bfloat16")
    finally:
        _backend._C.cpu.set_optim_avx512_loops(before)
    np.testing.assert_array_equal(buf, R.round_bfloat16(g))
    torch = pytest.importorskip("torch")
    want = torch.from_numpy(g).bfloat16().view(torch.int16).numpy().view(np.uint16)
    nan = np.isnan(g)
    np.testing.assert_array_equal(buf[~nan], want[~nan])
    assert (buf[nan] == 0x7FC0).all()


@native_cpu
def test_stochastic_rounding_is_the_reference_and_unbiased(rng):
    g = np.full(4096, 1.0 + 2.0 ** -10, np.float32)  # 1/8 of a bfloat16 step above 1
    g[:16] = bf16_cases(rng, 16)[:16]
    p = np.zeros_like(g)
    states = {}
    for backend in ("native", "reference"):
        buf = np.zeros(g.size, np.uint16)
        with fastnn.use_backend(backend), np.errstate(invalid="ignore"):  # p -= 0 * inf
            F.sgd_([np.zeros(3, np.float32), p], [np.ones(3, np.float32), g], [np.zeros(3, np.uint16), buf],
                   lr=0.0, momentum=0.9, first_step=True, state_dtype="bfloat16", stochastic_rounding=True, seed=11,
                   step=3)
        states[backend] = buf
    np.testing.assert_array_equal(states["native"], states["reference"])
    np.testing.assert_array_equal(states["native"],
                                  R.round_bfloat16_stochastic(g, 11, 4 * 1 + 0, 3))  # tensor 1, list 0
    up = (states["native"][16:] == R.round_bfloat16(np.float32(1.0 + 2.0 ** -7))).mean()
    assert abs(up - 1 / 8) < 0.03  # rounds up 1/8 of the time: unbiased
    # Another seed or step draws other bits; the same ones the same bits.
    other = R.round_bfloat16_stochastic(g, 11, 4, 4)
    assert (other != states["native"]).any()
    np.testing.assert_array_equal(R.round_bfloat16_stochastic(g, 11, 4, 3), states["native"])


@native_cpu
def test_stochastic_rounding_keeps_small_increments_that_nearest_loses():
    # Adagrad's sum grows by g^2 = 1/1024 of itself per step: rounded to nearest in bfloat16
    # (step 1/128) it never moves; stochastically it grows as float32 state does, on average.
    p = np.zeros(8192, np.float32)
    g = np.full_like(p, 1 / 32.0)
    sums = {}
    for stochastic in (False, True):
        s = F.new_state(p, "bfloat16", fill=1.0)
        for t in range(1, 101):
            F.adagrad_([p.copy()], [g], [s], step=t, lr=0.0, state_dtype="bfloat16", stochastic_rounding=stochastic,
                       seed=5)
        sums[stochastic] = R.widen_bfloat16(s)
    assert (sums[False] == 1.0).all()
    assert abs(sums[True].mean() - (1 + 100 / 1024)) < 2e-3


# ---------------------------------------------------------------------------------------------
# Native steps against the reference and against float32 state.

LOW_BIT = [(optim.SGD, dict(lr=0.05, momentum=0.9)),
           (optim.SGD, dict(lr=0.05, momentum=0.8, dampening=0.3, weight_decay=0.1, maximize=True)),
           (optim.Adagrad, dict(lr=0.1, initial_accumulator_value=0.5, weight_decay=0.1)),
           (optim.RMSprop, dict(lr=0.01, momentum=0.5)),
           (optim.RMSprop, dict(lr=0.01, alpha=0.9, weight_decay=0.1)),
           (optim.Adam, dict(lr=0.01)),
           (optim.Adam, dict(lr=0.01, amsgrad=True, weight_decay=0.1, maximize=True)),
           (optim.AdamW, dict(lr=0.01, weight_decay=0.3))]
LOW_IDS = [f"{c.__name__}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for c, kw in LOW_BIT]
SHAPES = [(300, 170), (7,), (5000,), (33, 3), (4096,)]


def params_and_grads(rng, steps, shapes=SHAPES, dtype=np.float32, bits=None):
    """Parameters, and each step's gradients (with `bits` significant bits when given: their
    squares are then exact in float32)."""
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = []
    for _ in range(steps):
        gs = [rng.standard_normal(s) for s in shapes]
        if bits:
            gs = [np.round(g * 2 ** (bits - 3)) / 2 ** (bits - 3) for g in gs]
        grads.append([g.astype(dtype) for g in gs])
    return params, grads


@native_cpu
@pytest.mark.parametrize("state_dtype", ["int8", "bfloat16"])
@pytest.mark.parametrize("cls,kwargs", LOW_BIT, ids=LOW_IDS)
def test_native_matches_the_reference(rng, cls, kwargs, state_dtype):
    params, grads = params_and_grads(rng, 8)
    opts = {}
    for backend in ("native", "reference"):
        ps = [p.copy() for p in params]
        with fastnn.use_backend(backend):
            opt = cls(ps, **kwargs, state_dtype=state_dtype)
            for g in grads:
                opt.step(g)
        opts[backend] = (ps, opt)
    (ps, a), (qs, b) = opts["native"], opts["reference"]
    for p, q in zip(ps, qs):
        np.testing.assert_allclose(p, q, rtol=1e-3, atol=2e-4)  # FMA rounding moves a code now and then
    for i in a.state:
        assert a.state[i].keys() == b.state[i].keys()
        for key, value in a.state[i].items():
            if key == "step":
                continue
            assert value.dtype == b.state[i][key].dtype and value.shape == b.state[i][key].shape
            if value.dtype.kind == "f":  # absmaxes, small tensors' float32 state: FMA moves them slightly
                np.testing.assert_allclose(value, b.state[i][key], rtol=1e-4, atol=1e-6)
            else:
                assert (value == b.state[i][key]).mean() > 0.97, key


@native_cpu
@pytest.mark.parametrize("state_dtype", ["int8", "bfloat16"])
@pytest.mark.parametrize("cls,kwargs", [(optim.SGD, dict(lr=0.05, momentum=0.5)),
                                        (optim.Adam, dict(lr=0.01, betas=(0.5, 0.5)))], ids=["SGD", "Adam"])
def test_native_codes_are_the_reference_bit_for_bit(rng, cls, kwargs, state_dtype):
    """With momentum 0.5 (and Adam's betas 0.5) and 12-bit gradients, every operation that
    feeds the state rounds alike with and without fused multiply-adds, so the stored state must
    be identical bit for bit: the quantization is the reference's."""
    params, grads = params_and_grads(rng, 6, bits=12)
    states = []
    for backend in ("native", "reference"):
        with fastnn.use_backend(backend):
            opt = cls([p.copy() for p in params], **kwargs, state_dtype=state_dtype)
            for g in grads:
                opt.step(g)
        states.append(opt.state_dict()["state"])
    for i in states[0]:
        for key, value in states[0][i].items():
            np.testing.assert_array_equal(value, states[1][i][key], err_msg=f"{i} {key}")


@native_cpu
@pytest.mark.parametrize("state_dtype", ["int8", "bfloat16"])
@pytest.mark.parametrize("cls,kwargs", LOW_BIT, ids=LOW_IDS)
def test_avx512_and_portable_loops_agree(rng, cls, kwargs, state_dtype):
    params, grads = params_and_grads(rng, 4)
    results = []
    for instructions in (True, False):
        before = _backend._C.cpu.set_optim_avx512_loops(instructions)
        try:
            ps = [p.copy() for p in params]
            opt = cls(ps, **kwargs, state_dtype=state_dtype)
            for g in grads:
                opt.step(g)
        finally:
            _backend._C.cpu.set_optim_avx512_loops(before)
        results.append((ps, opt.state_dict()["state"]))
    for a, b in zip(results[0][0], results[1][0]):
        np.testing.assert_array_equal(a, b)
    for i, entry in results[0][1].items():
        for key, value in entry.items():
            np.testing.assert_array_equal(value, results[1][1][i][key])


@native_cpu
@pytest.mark.parametrize("state_dtype", ["int8", "bfloat16"])
@pytest.mark.parametrize("kwargs", [dict(lr=0.01), dict(lr=0.01, betas=(0.3, 0.5)),
                                    dict(lr=0.01, amsgrad=True, weight_decay=0.1, maximize=True),
                                    dict(lr=0.01, weight_decay=0.3, decoupled_weight_decay=True)],
                         ids=["plain", "beta1<0.5", "amsgrad-l2-maximize", "adamw"])
def test_avx512_adam_loops_on_extreme_blocks(rng, kwargs, state_dtype):
    """The hand-written AVX-512 Adam loops (int8 and bfloat16 state, float32 parameters) against
    the portable ones, bit for bit, on blocks of gradients from 1e-39 (subnormal gradients and
    states, squares that vanish) to 1e7, one with inf and one with NaN. int8 folds the code's
    power of two into the block's scale where that product is a finite float32 and multiplies
    twice where it is not (states above about 1.2e5, or 8e9 for second moments); bfloat16
    rounds subnormal and NaN lanes again after VCVTNEPS2BF16."""
    n = 64 * 256 + 100  # whole blocks for the AVX-512 loops, and a short last one
    scales = 10.0 ** rng.choice([-39, -30, -3, 0, 5, 7], size=(n + 255) // 256)
    grads = []
    for _ in range(5):
        g = (rng.standard_normal(n) * np.repeat(scales, 256)[:n]).astype(np.float32)
        g[3 * 256 + 7], g[5 * 256 + 100] = np.inf, np.nan
        grads.append(g)
    p0 = rng.standard_normal(n).astype(np.float32)
    results = []
    for loops in (True, False):
        before = _backend._C.cpu.set_optim_avx512_loops(loops)
        try:
            p = p0.copy()
            opt = optim.Adam([p], **kwargs, state_dtype=state_dtype)
            for g in grads:
                opt.step([g])
        finally:
            _backend._C.cpu.set_optim_avx512_loops(before)
        results.append((p, opt.state_dict()["state"][0]))
    (p, a), (q, b) = results
    np.testing.assert_array_equal(p, q)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    if state_dtype == "int8":  # both forms of decoding ran: unfolded (|m| above 1.2e5) and folded
        absmax = a["exp_avg_absmax"]
        assert (absmax > 2e5).any() and ((absmax > 0) & (absmax < 1e3)).any()
    elif "weight_decay" not in kwargs:  # subnormal states were rounded (decay adds wd p to g)
        m = a["exp_avg"]
        assert ((m & 0x7f80) == 0).sum() > ((m & 0x7fff) == 0).sum()


def decoded(opt, index, key, rule_states):
    """A state as float32 values, whatever its storage."""
    entry = opt.state[index]
    value = entry[key]
    if value.dtype == np.uint16:
        return R.widen_bfloat16(value)
    if value.dtype == np.uint8:
        return R.dequantize_state(value, entry[key + "_absmax"], not rule_states[key].nonnegative)
    return value


# Per-step error of the stored state against float32 state (relative, and a floor relative to
# the largest magnitude of each int8 block): bfloat16 rounds to 2^-8 (half its 8-bit
# significand's step), int8 to 1/16 (half the 3-bit mantissa's step) down to 2^-18 (signed) or
# 2^-34 (unsigned) of absmax / 1.875. Parameters: the same as with float32 state, bit for bit.
BOUNDS = {"bfloat16": (2.0 ** -8, 0.0), "int8": (1 / 16, 2.0 ** -18)}


@native_cpu
@pytest.mark.parametrize("state_dtype", ["int8", "bfloat16"])
@pytest.mark.parametrize("cls,kwargs", LOW_BIT, ids=LOW_IDS)
def test_one_step_errs_only_by_the_storage_of_the_new_state(path, rng, cls, kwargs, state_dtype):
    params, grads = params_and_grads(rng, 4)
    low = cls([p.copy() for p in params], **kwargs, state_dtype=state_dtype)
    for g in grads[:3]:
        low.step(g)
    specs = {s.key: s for s in F.RULES[cls.rule].states}
    # float32 state starting from the low-bit state's values, then one step of each.
    full_params = [p.copy() for p in low.param_groups[0]["params"]]
    full = cls(full_params, **kwargs)
    full.load_state_dict({"state": {i: {k: (decoded(low, i, k, specs) if k in specs else v)
                                        for k, v in e.items() if not k.endswith("_absmax")}
                                    for i, e in low.state.items()},
                          "param_groups": copy.deepcopy(low.state_dict()["param_groups"])})
    low.step(grads[3])
    full.step(grads[3])
    for p, q in zip(low.param_groups[0]["params"], full_params):
        np.testing.assert_array_equal(p, q)
    rel, floor = BOUNDS[state_dtype]
    for i in low.state:
        for key in specs:
            if key not in low.state[i]:
                continue
            got, want = decoded(low, i, key, specs).astype(np.float64), full.state[i][key].astype(np.float64)
            if low.state[i][key].dtype == np.uint8:
                scale = np.repeat(low.state[i][key + "_absmax"].astype(np.float64), BLOCK)[:want.size] / 1.875
                tol = np.abs(want.reshape(-1)) * rel * (1 + 1e-5) + scale * 1.01 * (
                    floor if not specs[key].nonnegative else 2.0 ** -34)
                assert (np.abs(got - want).reshape(-1) <= tol).all(), key
            elif low.state[i][key].dtype == np.uint16:
                assert (np.abs(got - want) <= np.abs(want) * rel).all(), key
            else:  # small tensors keep float32 state
                np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("cls,kwargs", LOW_BIT[:1] + LOW_BIT[5:6], ids=["SGD", "Adam"])
def test_small_tensors_keep_float32_state_under_int8(path, rng, cls, kwargs):
    params, grads = params_and_grads(rng, 2, shapes=[(F.MIN_INT8_SIZE,), (F.MIN_INT8_SIZE - 1,), (64, 64)])
    opt = cls(params, **kwargs, state_dtype="int8")
    for g in grads:
        opt.step(g)
    key = "exp_avg" if cls is optim.Adam else "momentum_buffer"
    assert opt.state[0][key].dtype == np.uint8 and opt.state[0][key + "_absmax"].shape == (16,)
    assert opt.state[1][key].dtype == np.float32 and key + "_absmax" not in opt.state[1]
    assert opt.state[2][key].dtype == np.uint8


@pytest.mark.parametrize("state_dtype", ["int8", "bfloat16", "float32"])
def test_half_precision_parameters_take_low_bit_state(path, rng, state_dtype):
    params, grads = params_and_grads(rng, 3, shapes=[(5000,), (10,)], dtype=np.float16)
    ref_params = [p.copy() for p in params]
    opt = optim.Adam(params, lr=0.01, state_dtype=state_dtype)
    ref = optim.Adam([p.astype(np.float32) for p in ref_params], lr=0.01, state_dtype=state_dtype)
    for g in grads:
        opt.step(g)
        ref.step([x.astype(np.float32) for x in g])
    assert opt.state[0]["exp_avg"].dtype == F.storage_dtype(F.storage("float16", state_dtype, 5000))
    for p, q in zip(params, ref.param_groups[0]["params"]):
        np.testing.assert_allclose(p, q, rtol=2e-2, atol=2e-3)


def test_capturable_matches_normal_mode(path, rng):
    params, grads = params_and_grads(rng, 4, shapes=[(5000,), (300,)])
    results = []
    for capturable in (False, True):
        opt = optim.Adam([p.copy() for p in params], lr=0.01, capturable=capturable, state_dtype="bfloat16",
                         stochastic_rounding=True, seed=3)
        for g in grads:
            opt.step(g)
        results.append(opt.state_dict()["state"])
    for i in results[0]:
        for key, value in results[0][i].items():
            np.testing.assert_array_equal(value, results[1][i][key])


# ---------------------------------------------------------------------------------------------
# The functional forms.


def test_functional_int8_matches_the_class(path, rng):
    params, grads = params_and_grads(rng, 3, shapes=[(5000,), (100,)])
    opt = optim.Adam([p.copy() for p in params], lr=0.01, state_dtype="int8")
    ps = [p.copy() for p in params]
    ms = [F.new_state(p, "int8") for p in ps]
    vs = [F.new_state(p, "int8", nonnegative=True) for p in ps]
    assert isinstance(ms[0], F.Int8State) and ms[1].dtype == np.float32
    for t, g in enumerate(grads, start=1):
        opt.step(g)
        F.adam_(ps, g, ms, vs, step=t, lr=0.01, state_dtype="int8")
    for p, q in zip(ps, opt.param_groups[0]["params"]):
        np.testing.assert_array_equal(p, q)
    np.testing.assert_array_equal(ms[0].codes, opt.state[0]["exp_avg"])
    np.testing.assert_array_equal(vs[0].absmax, opt.state[0]["exp_avg_sq_absmax"])


def test_functional_refuses_state_of_the_wrong_form(rng):
    p, g = rng.standard_normal(5000).astype(np.float32), np.ones(5000, np.float32)
    small = rng.standard_normal(10).astype(np.float32)
    m, v = F.new_state(p, "int8"), F.new_state(p, "int8", nonnegative=True)
    with pytest.raises(TypeError, match=r"exp_avgs\[0\] must be an Int8State"):
        F.adam_([p], [g], [np.zeros_like(p)], [v], step=1, state_dtype="int8")
    with pytest.raises(TypeError, match=r"exp_avgs\[0\] is an Int8State but params\[0\] has 10 elements, fewer "
                                        r"than MIN_INT8_SIZE"):
        F.adam_([small], [g[:10]], [m], [np.zeros(10, np.float32)], step=1, state_dtype="int8")
    with pytest.raises(ValueError, match=r"exp_avg_sqs\[0\].absmax: expected shape \(20,\), got \(19,\)"):
        F.adam_([p], [g], [m], [F.Int8State(v.codes, v.absmax[:19])], step=1, state_dtype="int8")
    with pytest.raises(TypeError, match=r"exp_avgs\[0\]: expected dtype uint16"):
        F.adam_([p], [g], [np.zeros_like(p)], [np.zeros(5000, np.uint16)], step=1, state_dtype="bfloat16")
    with pytest.raises(ValueError, match=r"exp_avgs\[0\].codes and exp_avg_sqs\[0\].codes overlap"):
        F.adam_([p], [g], [m], [F.Int8State(m.codes, v.absmax)], step=1, state_dtype="int8")
    with pytest.raises(ValueError, match="needs state_dtype='bfloat16'"):
        F.sgd_([p], [g], [m], momentum=0.9, state_dtype="int8", stochastic_rounding=True, step=1)
    with pytest.raises(TypeError, match="step must be an integer"):
        F.sgd_([p], [g], [np.zeros(5000, np.uint16)], momentum=0.9, state_dtype="bfloat16", stochastic_rounding=True)


# ---------------------------------------------------------------------------------------------
# Refusals with a reason.


@pytest.mark.parametrize("make,match", [
    (lambda p: optim.Adam(p, state_dtype="int4"), "state_dtype must be None .*'int8', got 'int4'"),
    (lambda p: optim.Rprop(p, state_dtype="int8"), "Rprop takes no int8 state: its step sizes"),
    (lambda p: optim.Rprop(p, state_dtype="bfloat16"), "Rprop takes no bfloat16 state"),
    (lambda p: optim.RMSprop(p, centered=True, state_dtype="int8"), "centered RMSprop takes no int8 state"),
    (lambda p: optim.Adam(p, stochastic_rounding=True), "stochastic_rounding=True rounds bfloat16 state"),
    (lambda p: optim.Adam(p, state_dtype="bfloat16", stochastic_rounding=True, seed=-1), "seed must be an integer"),
])
def test_bad_state_options_fail_at_construction(make, match):
    with pytest.raises(ValueError, match=match):
        make([np.zeros(10, np.float32)])


def test_float64_parameters_keep_float64_state():
    opt = optim.Adam([np.zeros(5000)], state_dtype="int8")
    with pytest.raises(ValueError, match=r"float64 parameters keep their state as one of float64 "
                                         r"\(state_dtype='int8' given\)"):
        opt.step([np.ones(5000)])


def test_centered_set_later_is_refused_before_anything_changes():
    p = np.zeros(5000, np.float32)
    opt = optim.RMSprop([p], state_dtype="int8")
    opt.param_groups[0]["centered"] = True
    with pytest.raises(ValueError, match="centered RMSprop takes no int8 state"):
        opt.step([np.ones_like(p)])
    assert (p == 0).all() and not opt.state


# ---------------------------------------------------------------------------------------------
# state_dict and checkpoints.


@pytest.mark.parametrize("state_dtype", ["int8", "bfloat16"])
def test_state_dict_round_trip_resumes_exactly(path, rng, tmp_path, state_dtype):
    params, grads = params_and_grads(rng, 6, shapes=[(5000,), (64,)])
    kwargs = dict(lr=0.01, state_dtype=state_dtype)
    if state_dtype == "bfloat16":
        kwargs.update(stochastic_rounding=True, seed=9)
    a = optim.Adam([p.copy() for p in params], **kwargs)
    for g in grads[:3]:
        a.step(g)
    fastnn.save(tmp_path / "ckpt.npz", optimizer=a)
    b = optim.Adam([p.copy() for p in a.param_groups[0]["params"]], **kwargs)
    fastnn.load(tmp_path / "ckpt.npz", optimizer=b)
    for g in grads[3:]:
        a.step(g)
        b.step(g)
    for x, y in zip(a.param_groups[0]["params"], b.param_groups[0]["params"]):
        np.testing.assert_array_equal(x, y)
    for i, entry in a.state_dict()["state"].items():
        for key, value in entry.items():
            np.testing.assert_array_equal(value, b.state[i][key])


def test_state_converts_between_storages_on_load(rng):
    params, grads = params_and_grads(rng, 3, shapes=[(5000,), (64,)])
    full = optim.Adam([p.copy() for p in params], lr=0.01)
    for g in grads:
        full.step(g)
    saved = full.state_dict()
    low = optim.Adam([p.copy() for p in params], lr=0.01, state_dtype="int8")
    low.load_state_dict(saved)  # float32 state quantized
    codes, absmax = R.quantize_state(saved["state"][0]["exp_avg"], True)
    np.testing.assert_array_equal(low.state[0]["exp_avg"], codes)
    np.testing.assert_array_equal(low.state[0]["exp_avg_absmax"], absmax)
    assert low.state[1]["exp_avg"].dtype == np.float32  # a small tensor
    half = optim.Adam([p.copy() for p in params], lr=0.01, state_dtype="bfloat16")
    half.load_state_dict(low.state_dict())  # int8 decoded, then rounded
    np.testing.assert_array_equal(half.state[0]["exp_avg"], R.round_bfloat16(R.dequantize_state(codes, absmax)))
    back = optim.Adam([p.copy() for p in params], lr=0.01)
    back.load_state_dict(half.state_dict())  # bfloat16 widened
    np.testing.assert_array_equal(back.state[0]["exp_avg"], R.widen_bfloat16(half.state[0]["exp_avg"]))


def test_load_refuses_int8_blocks_that_do_not_fit(rng):
    params, grads = params_and_grads(rng, 1, shapes=[(5000,)])
    opt = optim.Adam([p.copy() for p in params], lr=0.01, state_dtype="int8")
    opt.step(grads[0])
    saved = opt.state_dict()
    bad = copy.deepcopy(saved)
    bad["state"][0]["exp_avg_absmax"] = bad["state"][0]["exp_avg_absmax"][:-1]
    other = optim.Adam([p.copy() for p in params], lr=0.01, state_dtype="int8")
    with pytest.raises(ValueError, match=r"'exp_avg_absmax' of .* is float32 \(19,\), but the parameter's 5000 "
                                         r"elements are quantized in 20 blocks of 256 .* do not belong"):
        other.load_state_dict(bad)
    bad = copy.deepcopy(saved)
    del bad["state"][0]["exp_avg_sq_absmax"]
    with pytest.raises(ValueError, match="'exp_avg_sq' .* holds int8 codes \\(uint8\\) without their "
                                         "'exp_avg_sq_absmax' entry"):
        other.load_state_dict(bad)
    assert not other.state  # nothing loaded


# ---------------------------------------------------------------------------------------------
# Training quality, same seed: low-bit state against float32 state.


@pytest.mark.parametrize("state_dtype", ["bfloat16", "int8"])
def test_digits_job_with_low_bit_adam_state(tmp_path, state_dtype):
    """`fastnn train`'s model and job (digits, Adam, 20 epochs, seed 0): the final test loss
    within 2% relative and the test accuracy within 0.5 points of float32 state."""
    from fastnn import job

    results = {}
    for sd in ("float32", state_dtype):  # (--state-dtype)
        metrics = job.run(job.JobConfig(epochs=20, verbose=0, seed=0, state_dtype=sd, out=str(tmp_path / sd)))
        results[sd] = metrics["test"]
    full, low = results["float32"], results[state_dtype]
    assert abs(low["loss"] / full["loss"] - 1) <= 0.02, results
    assert abs(100 * (low["accuracy"] - full["accuracy"])) <= 0.5, results


@pytest.mark.parametrize("state_dtype", ["bfloat16", "int8"])
def test_torch_mlp_with_low_bit_adam_state(state_dtype):
    """A torch MLP on the digits through fastnn.integrations.torch (Adam, 10 epochs, same
    seed): the final training loss within 2% relative and the test accuracy within 0.5
    points of float32 state."""
    torch = pytest.importorskip("torch")
    datasets = pytest.importorskip("sklearn.datasets")
    from fastnn.integrations import torch as FT

    X, y = datasets.load_digits(return_X_y=True)
    X = (X / 16).astype(np.float32)
    order = np.random.default_rng(0).permutation(len(X))
    train, test = order[:1400], order[1400:]
    Xt, yt, Xe, ye = (torch.from_numpy(a) for a in (X[train], y[train], X[test], y[test]))

    def fit(sd):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 128),
                                    torch.nn.ReLU(), torch.nn.Linear(128, 10))
        opt = FT.Adam(model.parameters(), lr=1e-3, state_dtype=sd)
        generator = torch.Generator().manual_seed(0)
        for _ in range(10):
            perm = torch.randperm(len(Xt), generator=generator)
            for i in range(0, len(Xt), 64):
                batch = perm[i:i + 64]
                loss = torch.nn.functional.cross_entropy(model(Xt[batch]), yt[batch])
                opt.zero_grad()
                loss.backward()
                opt.step()
        with torch.no_grad():
            return (torch.nn.functional.cross_entropy(model(Xt), yt).item(),
                    100 * (model(Xe).argmax(1) == ye).float().mean().item())

    full, low = fit(None), fit(state_dtype)
    assert abs(low[0] / full[0] - 1) <= 0.02, (full, low)
    assert abs(low[1] - full[1]) <= 0.5, (full, low)


# ---------------------------------------------------------------------------------------------
# fastnn.integrations.torch.


@pytest.mark.parametrize("state_dtype,stochastic", [("bfloat16", False), ("bfloat16", True), ("int8", False)])
@pytest.mark.parametrize("param_dtype", ["float32", "bfloat16"])
def test_torch_integration_native_state_is_the_reference_bit_for_bit(rng, state_dtype, stochastic, param_dtype):
    """Dense tensors in any layout (a transposed weight) are updated, quantized and randomly
    rounded in memory order on both paths."""
    torch = pytest.importorskip("torch")
    from fastnn.integrations import torch as FT

    dtype = getattr(torch, param_dtype)
    gen = torch.Generator().manual_seed(0)
    weights = [torch.randn(100, 80, generator=gen), torch.randn(30, generator=gen),
               torch.randn(80, 64, generator=gen).t()]
    opts, params = [], []
    for backend in ("native", "reference"):
        ps = [torch.nn.Parameter(w.to(dtype)) for w in weights]
        with fastnn.use_backend(backend):
            opts.append(FT.SGD(ps, lr=0.05, momentum=0.5, state_dtype=state_dtype, stochastic_rounding=stochastic,
                               seed=4))
        params.append(ps)
    for step in range(4):
        grads = [(torch.randn(w.shape, generator=gen) * 64).round() / 64 for w in weights]
        for (backend, opt), ps in zip(zip(("native", "reference"), opts), params):
            for p, g in zip(ps, grads):
                p.grad = torch.empty_like(p).copy_(g)  # laid out as p
            with fastnn.use_backend(backend):
                opt.step()
    for p, q in zip(*params):
        a, b = opts[0].state[p], opts[1].state[q]
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key
    state = opts[0].state[params[0][0]]
    if state_dtype == "int8":
        assert state["momentum_buffer"].dtype == torch.uint8 and state["momentum_buffer_absmax"].shape == (32,)
        assert opts[0].state[params[0][1]]["momentum_buffer"].dtype == torch.float32  # 30 elements
    else:
        assert state["momentum_buffer"].dtype == torch.bfloat16
    assert ("step" in state) == stochastic  # the random stream's counter


@pytest.mark.parametrize("state_dtype", ["bfloat16", "int8"])
def test_torch_integration_state_dict_round_trip_and_torch_optim_states(rng, state_dtype):
    torch = pytest.importorskip("torch")
    from fastnn.integrations import torch as FT

    gen = torch.Generator().manual_seed(1)
    weights = [torch.randn(70, 70, generator=gen), torch.randn(50, generator=gen)]
    grads = [[torch.randn(w.shape, generator=gen) for w in weights] for _ in range(6)]

    def run(opt, ps, steps):
        for gs in steps:
            for p, g in zip(ps, gs):
                p.grad = g.clone()
            opt.step()

    a_params = [torch.nn.Parameter(w.clone()) for w in weights]
    a = FT.AdamW(a_params, lr=0.01, state_dtype=state_dtype)
    run(a, a_params, grads[:3])
    b_params = [torch.nn.Parameter(p.detach().clone()) for p in a_params]
    b = FT.AdamW(b_params, lr=0.01, state_dtype=state_dtype)
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    for p, q in zip(a_params, b_params):
        for key, value in a.state[p].items():
            assert torch.equal(value, b.state[q][key]), key  # as saved: torch's casts undone
    run(a, a_params, grads[3:])
    run(b, b_params, grads[3:])
    for p, q in zip(a_params, b_params):
        assert torch.equal(p, q)
    # A torch.optim.AdamW state dict (float32 state) converts into this storage.
    t_params = [torch.nn.Parameter(w.clone()) for w in weights]
    t = torch.optim.AdamW(t_params, lr=0.01)
    run(t, t_params, grads[:3])
    c = FT.AdamW([torch.nn.Parameter(p.detach().clone()) for p in t_params], lr=0.01, state_dtype=state_dtype)
    c.load_state_dict(t.state_dict())
    loaded = c.state[c.param_groups[0]["params"][0]]
    exp_avg = t.state[t_params[0]]["exp_avg"]
    if state_dtype == "int8":
        codes, absmax = R.quantize_state(exp_avg.numpy(), True)
        np.testing.assert_array_equal(loaded["exp_avg"].numpy(), codes)
        np.testing.assert_array_equal(loaded["exp_avg_absmax"].numpy(), absmax)
    else:
        assert torch.equal(loaded["exp_avg"], exp_avg.bfloat16())


def test_torch_integration_refusals_and_storages():
    torch = pytest.importorskip("torch")
    from fastnn.integrations import torch as FT

    w = torch.nn.Parameter(torch.zeros(5000))
    with pytest.raises(ValueError, match="Rprop takes no int8 state"):
        FT.Rprop([w], state_dtype="int8")
    with pytest.raises(ValueError, match="centered RMSprop takes no int8 state"):
        FT.RMSprop([w], centered=True, state_dtype="int8")
    with pytest.raises(ValueError, match="state_dtype must be None"):
        FT.Adam([w], state_dtype="fp8")
    # torch dtypes name a storage too; Adagrad's state exists from the start, in that storage.
    opt = FT.Adagrad([w], initial_accumulator_value=0.5, state_dtype=torch.bfloat16)
    assert opt.state[w]["sum"].dtype == torch.bfloat16 and (opt.state[w]["sum"] == 0.5).all()
    opt = FT.Adagrad([w], initial_accumulator_value=0.5, state_dtype="int8")
    assert (opt.state[w]["sum_absmax"] == 0.5).all()
    np.testing.assert_array_equal(R.dequantize_state(opt.state[w]["sum"].numpy(), opt.state[w]["sum_absmax"].numpy(),
                                                     False), np.full(5000, 0.5, np.float32))
    # Complex parameters keep their state in their own dtype.
    z = torch.nn.Parameter(torch.zeros(5000, dtype=torch.complex64))
    opt = FT.Adam([z], state_dtype="int8")
    z.grad = torch.ones_like(z)
    opt.step()
    assert opt.state[z]["exp_avg"].dtype == torch.complex64


@pytest.mark.parametrize("state_dtype", ["int8", "bfloat16"])
def test_rules_without_state_take_any_state_dtype(path, rng, state_dtype):
    params, grads = params_and_grads(rng, 2, shapes=[(5000,), (30,)])
    low = optim.SGD([p.copy() for p in params], lr=0.1, state_dtype=state_dtype)  # no momentum: no state
    full = optim.SGD([p.copy() for p in params], lr=0.1)
    for g in grads:
        low.step(g)
        full.step(g)
    for p, q in zip(low.param_groups[0]["params"], full.param_groups[0]["params"]):
        np.testing.assert_array_equal(p, q)
