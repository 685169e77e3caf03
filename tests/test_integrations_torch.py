"""fastnn.integrations.torch: torch.optim.Optimizer subclasses running fastnn's kernels, against
torch.optim on every rule and option, in place, with interchangeable state dicts."""

import copy

import numpy as np
import pytest

from fastnn import optim as fastnn_optim
from test_optim import CONFIGS, IDS, TORCH_NAMES, make_grads

torch = pytest.importorskip("torch")
FT = pytest.importorskip("fastnn.integrations.torch")

DTYPES = [torch.float32, torch.float64]


def twin_tensors(rng, dtype, device="cpu", shapes=((40, 30), (7,), (1,))):
    made = [torch.tensor(rng.standard_normal(s), dtype=dtype, device=device) for s in shapes]
    return [t.clone().requires_grad_() for t in made], [t.clone().requires_grad_() for t in made]


def set_grads(tensors, grads):
    for t, g in zip(tensors, grads):
        t.grad = torch.as_tensor(g, device=t.device)


def step_in_lockstep(rng, opts, groups, steps, first=0):
    """Steps ``first`` .. ``first + steps - 1`` of each optimizer in ``opts``, the same random
    gradients set on each tensor list of ``groups`` (one list per optimizer) before its step."""
    for step in range(first, first + steps):
        grads = make_grads(np, rng, [t.detach().cpu().numpy() for t in groups[0]], step)
        for tensors, opt in zip(groups, opts):
            set_grads(tensors, grads)
            opt.step()


def run_both(rng, cls, kwargs, dtype, device="cpu", steps=20):
    ours, theirs = twin_tensors(rng, dtype, device)
    opt = getattr(FT, TORCH_NAMES[cls])(ours, **kwargs)
    topt = getattr(torch.optim, TORCH_NAMES[cls])(theirs, **kwargs)
    pointers = [t.data_ptr() for t in ours]
    step_in_lockstep(rng, (opt, topt), (ours, theirs), steps)
    assert [t.data_ptr() for t in ours] == pointers
    return ours, theirs, opt, topt


def assert_tensors_close(a, b, dtype):
    tol = dict(rtol=2e-5, atol=2e-6) if dtype == torch.float32 else dict(rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(a.detach().cpu().numpy(), b.detach().cpu().numpy(), **tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cls,kwargs", CONFIGS, ids=IDS)
def test_matches_torch_optim(path, rng, cls, kwargs, dtype):
    ours, theirs, opt, topt = run_both(rng, cls, kwargs, dtype)
    for a, b in zip(ours, theirs):
        assert_tensors_close(a, b, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("cls,kwargs", CONFIGS, ids=IDS)
def test_matches_torch_optim_on_cuda(rng, cls, kwargs):
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    ours, theirs, opt, topt = run_both(rng, cls, kwargs, torch.float32, "cuda")
    for a, b in zip(ours, theirs):
        assert_tensors_close(a, b, torch.float32)


@pytest.mark.parametrize("cls,kwargs", CONFIGS, ids=IDS)
def test_state_dicts_are_interchangeable_with_torch_optim(rng, cls, kwargs):
    ours, theirs, opt, topt = run_both(rng, cls, kwargs, torch.float64, steps=5)
    # fastnn -> torch -> fastnn, then both continue identically. (torch's load_state_dict keeps
    # tensors that need no cast, so the dicts are deep-copied to keep the optimizers apart.)
    topt.load_state_dict(copy.deepcopy(opt.state_dict()))
    copies = [t.detach().clone().requires_grad_() for t in ours]
    back = getattr(FT, TORCH_NAMES[cls])(copies, **kwargs)
    back.load_state_dict(copy.deepcopy(topt.state_dict()))
    step_in_lockstep(rng, (opt, back), (ours, copies), 5, first=5)
    for a, b in zip(ours, copies):
        np.testing.assert_array_equal(a.detach().numpy(), b.detach().numpy())


def test_parameters_without_gradient_are_skipped(rng):
    a, b = torch.zeros(4, requires_grad=True), torch.zeros(3, requires_grad=True)
    opt = FT.Adam([a, b], lr=0.1)
    a.grad = torch.ones(4)
    opt.step()
    assert float(a.detach().sum()) == pytest.approx(-0.4) and float(b.detach().abs().sum()) == 0
    assert b not in opt.state and int(opt.state[a]["step"]) == 1


def test_closure_is_evaluated_and_its_loss_returned(rng):
    w = torch.ones(3, requires_grad=True)
    opt = FT.SGD([w], lr=0.5)

    def closure():
        opt.zero_grad()
        loss = (w * w).sum()
        loss.backward()
        return loss

    assert float(opt.step(closure).detach()) == 3.0
    np.testing.assert_allclose(w.detach().numpy(), np.zeros(3))


def test_a_training_loop_with_a_module(rng):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    reference = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    reference.load_state_dict(model.state_dict())
    opt = FT.AdamW(model.parameters(), lr=1e-2)
    topt = torch.optim.AdamW(reference.parameters(), lr=1e-2)
    x, y = torch.randn(64, 8), torch.randn(64, 1)
    for _ in range(10):
        for m, o in ((model, opt), (reference, topt)):
            o.zero_grad()
            torch.nn.functional.mse_loss(m(x), y).backward()
            o.step()
    for a, b in zip(model.parameters(), reference.parameters()):
        assert_tensors_close(a, b, torch.float32)


def test_bad_tensors_change_nothing(rng):
    a, b = torch.ones(4, requires_grad=True), torch.ones(3, 2, requires_grad=True)
    opt = FT.Adam([a, b], lr=0.1)
    a.grad = torch.ones(4)
    b.grad = torch.ones(3, 2).to_sparse()
    with pytest.raises(RuntimeError, match="Adam does not support sparse gradients"):
        opt.step()
    assert float(a.detach().sum()) == 4.0 and len(opt.state) == 0
    n = torch.ones(3, dtype=torch.int32)
    n.grad = torch.ones(3, dtype=torch.int32)
    with pytest.raises(TypeError, match="int32"):
        FT.SGD([n], lr=0.1).step()
    with pytest.raises(ValueError, match="beta1"):
        FT.Adam([a], betas=(1.5, 0.9))
    with pytest.raises(ValueError, match="nesterov"):
        FT.SGD([a], nesterov=True)
    opt = FT.Adam([a], lr=0.1)
    opt.step()
    for bad in (1e30, float("inf"), 2.5):
        state = copy.deepcopy(opt.state_dict())
        state["state"][0]["step"] = torch.tensor(bad, dtype=torch.float64)
        opt.load_state_dict(state)
        with pytest.raises(ValueError, match="step"):
            opt.step()
    s = torch.ones(4, requires_grad=True)
    s.grad = torch.ones(4).to_sparse()
    with pytest.raises(RuntimeError, match="weight_decay option is not compatible with sparse gradients"):
        FT.Adagrad([s], weight_decay=0.1).step()
    assert float(s.detach().sum()) == 4.0


# ---------------------------------------------------------------------------------------------
# torch.optim's arguments and group semantics.

TORCH_FLAGS = {"SGD": dict(foreach=True, fused=False, differentiable=False),
               "Adagrad": dict(foreach=False, fused=True, differentiable=False),
               "RMSprop": dict(foreach=True, capturable=False, differentiable=False),
               "Adam": dict(foreach=None, fused=True, capturable=False, differentiable=False),
               "AdamW": dict(foreach=False, fused=None, capturable=False, differentiable=False),
               "Rprop": dict(foreach=True, capturable=False, differentiable=False)}


@pytest.mark.parametrize("name", list(TORCH_FLAGS))
def test_torch_keyword_arguments_are_accepted_and_kept(rng, name):
    ours, theirs = twin_tensors(rng, torch.float32)
    opt = getattr(FT, name)(ours, **TORCH_FLAGS[name])
    topt = getattr(torch.optim, name)(theirs, **TORCH_FLAGS[name])
    assert opt.param_groups[0].keys() == topt.param_groups[0].keys()
    assert {k: v for k, v in opt.param_groups[0].items() if k != "params"} == \
        {k: v for k, v in topt.param_groups[0].items() if k != "params"}
    step_in_lockstep(rng, (opt, topt), (ours, theirs), 3)
    for a, b in zip(ours, theirs):
        assert_tensors_close(a, b, torch.float32)
    with pytest.raises(NotImplementedError, match="differentiable=True"):
        getattr(FT, name)(ours, differentiable=True)


def test_adagrad_takes_its_initial_accumulator_from_the_constructor(rng):
    # torch creates Adagrad's state at construction, from the constructor's value; a group's
    # own value is ignored, also for a group added later.
    ours, theirs = twin_tensors(rng, torch.float64)
    extra = torch.tensor(rng.standard_normal(6), requires_grad=True)
    extra_twin = extra.detach().clone().requires_grad_()
    opts = []
    for tensors, add, cls in ((ours, extra, FT.Adagrad), (theirs, extra_twin, torch.optim.Adagrad)):
        opt = cls([{"params": tensors[:2], "initial_accumulator_value": 5.0}, {"params": tensors[2:]}],
                  lr=0.1, initial_accumulator_value=0.5)
        assert len(opt.state) == 3 and float(opt.state[tensors[0]]["sum"][0, 0]) == 0.5
        assert float(opt.state[tensors[0]]["step"]) == 0
        opt.add_param_group({"params": [add], "initial_accumulator_value": 7.0})
        opts.append(opt)
    step_in_lockstep(rng, opts, (ours + [extra], theirs + [extra_twin]), 3)
    for a, b in zip(ours + [extra], theirs + [extra_twin]):
        assert_tensors_close(a, b, torch.float64)
    np.testing.assert_allclose(opts[0].state[extra]["sum"].numpy(), opts[1].state[extra_twin]["sum"].numpy())


def test_nesterov_is_checked_at_construction_only(rng):
    ours, theirs = twin_tensors(rng, torch.float64)
    opts = []
    for tensors, cls in ((ours, FT.SGD), (theirs, torch.optim.SGD)):
        opt = cls(tensors[:1], lr=0.1, momentum=0.9, nesterov=True)
        opt.add_param_group({"params": tensors[1:], "momentum": 0.0})  # nesterov=True, momentum 0
        opt.param_groups[0]["dampening"] = 0.5  # changed later: the formula as written
        opts.append(opt)
    step_in_lockstep(rng, opts, (ours, theirs), 4)
    for a, b in zip(ours, theirs):
        assert_tensors_close(a, b, torch.float64)


@pytest.mark.parametrize("name", ["Adam", "Adagrad", "RMSprop"])
def test_eps_zero_is_accepted(rng, name):
    ours, theirs = twin_tensors(rng, torch.float64)
    opt, topt = getattr(FT, name)(ours, eps=0.0), getattr(torch.optim, name)(theirs, eps=0.0)
    step_in_lockstep(rng, (opt, topt), (ours, theirs), 3)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=1e-11, atol=1e-13)


def test_tensor_lr_and_betas(rng):
    ours, theirs = twin_tensors(rng, torch.float32)
    kwargs = lambda: dict(lr=torch.tensor(0.01), betas=(torch.tensor(0.8), torch.tensor(0.95)))  # noqa: E731
    opt, topt = FT.Adam(ours, **kwargs()), torch.optim.Adam(theirs, **kwargs())
    step_in_lockstep(rng, (opt, topt), (ours, theirs), 3)
    for a, b in zip(ours, theirs):
        assert_tensors_close(a, b, torch.float32)


# ---------------------------------------------------------------------------------------------
# Parameters of every layout and dtype torch.optim takes.


def step_twins(ours, theirs, opt, topt, grads_fn, steps=4):
    for step in range(steps):
        for a, b in zip(ours, theirs):
            g = grads_fn(a, step)
            a.grad = g.clone(memory_format=torch.preserve_format)
            b.grad = g.clone(memory_format=torch.preserve_format)
        opt.step()
        topt.step()


def random_grad(rng):
    def make(p, step):
        g = torch.tensor(rng.standard_normal(tuple(p.shape)), dtype=torch.float64).to(p.dtype)
        return torch.empty_like(p).copy_(g)  # laid out like the parameter, as backward() does
    return make


@pytest.mark.parametrize("name,kwargs", [("Adam", dict(lr=0.01, weight_decay=0.1)),
                                         ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True)),
                                         ("RMSprop", dict(lr=0.01, centered=True, momentum=0.5))])
def test_dense_non_contiguous_parameters_are_updated_as_their_memory(rng, name, kwargs):
    torch.manual_seed(0)
    transposed = torch.randn(6, 5).t()
    conv = torch.randn(4, 3, 3, 3).to(memory_format=torch.channels_last)
    ours = [t.clone(memory_format=torch.preserve_format).requires_grad_() for t in (transposed, conv)]
    theirs = [t.clone(memory_format=torch.preserve_format).requires_grad_() for t in (transposed, conv)]
    pointers = [t.data_ptr() for t in ours]
    opt, topt = getattr(FT, name)(ours, **kwargs), getattr(torch.optim, name)(theirs, **kwargs)
    step_twins(ours, theirs, opt, topt, random_grad(rng))
    assert [t.data_ptr() for t in ours] == pointers
    for a, b in zip(ours, theirs):
        assert not a.is_contiguous()
        assert_tensors_close(a, b, torch.float32)
        for key, value in opt.state[a].items():
            if key != "step":
                assert value.stride() == a.stride(), key  # created like torch's (preserve_format)
                assert_tensors_close(value, topt.state[b][key], torch.float32)


def test_strided_views_and_gradients_laid_out_otherwise(rng):
    torch.manual_seed(0)
    base = torch.randn(6, 8, dtype=torch.float64)
    twin = base.clone()
    ours = [base[:, ::2], torch.randn(5, 4, dtype=torch.float64).t()]
    theirs = [twin[:, ::2], ours[1].detach().clone(memory_format=torch.preserve_format)]
    for t in ours + theirs:
        t.requires_grad_()
    opt, topt = FT.Adam(ours, lr=0.1), torch.optim.Adam(theirs, lr=0.1)

    def contiguous_grad(p, step):
        return torch.tensor(rng.standard_normal(tuple(p.shape)), dtype=p.dtype)

    step_twins(ours, theirs, opt, topt, contiguous_grad)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(base[:, 1::2].numpy(), twin[:, 1::2].numpy())  # the gaps untouched
    np.testing.assert_allclose(base.numpy(), twin.numpy(), rtol=1e-12, atol=1e-14)


HALF_CONFIGS = [("Adam", dict(lr=0.01, weight_decay=0.1)), ("Adam", dict(lr=0.01, amsgrad=True, maximize=True)),
                ("AdamW", dict(lr=0.01)), ("SGD", dict(lr=0.1, momentum=0.9, weight_decay=0.01)),
                ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True)), ("Adagrad", dict(lr=0.1, weight_decay=0.1))]


def ulps(a, b):
    """How many representable values apart a and b are, element by element (16-bit floats)."""
    def ordered(t):
        bits = t.detach().contiguous().view(torch.int16).int()
        return torch.where(bits < 0, -(bits & 0x7FFF), bits)
    return (ordered(a) - ordered(b)).abs()


def assert_within_one_ulp(a, b):
    torch.testing.assert_close(a.detach(), b.detach())
    assert int(ulps(a, b).max()) <= 1


def half_twins(dtype, device):
    torch.manual_seed(0)
    made = [torch.randn(s, device=device).to(dtype) for s in ((300, 170), (7,), (33, 3), (1,))]
    made.append(torch.randn(10, 12, device=device).to(dtype).t())
    return ([t.clone(memory_format=torch.preserve_format).requires_grad_() for t in made],
            [t.clone(memory_format=torch.preserve_format).requires_grad_() for t in made])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name,kwargs", HALF_CONFIGS)
def test_half_precision_matches_torch_fused(rng, name, kwargs, dtype):
    # float32 math, state stored in the parameter's dtype: torch's fused CPU kernels.
    ours, theirs = half_twins(dtype, "cpu")
    opt = getattr(FT, name)(ours, **kwargs)
    topt = getattr(torch.optim, name)(theirs, **kwargs, fused=True)
    step_twins(ours, theirs, opt, topt, random_grad(rng), steps=6)
    for a, b in zip(ours, theirs):
        assert a.dtype == dtype
        assert_within_one_ulp(a, b)
        for key, value in opt.state[a].items():
            if key != "step":
                assert value.dtype == dtype
                assert_within_one_ulp(value, topt.state[b][key])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name,kwargs", HALF_CONFIGS)
def test_half_precision_matches_torch_fused_on_cuda(rng, name, kwargs, dtype):
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    ours, theirs = half_twins(dtype, "cuda")
    opt = getattr(FT, name)(ours, **kwargs)
    topt = getattr(torch.optim, name)(theirs, **kwargs, fused=True)
    step_twins(ours, theirs, opt, topt, random_grad(rng), steps=6)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.detach(), b.detach())
        for key, value in opt.state[a].items():
            if key != "step":
                torch.testing.assert_close(value, topt.state[b][key])


@pytest.mark.parametrize("cls,kwargs", CONFIGS, ids=IDS)
def test_complex_parameters_match_torch_optim(path, rng, cls, kwargs):
    torch.manual_seed(0)
    made = [torch.randn(s, dtype=torch.complex64) for s in ((20, 7), (5,), (1,))]
    ours = [t.clone().requires_grad_() for t in made]
    theirs = [t.clone().requires_grad_() for t in made]
    name = TORCH_NAMES[cls]
    opt, topt = getattr(FT, name)(ours, **kwargs), getattr(torch.optim, name)(theirs, **kwargs)
    step_twins(ours, theirs, opt, topt, lambda p, step: torch.randn(p.shape, dtype=p.dtype), steps=5)
    for a, b in zip(ours, theirs):
        assert a.dtype == torch.complex64
        torch.testing.assert_close(a.detach(), b.detach(), rtol=2e-5, atol=2e-6)
        for key, value in opt.state[a].items():
            torch.testing.assert_close(value, topt.state[b][key], rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("name,kwargs", [("SGD", dict(lr=0.1)), ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.2)),
                                         ("Adagrad", dict(lr=0.1, lr_decay=0.01))])
def test_sparse_gradients_follow_torch(rng, name, kwargs):
    torch.manual_seed(0)
    made = [torch.randn(10, 4), torch.randn(6)]
    ours = [t.clone().requires_grad_() for t in made]
    theirs = [t.clone().requires_grad_() for t in made]
    opt, topt = getattr(FT, name)(ours, **kwargs), getattr(torch.optim, name)(theirs, **kwargs)
    with torch.sparse.check_sparse_tensor_invariants():  # (torch warns when they are left implicit)
        for step in range(3):
            rows = torch.tensor([[1, 3, 3, 7][step:]])  # repeated rows: torch coalesces
            sparse = torch.sparse_coo_tensor(rows, torch.randn(rows.shape[1], 4), (10, 4))
            dense = torch.randn(6)
            for group in (ours, theirs):
                group[0].grad, group[1].grad = sparse.clone(), dense.clone()
            opt.step()
            topt.step()
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=2e-6, atol=2e-7)


def test_capturable_mode_on_the_cpu(rng):
    # torch refuses capturable on the CPU; fastnn runs the same device-side bookkeeping there,
    # with the same results as a normal step.
    ours, theirs = twin_tensors(rng, torch.float64)
    opt = FT.Adam(ours, lr=0.01, weight_decay=0.1, capturable=True)
    topt = torch.optim.Adam(theirs, lr=0.01, weight_decay=0.1)
    for step in range(4):
        if step == 2:
            for group in (opt.param_groups[0], topt.param_groups[0]):
                group["lr"] = 0.02
        grads = make_grads(np, rng, [t.detach().numpy() for t in ours], step)
        set_grads(ours, grads)
        set_grads(theirs, grads)
        opt.step()
        topt.step()
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=1e-11, atol=1e-13)
        assert float(opt.state[a]["step"]) == 4
    state = copy.deepcopy(opt.state_dict())
    assert state["param_groups"][0]["capturable"] is True
    state["state"][0]["step"] = torch.tensor(9.0)
    opt.load_state_dict(state)
    set_grads(ours, make_grads(np, rng, [t.detach().numpy() for t in ours], 5))
    with pytest.raises(ValueError, match="one step count"):
        opt.step()


@pytest.mark.gpu
def test_capturable_step_replays_in_a_cuda_graph(rng):
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    torch.manual_seed(0)
    made = [torch.randn(s, device="cuda") for s in ((64, 32), (32,))]
    ours = [t.clone().requires_grad_() for t in made]
    theirs = [t.clone().requires_grad_() for t in made]
    grads = [torch.randn_like(t) for t in made]
    opt = FT.AdamW(ours, lr=0.01, capturable=True)
    topt = torch.optim.AdamW(theirs, lr=0.01)
    for a, b, g in zip(ours, theirs, grads):
        a.grad, b.grad = g.clone(), g.clone()
    opt.step()
    topt.step()
    graph = torch.cuda.CUDAGraph()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        with torch.cuda.graph(graph):
            opt.step()
    torch.cuda.current_stream().wait_stream(side)
    for _ in range(3):
        graph.replay()
        topt.step()
    torch.cuda.synchronize()
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.detach(), b.detach())
        assert float(opt.state[a]["step"]) == 4


def test_rounding_matches_torch_bit_for_bit(rng):
    # torch rounds `g + wd * p`, `b * mu + (1 - d) g` and `p - lr g` once (fused multiply-adds
    # on CPUs with FMA); so does fastnn. Gradients that nearly cancel the decay make a second
    # rounding visible. (Rules with a square root may differ by torch's vectorized sqrt, which is
    # not correctly rounded.)
    if not (FT.B._C.optim_cpu_fma and torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")):
        pytest.skip("needs fused multiply-adds in both builds")
    p = torch.tensor(rng.standard_normal(100_003), dtype=torch.float32)
    wd = 0.1
    g = (-wd * p.double() + 1e-7 * torch.tensor(rng.standard_normal(p.shape))).float()
    for name, kwargs in (("SGD", dict(lr=0.5, weight_decay=wd, momentum=0.9, dampening=0.1)),
                         ("SGD", dict(lr=0.5, weight_decay=wd, momentum=0.9, nesterov=True)),
                         ("Rprop", dict(lr=0.1))):
        ours, theirs = p.clone().requires_grad_(), p.clone().requires_grad_()
        opt, topt = getattr(FT, name)([ours], **kwargs), getattr(torch.optim, name)([theirs], **kwargs)
        for step in range(3):
            ours.grad, theirs.grad = g * (step + 1), g * (step + 1)
            opt.step()
            topt.step()
        np.testing.assert_array_equal(ours.detach().numpy(), theirs.detach().numpy())


def test_parameters_that_are_views_of_one_another_are_refused(rng):
    base = torch.zeros(10)
    a, b = base[:6].requires_grad_(), base[4:].requires_grad_()
    a.grad, b.grad = torch.ones(6), torch.ones(6)
    opt = FT.SGD([a, b], lr=0.1)
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['params'\]\[0\] and param_groups\[0\]\['params'\]\[1\] "
                                         "overlap"):
        opt.step()
    assert float(base.abs().sum()) == 0


def test_bfloat16_is_widened_exactly_and_rounded_to_nearest_even(rng):
    # SGD with maximize and p = 0 stores lr * g: every bfloat16 (widened, then stored back) and
    # float32 products in every range, against torch's own conversion.
    every = torch.arange(2**16, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    p, g = torch.zeros_like(every).requires_grad_(), every.clone()
    p.grad = g
    FT.SGD([p], lr=1.0, maximize=True).step()
    finite = torch.isfinite(every)
    assert torch.equal(p.detach()[finite], every[finite])
    assert torch.isnan(p.detach()[torch.isnan(every)]).all()
    g = torch.tensor(rng.standard_normal(50_000), dtype=torch.bfloat16)
    for scale in (1.0, 3.7e-5, 2.0**-130, 1e38, 3e38):
        p = torch.zeros_like(g).requires_grad_()
        p.grad = g.clone()
        FT.SGD([p], lr=scale, maximize=True).step()
        expected = (torch.tensor(scale, dtype=torch.float32) * g.float()).to(torch.bfloat16)
        assert torch.equal(p.detach(), expected)


def test_a_state_dict_with_plain_number_steps_loads(rng):
    # Old torch state dicts hold "step" as a number; torch converts it on the next step.
    ours, theirs, opt, topt = run_both(rng, fastnn_optim.Adam, dict(lr=0.01), torch.float64, steps=2)
    state = copy.deepcopy(opt.state_dict())
    for entry in state["state"].values():
        entry["step"] = float(entry["step"])
    opt.load_state_dict(state)
    grads = make_grads(np, rng, [t.detach().numpy() for t in ours], 2)
    set_grads(ours, grads)
    set_grads(theirs, grads)
    opt.step()
    topt.step()
    for a, b in zip(ours, theirs):
        assert_tensors_close(a, b, torch.float64)
    assert all(isinstance(s["step"], torch.Tensor) and float(s["step"]) == 3 for s in opt.state.values())
