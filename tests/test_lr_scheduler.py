"""LR and momentum schedules: their documented values, torch.optim.lr_scheduler's values where
torch is installed, step/get_last_lr/state_dict semantics, composition and bad input."""

import math

import numpy as np
import pytest

from fastnn import optim
from fastnn.optim import lr_scheduler as S


def two_group_sgd(lr=0.1, momentum=0.0):
    return optim.SGD([{"params": [np.zeros(3)]}, {"params": [np.zeros(2)], "lr": 0.02}], lr=lr, momentum=momentum)


def lrs_over(sched, epochs):
    out = [sched.get_last_lr()]
    for _ in range(epochs):
        sched.step()
        out.append(sched.get_last_lr())
    return np.array(out)


def test_step_lr_values():
    opt = two_group_sgd()
    got = lrs_over(S.StepLR(opt, step_size=3, gamma=0.5), 10)
    expected = [[0.1 * 0.5 ** (e // 3), 0.02 * 0.5 ** (e // 3)] for e in range(11)]
    np.testing.assert_allclose(got, expected, rtol=1e-15)
    assert [g["lr"] for g in opt.param_groups] == list(got[-1])
    assert [g["initial_lr"] for g in opt.param_groups] == [0.1, 0.02]


def test_exponential_lr_values():
    got = lrs_over(S.ExponentialLR(two_group_sgd(), gamma=0.9), 7)
    np.testing.assert_allclose(got, [[0.1 * 0.9 ** e, 0.02 * 0.9 ** e] for e in range(8)], rtol=1e-14)


def test_cosine_annealing_values():
    got = lrs_over(S.CosineAnnealingLR(two_group_sgd(), T_max=10, eta_min=0.001), 20)
    expected = [[0.001 + (b - 0.001) * (1 + math.cos(math.pi * e / 10)) / 2 for b in (0.1, 0.02)] for e in range(21)]
    np.testing.assert_allclose(got, expected, rtol=1e-14)
    assert got[10, 0] == pytest.approx(0.001) and got[20, 0] == pytest.approx(0.1)


def test_linear_warmup_alone_and_around_cosine():
    got = lrs_over(S.LinearWarmup(two_group_sgd(), warmup_epochs=4, start_factor=0.25), 6)
    factors = [0.25, 0.4375, 0.625, 0.8125, 1.0, 1.0, 1.0]
    np.testing.assert_allclose(got, [[0.1 * f, 0.02 * f] for f in factors], rtol=1e-14)
    opt = two_group_sgd()
    warm = S.LinearWarmup(S.CosineAnnealingLR(opt, T_max=8), warmup_epochs=3)
    got = lrs_over(warm, 8)
    expected = [[min(1.0, 1 / 3 + (2 / 3) * e / 3) * b * (1 + math.cos(math.pi * e / 8)) / 2 for b in (0.1, 0.02)]
                for e in range(9)]
    np.testing.assert_allclose(got, expected, rtol=1e-14, atol=1e-18)
    assert warm.inner.last_epoch == 8


def test_momentum_schedule_on_sgd_and_adam():
    opt = two_group_sgd(momentum=0.9)
    sched = S.MomentumSchedule(opt, start=0.5, end=0.99, epochs=4)
    values = [sched.get_last_momentum()[0]]
    for _ in range(6):
        sched.step()
        values.append(opt.param_groups[1]["momentum"])
    np.testing.assert_allclose(values, [0.5, 0.6225, 0.745, 0.8675, 0.99, 0.99, 0.99], rtol=1e-14)
    adam = optim.Adam([np.zeros(3)], betas=(0.9, 0.98))
    geo = S.MomentumSchedule(adam, start=0.5, end=0.99, epochs=2, mode="geometric")
    assert adam.param_groups[0]["betas"] == (0.5, 0.98)
    geo.step()
    assert adam.param_groups[0]["betas"][0] == pytest.approx(1 - math.sqrt(0.5 * 0.01))
    geo.step()
    assert adam.param_groups[0]["betas"][0] == pytest.approx(0.99)


def test_the_optimizer_uses_the_scheduled_values():
    p = np.zeros(4)
    opt = optim.SGD([p], lr=1.0)
    sched = S.StepLR(opt, step_size=1, gamma=0.1)
    for _ in range(3):
        opt.step([np.ones(4)])
        sched.step()
    np.testing.assert_allclose(p, -(1.0 + 0.1 + 0.01) * np.ones(4), rtol=1e-15)


def test_scheduler_state_dict_round_trip():
    opt = two_group_sgd()
    sched = S.LinearWarmup(S.StepLR(opt, step_size=2, gamma=0.5), warmup_epochs=3)
    for _ in range(4):
        sched.step()
    state = sched.state_dict()
    assert "optimizer" not in state and state["last_epoch"] == 4
    opt2 = two_group_sgd()
    sched2 = S.LinearWarmup(S.StepLR(opt2, step_size=2, gamma=0.5), warmup_epochs=3)
    sched2.load_state_dict(state)
    for _ in range(3):
        sched.step()
        sched2.step()
        assert sched.get_last_lr() == sched2.get_last_lr()
    assert sched2.inner.last_epoch == 7


def test_resuming_needs_initial_lr():
    with pytest.raises(KeyError, match="initial_lr"):
        S.StepLR(two_group_sgd(), step_size=2, last_epoch=5)
    for bad in (math.nan, 2.0, None, "3", True, -2):  # named as such, before the missing initial_lr
        with pytest.raises(ValueError, match=r"last_epoch must be an integer >= -1, got"):
            S.StepLR(two_group_sgd(), step_size=2, last_epoch=bad)


@pytest.mark.parametrize("make,kwargs,error", [
    (S.StepLR, dict(step_size=0), ValueError), (S.StepLR, dict(step_size=2, gamma=-1.0), ValueError),
    (S.ExponentialLR, dict(gamma=math.nan), ValueError), (S.CosineAnnealingLR, dict(T_max=0), ValueError),
    (S.LinearWarmup, dict(warmup_epochs=0), ValueError), (S.LinearWarmup, dict(warmup_epochs=3, start_factor=0.0),
                                                          ValueError),
    (S.MomentumSchedule, dict(end=1.0), ValueError), (S.MomentumSchedule, dict(mode="cosine"), ValueError),
])
def test_bad_schedule_arguments(make, kwargs, error):
    with pytest.raises(error):
        make(two_group_sgd(), **kwargs)
    with pytest.raises(TypeError):
        S.StepLR(object(), step_size=1)


TORCH_CASES = [
    ("StepLR", dict(step_size=3, gamma=0.5)),
    ("ExponentialLR", dict(gamma=0.9)),
    ("CosineAnnealingLR", dict(T_max=10, eta_min=0.001)),
]


@pytest.mark.parametrize("name,kwargs", TORCH_CASES)
def test_matches_torch_schedulers(name, kwargs):
    torch = pytest.importorskip("torch")
    topt = torch.optim.SGD([torch.zeros(3, requires_grad=True)], lr=0.1)
    tsched = getattr(torch.optim.lr_scheduler, name)(topt, **kwargs)
    sched = getattr(S, name)(optim.SGD([np.zeros(3)], lr=0.1), **kwargs)
    for _ in range(25):
        topt.step()
        tsched.step()
        sched.step()
        np.testing.assert_allclose(sched.get_last_lr(), tsched.get_last_lr(), rtol=1e-12)


def test_linear_warmup_matches_torch_linear_lr():
    torch = pytest.importorskip("torch")
    topt = torch.optim.SGD([torch.zeros(3, requires_grad=True)], lr=0.1)
    tsched = torch.optim.lr_scheduler.LinearLR(topt, start_factor=1 / 3, total_iters=5)
    sched = S.LinearWarmup(optim.SGD([np.zeros(3)], lr=0.1), warmup_epochs=5)
    for _ in range(8):
        np.testing.assert_allclose(sched.get_last_lr(), tsched.get_last_lr(), rtol=1e-12)
        topt.step()
        tsched.step()
        sched.step()
