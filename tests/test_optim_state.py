"""The optimizer classes' interface: Parameters and plain arrays, parameter groups,
state_dict round trips and refusals, bad input refused before anything changes, and
capturable mode (its state handling runs on the CPU too; the CUDA graph test needs a GPU)."""

import math

import numpy as np
import pytest

import fastnn
from fastnn import optim
from fastnn.nn import Parameter
from test_optim import CONFIGS, IDS, make_grads, make_params
from util import assert_close


def snapshot(opt, params):
    return [p.copy() for p in params], {i: {k: (v.copy() if hasattr(v, "copy") else v) for k, v in s.items()}
                                        for i, s in opt.state.items()}


def assert_unchanged(opt, params, snap):
    for p, b in zip(params, snap[0]):
        np.testing.assert_array_equal(p, b)
    assert opt.state.keys() == snap[1].keys()
    for i, s in opt.state.items():
        for k, v in s.items():
            np.testing.assert_array_equal(v, snap[1][i][k])


# ---------------------------------------------------------------------------------------------
# Parameters, groups.


def test_parameters_read_grad_and_zero_grad(path, xp, rng):
    params = [Parameter(p, name=f"w{i}") for i, p in enumerate(make_params(xp, rng, np.float32))]
    arrays = [p.data.copy() for p in params]
    opt = optim.Adam(params, lr=0.01)
    twin = optim.Adam(arrays, lr=0.01)
    for t in range(3):
        grads = make_grads(xp, rng, arrays, t)
        for p, g in zip(params, grads):
            p.grad[...] = g
        opt.step()
        twin.step(grads)
        opt.zero_grad()
        assert all(float(abs(p.grad).sum()) == 0 for p in params)
    for p, a in zip(params, arrays):
        assert_close(p.data, a)


def test_param_groups_hyperparameters_change_between_steps(path, rng):
    a, b = make_params(np, rng, np.float64, [(50,), (60,)])
    opt = optim.SGD([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=0.1, momentum=0.9)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.5] and opt.param_groups[1]["momentum"] == 0.9
    a0, b0 = a.copy(), b.copy()
    ga, gb = rng.standard_normal(50), rng.standard_normal(60)
    opt.step([ga, gb])
    np.testing.assert_allclose(a, a0 - 0.1 * ga, rtol=1e-14)
    np.testing.assert_allclose(b, b0 - 0.5 * gb, rtol=1e-14)
    opt.param_groups[0]["lr"] = 0.01
    a1 = a.copy()
    opt.step([ga, gb])
    np.testing.assert_allclose(a, a1 - 0.01 * (0.9 * ga + ga), rtol=1e-14)
    c = rng.standard_normal(7)
    opt.add_param_group({"params": c, "lr": 1.0, "momentum": 0.0})
    c0 = c.copy()
    gc = rng.standard_normal(7)
    opt.step([ga, gb, gc])
    np.testing.assert_allclose(c, c0 - gc, rtol=1e-14)
    assert opt.state_dict()["param_groups"][2]["params"] == [2]


def test_hyperparameter_options_that_add_state_take_effect_mid_run(path, rng):
    p = rng.standard_normal(30)
    opt = optim.Adam([p], lr=0.01)
    opt.step([rng.standard_normal(30)])
    opt.param_groups[0]["amsgrad"] = True
    opt.step([rng.standard_normal(30)])
    np.testing.assert_array_equal(opt.state[0]["max_exp_avg_sq"], opt.state[0]["exp_avg_sq"])
    assert opt.state[0]["step"] == 2


def test_one_native_call_per_group_device_and_dtype(monkeypatch, rng):
    if not fastnn._backend.native_available("cpu"):
        pytest.skip("no native kernels")
    calls = []
    real = fastnn._backend.launch
    # launch(path, "optim_step", first, state_dtype, rule, pointers, sizes, hyper, scalars, rounding)
    monkeypatch.setattr(fastnn._backend, "launch", lambda *a: calls.append((a[1], a[4], len(a[6]))) or real(*a))
    params = make_params(np, rng, np.float32, [(10,)] * 150) + make_params(np, rng, np.float64, [(3,)] * 50)
    opt = optim.RMSprop(params, momentum=0.9, centered=True)
    opt.step([np.ones_like(p) for p in params])
    assert sorted(calls) == [("optim_step", "rmsprop", 50), ("optim_step", "rmsprop", 150)]


# ---------------------------------------------------------------------------------------------
# state_dict.


@pytest.mark.parametrize("capturable", [False, True])
@pytest.mark.parametrize("cls,kwargs", CONFIGS, ids=IDS)
def test_state_dict_round_trip_is_exact(path, xp, rng, cls, kwargs, capturable):
    params = make_params(xp, rng, np.float32, [(40, 3), (9,)])
    opt = cls(params, capturable=capturable, **kwargs)
    for t in range(4):
        opt.step(make_grads(xp, rng, params, t))
    copies = [p.copy() for p in params]
    twin = cls(copies, capturable=capturable, **kwargs)
    state = opt.state_dict()
    twin.load_state_dict(state)
    assert twin.state_dict()["param_groups"] == state["param_groups"]
    for t in range(4, 8):
        grads = make_grads(xp, rng, params, t)
        opt.step(grads)
        twin.step(grads)
    for a, b in zip(params, copies):
        np.testing.assert_array_equal(fastnn._backend.to_numpy(a), fastnn._backend.to_numpy(b))
    for i, entry in opt.state_dict()["state"].items():
        other = twin.state_dict()["state"][i]
        assert entry.keys() == other.keys()
        for key, value in entry.items():
            np.testing.assert_array_equal(fastnn._backend.to_numpy(value), fastnn._backend.to_numpy(other[key]))
        if "step" in entry:
            assert entry["step"] == 8


def test_state_dict_format_is_torch_optims(rng):
    p = rng.standard_normal((3, 2))
    opt = optim.Adam([Parameter(p, name="w")], lr=0.1, amsgrad=True)
    assert opt.state_dict() == {"state": {}, "param_groups": [dict(
        lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=True, maximize=False,
        decoupled_weight_decay=False, params=[0])]}
    opt.step()
    assert sorted(opt.state_dict()["state"][0]) == ["exp_avg", "exp_avg_sq", "max_exp_avg_sq", "step"]


def test_load_state_dict_refuses_mismatches_naming_the_parameter(rng):
    w = Parameter(rng.standard_normal((4, 3)), name="layer.weight")
    b = Parameter(rng.standard_normal(3), name="layer.bias")
    opt = optim.Adam([w, b])
    opt.step()
    state = opt.state_dict()
    with pytest.raises(ValueError, match=r"param_groups\[0\] has 1 parameters but the loaded one has 2"):
        optim.Adam([w]).load_state_dict(state)
    with pytest.raises(ValueError, match="1 parameter groups"):
        optim.Adam([{"params": [w]}, {"params": [b]}]).load_state_dict(state)
    other = optim.Adam([Parameter(np.zeros((3, 4)), name="layer.weight"), b])
    with pytest.raises(ValueError, match=r"'layer.weight'.*shape \(4, 3\) but the parameter has shape \(3, 4\)"):
        other.load_state_dict(state)
    bad = {"state": {0: dict(state["state"][0], exp_avg=np.zeros((4, 3), np.int64))},
           "param_groups": state["param_groups"]}
    with pytest.raises(TypeError, match="layer.weight.*int64"):
        optim.Adam([w, b]).load_state_dict(bad)
    bad = {"state": {0: dict(state["state"][0], momentum_buffer=np.zeros((4, 3)))}, "param_groups": state["param_groups"]}
    with pytest.raises(ValueError, match="unknown entry 'momentum_buffer'"):
        optim.Adam([w, b]).load_state_dict(bad)
    bad = {"state": {0: {"step": 3, "exp_avg": np.zeros((4, 3))}}, "param_groups": state["param_groups"]}
    with pytest.raises(ValueError, match="lacks"):
        optim.Adam([w, b]).load_state_dict(bad)
    bad = {"state": {}, "param_groups": [dict(state["param_groups"][0], lr=-1.0)]}
    with pytest.raises(ValueError, match="lr"):
        optim.Adam([w, b]).load_state_dict(bad)


def test_load_state_dict_casts_to_the_parameters_dtype_and_copies(rng):
    p32 = rng.standard_normal(6).astype(np.float32)
    opt = optim.RMSprop([p32.astype(np.float64)], momentum=0.5)
    opt.step([np.ones(6)])
    state = opt.state_dict()
    target = optim.RMSprop([p32], momentum=0.5)
    target.load_state_dict(state)
    assert target.state[0]["square_avg"].dtype == np.float32
    assert target.state[0]["square_avg"] is not state["state"][0]["square_avg"]
    target.step([np.ones(6, np.float32)])
    assert target.state[0]["step"] == 2 and opt.state[0]["step"] == 1


def test_load_state_dict_writes_into_existing_state_arrays(rng):
    # A captured CUDA graph holds the state's addresses: restoring a checkpoint must keep them.
    p = rng.standard_normal(5)
    opt = optim.Adam([p], capturable=True)
    opt.step([np.ones(5)])
    arrays, scalars = dict(opt.state[0]), dict(opt._scalars)
    other = optim.Adam([p.copy()], capturable=True, lr=0.5)
    for _ in range(3):
        other.step([2 * np.ones(5)])
    opt.load_state_dict(other.state_dict())
    assert all(opt.state[0][key] is value for key, value in arrays.items())
    assert all(opt._scalars[key] is value for key, value in scalars.items())
    np.testing.assert_array_equal(opt.state[0]["exp_avg"], other.state[0]["exp_avg"])
    assert list(next(iter(opt._scalars.values()))) == [0.5, 3.0]
    assert opt.state_dict()["state"][0]["step"] == 3


def test_a_refused_load_changes_nothing(rng):
    a, b = rng.standard_normal(4), rng.standard_normal(3)
    opt = optim.RMSprop([a, b], lr=0.1, momentum=0.5)
    opt.step([np.ones(4), np.ones(3)])
    snap = snapshot(opt, [a, b])
    state = opt.state_dict()
    bad = {"state": {0: {k: (v * 2 if k != "step" else 9) for k, v in state["state"][0].items()},
                     1: dict(state["state"][1], square_avg=np.zeros(4))},
           "param_groups": [dict(state["param_groups"][0], lr=0.7)]}
    with pytest.raises(ValueError, match="shape"):
        opt.load_state_dict(bad)
    assert_unchanged(opt, [a, b], snap)
    assert opt.param_groups[0]["lr"] == 0.1


def test_state_on_another_dtype_is_refused_until_reloaded(rng):
    w = Parameter(rng.standard_normal(5).astype(np.float32), name="w")
    opt = optim.Adam([w])
    opt.step()
    w.data, w.grad = w.data.astype(np.float64), w.grad.astype(np.float64)
    with pytest.raises(ValueError, match="'w'.*load_state_dict"):
        opt.step()
    opt.load_state_dict(opt.state_dict())
    opt.step()
    assert opt.state[0]["exp_avg"].dtype == np.float64 and opt.state[0]["step"] == 2


def test_loads_a_torch_optim_state_dict(rng):
    torch = pytest.importorskip("torch")
    t = torch.tensor(rng.standard_normal((5, 4)), requires_grad=True)
    topt = torch.optim.Adam([t], lr=0.01, amsgrad=True)
    for _ in range(3):
        t.grad = torch.tensor(rng.standard_normal((5, 4)))
        topt.step()
    p = t.detach().numpy().copy()
    opt = optim.Adam([p], lr=0.01, amsgrad=True)
    opt.load_state_dict(topt.state_dict())
    g = rng.standard_normal((5, 4))
    t.grad = torch.tensor(g)
    topt.step()
    opt.step([g])
    assert_close(p, t.detach().numpy(), rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------------------------
# Bad input.

BAD_CONSTRUCTION = [
    (optim.SGD, dict(lr=-0.1), "lr"),
    (optim.SGD, dict(lr=math.nan), "lr"),
    (optim.SGD, dict(momentum=-0.5), "momentum"),
    (optim.SGD, dict(nesterov=True), "nesterov"),
    (optim.SGD, dict(momentum=0.9, dampening=0.1, nesterov=True), "nesterov"),
    (optim.SGD, dict(weight_decay=-1.0), "weight_decay"),
    (optim.Adam, dict(betas=(1.0, 0.999)), "beta1"),
    (optim.Adam, dict(betas=(0.9, -0.1)), "beta2"),
    (optim.Adam, dict(betas=(0.9,)), "betas"),
    (optim.Adam, dict(eps=-1e-12), "eps"),
    (optim.AdamW, dict(eps=-1e-8), "eps"),
    (optim.AdamW, dict(lr=math.inf), "lr"),
    (optim.RMSprop, dict(alpha=-0.1), "alpha"),
    (optim.RMSprop, dict(momentum=-0.1), "momentum"),
    (optim.Adagrad, dict(lr_decay=-1.0), "lr_decay"),
    (optim.Adagrad, dict(initial_accumulator_value=-1.0), "initial_accumulator_value"),
    (optim.Adagrad, dict(eps=-1.0), "eps"),
    (optim.Rprop, dict(etas=(1.5, 1.2)), "etaminus"),
    (optim.Rprop, dict(etas=(0.5, 0.9)), "etaplus"),
    (optim.Rprop, dict(step_sizes=(1.0, 0.1)), "step_size_min"),
    (optim.Rprop, dict(lr=-1.0), "lr"),
]


@pytest.mark.parametrize("cls,kwargs,name", BAD_CONSTRUCTION)
def test_bad_hyperparameters_fail_at_construction(rng, cls, kwargs, name):
    with pytest.raises(ValueError, match=name):
        cls([rng.standard_normal(3)], **kwargs)


def test_bad_params_fail_at_construction(rng):
    with pytest.raises(ValueError, match="empty"):
        optim.SGD([])
    p = rng.standard_normal(3)
    with pytest.raises(ValueError, match="more than one group"):
        optim.SGD([p, p])
    with pytest.raises(TypeError, match="single"):
        optim.SGD(p)
    with pytest.raises(TypeError, match="float32, float64 or float16"):
        optim.SGD([np.zeros(3, np.int32)])
    frozen = np.zeros(3)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        optim.SGD([frozen])


@pytest.mark.parametrize("cls,kwargs", CONFIGS, ids=IDS)
def test_bad_gradients_change_nothing(path, rng, cls, kwargs):
    params = make_params(np, rng, np.float64, [(10,), (4, 5)])
    opt = cls(params, **kwargs)
    opt.step(make_grads(np, rng, params, 0))
    snap = snapshot(opt, params)
    good = make_grads(np, rng, params, 1)
    with pytest.raises(ValueError, match="2 parameters"):
        opt.step(good[:1])
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['params'\]\[1\].*shape"):
        opt.step([good[0], np.zeros((5, 4))])
    with pytest.raises(TypeError, match="float64"):
        opt.step([good[0], good[1].astype(np.float32)])
    with pytest.raises(ValueError, match="contiguous"):
        opt.step([good[0], np.asfortranarray(good[1])])
    with pytest.raises(TypeError, match="plain array"):
        opt.step()
    opt.param_groups[0]["lr"] = -1.0
    with pytest.raises(ValueError, match="lr"):
        opt.step(good)
    assert_unchanged(opt, params, snap)


def test_bad_parameter_gradient_in_a_later_group_changes_nothing(rng):
    a, b = Parameter(rng.standard_normal(8), name="a"), Parameter(rng.standard_normal(8), name="b")
    opt = optim.SGD([{"params": [a]}, {"params": [b]}], lr=0.1, momentum=0.9)
    b.grad = np.zeros(8, np.float32)
    with pytest.raises(TypeError, match="'b'"):
        opt.step()
    assert opt.state == {}
    b.grad = np.zeros(8)
    opt.step()
    # The buffers were created by the step that ran: set to the gradient (torch's first step).
    np.testing.assert_array_equal(opt.state[0]["momentum_buffer"], a.grad)


# ---------------------------------------------------------------------------------------------
# Capturable mode.


@pytest.mark.parametrize("cls,kwargs", CONFIGS, ids=IDS)
def test_capturable_matches_normal_mode(path, xp, rng, cls, kwargs):
    params = make_params(xp, rng, np.float64, [(30,), (4, 5)])
    copies = [p.copy() for p in params]
    opt = cls(params, capturable=True, **kwargs)
    twin = cls(copies, **kwargs)
    for t in range(6):
        grads = make_grads(xp, rng, params, t)
        if t == 3 and "lr" in opt.param_groups[0]:
            opt.param_groups[0]["lr"] *= 0.5
            twin.param_groups[0]["lr"] *= 0.5
        opt.step(grads)
        twin.step(grads)
    for a, b in zip(params, copies):
        assert_close(a, b, rtol=1e-13, atol=1e-15)
    for i, entry in opt.state_dict()["state"].items():
        assert entry.get("step") == twin.state_dict()["state"][i].get("step")


def test_capturable_keeps_lr_and_step_in_a_device_array(path, rng):
    params = [rng.standard_normal(12), rng.standard_normal(5).astype(np.float32), rng.standard_normal(3)]
    opt = optim.Adam([{"params": params[:2]}, {"params": params[2:], "lr": 0.5}], lr=0.1, capturable=True)
    grads = [np.ones_like(p) for p in params]
    opt.step(grads)
    opt.step(grads)
    scalars = {key: list(s) for key, s in opt._scalars.items()}
    # One [lr, step] array per group, device and dtype.
    assert sorted(scalars.values()) == [[0.1, 2.0], [0.1, 2.0], [0.5, 2.0]]
    assert all("step" not in s for s in opt.state.values())
    assert [e["step"] for e in opt.state_dict()["state"].values()] == [2, 2, 2]
    # Between graph replays, lr reaches the device through sync_lr (schedules call it).
    opt.param_groups[0]["lr"] = 0.01
    opt.sync_lr()
    assert sorted(float(s[0]) for s in opt._scalars.values()) == [0.01, 0.01, 0.5]
    # Emulate a replay: the kernel runs with what the array holds, without step() bookkeeping.
    key = next(k for k in opt._scalars if k[0] == 1)
    opt._scalars[key][1] = 10.0
    assert opt.state_dict()["state"][2]["step"] == 10


def test_capturable_load_requires_one_step_per_group(rng):
    p, q = rng.standard_normal(4), rng.standard_normal(4)
    opt = optim.Adam([p, q])
    opt.step([np.ones(4), np.ones(4)])
    state = opt.state_dict()
    state["state"][1]["step"] = 7
    with pytest.raises(ValueError, match="one step count per group"):
        optim.Adam([p.copy(), q.copy()], capturable=True).load_state_dict(state)
    normal = optim.Adam([p.copy(), q.copy()])
    normal.load_state_dict(state)
    normal.step([np.ones(4), np.ones(4)])  # different steps: two native calls, both right
    assert [normal.state[i]["step"] for i in (0, 1)] == [2, 8]


@pytest.mark.gpu
@pytest.mark.parametrize("cls,kwargs", [(optim.Adam, dict(lr=0.01, weight_decay=0.1)), (optim.AdamW, {}),
                                        (optim.SGD, dict(lr=0.1, momentum=0.9)), (optim.RMSprop, dict(centered=True)),
                                        (optim.Adagrad, dict(lr_decay=0.01)), (optim.Rprop, {})])
def test_captured_step_replays_like_eager_steps(rng, cls, kwargs):
    import cupy

    params = make_params(cupy, rng, np.float32, [(1000,), (37, 5), (70000,)])
    grads = [cupy.zeros_like(p) for p in params]
    copies = [p.copy() for p in params]
    opt = cls(params, capturable=True, **kwargs)
    twin = cls(copies, **kwargs)
    sched = optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    twin_sched = optim.lr_scheduler.StepLR(twin, step_size=2, gamma=0.5)
    host_grads = [make_grads(np, rng, [fastnn._backend.to_numpy(p) for p in params], t) for t in range(6)]

    def load(t):
        for g, h in zip(grads, host_grads[t]):
            g.set(h)

    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        load(0)
        opt.step(grads)  # eager: creates the state
        stream.begin_capture()
        opt.step(grads)
        graph = stream.end_capture()
    twin.step([g.copy() for g in grads])
    twin_sched.step()
    for t in range(1, 6):
        with stream:
            sched.step()  # the lr write and the replay share the stream: ordered
            load(t)
            graph.launch(stream)
        stream.synchronize()
        twin.step([cupy.asarray(h) for h in host_grads[t]])
        twin_sched.step()
    for a, b in zip(params, copies):
        assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert opt.state_dict()["state"][0].get("step", 6) == 6
