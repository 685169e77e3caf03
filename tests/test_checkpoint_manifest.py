"""Checkpoint manifests are untrusted input: whatever a damaged or hostile file says, loading
raises CheckpointError naming the problem (never KeyError, TypeError, RecursionError), and the
model and optimizer stay as they were."""

import json

import numpy as np
import pytest

import fastnn as fnn
from fastnn import checkpoint, nn
from fastnn.checkpoint import CheckpointError


def small():
    model = nn.Sequential(nn.Dense(3, 4, seed=0), nn.ReLU(), nn.Dense(4, 2, seed=1))
    return model, fnn.optim.Adam(model.parameters(), lr=1e-3)


@pytest.fixture
def saved(tmp_path):
    model, opt = small()
    model.forward(np.ones((2, 3), np.float32))
    path = fnn.save(tmp_path / "ckpt.npz", model=model, optimizer=opt, note={"a": [1, (2, 3)]})
    with np.load(path) as npz:
        members = {k: npz[k] for k in npz.files}
    return members, json.loads(members["__manifest__"].tobytes())


def rewritten(tmp_path, members, manifest, text=None, name="bad.npz"):
    """A copy of the checkpoint with ``manifest`` (or the raw JSON ``text``) as its manifest."""
    text = json.dumps(manifest) if text is None else text
    out = tmp_path / name
    np.savez(out, **{**members, "__manifest__": np.frombuffer(text.encode(), np.uint8)})
    return out


def refused(path, match):
    """Load ``path`` into a fresh model and optimizer: a CheckpointError matching ``match``,
    and nothing changed."""
    model, opt = small()
    before = {k: v.copy() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=match):
        fnn.load(path, model=model, optimizer=opt)
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[key])
    assert opt.state_dict()["state"] == {}


@pytest.mark.parametrize("change, match", [
    (lambda m: m["arrays"].__setitem__(0, 5), "array entry 0 must be a dict"),
    (lambda m: m["arrays"].__setitem__(0, ["model/0.weight", [3, 4], "<f4", 1]), "array entry 0 must be a dict"),
    (lambda m: m["arrays"][1].pop("crc32"), "array entry 1 must be a dict"),
    (lambda m: m["arrays"][1].update(shape="(4,)"), "array entry 1 must be a dict"),
    (lambda m: m["arrays"][1].update(shape=[-4]), "array entry 1 must be a dict"),
    (lambda m: m["arrays"][1].update(shape=[4.0]), "array entry 1 must be a dict"),
    (lambda m: m["arrays"][0].update(dtype=None), "array entry 0 must be a dict"),
    (lambda m: m["arrays"][0].update(name=7), "array entry 0 must be a dict"),
    (lambda m: m["arrays"][0].update(crc32="0"), "array entry 0 must be a dict"),
])
def test_malformed_array_specs(tmp_path, saved, change, match):
    members, manifest = saved
    change(manifest)
    refused(rewritten(tmp_path, members, manifest), match)


@pytest.mark.parametrize("change, match", [
    (lambda m: m.update(model=[1, 2]), "the model section must be a dict"),
    (lambda m: m.update(model={"type": "Sequential"}), "the model section must be a dict"),
    (lambda m: m["model"].update(state=[]), "the model state must be a dict, got list"),
    (lambda m: m["model"].update(state={"tuple": []}), "the model state must be a dict, got tuple"),
    (lambda m: m["optimizer"].update(state=[[1, 2]]), "the optimizer state must be a dict, got list"),
    (lambda m: m.update(extras=[]), "the extras must be a dict, got list"),
    (lambda m: m["model"]["state"].update({"dict": {"0.weight": 1}}), "a dict entry must be a list of"),
    (lambda m: m["model"]["state"].update({"dict": [["0.weight"]]}), "a dict entry must be a list of"),
    (lambda m: m["model"]["state"].update({"dict": [[["key"], 1]]}), "a dict entry must be a list of"),
    (lambda m: m["extras"].update({"dict": [["x", {"tuple": {"a": 1}}]]}), "a tuple entry must be a list"),
    (lambda m: m["extras"].update({"dict": [["x", {"array": True}]]}), "refers to array True"),
    (lambda m: m["extras"].update({"dict": [["x", {"array": "0"}]]}), "refers to array '0'"),
    (lambda m: m["extras"].update({"dict": [["x", {"array": 99}]]}), "refers to array 99"),
    (lambda m: m["extras"].update({"dict": [["x", {"scalar": 0}]]}), "scalar entry 0 refers to an array of shape"),
    (lambda m: m["extras"].update({"dict": [["x", {"pickle": 0}]]}), "unknown manifest tag 'pickle'"),
    (lambda m: m["extras"].update({"dict": [["x", {"array": 0, "dict": []}]]}), "malformed manifest entry"),
    (lambda m: m.update(version=True), "format version True"),
])
def test_a_list_where_a_dict_belongs_and_other_wrong_shapes(tmp_path, saved, change, match):
    members, manifest = saved
    change(manifest)
    refused(rewritten(tmp_path, members, manifest), match)


def test_deep_nesting(tmp_path, saved):
    members, manifest = saved
    manifest["extras"] = {"dict": [["deep", "PLACEHOLDER"]]}
    text = json.dumps(manifest)

    def nested(depth):
        return text.replace('"PLACEHOLDER"', "[" * depth + "]" * depth)

    json.loads(nested(checkpoint.MAX_DEPTH + 5))  # valid JSON: the depth is what is refused
    refused(rewritten(tmp_path, members, manifest, nested(checkpoint.MAX_DEPTH + 5)), "nested deeper than 64 levels")
    # Deeper than Python's recursion limit: json itself gives up, and that is a CheckpointError too.
    refused(rewritten(tmp_path, members, manifest, nested(100_000), "deeper.npz"), "the manifest cannot be read")
    manifest["extras"] = {"dict": [["deep", "PLACEHOLDER"]]}
    text = json.dumps(manifest)
    tagged = '{"dict": [["k", ' * 70 + "1" + "]]}" * 70
    refused(rewritten(tmp_path, members, manifest, text.replace('"PLACEHOLDER"', tagged), "tagged.npz"),
            "nested deeper than 64 levels")


def test_save_refuses_what_load_would_refuse(tmp_path):
    deep = []
    for _ in range(checkpoint.MAX_DEPTH + 1):
        deep = [deep]
    with pytest.raises(ValueError, match="nested deeper than 64 levels"):
        fnn.save(tmp_path / "deep.npz", deep=deep)
    assert not (tmp_path / "deep.npz").exists()
    shallow = []
    for _ in range(checkpoint.MAX_DEPTH - 1):
        shallow = [shallow]
    fnn.save(tmp_path / "ok.npz", shallow=shallow)
    assert fnn.load(tmp_path / "ok.npz")["shallow"] == shallow


def test_well_formed_files_still_load(tmp_path, saved):
    members, manifest = saved
    model, opt = small()
    extras = fnn.load(rewritten(tmp_path, members, manifest), model=model, optimizer=opt)
    assert extras == {"note": {"a": [1, (2, 3)]}}
