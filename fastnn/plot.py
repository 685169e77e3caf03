"""Training plots written to PNG files: learning curves, update-to-weight ratios, and search
results. Needs matplotlib (``pip install "fastnn[plot]"``), imported on first use. Figures are
drawn on matplotlib's Agg canvas directly, without pyplot, so no window ever opens and the
pyplot backend of the calling program is left alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from numbers import Real

__all__ = ["history", "history_figure", "update_ratios", "search"]

_COLUMNS = 4  # panels per row


def _figure(panels: int):
    """A new Agg figure with a grid of ``panels`` axes (a flat list)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError('fastnn.plot needs matplotlib: pip install "fastnn[plot]"') from None
    columns = min(panels, _COLUMNS)
    rows = math.ceil(panels / columns)
    figure = Figure(figsize=(4.2 * columns, 3.4 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for extra in axes[panels:]:
        extra.set_visible(False)
    return figure, list(axes[:panels])


def _save(figure, path):
    figure.savefig(path, format="png", dpi=100)
    return path


def _numbers(values) -> bool:
    return (isinstance(values, Sequence) or hasattr(values, "__array__")) and len(values) > 0 and \
        all(isinstance(v, Real) or getattr(v, "ndim", None) == 0 for v in values)


def _positive(values) -> bool:
    return all(float(v) > 0 for v in values)


_AXIS_LABELS = {"loss": "loss", "accuracy": "accuracy", "lr": "learning rate",
                "update_ratio": "||update|| / ||weight||"}


def history(hist, path, title: str | None = None, *, loss_name: str | None = None, best_epoch: int | None = None,
            guide: float = 1e-3):
    """Learning curves written to a PNG at ``path`` (returns ``path``): :func:`history_figure`'s
    figure, whose arguments these are."""
    return _save(history_figure(hist, title, loss_name=loss_name, best_epoch=best_epoch, guide=guide), path)


def history_figure(hist, title: str | None = None, *, loss_name: str | None = None, best_epoch: int | None = None,
                   guide: float = 1e-3):
    """Learning curves, one panel per quantity: ``loss``, ``accuracy`` and every other series,
    training and validation (``val_``) curves together, against the epoch (from 1), each
    panel with labelled axes. ``lr`` and ``update_ratio`` use a log axis.

    - ``loss_name`` (e.g. "softmax cross-entropy") names the loss in its panel's title and
      y axis.
    - ``best_epoch`` (from 0, as ``EarlyStopping.best_epoch``): the epoch whose weights were
      restored, marked by a vertical line on every panel.
    - The update-ratio panel shows the band around ``guide`` (1e-3: from guide / sqrt(10) to
      guide * sqrt(10), with a dashed line at guide) where a healthy layer's ratio sits (much
      lower and it learns too slowly, much higher and the learning rate is probably too high).

    hist: a ``History`` (anything with a ``.history`` dict) or a dict name -> per-epoch values.
    Returns the matplotlib ``Figure`` (on an Agg canvas; nothing is shown).
    """
    series = getattr(hist, "history", hist)
    if not isinstance(series, Mapping):
        raise TypeError(f"hist must be a dict of per-epoch lists or have a .history dict, got {type(hist).__name__}")
    series = {name: list(values) for name, values in series.items() if _numbers(values)}
    if not series:
        raise ValueError("hist has no per-epoch numeric series to plot")
    if best_epoch is not None and (isinstance(best_epoch, bool) or not isinstance(best_epoch, int) or best_epoch < 0):
        raise ValueError(f"best_epoch must be an epoch number (from 0) or None, got {best_epoch!r}")
    families = []
    for name in series:
        family = name[4:] if name.startswith("val_") else name
        if family not in families:
            families.append(family)
    families.sort(key=lambda f: (f != "loss", f != "accuracy"))  # stable: the rest keep their order
    figure, axes = _figure(len(families))
    for ax, family in zip(axes, families):
        curves = {label: series[name] for name, label in ((family, "train"), ("val_" + family, "validation"))
                  if name in series}
        for label, values in curves.items():
            ax.plot(range(1, len(values) + 1), values, marker="o" if len(values) <= 30 else None,
                    markersize=3, label=label)
        if family in ("lr", "update_ratio") and all(_positive(values) for values in curves.values()):
            ax.set_yscale("log")
        if family == "update_ratio":
            ax.axhspan(guide / math.sqrt(10), guide * math.sqrt(10), color="tab:green", alpha=0.15,
                       label=f"healthy band around {guide:g}")
            ax.axhline(guide, color="tab:green", linestyle="--", linewidth=1)
        if best_epoch is not None:
            ax.axvline(best_epoch + 1, color="crimson", linestyle=":", label=f"restored best (epoch {best_epoch + 1})")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_xlabel("epoch")
        label = _AXIS_LABELS.get(family, family)
        ax.set_ylabel(f"{label} ({loss_name})" if family == "loss" and loss_name else label)
        ax.set_title(f"loss: {loss_name}" if family == "loss" and loss_name else label)
        ax.grid(alpha=0.3)
        if len(ax.get_legend_handles_labels()[1]) > 1:
            ax.legend(fontsize="small")
    if title:
        figure.suptitle(title)
    return figure


def update_ratios(ratios, path, guide: float = 1e-3, title: str | None = None):
    """Update-to-weight ratios ||update|| / ||weight|| per layer against the step, on a log axis,
    with a dashed guide line at ``guide`` (1e-3: much lower and the layer learns too slowly,
    much higher and the learning rate is probably too high).

    ratios: a dict layer name -> ratios, or one sequence of ratios, or a ``History`` whose
    ``update_ratio`` entry is either. Writes a PNG to ``path`` and returns ``path``.
    """
    if hasattr(ratios, "history"):
        ratios = ratios.history["update_ratio"]
    if not isinstance(ratios, Mapping):
        ratios = {"update / weight": ratios}
    curves = {name: list(values) for name, values in ratios.items()}
    if not curves or not all(_numbers(values) for values in curves.values()):
        raise ValueError("ratios must map layer names to non-empty sequences of numbers")
    figure, (ax,) = _figure(1)
    for name, values in curves.items():
        ax.plot(range(1, len(values) + 1), values, label=str(name))
    ax.axhline(guide, color="gray", linestyle="--", label=f"guide {guide:g}")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("||update|| / ||weight||")
    ax.set_title(title or "update / weight ratio")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small")
    return _save(figure, path)


def search(results, path, title: str | None = None):
    """A hyperparameter search: the score against each hyperparameter, one panel each, with
    log x axes for log-scale dimensions (1 - value for ``OneMinusLogUniform``), categories for
    ``Choice``, coarse-to-fine stages in different colours and the best trial starred.

    results: a ``fastnn.tune.SearchResult`` (or ``CoarseToFineResult``). Writes a PNG to
    ``path`` and returns ``path``.
    """
    if not hasattr(results, "trials") or not hasattr(results, "space"):
        raise TypeError(f"results must be a fastnn.tune.SearchResult, got {type(results).__name__}")
    trials = [t for t in results.trials if t.ok]
    if not trials:
        raise ValueError("no successful trial to plot")
    stages = sorted({t.stage for t in trials})
    best = trials[0]
    figure, axes = _figure(len(results.space))
    for ax, (name, dim) in zip(axes, results.space.items()):
        position = _axis(ax, name, dim, [t.params[name] for t in trials])
        for stage in stages:
            chosen = [t for t in trials if t.stage == stage]
            ax.scatter([position(t.params[name]) for t in chosen], [t.score for t in chosen], s=18, alpha=0.8,
                       label=f"stage {stage}" if len(stages) > 1 else None)
        ax.scatter([position(best.params[name])], [best.score], marker="*", s=160, color="crimson",
                   zorder=3, label="best")
        ax.set_ylabel("score (higher is better)" if results.maximize else "score (lower is better)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    if title:
        figure.suptitle(title)
    return _save(figure, path)


def _axis(ax, name: str, dim, values):
    """Set up the x axis for a dimension; returns value -> x position."""
    scale = getattr(dim, "scale", "linear")
    if scale == "categorical":
        options = list(getattr(dim, "options", dict.fromkeys(values)))
        ax.set_xticks(range(len(options)), [str(o) for o in options])
        ax.set_xlabel(name)
        return options.index
    if scale == "one_minus_log":
        ax.set_xscale("log")
        ax.set_xlabel(f"1 - {name}")
        return lambda v: 1.0 - v
    if scale == "log":
        ax.set_xscale("log")
    ax.set_xlabel(name)
    return lambda v: v
