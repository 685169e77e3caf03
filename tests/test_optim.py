"""Optimizer rules: every rule and option on every path against the reference for 25 steps
(float32 and float64), float64 against formulas written here from PyTorch's documentation,
against torch.optim itself where torch is installed, and the functional forms in place."""

import numpy as np
import pytest

import fastnn
from fastnn import optim
from fastnn import reference as R
from fastnn._backend import to_numpy
from fastnn.optim import functional as OF
from util import assert_close

DTYPES = [np.float32, np.float64]
# A 51K-element tensor, odd sizes (vector tails), a scalar-like one (the threaded path above
# the OpenMP grain: tests/test_cpu_threads.py).
SHAPES = [(300, 170), (7,), (33, 3), (1,), (1000,)]
STEPS = 25

# (class, keyword arguments): every option of every rule.
CONFIGS = [
    (optim.SGD, dict(lr=0.1)),
    (optim.SGD, dict(lr=0.05, momentum=0.9)),
    (optim.SGD, dict(lr=0.05, momentum=0.8, dampening=0.3, weight_decay=0.1)),
    (optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True, maximize=True)),
    (optim.Adagrad, dict(lr=0.1)),
    (optim.Adagrad, dict(lr=0.1, lr_decay=0.05, weight_decay=0.1, initial_accumulator_value=0.5, eps=1e-3)),
    (optim.Adagrad, dict(lr=0.1, maximize=True)),
    (optim.RMSprop, dict(lr=0.01)),
    (optim.RMSprop, dict(lr=0.01, alpha=0.9, centered=True, weight_decay=0.1)),
    (optim.RMSprop, dict(lr=0.01, momentum=0.5, eps=1e-4)),
    (optim.RMSprop, dict(lr=0.01, momentum=0.5, centered=True, maximize=True)),
    (optim.Adam, dict(lr=0.01)),
    (optim.Adam, dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.1, eps=1e-6)),
    (optim.Adam, dict(lr=0.01, amsgrad=True, maximize=True)),
    (optim.Adam, dict(lr=0.01, weight_decay=0.2, decoupled_weight_decay=True, amsgrad=True)),
    (optim.AdamW, dict(lr=0.01)),
    (optim.AdamW, dict(lr=0.01, weight_decay=0.3, amsgrad=True, betas=(0.3, 0.9))),
    (optim.Rprop, dict(lr=0.01)),
    (optim.Rprop, dict(lr=0.02, etas=(0.3, 1.5), step_sizes=(1e-3, 0.05), maximize=True)),
]
IDS = [f"{cls.__name__}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for cls, kw in CONFIGS]


def make_params(xp, rng, dtype, shapes=SHAPES):
    return [xp.asarray(rng.standard_normal(s).astype(dtype)) for s in shapes]


def make_grads(xp, rng, params, step):
    """Random gradients whose signs sometimes repeat and sometimes flip (Rprop's three cases),
    with an occasional exact zero."""
    grads = []
    for p in params:
        g = rng.standard_normal(p.shape)
        g[rng.random(p.shape) < 0.05] = 0.0
        grads.append(xp.asarray((g + 0.3 * (-1) ** step).astype(p.dtype)))
    return grads


def run_steps(cls, kwargs, params, grads_per_step, **extra):
    opt = cls(params, **kwargs, **extra)
    for grads in grads_per_step:
        opt.step(grads)
    return opt


def assert_states_close(a, b, dtype, **tol):
    assert a.state.keys() == b.state.keys()
    for i in a.state:
        assert a.state[i].keys() == b.state[i].keys()
        for key, value in a.state[i].items():
            if key == "step":
                assert value == b.state[i][key]
            else:
                assert_close(value, b.state[i][key], dtype, **tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cls,kwargs", CONFIGS, ids=IDS)
def test_rule_matches_reference(xp, path, rng, cls, kwargs, dtype):
    params = make_params(xp, rng, dtype)
    grads = [make_grads(xp, rng, params, t) for t in range(STEPS)]
    expected = [p.copy() for p in params]
    opt = run_steps(cls, kwargs, params, grads)
    with fastnn.use_backend("reference"):
        ref_opt = run_steps(cls, kwargs, expected, grads)
    tol = dict(rtol=2e-5, atol=2e-6) if dtype == np.float32 else {}
    for p, e in zip(params, expected):
        assert p.dtype == dtype
        assert_close(p, e, dtype, **tol)
    assert_states_close(opt, ref_opt, dtype, **tol)
    assert all(s.get("step", STEPS) == STEPS for s in opt.state.values())


# ---------------------------------------------------------------------------------------------
# float64 against the algorithms of PyTorch's documentation, written out independently.


def doc_sgd(p, grads, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, maximize=False):
    b = None
    for t, g in enumerate(grads, start=1):
        if weight_decay:
            g = g + weight_decay * p
        if momentum:
            b = g if t == 1 else momentum * b + (1 - dampening) * g
            g = g + momentum * b if nesterov else b
        p = p + lr * g if maximize else p - lr * g
    return p


def doc_adagrad(p, grads, lr, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0, eps=1e-10,
                maximize=False):
    state_sum = np.full_like(p, initial_accumulator_value)
    for t, g in enumerate(grads, start=1):
        g = -g if maximize else g
        clr = lr / (1 + (t - 1) * lr_decay)
        if weight_decay:
            g = g + weight_decay * p
        state_sum = state_sum + g * g
        p = p - clr * g / (np.sqrt(state_sum) + eps)
    return p


def doc_rmsprop(p, grads, lr, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False,
                maximize=False):
    v = np.zeros_like(p)
    b = np.zeros_like(p)
    g_ave = np.zeros_like(p)
    for g in grads:
        g = -g if maximize else g
        if weight_decay:
            g = g + weight_decay * p
        v = alpha * v + (1 - alpha) * g * g
        v_tilde = v
        if centered:
            g_ave = alpha * g_ave + (1 - alpha) * g
            v_tilde = v_tilde - g_ave * g_ave
        if momentum > 0:
            b = momentum * b + g / (np.sqrt(v_tilde) + eps)
            p = p - lr * b
        else:
            p = p - lr * g / (np.sqrt(v_tilde) + eps)
    return p


def doc_adam(p, grads, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, maximize=False,
             decoupled_weight_decay=False):
    beta1, beta2 = betas
    m, v, v_max = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        g = -g if maximize else g
        if decoupled_weight_decay:
            p = p - lr * weight_decay * p
        elif weight_decay:
            g = g + weight_decay * p
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        m_hat = m / (1 - beta1 ** t)
        if amsgrad:
            v_max = np.maximum(v_max, v)
            v_hat = v_max / (1 - beta2 ** t)
        else:
            v_hat = v / (1 - beta2 ** t)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p


def doc_adamw(p, grads, lr, weight_decay=1e-2, **kwargs):
    return doc_adam(p, grads, lr, weight_decay=weight_decay, decoupled_weight_decay=True, **kwargs)


def doc_rprop(p, grads, lr, etas=(0.5, 1.2), step_sizes=(1e-6, 50.0), maximize=False):
    eta = np.full_like(p, lr)
    g_prev = np.zeros_like(p)
    for g in grads:
        g = -g if maximize else g
        sign = g * g_prev
        eta = np.where(sign > 0, np.minimum(eta * etas[1], step_sizes[1]),
                       np.where(sign < 0, np.maximum(eta * etas[0], step_sizes[0]), eta))
        g = np.where(sign < 0, 0.0, g)
        p = p - eta * np.sign(g)
        g_prev = g
    return p


DOC = {optim.SGD: doc_sgd, optim.Adagrad: doc_adagrad, optim.RMSprop: doc_rmsprop, optim.Adam: doc_adam,
       optim.AdamW: doc_adamw, optim.Rprop: doc_rprop}


@pytest.mark.parametrize("cls,kwargs", CONFIGS, ids=IDS)
def test_float64_matches_documented_algorithm(xp, path, rng, cls, kwargs):
    params = make_params(xp, rng, np.float64)
    grads = [make_grads(xp, rng, params, t) for t in range(STEPS)]
    start = [to_numpy(p).copy() for p in params]
    run_steps(cls, kwargs, params, grads)
    for k, p in enumerate(params):
        expected = DOC[cls](start[k], [to_numpy(g[k]) for g in grads], **kwargs)
        assert_close(p, expected, np.float64, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# torch.optim itself (the torch test venv has it; skipped elsewhere).

TORCH_NAMES = {optim.SGD: "SGD", optim.Adagrad: "Adagrad", optim.RMSprop: "RMSprop", optim.Adam: "Adam",
               optim.AdamW: "AdamW", optim.Rprop: "Rprop"}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cls,kwargs", CONFIGS, ids=IDS)
def test_matches_torch_optim(path, rng, cls, kwargs, dtype):
    torch = pytest.importorskip("torch")
    params = make_params(np, rng, dtype)
    grads = [make_grads(np, rng, params, t) for t in range(STEPS)]
    tensors = [torch.tensor(p, requires_grad=True) for p in params]
    topt = getattr(torch.optim, TORCH_NAMES[cls])(tensors, **kwargs)
    run_steps(cls, kwargs, params, grads)
    for gs in grads:
        for t, g in zip(tensors, gs):
            t.grad = torch.tensor(g)
        topt.step()
    tol = dict(rtol=2e-5, atol=2e-6) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-13)
    for p, t in zip(params, tensors):
        assert_close(p, t.detach().numpy(), dtype, **tol)


# ---------------------------------------------------------------------------------------------
# The functional forms.

FUNCTIONAL = [
    ("sgd", OF.sgd_, ["momentum_buffers"], dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01)),
    ("adagrad", OF.adagrad_, ["state_sums"], dict(step=3, lr=0.1, lr_decay=0.1, weight_decay=0.01)),
    ("rmsprop", OF.rmsprop_, ["square_avgs", "momentum_buffers", "grad_avgs"],
     dict(lr=0.01, momentum=0.5, centered=True, weight_decay=0.01)),
    ("adam", OF.adam_, ["exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"],
     dict(step=4, lr=0.01, weight_decay=0.1, amsgrad=True, decoupled=True)),
    ("rprop", OF.rprop_, ["prevs", "step_sizes"], dict(etaminus=0.4, etaplus=1.3)),
]


def functional_inputs(xp, rng, dtypes, states):
    params = [xp.asarray(rng.standard_normal(s).astype(dt)) for s, dt in zip(SHAPES, dtypes)]
    grads = [xp.asarray(rng.standard_normal(p.shape).astype(p.dtype)) for p in params]
    # State as training leaves it: positive averages of squares well above the squared mean.
    lists = {name: [xp.asarray(rng.uniform(-0.3, 0.3, p.shape) if name == "grad_avgs" else
                               rng.uniform(0.5, 1.5, p.shape)).astype(p.dtype) for p in params]
             for name in states}
    return params, grads, lists


@pytest.mark.parametrize("rule,fn,states,kwargs", FUNCTIONAL, ids=[f[0] for f in FUNCTIONAL])
def test_functional_updates_in_place_like_reference(xp, path, rng, rule, fn, states, kwargs):
    # Mixed dtypes in one call: fastnn groups the tensors by dtype, one native call each.
    dtypes = [np.float32, np.float64, np.float32, np.float64, np.float32]
    params, grads, lists = functional_inputs(xp, rng, dtypes, states)
    copies = [p.copy() for p in params], {k: [a.copy() for a in v] for k, v in lists.items()}
    ids = [id(p) for p in params]
    pointers = [fastnn._backend.pointer(p) for p in params]
    fn(params, grads, **lists, **kwargs)
    assert [id(p) for p in params] == ids and [fastnn._backend.pointer(p) for p in params] == pointers
    ref_params, ref_lists = copies
    getattr(R, rule + "_")(ref_params, grads, **ref_lists, **kwargs)
    for a, b in zip(params, ref_params):
        assert_close(a, b, rtol=2e-6, atol=2e-6)
    for name in states:
        for a, b in zip(lists[name], ref_lists[name]):
            assert_close(a, b, rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_results_do_not_depend_on_memory_alignment(path, rng, dtype):
    # The CPU kernel splits each range where the parameter reaches a cache-line boundary; the
    # bits must not depend on where that falls.
    n = 5000
    start = [rng.standard_normal(n).astype(dtype) for _ in range(4)]
    results = []
    for shift in range(0, 64 // np.dtype(dtype).itemsize, 3):
        arrays = []
        for a in start:
            buf = np.empty(n + 64, dtype)
            view = buf[shift:shift + n]
            view[...] = a
            arrays.append(view)
        p, g, m, v = arrays
        v[...] = np.abs(v)
        OF.adam_([p], [g], [m], [v], step=3, lr=0.01, weight_decay=0.1, amsgrad=False)
        results.append(p.copy())
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])


def test_functional_sgd_first_step_sets_the_buffer(path, rng):
    p = rng.standard_normal(40)
    g = rng.standard_normal(40)
    buf = np.full(40, np.nan)
    OF.sgd_([p.copy()], [g], [buf], lr=0.1, momentum=0.9, dampening=0.5, weight_decay=0.2, first_step=True)
    start = p.copy()
    np.testing.assert_allclose(buf, g + 0.2 * start, rtol=1e-15)


@pytest.mark.parametrize("rule,fn,states,kwargs", FUNCTIONAL, ids=[f[0] for f in FUNCTIONAL])
def test_functional_device_scalars_read_lr_and_count_steps(path, rng, rule, fn, states, kwargs):
    dtypes = [np.float64] * len(SHAPES)
    params, grads, lists = functional_inputs(np, rng, dtypes, states)
    twin = [p.copy() for p in params], {k: [a.copy() for a in v] for k, v in lists.items()}
    step = kwargs.get("step", 1)
    scalars = np.array([kwargs.get("lr", 0.0), step - 1], np.float64)
    # lr and step come from the array; the arguments are not used.
    device_kwargs = {k: (123.0 if k == "lr" else v) for k, v in kwargs.items() if k != "step"}
    for t in range(3):
        fn(params, grads, **lists, **device_kwargs, device_scalars=scalars)
        explicit = dict(kwargs)
        if "step" in kwargs:
            explicit["step"] = step + t
        fn(twin[0], grads, **twin[1], **explicit)
        assert scalars[1] == step + t
    for a, b in zip(params, twin[0]):
        np.testing.assert_array_equal(a, b)


def test_functional_updates_torch_tensors_in_place(path, rng):
    torch = pytest.importorskip("torch")
    p = torch.tensor(rng.standard_normal((20, 30)), dtype=torch.float32)
    g = torch.tensor(rng.standard_normal((20, 30)), dtype=torch.float32)
    m, v = torch.zeros_like(p), torch.zeros_like(p)
    expected = p.clone().numpy()
    ptr = p.data_ptr()
    OF.adam_([p], [g], [m], [v], step=1, lr=0.01, weight_decay=0.1)
    R.adam_([expected], [g.numpy()], [np.zeros_like(expected)], [np.zeros_like(expected)], step=1, lr=0.01,
            weight_decay=0.1)
    assert p.data_ptr() == ptr
    assert_close(p.numpy(), expected)
    assert float(m.abs().sum()) > 0


@pytest.mark.gpu
def test_functional_updates_torch_cuda_tensors_in_place(rng):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    p = torch.tensor(rng.standard_normal(5000), dtype=torch.float32, device="cuda")
    g = torch.tensor(rng.standard_normal(5000), dtype=torch.float32, device="cuda")
    m, v = torch.zeros_like(p), torch.zeros_like(p)
    expected = p.cpu().numpy()
    OF.adam_([p], [g], [m], [v], step=1, lr=0.01)
    R.adam_([expected], [g.cpu().numpy()], [np.zeros_like(expected)], [np.zeros_like(expected)], step=1, lr=0.01)
    assert_close(p.cpu().numpy(), expected)


def test_functional_validates_everything_before_modifying(rng):
    params = [rng.standard_normal(10), rng.standard_normal(5)]
    grads = [rng.standard_normal(10), rng.standard_normal(4)]  # the second has the wrong shape
    m = [np.zeros(10), np.zeros(5)]
    v = [np.zeros(10), np.zeros(5)]
    before = [p.copy() for p in params]
    with pytest.raises(ValueError, match=r"grads\[1\]"):
        OF.adam_(params, grads, m, v, step=1)
    for p, b in zip(params, before):
        np.testing.assert_array_equal(p, b)
    with pytest.raises(TypeError, match=r"exp_avgs\[0\]"):
        OF.adam_(params[:1], grads[:1], [np.zeros(10, np.float32)], v[:1], step=1)
    with pytest.raises(ValueError, match="exp_avg_sqs has 1 arrays"):
        OF.adam_(params, [grads[0], np.zeros(5)], m, v[:1], step=1)
    with pytest.raises(TypeError, match="step must be an integer"):
        OF.adam_(params[:1], grads[:1], m[:1], v[:1])
    with pytest.raises(ValueError, match="max_exp_avg_sqs is required"):
        OF.adam_(params[:1], grads[:1], m[:1], v[:1], step=1, amsgrad=True)
    with pytest.raises(ValueError, match="C-contiguous"):
        OF.sgd_([np.zeros((4, 4)).T], [np.zeros((4, 4))], lr=0.1)
    with pytest.raises(ValueError, match="beta1"):
        OF.adam_(params[:1], grads[:1], m[:1], v[:1], step=1, beta1=1.0)
    with pytest.raises(TypeError, match="list of arrays"):
        OF.sgd_(params[0], grads[0], lr=0.1)
    with pytest.raises(ValueError, match="device_scalars"):
        OF.adam_(params[:1], grads[:1], m[:1], v[:1], device_scalars=np.zeros(3))
    for p, b in zip(params, before):
        np.testing.assert_array_equal(p, b)


# ---------------------------------------------------------------------------------------------
# The native entry point: one per device, every rule, hyperparameters in RULES' order.


_C = fastnn._backend._C
needs_extension = pytest.mark.skipif(_C is None, reason="the compiled extension is not built")


@needs_extension
def test_native_rule_table_is_rules():
    assert _C.optim_rules == {rule: r.kernel_args for rule, r in OF.RULES.items()}


@needs_extension
def test_native_entry_point_refuses_what_its_table_lacks():
    # Reached only by callers that skip fastnn.optim.functional. The checks come before any
    # memory is touched, on the CUDA entry point too (so no device is needed).
    p, g = np.ones(5), np.ones(5)
    tensors = [p.ctypes.data, g.ctypes.data]
    nearest = (False, 0, 0)
    entry_points = [_C.cpu.optim_step]
    if _C.cuda_compiled:
        entry_points.append(lambda *args: _C.cuda.optim_step(*args, 0))
    for optim_step in entry_points:
        with pytest.raises(ValueError, match=r"rule 'adam' takes 9 hyperparameters \(lr, beta1, .*maximize\), got 2"):
            optim_step("float64", "float64", "adam", tensors + [0, 0], [5], [0.1, 0.9], 0, nearest)
        with pytest.raises(ValueError, match=f"unknown rule 'adamw' .expected one of {', '.join(OF.RULES)}"):
            optim_step("float64", "float64", "adamw", tensors + [0, 0], [5], [0.0] * 9, 0, nearest)
        with pytest.raises(ValueError, match="dtype must be one of float32, float64, bfloat16, float16, got .int8."):
            optim_step("int8", "int8", "sgd", tensors, [5], [0.1] + [0.0] * 6, 0, nearest)
        with pytest.raises(ValueError, match="state_dtype for float64 parameters must be one of float64, got .int8."):
            optim_step("float64", "int8", "sgd", tensors, [5], [0.1] + [0.0] * 6, 0, nearest)
        with pytest.raises(ValueError, match="state_dtype for float32 parameters must be one of float32, bfloat16, "
                                             "int8, got .float16."):
            optim_step("float32", "float16", "sgd", tensors, [5], [0.1] + [0.0] * 6, 0, nearest)
        with pytest.raises(ValueError, match="rule 'rprop' with these options takes no int8 state"):
            optim_step("float32", "int8", "rprop", tensors + [0] * 4, [5], [0.5, 1.2, 0, 1, 0], 0, nearest)
        with pytest.raises(ValueError, match="sgd: expected 3 pointers per tensor, got 2"):
            optim_step("float64", "float64", "sgd", tensors, [5], [0.1, 0.9] + [0.0] * 5, 0, nearest)
        with pytest.raises(ValueError, match="sgd: expected 4 pointers per tensor, got 3"):  # codes and absmax
            optim_step("float32", "int8", "sgd", tensors + [0], [5], [0.1, 0.9] + [0.0] * 5, 0, nearest)
    assert p.tolist() == [1.0] * 5
    # lr, momentum, dampening, weight_decay, nesterov, maximize, first_step: p += lr g.
    _C.cpu.optim_step("float64", "float64", "sgd", tensors, [5], [0.5, 0, 0, 0, False, True, False], 0, nearest)
    assert p.tolist() == [1.5] * 5


@needs_extension
def test_native_state_tables_are_pythons():
    assert _C.optim_state_dtypes == OF.STATE_STORAGE
    assert _C.optim_quant_block == OF.QUANT_BLOCK


# ---------------------------------------------------------------------------------------------
# Memory that overlaps, arrays changed after the first step, step counts, eps = 0.


def test_overlapping_arrays_are_refused_before_anything_changes(path, rng):
    buf = rng.standard_normal(30)
    p, q, g, h = buf[:10], buf[5:15], rng.standard_normal(10), rng.standard_normal(10)
    other = rng.standard_normal(10)
    before = buf.copy()
    with pytest.raises(ValueError, match=r"sgd_: params\[0\] and params\[1\] overlap in memory"):
        OF.sgd_([p, p], [g, h], lr=0.1)
    with pytest.raises(ValueError, match=r"params\[0\] and params\[1\] overlap"):
        OF.sgd_([p, q], [g, h], lr=0.1)
    with pytest.raises(ValueError, match=r"params\[1\] and grads\[0\] overlap"):
        OF.sgd_([other, p], [p, g], lr=0.1)
    m = np.zeros(10)
    with pytest.raises(ValueError, match=r"adam_: exp_avgs\[0\] and exp_avg_sqs\[0\] overlap"):
        OF.adam_([other], [g], [m], [m], step=1)
    with pytest.raises(ValueError, match=r"grads\[0\] and momentum_buffers\[0\] overlap"):
        OF.sgd_([other], [g], [g], lr=0.1, momentum=0.9)
    np.testing.assert_array_equal(buf, before)
    assert not m.any()


@pytest.mark.parametrize("rule,fn,states,kwargs", FUNCTIONAL, ids=[f[0] for f in FUNCTIONAL])
def test_a_gradient_may_be_its_own_parameter(path, rng, rule, fn, states, kwargs):
    # Every element is read before it is written, so g = p is well defined: the same update as
    # with a copy of p for the gradient.
    params, _, lists = functional_inputs(np, rng, [np.float64] * len(SHAPES), states)
    twin = [p.copy() for p in params], {k: [a.copy() for a in v] for k, v in lists.items()}
    fn(params, params, **lists, **kwargs)
    fn(twin[0], [p.copy() for p in twin[0]], **twin[1], **kwargs)
    for a, b in zip(params, twin[0]):
        np.testing.assert_array_equal(a, b)


def test_the_classes_refuse_overlapping_parameters_and_gradients(path, rng):
    base = rng.standard_normal(12)
    before = base.copy()
    opt = optim.SGD([base, base[4:]], lr=0.1)  # two arrays, one memory
    with pytest.raises(ValueError, match=r"SGD: param_groups\[0\]\['params'\]\[0\] and param_groups\[0\]\['params'\]\[1\] "
                                         "overlap"):
        opt.step([np.ones(12), np.ones(8)])
    np.testing.assert_array_equal(base, before)
    a, b = fastnn.nn.Parameter(rng.standard_normal(6), name="a"), fastnn.nn.Parameter(rng.standard_normal(6), name="b")
    b.grad = a.grad  # one gradient array for two parameters
    opt = optim.Adam([a, b], lr=0.1)
    with pytest.raises(ValueError, match="the gradient of 'a' .* and the gradient of 'b' .* overlap"):
        opt.step()
    b.grad = np.zeros(6)
    opt.step()
    a.grad = a.data  # its own parameter: allowed
    opt.step()


def test_an_array_made_read_only_or_resized_after_a_step_is_checked_again(path, rng):
    p, g = rng.standard_normal(8), rng.standard_normal(8)
    opt = optim.Adam([p], lr=0.1)
    opt.step([g])
    p.flags.writeable = False
    before = p.copy()
    with pytest.raises(ValueError, match="read-only"):
        opt.step([g])
    np.testing.assert_array_equal(p, before)
    param = fastnn.nn.Parameter(rng.standard_normal(8))
    param.grad[...] = 1.0
    opt = optim.SGD([param], lr=0.1, momentum=0.9)
    opt.step()
    param.data.resize(16, refcheck=False)  # same array object, new memory and shape
    with pytest.raises(ValueError, match=r"momentum_buffer.*\(8,\).*\(16,\)"):
        opt.step()
    fresh = rng.standard_normal(8)
    param.data, param.grad = fresh.copy(), np.ones(8)  # replaced: the new array is updated
    opt.step()
    np.testing.assert_allclose(param.data, fresh - 0.1 * (0.9 * 1.0 + 1.0))


def test_step_counts_out_of_range_name_the_step(path, rng):
    p, g, m, v = rng.standard_normal(4), rng.standard_normal(4), np.zeros(4), np.zeros(4)
    for step in (10**30, 2**53 + 1, 0, -3):
        with pytest.raises(ValueError, match="step"):
            OF.adam_([p], [g], [m], [v], step=step)
    with pytest.raises(ValueError, match="step"):
        OF.adagrad_([p], [g], [v], step=1e30)
    OF.adam_([p], [g], [m], [v], step=2**53)  # the largest step: exact in the kernels' float64
    opt = optim.Adam([p], lr=0.1)
    opt.step([g])
    for bad in (1e30, 10**400, float("inf"), 2.5):
        state = opt.state_dict()
        state = {"state": {0: dict(state["state"][0], step=bad)}, "param_groups": state["param_groups"]}
        with pytest.raises(ValueError, match="step"):
            opt.load_state_dict(state)
    assert opt.state[0]["step"] == 1


@pytest.mark.parametrize("cls", [optim.Adam, optim.Adagrad, optim.RMSprop])
def test_eps_zero_is_accepted_as_in_torch(path, rng, cls):
    params = make_params(np, rng, np.float64, shapes=[(20,)])
    grads = [make_grads(np, rng, params, t) for t in range(3)]
    expected = [p.copy() for p in params]
    run_steps(cls, dict(lr=0.01, eps=0.0), params, grads)
    with fastnn.use_backend("reference"):
        run_steps(cls, dict(lr=0.01, eps=0.0), expected, grads)
    assert_close(params[0], expected[0], np.float64)


def test_nesterov_is_checked_by_the_constructor_only(path, rng):
    p, q = rng.standard_normal(5), rng.standard_normal(5)
    with pytest.raises(ValueError, match="nesterov"):
        optim.SGD([p], lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="nesterov"):
        OF.sgd_([p], [q], lr=0.1, nesterov=True)
    opt = optim.SGD([p], lr=0.1, momentum=0.9, nesterov=True)
    opt.add_param_group({"params": [q], "momentum": 0.0})  # torch accepts it: plain SGD for q
    start = q.copy()
    opt.step([np.ones(5), np.ones(5)])
    np.testing.assert_allclose(q, start - 0.1)


# ---------------------------------------------------------------------------------------------
# float16 parameters: float32 math, each result rounded once when stored.


@pytest.mark.parametrize("cls,kwargs", CONFIGS, ids=IDS)
def test_float16_matches_the_reference(xp, path, rng, cls, kwargs):
    params = make_params(xp, rng, np.float16)
    grads = [make_grads(xp, rng, params, t) for t in range(5)]
    expected = [p.copy() for p in params]
    opt = run_steps(cls, kwargs, params, grads)
    with fastnn.use_backend("reference"):
        run_steps(cls, kwargs, expected, grads)
    for p, e in zip(params, expected):
        assert p.dtype == np.float16
        # The reference rounds a*b+c twice where the kernels round once: in float16 that is
        # at most an ulp here and there, more only after a cancellation.
        close = np.isclose(to_numpy(p).astype(np.float32), to_numpy(e).astype(np.float32), rtol=2e-3, atol=2e-3)
        assert close.mean() > 0.999
    assert all(s.dtype == np.float16 for state in opt.state.values() for k, s in state.items() if k != "step")


@pytest.mark.parametrize("name,kwargs", [("Adam", dict(lr=0.01, weight_decay=0.1)), ("AdamW", dict(lr=0.01)),
                                         ("SGD", dict(lr=0.1, momentum=0.9)), ("Adagrad", dict(lr=0.1))])
def test_float16_matches_torch_fused(rng, name, kwargs):
    torch = pytest.importorskip("torch")
    cls = {"Adam": optim.Adam, "AdamW": optim.AdamW, "SGD": optim.SGD, "Adagrad": optim.Adagrad}[name]
    params = make_params(np, rng, np.float16)
    tensors = [torch.tensor(p, requires_grad=True) for p in params]
    topt = getattr(torch.optim, name)(tensors, **kwargs, fused=True)
    grads = [make_grads(np, rng, params, t) for t in range(5)]
    run_steps(cls, kwargs, params, grads)
    for gs in grads:
        for t, g in zip(tensors, gs):
            t.grad = torch.tensor(g)
        topt.step()
    for p, t in zip(params, tensors):
        np.testing.assert_array_equal(p, t.detach().numpy())


def test_cpu_rounding_matches_torch_bit_for_bit(rng):
    # torch's CPU kernels (built for AVX2/AVX-512) round `g + wd p`, `b mu + (1 - d) g`,
    # `p - lr g`, addcmul and lerp once, with fused multiply-adds; the kernels here do the same.
    # Gradients that nearly cancel the decay make a second rounding visible. (Rules with a square
    # root can still differ by an ulp: torch's vectorized float32 sqrt is not correctly rounded.)
    torch = pytest.importorskip("torch")
    if not (_C is not None and _C.optim_cpu_fma and torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")):
        pytest.skip("needs fused multiply-adds in both builds")
    p = rng.standard_normal(100_003).astype(np.float32)
    g = (-0.1 * p.astype(np.float64) + 1e-7 * rng.standard_normal(p.shape)).astype(np.float32)
    for cls, kwargs in ((optim.SGD, dict(lr=0.5, weight_decay=0.1, momentum=0.9, dampening=0.1)),
                        (optim.SGD, dict(lr=0.5, weight_decay=0.1, momentum=0.9, nesterov=True)),
                        (optim.Rprop, dict(lr=0.1))):
        ours = p.copy()
        theirs = torch.tensor(p, requires_grad=True)
        opt, topt = cls([ours], **kwargs), getattr(torch.optim, TORCH_NAMES[cls])([theirs], **kwargs)
        for step in range(3):
            opt.step([g * (step + 1)])
            theirs.grad = torch.tensor(g * (step + 1))
            topt.step()
        np.testing.assert_array_equal(ours, theirs.detach().numpy())


def test_float16_is_widened_exactly_and_rounded_to_nearest_even(path, rng):
    # SGD with maximize and p = 0 stores lr * g: every float16 (widened, then stored back) and
    # float32 products in every range (subnormal, ties, overflow), against NumPy's conversion.
    every = np.arange(2**16, dtype=np.uint16).view(np.float16)
    p = np.zeros_like(every)
    with np.errstate(all="ignore"):  # (the reference path's NumPy on NaN and infinity)
        OF.sgd_([p], [every], lr=1.0, maximize=True)
    finite = np.isfinite(every)
    np.testing.assert_array_equal(p[finite], every[finite])
    assert np.isnan(p[np.isnan(every)]).all() and (p[np.isinf(every)] == every[np.isinf(every)]).all()
    g = rng.standard_normal(50_000).astype(np.float16)
    for scale in (1.0, 3.7e-5, 2.0**-20, 2.0**-26, 1.5e4, 7e4):
        p = np.zeros_like(g)
        with np.errstate(over="ignore"):
            expected = (np.float32(scale) * g.astype(np.float32)).astype(np.float16)
            OF.sgd_([p], [g], lr=scale, maximize=True)
        np.testing.assert_array_equal(p, expected)
