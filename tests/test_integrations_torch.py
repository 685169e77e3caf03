"""fastnn.integrations.torch: torch.optim.Optimizer subclasses running fastnn's kernels, against
torch.optim on every rule and option, in place, with interchangeable state dicts."""

import copy

import numpy as np
import pytest

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


def run_both(rng, cls, kwargs, dtype, device="cpu", steps=20):
    ours, theirs = twin_tensors(rng, dtype, device)
    opt = getattr(FT, TORCH_NAMES[cls])(ours, **kwargs)
    topt = getattr(torch.optim, TORCH_NAMES[cls])(theirs, **kwargs)
    pointers = [t.data_ptr() for t in ours]
    for step in range(steps):
        grads = make_grads(np, rng, [t.detach().cpu().numpy() for t in ours], step)
        set_grads(ours, grads)
        set_grads(theirs, grads)
        opt.step()
        topt.step()
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
    for step in range(5, 10):
        grads = make_grads(np, rng, [t.detach().numpy() for t in ours], step)
        for group in (ours, copies):
            set_grads(group, grads)
        opt.step()
        back.step()
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
    b.grad = torch.ones(2, 3).t()  # right shape, not contiguous
    with pytest.raises(ValueError, match="contiguous"):
        opt.step()
    assert float(a.detach().sum()) == 4.0 and len(opt.state) == 0
    h = torch.ones(3, dtype=torch.float16, requires_grad=True)
    h.grad = torch.ones(3, dtype=torch.float16)
    with pytest.raises(TypeError, match="float32 or float64"):
        FT.SGD([h], lr=0.1).step()
    with pytest.raises(ValueError, match="beta1"):
        FT.Adam([a], betas=(1.5, 0.9))
    with pytest.raises(ValueError, match="nesterov"):
        FT.SGD([a], nesterov=True)
