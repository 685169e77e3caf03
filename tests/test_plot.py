"""fastnn.plot writes real PNG files (signature, size, dimensions) without opening windows, and
says how to install matplotlib when it is missing."""

import struct
import sys

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from fastnn import plot, tune  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path):
    """(width, height) from the IHDR chunk after checking the signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, "not a PNG file"
    assert len(data) > 5000, f"suspiciously small PNG ({len(data)} bytes)"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


class History:
    def __init__(self, history):
        self.history = history


HISTORY = {"loss": [2.3, 1.2, 0.8, 0.6], "val_loss": [2.2, 1.4, 1.0, 0.9],
           "accuracy": [0.2, 0.6, 0.75, 0.8], "val_accuracy": [0.25, 0.55, 0.7, 0.72],
           "lr": [1e-2, 1e-2, 1e-3, 1e-3]}


def test_history_from_dict_and_from_object(tmp_path):
    path = tmp_path / "history.png"
    assert plot.history(HISTORY, path) == path
    width, height = png_size(path)
    assert width > 2 * height  # three panels side by side: loss, accuracy, lr
    other = plot.history(History({"loss": np.array([1.0, 0.5]), "val_loss": [1.1, 0.7]}), str(tmp_path / "h2.png"))
    png_size(tmp_path / "h2.png")
    assert other == str(tmp_path / "h2.png")
    with pytest.raises(ValueError, match="no per-epoch"):
        plot.history({"note": "text"}, tmp_path / "bad.png")
    with pytest.raises(TypeError, match=".history"):
        plot.history([1, 2], tmp_path / "bad.png")


def test_update_ratios(tmp_path):
    steps = np.arange(1, 51)
    ratios = {"0.weight": 1e-2 / steps, "2.weight": list(1e-3 * np.ones(50)), "4.weight": 1e-4 * np.sqrt(steps)}
    png_size(plot.update_ratios(ratios, tmp_path / "ratios.png"))
    png_size(plot.update_ratios(History({"update_ratio": [1e-3, 2e-3, 5e-4]}), tmp_path / "single.png"))
    with pytest.raises(ValueError, match="sequences of numbers"):
        plot.update_ratios({"a": []}, tmp_path / "bad.png")


def score(params, epochs=1):
    return (np.log10(params["lr"]) + 3) ** 2 + (params["act"] == "gelu") * 0.1 + 1 / epochs


def test_search_plots_each_hyperparameter(tmp_path):
    space = {"lr": tune.LogUniform(1e-5, 1e-1), "beta": tune.OneMinusLogUniform(0.9, 0.999),
             "hidden": tune.IntLogUniform(8, 256), "p": tune.Uniform(0, 0.5), "act": tune.Choice(["relu", "gelu"])}
    result = tune.random_search(score, space, trials=25, seed=0)
    width, height = png_size(plot.search(result, tmp_path / "search.png"))
    assert width > height  # a grid of 5 panels, 4 per row
    staged = tune.coarse_to_fine(score, space, stages=[{"trials": 10, "epochs": 1}, {"trials": 5, "epochs": 3}], seed=0)
    png_size(plot.search(staged, tmp_path / "staged.png", title="coarse to fine"))
    with pytest.raises(TypeError, match="SearchResult"):
        plot.search({"trials": []}, tmp_path / "bad.png")


def test_no_window_and_pyplot_untouched(tmp_path):
    plot.history(HISTORY, tmp_path / "h.png")
    assert "matplotlib.pyplot" not in sys.modules or sys.modules["matplotlib.pyplot"].get_fignums() == []


def test_missing_matplotlib_names_the_extra(tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r'pip install "fastnn\[plot\]"'):
        plot.history(HISTORY, tmp_path / "h.png")


def band_limits(patch):
    """(low, high) in data units of an axhspan (a Rectangle or, in older matplotlib, a Polygon)."""
    if hasattr(patch, "get_height"):
        return patch.get_y(), patch.get_y() + patch.get_height()
    ys = patch.get_xy()[:, 1]
    return ys.min(), ys.max()


def test_history_figure_labels_the_loss_the_best_epoch_and_the_band():
    hist = {**HISTORY, "update_ratio": [3e-3, 1.5e-3, 1e-3, 8e-4]}
    figure = plot.history_figure(hist, "run", loss_name="softmax cross-entropy", best_epoch=2)
    loss, accuracy, lr, ratio = figure.axes[:4]
    for ax in (loss, accuracy, lr, ratio):
        assert ax.get_xlabel() == "epoch" and ax.get_ylabel()
        best = [line for line in ax.get_lines() if line.get_label() == "restored best (epoch 3)"]
        assert len(best) == 1 and list(best[0].get_xdata()) == [3, 3]
        assert "restored best (epoch 3)" in [text.get_text() for text in ax.get_legend().get_texts()]
    assert loss.get_title() == "loss: softmax cross-entropy"
    assert loss.get_ylabel() == "loss (softmax cross-entropy)"
    assert accuracy.get_ylabel() == "accuracy" and lr.get_ylabel() == "learning rate"
    assert [line.get_label() for line in loss.get_lines()][:2] == ["train", "validation"]
    assert ratio.get_ylabel() == "||update|| / ||weight||" and ratio.get_yscale() == "log"
    (band,) = ratio.patches
    low, high = band_limits(band)
    assert low == pytest.approx(1e-3 / np.sqrt(10)) and high == pytest.approx(1e-3 * np.sqrt(10))
    assert band.get_label() == "healthy band around 0.001"
    assert any(list(line.get_ydata()) == [1e-3, 1e-3] for line in ratio.get_lines())
    assert figure.get_suptitle() == "run"
    # Without the options: plain labels, no marker, no band outside the ratio panel.
    plain = plot.history_figure(HISTORY)
    assert plain.axes[0].get_title() == "loss" and plain.axes[0].get_ylabel() == "loss"
    assert not any(ax.patches for ax in plain.axes)
    assert all("restored" not in line.get_label() for ax in plain.axes for line in ax.get_lines())
    with pytest.raises(ValueError, match="best_epoch must be an epoch number"):
        plot.history_figure(HISTORY, best_epoch=-1)


def test_the_jobs_curves_mark_what_was_restored(tmp_path, monkeypatch):
    from fastnn import job

    seen = {}
    original = plot.history

    def spy(hist, path, title=None, **options):
        seen.update(options)
        return original(hist, path, title, **options)

    monkeypatch.setattr(plot, "history", spy)
    metrics = job.run(job.JobConfig(data="spirals", epochs=40, patience=2, hidden=(8,), lr=0.3, verbose=0,
                                    out=str(tmp_path / "run")))
    assert seen["loss_name"] == "softmax cross-entropy"
    assert metrics["stopped_early"] and seen["best_epoch"] is not None
    assert seen["best_epoch"] < metrics["epochs_run"] - 1
    png_size(tmp_path / "run" / "curves.png")
