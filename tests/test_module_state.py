"""Module.state_dict_mismatches: its verdict on matching and mismatching states, strict or not,
with or without buffers, and the same lines in the errors of load_state_dict, fastnn.load and
EMA.load_state_dict."""

import numpy as np
import pytest

import fastnn as fnn
from fastnn.checkpoint import CheckpointError

from workflow_util import mlp, snapshot


def spoiled(state):
    """``state`` with one mismatch of every kind, and the lines each should give."""
    bad = dict(state)
    bad["0.weight"] = np.zeros((16, 12), np.float32)
    bad["4.bias"] = state["4.bias"].astype(np.float64)
    bad["1.running_mean"] = state["1.running_mean"].tolist()
    del bad["1.running_var"]
    bad["9.weight"] = np.zeros(3, np.float32)
    lines = {"shape": "0.weight: shape (16, 12) in the state, (64, 32) in the model",
             "dtype": "4.bias: dtype float64 in the state, float32 in the model (convert the model with "
                      ".to(dtype=...) or the state with .astype)",
             "array": "1.running_mean must be an array (numpy.ndarray, cupy.ndarray, a pandas DataFrame or Series, or "
                      "an object with __dlpack__, __cuda_array_interface__ or __array_interface__), got list",
             "missing": "1.running_var: missing from the state",
             "unexpected": "9.weight: not in the model"}
    return bad, lines


def test_a_matching_state_fits_from_either_device(xp):
    model = mlp()
    state = {k: xp.asarray(v) for k, v in mlp(seed=7).state_dict().items()}
    assert model.state_dict_mismatches(state) == []
    assert model.state_dict_mismatches(state, strict=False) == []
    assert model.state_dict_mismatches({}, strict=False) == []


def test_every_mismatch_gets_one_line_and_strict_adds_the_keys():
    model = mlp()
    bad, lines = spoiled(mlp(seed=7).state_dict())
    assert model.state_dict_mismatches(bad) == [lines[k] for k in ("missing", "unexpected", "shape", "array", "dtype")]
    assert model.state_dict_mismatches(bad, strict=False) == [lines[k] for k in ("shape", "array", "dtype")]
    assert model.state_dict_mismatches(bad, source="the checkpoint")[0] == "1.running_var: missing from the checkpoint"
    assert "0.weight: shape (16, 12) in the checkpoint, (64, 32) in the model" in model.state_dict_mismatches(
        bad, source="the checkpoint")


def test_buffers_false_compares_with_the_parameters_alone():
    model = mlp()
    params = {name: p.data.copy() for name, p in mlp(seed=7).named_parameters()}
    assert model.state_dict_mismatches(params, buffers=False) == []
    assert model.state_dict_mismatches(params) == [f"1.{b}: missing from the state" for b in
                                                   ("running_mean", "running_var")]
    full = mlp(seed=7).state_dict()
    assert model.state_dict_mismatches(full, buffers=False) == [f"1.{b}: not in the model" for b in
                                                                ("running_mean", "running_var")]


def test_load_state_dict_raises_the_lines_and_loads_nothing():
    model = mlp()
    before = snapshot(model)
    bad, lines = spoiled(mlp(seed=7).state_dict())
    with pytest.raises(ValueError) as info:
        model.load_state_dict(bad)
    assert str(info.value).startswith("Sequential.load_state_dict: the state does not match the model, nothing was "
                                      "loaded:\n  ")
    assert all(line in str(info.value) for line in lines.values())
    for name, value in snapshot(model).items():
        np.testing.assert_array_equal(value, before[name])


def test_fastnn_load_raises_a_checkpoint_error_with_the_lines(tmp_path):
    path = fnn.save(tmp_path / "ckpt.npz", model=mlp(seed=7))
    other = mlp(hidden=16, dtype=np.float64)
    with pytest.raises(CheckpointError) as info:
        fnn.load(path, model=other)
    expected = other.state_dict_mismatches(mlp(seed=7).state_dict(), source="the checkpoint")
    assert len(expected) == 8
    assert expected[-1].startswith("4.bias: dtype float32 in the checkpoint, float64 in the model")
    assert str(info.value) == (f"{path}: the checkpoint's model does not match Sequential; nothing was loaded:\n  "
                               + "\n  ".join(expected))


def test_ema_load_state_dict_checks_names_shapes_and_dtypes():
    ema = fnn.EMA(mlp(seed=7))
    state = ema.state_dict()
    fnn.EMA(mlp()).load_state_dict(state)
    for model, line in ((mlp(hidden=16), "0.weight: shape (64, 32) in the state, (64, 16) in the model"),
                        (mlp(dtype=np.float64), "0.weight: dtype float32 in the state, float64 in the model"),
                        (mlp(classes=3), "4.weight: shape (32, 10) in the state, (32, 3) in the model")):
        target = fnn.EMA(model)
        kept = {name: s.copy() for name, s in target.shadow.items()}
        with pytest.raises(ValueError, match="EMA.load_state_dict: the state does not match, nothing was") as info:
            target.load_state_dict(state)
        assert line in str(info.value)
        for name, s in target.shadow.items():
            np.testing.assert_array_equal(s, kept[name])
    missing = {**state, "shadow": {k: v for k, v in state["shadow"].items() if k != "4.bias"}}
    with pytest.raises(ValueError, match="4.bias: missing from the state"):
        fnn.EMA(mlp()).load_state_dict(missing)
