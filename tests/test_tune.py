"""fastnn.tune: samples stay in bounds and follow their scales, searches are sorted and
reproducible with any executor (threads, processes), maximize, failures, coarse-to-fine."""

import itertools
import math
import multiprocessing
import warnings
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np
import pytest

from fastnn import tune as T

SPACE = {"lr": T.LogUniform(1e-5, 1e-1), "beta2": T.OneMinusLogUniform(0.9, 0.999),
         "hidden": T.IntLogUniform(16, 512), "dropout": T.Uniform(0.0, 0.5),
         "activation": T.Choice(["relu", "gelu"])}


def objective(params, seed):
    """Best at lr = 1e-3, beta2 = 0.99, dropout = 0.1, relu; a little seeded noise. Module level,
    so that a process pool can pickle it."""
    noise = np.random.default_rng(seed).normal() * 1e-3
    return ((math.log10(params["lr"]) + 3) ** 2 + (math.log10(1 - params["beta2"]) + 2) ** 2
            + (params["dropout"] - 0.1) ** 2 + (params["activation"] == "gelu") * 0.1 + noise)


def staged_objective(params, epochs, seed):
    return {"score": objective(params, seed), "epochs": epochs}


def ks_uniform(values, low, high):
    """Kolmogorov-Smirnov distance between the sample and U(low, high)."""
    u = np.sort((np.asarray(values) - low) / (high - low))
    n = len(u)
    return max(np.max(np.arange(1, n + 1) / n - u), np.max(u - np.arange(n) / n))


N = 4000
KS_CRITICAL = 1.95 / math.sqrt(N)  # alpha = 0.001


def test_log_uniform_samples_each_decade_equally():
    values = np.array(T.LogUniform(1e-5, 1e-1).sample(np.random.default_rng(0), N))
    assert values.min() >= 1e-5 and values.max() <= 1e-1
    logs = np.log10(values)
    assert ks_uniform(logs, -5, -1) < KS_CRITICAL
    per_decade = np.histogram(logs, bins=[-5, -4, -3, -2, -1])[0] / N
    np.testing.assert_allclose(per_decade, 0.25, atol=0.03)
    # a linear-scale sampler would put ~90% of its values in the top decade
    assert ks_uniform(values, 1e-5, 1e-1) > 0.5


def test_one_minus_log_uniform_samples_one_minus_beta_on_a_log_scale():
    values = np.array(T.OneMinusLogUniform(0.9, 0.999).sample(np.random.default_rng(1), N))
    assert values.min() >= 0.9 and values.max() <= 0.999
    assert ks_uniform(np.log10(1 - values), -3, -1) < KS_CRITICAL
    assert np.mean(values > 0.99) == pytest.approx(0.5, abs=0.03)


def test_int_log_uniform_and_uniform_and_choice():
    rng = np.random.default_rng(2)
    ints = np.array(T.IntLogUniform(1, 1000).sample(rng, N))
    assert ints.dtype.kind == "i" and ints.min() >= 1 and ints.max() <= 1000
    assert np.mean(ints == 1) == pytest.approx(math.log(2) / math.log(1001), abs=0.02)
    assert np.mean(ints < 10) == pytest.approx(math.log(10) / math.log(1001), abs=0.03)
    floats = np.array(T.Uniform(-2.0, 3.0).sample(rng, N))
    assert floats.min() >= -2 and floats.max() <= 3 and ks_uniform(floats, -2, 3) < KS_CRITICAL
    choices = T.Choice(["a", "b", "c", "d"]).sample(rng, N)
    frequencies = np.array([choices.count(option) for option in "abcd"]) / N
    np.testing.assert_allclose(frequencies, 0.25, atol=0.03)


@pytest.mark.parametrize("make,message", [
    (lambda: T.LogUniform(0, 1), "low must be > 0"), (lambda: T.LogUniform(1, 1), "low < high"),
    (lambda: T.OneMinusLogUniform(0.9, 1.0), "high < 1"), (lambda: T.IntLogUniform(0, 5), ">= 1"),
    (lambda: T.IntLogUniform(1.5, 5), "ints"), (lambda: T.Choice([]), "at least one"),
    (lambda: T.Choice("relu"), r"list of options, got the string 'relu' .* Choice\(\['relu'\]\)"),
])
def test_bad_dimensions(make, message):
    with pytest.raises((ValueError, TypeError), match=message):
        make()


def test_random_search_sorted_best_first_with_table_and_dict():
    result = T.random_search(objective, SPACE, trials=40, seed=0)
    scores = [t.score for t in result.trials]
    assert scores == sorted(scores) and len(scores) == 40
    assert result.best_score == scores[0] == objective(result.best_params, result.trials[0].seed)
    for trial in result.trials:
        for name, dim in SPACE.items():
            value = trial.params[name]
            if isinstance(dim, T.Choice):
                assert value in dim.options
            else:
                assert dim.low <= value <= dim.high
        assert isinstance(trial.params["hidden"], int)
    table = result.table()
    lines = table.splitlines()
    assert lines[0].split() == ["rank", "score", *SPACE]
    assert len(lines) == 41 and lines[1].split()[0] == "1"
    assert len(result.table(max_rows=5).splitlines()) == 7
    as_dict = result.to_dict()
    assert as_dict["best_score"] == result.best_score and len(as_dict["trials"]) == 40
    assert as_dict["space"]["lr"] == {"type": "LogUniform", "low": 1e-5, "high": 1e-1}


def test_maximize_reverses_the_order():
    minimized = T.random_search(objective, SPACE, trials=20, seed=3)
    maximized = T.random_search(objective, SPACE, trials=20, seed=3, maximize=True)
    assert [t.score for t in maximized.trials] == [t.score for t in reversed(minimized.trials)]
    assert maximized.best_score == max(t.score for t in minimized.trials)


def test_same_seed_same_result_and_per_trial_seeds():
    a = T.random_search(objective, SPACE, trials=15, seed=11)
    b = T.random_search(objective, SPACE, trials=15, seed=11)
    c = T.random_search(objective, SPACE, trials=15, seed=12)
    assert a.to_dict() == b.to_dict()
    assert a.to_dict()["trials"] != c.to_dict()["trials"]
    assert len({t.seed for t in a.trials}) == 15
    assert T.random_search(objective, SPACE, trials=15, seed=np.random.default_rng(11)).to_dict()["trials"] == \
        a.to_dict()["trials"]


def test_seed_none_is_recorded_and_reproduces_the_search():
    first = T.random_search(objective, SPACE, trials=5)
    assert isinstance(first.seed, int)
    assert T.random_search(objective, SPACE, trials=5, seed=first.seed).to_dict() == first.to_dict()


def test_objective_without_seed_and_with_dict_results():
    seen = []

    def plain(params):
        seen.append(params)
        return {"score": params["x"] ** 2, "note": "ok"}

    result = T.random_search(plain, {"x": T.Uniform(-1, 1)}, trials=6, seed=0)
    assert len(seen) == 6
    assert result.trials[0].info == {"note": "ok"}
    assert result.best_score == min(p["x"] ** 2 for p in seen)


@pytest.mark.parametrize("executor_type", ["thread", "process"])
def test_results_identical_whatever_the_executor(executor_type):
    expected = T.random_search(objective, SPACE, trials=12, seed=5).to_dict()
    if executor_type == "thread":
        executor = ThreadPoolExecutor(max_workers=4)
    else:
        executor = ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn"))
    with executor:
        got = T.random_search(objective, SPACE, trials=12, seed=5, executor=executor).to_dict()
        staged = T.coarse_to_fine(staged_objective, SPACE, stages=[{"trials": 6, "epochs": 1},
                                                                   {"trials": 3, "epochs": 4}],
                                  seed=5, executor=executor).to_dict()
    assert got == expected
    assert staged == T.coarse_to_fine(staged_objective, SPACE, stages=[{"trials": 6, "epochs": 1},
                                                                       {"trials": 3, "epochs": 4}], seed=5).to_dict()


def failing(params):
    if params["x"] > 0.5:
        raise FloatingPointError("diverged")
    return params["x"]


def test_failed_trials_are_recorded_and_ranked_last():
    with pytest.warns(RuntimeWarning, match="trials raised"):
        result = T.random_search(failing, {"x": T.Uniform(0, 1)}, trials=20, seed=0)
    failed = [t for t in result.trials if not t.ok]
    assert 0 < len(failed) < 20 and all(t.error == "FloatingPointError: diverged" for t in failed)
    assert result.trials[-len(failed):] == failed and result.best.ok
    assert "diverged" in result.table()
    with pytest.raises(RuntimeError, match="all 5 trials failed; the first: FloatingPointError"):
        T.random_search(failing, {"x": T.Uniform(0.6, 1)}, trials=5, seed=0)


def test_bad_search_arguments():
    with pytest.raises(TypeError, match="space"):
        T.random_search(objective, {}, trials=3)
    with pytest.raises(TypeError, match=r"space\['lr'\] must be a dimension"):
        T.random_search(objective, {"lr": 0.1}, trials=3)
    with pytest.raises(ValueError, match="trials"):
        T.random_search(objective, SPACE, trials=0)
    with pytest.raises(TypeError, match="does not accept the keyword argument 'epochs' \\(stage 0"):
        T.coarse_to_fine(objective, SPACE, stages=[{"trials": 3, "epochs": 1}])
    with pytest.raises(ValueError, match="stages"):
        T.coarse_to_fine(objective, SPACE, stages=[{"epochs": 1}])


def test_coarse_to_fine_narrows_around_the_best_and_grows_the_budget():
    stages = [{"trials": 40, "epochs": 1}, {"trials": 20, "epochs": 3}, {"trials": 20, "epochs": 9}]
    result = T.coarse_to_fine(staged_objective, SPACE, stages=stages, seed=0, top=3, shrink=0.5)
    assert len(result.stages) == 3 and len(result.trials) == 80
    for number, stage in enumerate(result.stages):
        assert all(t.info["epochs"] == stages[number]["epochs"] and t.stage == number for t in stage.trials)
    for name in ("lr", "beta2", "dropout"):
        original = SPACE[name]
        previous = original
        for number, stage in enumerate(result.stages[1:], start=1):
            dim = stage.space[name]
            assert original.low <= dim.low < dim.high <= original.high
            assert previous.low <= dim.low and dim.high <= previous.high  # nested
            # the width halves on the dimension's own scale (log10 for lr, log10(1 - beta) for beta2)
            warp = {"lr": np.log10, "beta2": lambda b: np.log10(1 - b), "dropout": lambda d: d}[name]
            width = abs(warp(dim.high) - warp(dim.low))
            original_width = abs(warp(original.high) - warp(original.low))
            assert width == pytest.approx(original_width * 0.5 ** number, rel=1e-9)
            # every trial of the stage falls in its range
            assert all(dim.low <= t.params[name] <= dim.high for t in stage.trials)
            previous = dim
    final = result.stages[-1].space
    assert final["lr"].low < 1e-3 * 3 and final["lr"].high > 1e-3 / 3  # the optimum survived
    # the hidden size does not matter to the objective, but its range still narrows
    assert final["hidden"].high - final["hidden"].low < 512 - 16
    assert result.best_score == min(t.score for t in result.trials)
    assert result.best_score <= result.stages[0].best_score
    assert "stage" in result.table().splitlines()[0]
    assert len(result.to_dict()["stages"]) == 3


def test_choice_narrows_to_the_options_of_the_best_trials():
    dim = T.Choice(["relu", "gelu", "tanh"])
    assert dim.narrow(["gelu", "gelu", "relu"], 0.5).options == ["relu", "gelu"]
    ints = T.IntLogUniform(16, 512).narrow([64, 64, 64], 0.5)
    assert 16 <= ints.low < 64 < ints.high <= 512
    edge = T.LogUniform(1e-5, 1e-1).narrow([1e-5], 0.5)  # at the boundary: moved inside, not beyond
    assert edge.low == pytest.approx(1e-5) and edge.high == pytest.approx(1e-3)


def test_default_executor_runs_in_process_and_warnings_are_clean():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        T.random_search(objective, SPACE, trials=3, seed=0)


def test_an_objective_that_edits_its_params_cannot_change_the_record():
    def greedy(params):
        params["x"] = 100.0
        return 0.0

    result = T.random_search(greedy, {"x": T.Uniform(0, 1)}, trials=3, seed=0)
    assert all(0 <= t.params["x"] <= 1 for t in result.trials)


# ---------------------------------------------------------------------------------------------
# Grid search.

GRID = {"lr": T.LogUniform(1e-5, 1e-1).grid(5), "beta2": [0.9, 0.99, 0.999], "dropout": (0.0, 0.1),
        "activation": T.Choice(["relu", "gelu"])}


def test_grid_values_are_evenly_spaced_on_each_scale():
    np.testing.assert_allclose(T.LogUniform(1e-5, 1e-1).grid(5), [1e-5, 1e-4, 1e-3, 1e-2, 1e-1], rtol=1e-12)
    np.testing.assert_allclose(T.Uniform(0.0, 0.5).grid(3), [0.0, 0.25, 0.5])
    np.testing.assert_allclose(T.OneMinusLogUniform(0.9, 0.999).grid(3), [0.9, 0.99, 0.999], rtol=1e-12)
    assert T.IntLogUniform(16, 256).grid(5) == [16, 32, 64, 128, 256]
    assert T.IntLogUniform(1, 3).grid(10) == [1, 2, 3]  # fewer integers than points: no repeats
    assert T.LogUniform(1e-4, 1e-2).grid(1) == pytest.approx([1e-3])
    assert T.Choice(["a", "b"]).grid() == ["a", "b"]
    with pytest.raises(ValueError, match="grid: n must be a positive int"):
        T.Uniform(0, 1).grid(0)


def test_grid_search_tries_every_combination_in_a_fixed_order():
    result = T.grid_search(objective, GRID, seed=3)
    assert len(result.trials) == 5 * 3 * 2 * 2
    by_index = sorted(result.trials, key=lambda t: t.index)
    expected = [dict(zip(GRID, values)) for values in itertools.product(
        GRID["lr"], GRID["beta2"], GRID["dropout"], ["relu", "gelu"])]
    assert [t.params for t in by_index] == expected  # the first name slowest, the last fastest
    assert result.best_params == {"lr": pytest.approx(1e-3), "beta2": 0.99, "dropout": 0.1, "activation": "relu"}
    assert [t.score for t in result.trials] == sorted(t.score for t in result.trials)
    assert isinstance(result.space["beta2"], T.Choice) and "beta2" in result.table()
    again = T.grid_search(objective, GRID, seed=3)
    assert again.to_dict() == result.to_dict()
    assert [t.seed for t in T.grid_search(objective, GRID, seed=4).trials] != [t.seed for t in result.trials]
    maximized = T.grid_search(lambda params: params["x"], {"x": [1, 3, 2]}, maximize=True)
    assert maximized.best_params == {"x": 3} and maximized.seed is not None


@pytest.mark.parametrize("executor_type", ["thread", "process"])
def test_grid_search_is_the_same_whatever_the_executor(executor_type):
    expected = T.grid_search(objective, GRID, seed=5).to_dict()
    if executor_type == "thread":
        executor = ThreadPoolExecutor(max_workers=4)
    else:
        executor = ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn"))
    with executor:
        assert T.grid_search(objective, GRID, seed=5, executor=executor).to_dict() == expected


def test_grid_search_arguments():
    with pytest.raises(TypeError, match="grid must be a non-empty dict"):
        T.grid_search(objective, {})
    with pytest.raises(TypeError, match=r"grid\['lr'\] is LogUniform\(1e-05, 0.1\), a range: give its values, "
                                        r"e.g. LogUniform\(1e-05, 0.1\).grid\(5\)"):
        T.grid_search(objective, {"lr": T.LogUniform(1e-5, 1e-1)})
    with pytest.raises(TypeError, match=r"grid\['lr'\] must be a non-empty list"):
        T.grid_search(objective, {"lr": 0.1})
    with pytest.raises(TypeError, match=r"grid\['act'\] must be a non-empty list"):
        T.grid_search(objective, {"act": "relu"})
    with pytest.raises(TypeError, match="does not accept the keyword argument 'epochs'"):
        T.grid_search(objective, {"x": [1]}, objective_kwargs={"epochs": 3})
    with pytest.warns(RuntimeWarning, match="1 of 2 trials raised"):
        result = T.grid_search(failing, {"x": [0.2, 0.9]})
    assert result.best_params == {"x": 0.2} and not result.trials[-1].ok
