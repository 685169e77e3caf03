"""PyTorch's own optimizer configurations, run through fastnn.integrations.torch as a drop-in.

``optim_db`` (torch.testing._internal.common_optimizers) lists, per optimizer, the constructor
arguments torch's own test suite runs. Each one here builds the same parameters twice (a small
network with a zero-dimensional extra parameter, as torch's fused-vs-forloop test does, plus a
transposed weight), steps fastnn's class and torch's seven times on the same gradients, and
compares parameters and state with the tolerances torch's tests use for the dtype
(``torch.testing.assert_close``'s defaults). The oracle is torch's default (single-tensor) code
for float32, float64 and complex64; for bfloat16 and float16 it is torch's fused CPU kernel
where torch has one (Adam, AdamW, SGD, Adagrad: float32 math, state in the parameter's dtype,
as fastnn's), and otherwise (RMSprop, Rprop) torch's single-tensor code on float32 copies whose
parameters and state are rounded to the dtype after every step, which is that same contract.
"""

import copy
import sys
import types
import unittest

import pytest

import fastnn

torch = pytest.importorskip("torch")
FT = pytest.importorskip("fastnn.integrations.torch")


def _optim_db():
    # torch's testing helpers import expecttest only for a TestCase base class that optim_db
    # does not use; a stand-in keeps this test free of that extra package.
    try:
        import expecttest  # noqa: F401
    except ImportError:
        stand_in = types.ModuleType("expecttest")
        stand_in.TestCase = unittest.TestCase
        sys.modules["expecttest"] = stand_in
    try:
        from torch.testing._internal.common_optimizers import optim_db
    except ImportError as exc:  # torch's internal testing module moved or needs something missing
        pytest.skip(f"torch's optim_db is not importable here: {exc}", allow_module_level=True)
    return optim_db


NAMES = ("SGD", "Adagrad", "RMSprop", "Adam", "AdamW", "Rprop")
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16, torch.complex64]
STEPS = 7


def _cases(device):
    """(name, kwargs, dtype, fused oracle) for every configuration torch runs on ``device``; on
    the CPU also torch's CUDA-only capturable ones (Tensor lr and betas among them), which
    fastnn runs on the CPU too, against torch's non-capturable step there."""
    cases = []
    for info in _optim_db():
        name = info.optim_cls.__name__
        if name not in NAMES:
            continue
        for dtype in DTYPES:
            if dtype.is_complex and not info.supports_complex:
                continue
            fused = (dtype in (torch.bfloat16, torch.float16) and "fused" in info.supported_impls
                     and device in info.supports_fused_on)
            inputs = info.optim_inputs_func(device=device, dtype=dtype)
            if device == "cpu":
                inputs += [i for i in info.optim_inputs_func(device="cuda", dtype=dtype) if i.kwargs.get("capturable")]
            for optim_input in inputs:
                cases.append(pytest.param(name, optim_input.kwargs, dtype, fused,
                                          id=f"{name}-{optim_input.desc}-{str(dtype)[6:]}"))
    return cases


def make_params(dtype, device):
    """A torch-test-like network's parameters, a transposed weight and a 0-d parameter."""
    torch.manual_seed(1)
    if dtype.is_complex:
        shapes = [(3, 2), (3,), (1, 3), (1,)]
        params = [torch.randn(s, dtype=dtype, device=device) for s in shapes]
    else:
        model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Sigmoid(), torch.nn.Linear(3, 1))
        params = [p.detach().to(dtype=dtype, device=device) for p in model.parameters()]
    params.append(torch.randn(5, 4, dtype=dtype, device=device).t())
    params.append(torch.randn((), dtype=dtype, device=device))
    return [p.requires_grad_() for p in params]


def grads_for(params, step):
    """Gradients of a loss that depends on the parameters (so they change as they move)."""
    torch.manual_seed(100 + step)
    with torch.enable_grad():
        loss = 0
        for p in params:
            weight = torch.randn(p.shape, dtype=p.dtype, device=p.device)
            loss = loss + ((p * weight).abs() ** 2).sum() + (p * weight).real.sum()
        return torch.autograd.grad(loss, params)


def round_to(tensors, dtype):
    """Round float32 tensors to ``dtype`` and back, in place."""
    for t in tensors:
        t.copy_(t.to(dtype).float())


def run(name, kwargs, dtype, fused, device):
    ours_params = make_params(dtype, device)
    emulated = dtype in (torch.bfloat16, torch.float16) and not fused
    theirs_params = [p.detach().clone().to(torch.float32 if emulated else dtype).requires_grad_() for p in ours_params]
    ours = getattr(FT, name)(ours_params, **copy.deepcopy(kwargs))
    their_kwargs = copy.deepcopy(kwargs)
    if emulated and name == "Rprop":
        # Rprop's step sizes start at lr, stored in the parameters' dtype (as torch's own
        # bfloat16 Rprop creates them); the float32 copies must start there too.
        their_kwargs["lr"] = float(torch.tensor(float(kwargs.get("lr", 1e-2)), dtype=dtype))
    if device == "cpu":
        their_kwargs.pop("capturable", None)  # torch refuses it on the CPU; the math is the same
    theirs = getattr(torch.optim, name)(theirs_params, **their_kwargs, **({"fused": True} if fused else {}))
    for step in range(STEPS):
        grads = grads_for(ours_params, step)
        for mine, other, g in zip(ours_params, theirs_params, grads):
            # Laid out like the parameter, as backward() lays out .grad (torch's fused CPU
            # kernels assume it).
            mine.grad = torch.empty_like(mine).copy_(g)
            other.grad = torch.empty_like(other).copy_(g)
        ours.step()
        theirs.step()
        if emulated:
            with torch.no_grad():
                round_to(theirs_params, dtype)
                for state in theirs.state.values():
                    round_to([v for k, v in state.items() if k != "step"], dtype)
    return ours_params, theirs_params, ours, theirs


def assert_drop_in(ours_params, theirs_params, ours, theirs, dtype):
    for i, (a, b) in enumerate(zip(ours_params, theirs_params)):
        assert a.dtype == dtype
        torch.testing.assert_close(a.detach(), b.detach().to(dtype), msg=lambda m: f"param {i}: {m}")
        sa, sb = ours.state[a], theirs.state[b]
        assert sa.keys() == sb.keys()
        for key in sa:
            expected = sb[key]
            if key != "step":
                expected = expected.to(dtype)
            torch.testing.assert_close(sa[key], expected, check_device=False, msg=lambda m: f"param {i} '{key}': {m}")


@pytest.mark.parametrize("backend", ["native", "reference"])
@pytest.mark.parametrize("name,kwargs,dtype,fused", _cases("cpu"))
def test_optim_db_drop_in_on_cpu(backend, name, kwargs, dtype, fused):
    with fastnn.use_backend(backend):
        result = run(name, kwargs, dtype, fused, "cpu")
    assert_drop_in(*result, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("name,kwargs,dtype,fused", _cases("cuda"))
def test_optim_db_drop_in_on_cuda(name, kwargs, dtype, fused):
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    assert_drop_in(*run(name, kwargs, dtype, fused, "cuda"), dtype)


@pytest.mark.parametrize("name", NAMES)
def test_only_differentiable_is_refused(name):
    p = torch.zeros(3, requires_grad=True)
    with pytest.raises(NotImplementedError, match="differentiable"):
        getattr(FT, name)([p], differentiable=True)
    getattr(FT, name)([p], differentiable=False, foreach=True)
    getattr(FT, name)([p], foreach=False)
