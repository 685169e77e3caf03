"""Hyperparameter search: random search on log scales, coarse-to-fine narrowing, and the grid.

A search space maps names to dimensions::

    space = {"lr": LogUniform(1e-5, 1e-1),           # log10(lr) uniform: each decade equally often
             "beta2": OneMinusLogUniform(0.9, 0.999),  # 1 - beta2 log-uniform in [1e-3, 1e-1]
             "hidden": IntLogUniform(32, 1024),
             "weight_decay": Uniform(0.0, 1e-3),
             "activation": Choice(["relu", "gelu"])}
    result = fnn.tune.random_search(objective, space, trials=50, seed=0)
    result.best_params, result.best_score; print(result.table())

    grid = {"lr": LogUniform(1e-4, 1e-1).grid(4), "activation": ["relu", "gelu"]}   # 8 trials
    result = fnn.tune.grid_search(objective, grid, seed=0)

Random search is usually the better use of a budget (Bergstra & Bengio 2012: a grid spends
most trials repeating the values of the hyperparameters that matter); a grid is for a few
settings to compare exhaustively.

``objective(params, **kwargs)`` gets one configuration as a dict and returns a score (lower is
better unless ``maximize=True``), or a dict with a ``"score"`` and anything else worth keeping
(kept as the trial's ``info``). If it accepts a ``seed`` argument it gets a per-trial seed.

Reproducible whatever runs the trials: every configuration and every trial seed is drawn up
front from ``seed``, and the trials are then handed to ``executor``, any
``concurrent.futures.Executor`` (None: one after another in this process; a
``ProcessPoolExecutor``, ``mpi4py.futures.MPIPoolExecutor`` or a Dask client spreads them over
cores or machines; the objective must then be picklable, i.e. defined at module level). The
same seed gives the same result with any executor, as long as the objective is deterministic
given its params and seed.

A trial that raises is recorded with its error and ranked last (a search should survive one
diverging configuration); if every trial fails, the search raises.
"""

from __future__ import annotations

import inspect
import itertools
import math
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ._backend import shown
from ._warnings import FastnnRuntimeWarning
from .data import as_generator

__all__ = ["Uniform", "LogUniform", "OneMinusLogUniform", "IntLogUniform", "Choice",
           "Trial", "SearchResult", "CoarseToFineResult", "random_search", "coarse_to_fine", "grid_search"]


# ---------------------------------------------------------------------------------------------
# Dimensions of a search space.


class Dimension:
    """One hyperparameter's distribution. ``scale`` says how to look at it: ``"linear"``,
    ``"log"``, ``"one_minus_log"`` (1 - value on a log scale) or ``"categorical"``."""

    scale = "linear"

    def sample(self, rng: np.random.Generator, n: int) -> list:
        """``n`` independent values."""
        raise NotImplementedError

    def narrow(self, values: list, shrink: float) -> "Dimension":
        """A narrower dimension around ``values`` (the best trials' values)."""
        raise NotImplementedError

    def grid(self, n: int) -> list:
        """``n`` values spread evenly over the dimension in its own scale, for
        :func:`grid_search`."""
        raise NotImplementedError


class _Numeric(Dimension):
    """A number drawn uniformly in a warped coordinate u = warp(value): u in [u_low, u_high].

    Narrowing keeps the warp: the new u-interval is ``shrink`` times as wide, centred on the
    mean u of the best values and moved inside the current interval, so stages nest and never
    leave the original bounds."""

    def __init__(self, low: float, high: float):
        low, high = float(low), float(high)
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ValueError(f"{type(self).__name__}: need finite low < high, got ({shown(low)}, {shown(high)})")
        self.low, self.high = low, high

    def _warp(self, values):
        return values

    def _unwarp(self, u):
        return u

    def _u_bounds(self) -> tuple[float, float]:
        return tuple(sorted(float(v) for v in self._warp(np.array([self.low, self.high]))))

    def _values(self, u: np.ndarray) -> list:
        return [float(v) for v in np.clip(self._unwarp(u), self.low, self.high)]

    def sample(self, rng, n):
        u_low, u_high = self._u_bounds()
        return self._values(rng.uniform(u_low, u_high, size=n))

    def grid(self, n):
        """``n`` values evenly spaced in the warped coordinate, both bounds included (the
        middle of the range for n = 1), in increasing order."""
        n = _positive_int(n, "grid: n")
        u_low, u_high = self._u_bounds()
        return sorted(self._values(np.linspace(u_low, u_high, n) if n > 1 else np.array([(u_low + u_high) / 2])))

    def _between(self, u_low: float, u_high: float) -> "Dimension":
        low, high = sorted(float(v) for v in self._unwarp(np.array([u_low, u_high])))
        return type(self)(max(low, self.low), min(high, self.high))

    def narrow(self, values, shrink):
        u_low, u_high = self._u_bounds()
        width = shrink * (u_high - u_low)
        centre = float(np.mean(self._warp(np.asarray(values, dtype=np.float64))))
        start = min(max(centre - width / 2, u_low), u_high - width)
        return self._between(start, start + width)

    def __repr__(self):
        return f"{type(self).__name__}({self.low:.6g}, {self.high:.6g})"

    def to_dict(self) -> dict:
        return {"type": type(self).__name__, "low": self.low, "high": self.high}


class Uniform(_Numeric):
    """A float uniform in [low, high]. (scipy.stats.uniform; Ray Tune's ``uniform``)"""


class LogUniform(_Numeric):
    """A float whose logarithm is uniform: log(value) ~ U(log low, log high), 0 < low < high, so
    every decade is sampled equally often, the way to search learning rates and weight decays.
    (scipy.stats.loguniform; Ray Tune's ``loguniform``)"""

    scale = "log"

    def __init__(self, low: float, high: float):
        super().__init__(low, high)
        if self.low <= 0:
            raise ValueError(f"{type(self).__name__}: low must be > 0 for a log scale, got {shown(low)}")

    def _warp(self, values):
        return np.log(values)

    def _unwarp(self, u):
        return np.exp(u)


class OneMinusLogUniform(_Numeric):
    """A float in [low, high] with 0 <= low < high < 1 whose distance to 1 is log-uniform:
    log(1 - value) ~ U(log(1 - high), log(1 - low)). For momentum-like values: with (0.9, 0.999),
    1 - beta is equally likely in [1e-3, 1e-2] and in [1e-2, 1e-1], so 0.99 to 0.999 gets as many
    trials as 0.9 to 0.99."""

    scale = "one_minus_log"

    def __init__(self, low: float, high: float):
        super().__init__(low, high)
        if not (0.0 <= self.low and self.high < 1.0):
            raise ValueError(f"{type(self).__name__}: need 0 <= low < high < 1, got ({shown(low)}, {shown(high)})")

    def _warp(self, values):
        return np.log1p(-np.asarray(values))

    def _unwarp(self, u):
        return -np.expm1(u)


class IntLogUniform(_Numeric):
    """An int in [low, high] (1 <= low < high), log-uniform: floor(exp(U(log low, log(high + 1))))
    gives each integer k the probability log((k + 1) / k) / log((high + 1) / low), e.g. for
    layer widths or batch sizes."""

    scale = "log"

    def __init__(self, low: int, high: int):
        if any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in (low, high)):
            raise TypeError(f"IntLogUniform: low and high must be ints, got ({shown(low)}, {shown(high)})")
        super().__init__(low, high)
        if self.low < 1:
            raise ValueError(f"IntLogUniform: low must be >= 1, got {shown(low)}")
        self.low, self.high = int(low), int(high)

    def _warp(self, values):
        return np.log(values)

    def _unwarp(self, u):
        return np.exp(u)

    def _u_bounds(self):
        return math.log(self.low), math.log(self.high + 1)

    def grid(self, n):
        """``n`` integers spread evenly on a log scale from ``low`` to ``high`` (rounded; duplicates
        dropped)."""
        n = _positive_int(n, "grid: n")
        u = np.linspace(math.log(self.low), math.log(self.high), n) if n > 1 else \
            np.array([(math.log(self.low) + math.log(self.high)) / 2])
        return list(dict.fromkeys(int(v) for v in np.clip(np.round(np.exp(u)), self.low, self.high)))

    def _values(self, u):
        return [int(v) for v in np.clip(np.floor(np.exp(u)), self.low, self.high)]

    def _between(self, u_low, u_high):
        low = min(max(self.low, math.floor(math.exp(u_low))), self.high)
        high = max(min(self.high, math.ceil(math.exp(u_high)) - 1), low)
        if low == high:  # keep a valid (low < high) range: widen by one where the bounds allow
            low, high = (low, high + 1) if high < self.high else (low - 1, high)
        return IntLogUniform(low, high)

    def __repr__(self):
        return f"IntLogUniform({self.low}, {self.high})"


class Choice(Dimension):
    """One of ``options``, each equally likely. Narrowing keeps the options that the best trials
    used. (Ray Tune's ``choice``)"""

    scale = "categorical"

    def __init__(self, options):
        if isinstance(options, (str, bytes)):
            raise TypeError(f"Choice takes a list of options, got the string {options!r} (whose letters would be "
                            f"the options); for one fixed value write Choice([{options!r}])")
        self.options = list(options)
        if not self.options:
            raise ValueError("Choice needs at least one option")

    def sample(self, rng, n):
        return [self.options[i] for i in rng.integers(0, len(self.options), size=n)]

    def narrow(self, values, shrink):
        return Choice([option for option in self.options if option in values])

    def grid(self, n=None):
        """Every option (``n`` is ignored)."""
        return list(self.options)

    def __repr__(self):
        return f"Choice({self.options!r})"

    def to_dict(self) -> dict:
        return {"type": "Choice", "options": list(self.options)}


# ---------------------------------------------------------------------------------------------
# Trials and results.


@dataclass
class Trial:
    """One evaluated configuration: ``params``, its ``score`` (NaN if it failed), the ``seed``
    it was given, its ``index`` in sampling order, its coarse-to-fine ``stage``, the extra
    entries the objective returned (``info``) and the ``error`` if it raised."""

    params: dict
    score: float
    seed: int
    index: int
    stage: int = 0
    info: dict = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and not math.isnan(self.score)

    def to_dict(self) -> dict:
        return {"params": dict(self.params), "score": self.score, "seed": self.seed, "index": self.index,
                "stage": self.stage, "info": dict(self.info), "error": self.error}


def _ranked(trials: list[Trial], maximize: bool) -> list[Trial]:
    """Best first; failed and NaN trials last; ties in sampling order."""
    sign = -1.0 if maximize else 1.0
    return sorted(trials, key=lambda t: (not t.ok, sign * t.score if t.ok else 0.0, t.stage, t.index))


def _format(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


@dataclass
class SearchResult:
    """The trials of a search, sorted best first (``trials[0]`` is the best), with the
    ``space`` searched, the direction (``maximize``) and the ``seed`` that reproduces it (None
    when a Generator was given)."""

    trials: list[Trial]
    space: dict
    maximize: bool
    seed: int | None

    @property
    def best(self) -> Trial:
        if not self.trials or not self.trials[0].ok:
            raise RuntimeError("no trial of this search succeeded")
        return self.trials[0]

    @property
    def best_params(self) -> dict:
        return dict(self.best.params)

    @property
    def best_score(self) -> float:
        return self.best.score

    def table(self, max_rows: int | None = None) -> str:
        """The trials as an aligned text table, best first: rank, score, each hyperparameter
        (and the stage, and errors, where there are any)."""
        names = list(self.space)
        stages = len({t.stage for t in self.trials}) > 1
        failures = any(t.error for t in self.trials)
        header = ["rank", "score", *names] + (["stage"] if stages else []) + (["error"] if failures else [])
        rows = []
        for rank, trial in enumerate(self.trials[:max_rows], start=1):
            row = [str(rank), _format(trial.score), *(_format(trial.params[name]) for name in names)]
            row += [str(trial.stage)] if stages else []
            row += [trial.error or ""] if failures else []
            rows.append(row)
        widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header))]
        lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
                 for line in [header, *rows]]
        if max_rows is not None and len(self.trials) > max_rows:
            lines.append(f"... {len(self.trials) - max_rows} more trials")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """Plain Python data (JSON-friendly when the params and infos are)."""
        best = self.trials[0] if self.trials and self.trials[0].ok else None
        return {"maximize": self.maximize, "seed": self.seed,
                "space": {name: dim.to_dict() for name, dim in self.space.items()},
                "best_params": None if best is None else dict(best.params),
                "best_score": None if best is None else best.score,
                "trials": [trial.to_dict() for trial in self.trials]}

    def __repr__(self) -> str:
        ok = sum(t.ok for t in self.trials)
        best = f"best_score={self.trials[0].score:.4g}, best_params={self.trials[0].params}" if ok else "no success"
        return f"{type(self).__name__}({len(self.trials)} trials, {ok} ok, {best})"


@dataclass(repr=False)
class CoarseToFineResult(SearchResult):
    """All trials of a coarse-to-fine search, every stage together and sorted best first
    (each trial knows its ``stage``), plus ``stages``: each stage's own :class:`SearchResult`
    with the narrowed space it searched."""

    stages: list[SearchResult] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {**super().to_dict(), "stages": [stage.to_dict() for stage in self.stages]}


# ---------------------------------------------------------------------------------------------
# Running trials.


def _accepts(objective: Callable, name: str) -> bool:
    try:
        parameters = inspect.signature(objective).parameters.values()
    except (TypeError, ValueError):  # some builtins and C callables have no signature
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def _evaluate(objective: Callable, params: dict, kwargs: dict) -> tuple[float, dict]:
    """Run one trial and read its score (module level, so that process pools can pickle it)."""
    result = objective(params, **kwargs)
    if isinstance(result, dict):
        if "score" not in result:
            raise TypeError(f"objective returned a dict without a 'score' key: {sorted(result)}")
        info = {key: value for key, value in result.items() if key != "score"}
        return float(result["score"]), info
    return float(result), {}


def _outcome(get: Callable[[], tuple[float, dict]]) -> tuple[float, dict, str | None]:
    try:
        score, info = get()
    except Exception as exc:  # recorded with the trial and ranked last; see the module docstring
        return math.nan, {}, f"{type(exc).__name__}: {exc}"
    return score, info, None


def _check_space(space: dict) -> dict:
    if not isinstance(space, dict) or not space:
        raise TypeError("space must be a non-empty dict mapping names to dimensions (LogUniform(...), ...)")
    for name, dim in space.items():
        if not isinstance(dim, Dimension):
            raise TypeError(f"space[{name!r}] must be a dimension (Uniform, LogUniform, OneMinusLogUniform, "
                            f"IntLogUniform, Choice), got {dim!r}; wrap a fixed value as Choice([value])")
    return dict(space)


def _check_kwargs(objective: Callable, kwargs: dict, where: str) -> None:
    for key in kwargs:
        if not _accepts(objective, key):
            raise TypeError(f"objective does not accept the keyword argument {key!r} ({where} passes it)")


def _seed_and_generator(seed) -> tuple[int | None, np.random.Generator]:
    if isinstance(seed, np.random.Generator):
        return None, seed
    if seed is None:  # drawn, and recorded so that the search can be repeated
        seed = int(as_generator(None).integers(2**63))
    return int(seed), as_generator(int(seed))


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {shown(value)}")
    return int(value)


def _search(objective, space, trials, rng, executor, kwargs, stage=0) -> list[Trial]:
    """Sample ``trials`` configurations from ``rng``, then evaluate them (:func:`_run`)."""
    trials = _positive_int(trials, "trials")
    columns = {name: dim.sample(rng, trials) for name, dim in space.items()}
    configs = [{name: column[i] for name, column in columns.items()} for i in range(trials)]
    return _run(objective, configs, rng, executor, kwargs, stage)


def _run(objective, configs, rng, executor, kwargs, stage=0) -> list[Trial]:
    """Draw a seed per configuration from ``rng``, then evaluate every configuration, in
    order, in this process or on ``executor``."""
    seeds = [int(s) for s in rng.integers(0, 2**31 - 1, size=len(configs))]
    pass_seed = _accepts(objective, "seed")
    calls = [{**kwargs, "seed": s} if pass_seed else dict(kwargs) for s in seeds]
    if executor is None:
        # a copy per call, as a process pool would make: an objective that edits its params
        # cannot change the recorded trial
        outcomes = [_outcome(lambda c=c, k=k: _evaluate(objective, dict(c), k)) for c, k in zip(configs, calls)]
    else:
        futures = [executor.submit(_evaluate, objective, c, k) for c, k in zip(configs, calls)]
        outcomes = [_outcome(future.result) for future in futures]
    return [Trial(params=c, score=score, seed=s, index=i, stage=stage, info=info, error=error)
            for i, (c, s, (score, info, error)) in enumerate(zip(configs, seeds, outcomes))]


def _checked_result(result: SearchResult) -> SearchResult:
    failed = [t for t in result.trials if t.error]
    if failed and len(failed) == len(result.trials):
        raise RuntimeError(f"all {len(failed)} trials failed; the first: {failed[0].error}")
    if failed:
        warnings.warn(f"{len(failed)} of {len(result.trials)} trials raised and are ranked last "
                      f"(first: {failed[0].error}); see result.table()", FastnnRuntimeWarning, stacklevel=3)
    return result


def random_search(objective: Callable, space: dict, trials: int = 20, seed=None, maximize: bool = False,
                  executor=None, objective_kwargs: dict | None = None) -> SearchResult:
    """Evaluate ``trials`` configurations drawn independently from ``space``.

    objective(params, **objective_kwargs[, seed=...]) -> score or {"score": ..., ...}.
    ``seed``: int, None (drawn from ``fastnn.seed``'s sequence or fresh entropy, and recorded
    in the result) or a numpy Generator.
    ``executor``: a ``concurrent.futures.Executor`` or None (sequential, in process). Returns a
    :class:`SearchResult`, best first. (Bergstra and Bengio, "Random search for
    hyper-parameter optimization", JMLR 2012; cs231n's coarse-to-fine advice)
    """
    space = _check_space(space)
    kwargs = dict(objective_kwargs or {})
    _check_kwargs(objective, kwargs, "objective_kwargs")
    recorded, rng = _seed_and_generator(seed)
    found = _search(objective, space, trials, rng, executor, kwargs)
    return _checked_result(SearchResult(_ranked(found, maximize), space, bool(maximize), recorded))


def coarse_to_fine(objective: Callable, space: dict, stages: list[dict], seed=None, maximize: bool = False,
                   executor=None, top: int = 3, shrink: float = 0.5) -> CoarseToFineResult:
    """Random search in stages, each narrowing the space around the best trials of the one
    before and usually spending a bigger budget per trial.

    ``stages``: a list of dicts, e.g. ``[{"trials": 30, "epochs": 1}, {"trials": 10, "epochs": 5},
    {"trials": 4, "epochs": 20}]``; ``"trials"`` is the stage's trial count and the other entries
    are passed to the objective as keyword arguments (so it sees the stage's ``epochs`` or
    ``budget``). After each stage, every numeric dimension is narrowed to ``shrink`` times its
    width in its own scale (log for log dimensions), centred on the mean of the ``top`` best
    trials' values and kept inside the previous range (so never beyond the original bounds);
    a ``Choice`` keeps the options those trials used.

    Returns a :class:`CoarseToFineResult`: every trial sorted best first (scores of different
    stages compete as they are: give the later stages at least the earlier budgets), with each
    stage's own result in ``.stages``.
    """
    space = _check_space(space)
    if not stages or not all(isinstance(stage, dict) and "trials" in stage for stage in stages):
        raise ValueError("stages must be a non-empty list of dicts with a 'trials' entry, "
                         "e.g. [{'trials': 20, 'epochs': 2}, {'trials': 5, 'epochs': 10}]")
    if isinstance(top, bool) or not isinstance(top, (int, np.integer)) or top < 1:
        raise ValueError(f"top must be a positive int, got {shown(top)}")
    shrink = float(shrink)
    if not 0.0 < shrink <= 1.0:
        raise ValueError(f"shrink must be in (0, 1], got {shown(shrink)}")
    for number, stage in enumerate(stages):
        _check_kwargs(objective, {k: v for k, v in stage.items() if k != "trials"}, f"stage {number}")
    recorded, rng = _seed_and_generator(seed)
    results, current = [], space
    for number, stage in enumerate(stages):
        kwargs = {key: value for key, value in stage.items() if key != "trials"}
        found = _search(objective, current, stage["trials"], rng, executor, kwargs, stage=number)
        result = _checked_result(SearchResult(_ranked(found, maximize), current, bool(maximize), None))
        results.append(result)
        best = result.trials[:top]
        current = {name: dim.narrow([t.params[name] for t in best if t.ok], shrink)
                   for name, dim in current.items()}
    everything = _ranked([t for result in results for t in result.trials], maximize)
    return CoarseToFineResult(everything, space, bool(maximize), recorded, stages=results)


def grid_search(objective: Callable, grid: dict, seed=None, maximize: bool = False, executor=None,
                objective_kwargs: dict | None = None) -> SearchResult:
    """Evaluate every combination of the values in ``grid``.

    ``grid`` maps each name to its values: a list or tuple, a ``Choice`` (its options) or a
    numeric dimension's ``.grid(n)`` (``LogUniform(1e-4, 1e-1).grid(4)``: 4 values evenly
    spaced on its scale). The trials are the Cartesian product in a fixed order: the first
    name varies slowest, the last fastest (``itertools.product``), and ``Trial.index`` is the
    position in it. Each trial gets a seed drawn from ``seed`` (int, None: drawn and recorded,
    or a numpy Generator), so with a deterministic objective the same seed gives the same
    result with any ``executor``. Returns a :class:`SearchResult` (best first) whose ``space``
    holds each name's values as a ``Choice``. (sklearn.model_selection.ParameterGrid /
    GridSearchCV without the cross-validation)
    """
    if not isinstance(grid, dict) or not grid:
        raise TypeError("grid must be a non-empty dict mapping names to lists of values, e.g. "
                        "{'lr': [1e-3, 1e-2], 'hidden': [64, 128]}")
    space = {}
    for name, values in grid.items():
        if isinstance(values, Choice):
            values = values.options
        elif isinstance(values, Dimension):
            raise TypeError(f"grid[{name!r}] is {values!r}, a range: give its values, e.g. {values!r}.grid(5)")
        if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)) or not values:
            raise TypeError(f"grid[{name!r}] must be a non-empty list of values, got {values!r}")
        space[name] = Choice(values)
    kwargs = dict(objective_kwargs or {})
    _check_kwargs(objective, kwargs, "objective_kwargs")
    recorded, rng = _seed_and_generator(seed)
    names = list(space)
    configs = [dict(zip(names, combination)) for combination in itertools.product(*(space[n].options for n in names))]
    found = _run(objective, configs, rng, executor, kwargs)
    return _checked_result(SearchResult(_ranked(found, maximize), space, bool(maximize), recorded))
