"""Checkpoints: exact round trips of model, optimizer, preprocessing, history and extras; resuming
gives the same run as not stopping; bad files are refused without touching the model or the
optimizer; writing is atomic."""

import json
import math
import os
import zipfile

import numpy as np
import pytest

import fastnn as fnn
from fastnn import checkpoint, nn
from fastnn.callbacks import LRScheduler
from fastnn.checkpoint import CheckpointError
from fastnn.optim.lr_scheduler import StepLR
from fastnn.train import Trainer

from workflow_util import (assert_same_optimizer, assert_same_state, digits, mlp, optimizer_snapshot,
                           snapshot)


def trained(seed=0, epochs=2):
    """A model and Adam optimizer with state after a little training on digits."""
    X, _, y, _ = digits()
    model = mlp(seed)
    opt = fnn.optim.Adam(model.parameters(), lr=1e-3)
    trainer = Trainer(model, nn.SoftmaxCrossEntropy(), opt, seed=seed)
    trainer.fit(X[:256], y[:256], epochs=epochs, batch_size=64, verbose=0)
    return model, opt, trainer


def test_model_optimizer_and_extras_round_trip_exactly(tmp_path):
    model, opt, trainer = trained()
    X, _, _, _ = digits()
    scaler = fnn.preprocessing.Standardizer().fit(X)
    pca = fnn.preprocessing.PCAWhitening(n_components=8).fit(X)
    extras = dict(scaler=scaler, pca=pca, history=trainer.history, note="digits", flag=True, nothing=None,
                  count=7, big=2**70, rate=0.1, nan=math.nan, pair=(1, "a"), nested=[[1, 2], {"k": (3.5,)}],
                  by_int={0: "zero", 1: np.float32(1.5)}, scalar=np.int16(-3), zero_d=np.array(2.5),
                  empty=np.zeros((0, 3)), labels=np.arange(5), mask=np.array([True, False]))
    path = fnn.save(tmp_path / "ckpt.npz", model=model, optimizer=opt, **extras)
    assert path == str(tmp_path / "ckpt.npz")

    other = mlp(seed=5)
    other_opt = fnn.optim.Adam(other.parameters(), lr=0.5)
    loaded = fnn.load(path, model=other, optimizer=other_opt)

    assert_same_state(other, snapshot(model))
    assert_same_optimizer(other_opt, optimizer_snapshot(opt))
    assert other_opt.param_groups[0]["lr"] == 1e-3 and isinstance(other_opt.param_groups[0]["betas"], tuple)
    assert set(loaded) == set(extras)
    fresh = fnn.preprocessing.Standardizer()
    fresh.load_state_dict(loaded["scaler"])
    np.testing.assert_array_equal(fresh.transform(X), scaler.transform(X))
    fresh_pca = fnn.preprocessing.PCAWhitening()
    fresh_pca.load_state_dict(loaded["pca"])
    np.testing.assert_array_equal(fresh_pca.transform(X), pca.transform(X))
    history = fnn.train.History()
    history.load_state_dict(loaded["history"])
    assert history.history == trainer.history.history and history.epoch == trainer.history.epoch
    assert history.update_ratios == trainer.history.update_ratios
    assert loaded["pair"] == (1, "a") and loaded["nested"] == [[1, 2], {"k": (3.5,)}]
    assert loaded["by_int"][0] == "zero" and loaded["by_int"][1] == np.float32(1.5)
    assert type(loaded["by_int"][1]) is np.float32 and type(loaded["scalar"]) is np.int16
    assert loaded["big"] == 2**70 and math.isnan(loaded["nan"]) and loaded["nothing"] is None
    assert loaded["zero_d"].shape == () and loaded["empty"].shape == (0, 3)
    np.testing.assert_array_equal(loaded["labels"], np.arange(5))
    assert loaded["mask"].dtype == np.bool_


def test_resuming_from_a_checkpoint_gives_the_uninterrupted_run(tmp_path):
    """Dropout masks, shuffling, BatchNorm statistics, Adam's moments and the LR schedule all
    continue exactly: 3 + 3 epochs through a checkpoint = 6 epochs straight."""
    X, _, y, _ = digits()
    X, y = X[:300], y[:300]

    def setup(init_seed):
        model = mlp(init_seed, dropout=0.2)
        opt = fnn.optim.Adam(model.parameters(), lr=2e-3)
        schedule = StepLR(opt, step_size=2, gamma=0.5)
        trainer = Trainer(model, nn.SoftmaxCrossEntropy(), opt, seed=42, l2=1e-3,
                          callbacks=[LRScheduler(schedule)])
        return model, opt, schedule, trainer

    model, opt, schedule, trainer = setup(0)
    straight = trainer.fit(X, y, epochs=6, batch_size=32, verbose=0)
    straight_state = snapshot(model)

    model, opt, schedule, trainer = setup(0)
    trainer.fit(X, y, epochs=3, batch_size=32, verbose=0)
    path = fnn.save(tmp_path / "half.npz", model=model, optimizer=opt, trainer=trainer, schedule=schedule)

    model2, opt2, schedule2, trainer2 = setup(7)  # other initial weights: the checkpoint must override them
    extras = fnn.load(path, model=model2, optimizer=opt2)
    trainer2.load_state_dict(extras["trainer"])
    schedule2.load_state_dict(extras["schedule"])
    resumed = trainer2.fit(X, y, epochs=3, batch_size=32, verbose=0)

    assert_same_state(model2, straight_state)
    assert resumed.epoch == list(range(6)) == straight.epoch
    for name in ("loss", "accuracy", "lr", "update_ratio", "penalty"):
        assert resumed.history[name] == straight.history[name], name
    assert trainer2.epoch == 6


def unchanged_after(call, model, opt):
    """Run ``call`` (which must raise CheckpointError) and check that nothing changed."""
    before, before_opt = snapshot(model), optimizer_snapshot(opt)
    with pytest.raises(CheckpointError) as info:
        call()
    assert_same_state(model, before)
    assert_same_optimizer(opt, before_opt)
    return str(info.value)


def test_truncated_file_is_refused_and_nothing_changes(tmp_path):
    model, opt, _ = trained()
    path = fnn.save(tmp_path / "ckpt.npz", model=model, optimizer=opt)
    data = open(path, "rb").read()
    for cut in (len(data) // 2, len(data) - 10, 100):
        short = tmp_path / f"short{cut}.npz"
        short.write_bytes(data[:cut])
        target, target_opt, _ = trained(seed=3)
        message = unchanged_after(lambda: fnn.load(short, model=target, optimizer=target_opt), target, target_opt)
        assert "truncated or corrupt" in message


@pytest.mark.parametrize("field,value", [(6, 200), (10, 99)], ids=["zip-version", "compression-method"])
def test_damaged_zip_entry_header_is_a_checkpoint_error(tmp_path, field, value):
    """A flipped byte in a central-directory record (the zip version needed to extract, or the
    compression method) makes zipfile raise NotImplementedError: it must reach the user as
    CheckpointError, for checkpoints and model files alike, with nothing changed."""
    model, opt, _ = trained()
    for path in (fnn.save(tmp_path / "ckpt.npz", model=model, optimizer=opt),
                 fnn.save_model(tmp_path / "model.npz", model, task="classify")):
        data = bytearray(open(path, "rb").read())
        record = bytes(data).find(b"PK\x01\x02")  # the first entry's central-directory record
        assert record > 0
        data[record + field] = value
        bad = tmp_path / f"bad_{os.path.basename(path)}"
        bad.write_bytes(bytes(data))
        if os.path.basename(path) == "ckpt.npz":
            target, target_opt, _ = trained(seed=3)
            message = unchanged_after(lambda: fnn.load(bad, model=target, optimizer=target_opt), target, target_opt)
        else:
            with pytest.raises(CheckpointError) as info:
                fnn.load_model(bad)
            message = str(info.value)
        assert "truncated or corrupt" in message and "NotImplementedError" in message


def test_flipped_bytes_in_an_array_are_caught_and_named(tmp_path):
    model, opt, _ = trained()
    path = fnn.save(tmp_path / "ckpt.npz", model=model, optimizer=opt)
    data = bytearray(open(path, "rb").read())
    weight = model.state_dict()["4.weight"].tobytes()
    at = bytes(data).find(weight)
    assert at > 0  # np.savez stores arrays uncompressed
    data[at + len(weight) // 2] ^= 0xFF
    (tmp_path / "bad.npz").write_bytes(bytes(data))
    target, target_opt, _ = trained(seed=3)
    message = unchanged_after(lambda: fnn.load(tmp_path / "bad.npz", model=target, optimizer=target_opt),
                              target, target_opt)
    assert "model/4.weight" in message


def test_mismatched_model_is_refused_naming_each_key(tmp_path):
    model, opt, _ = trained()
    path = fnn.save(tmp_path / "ckpt.npz", model=model, optimizer=opt)

    wider = mlp(seed=1, hidden=48)
    wider_opt = fnn.optim.Adam(wider.parameters())
    message = unchanged_after(lambda: fnn.load(path, model=wider, optimizer=wider_opt), wider, wider_opt)
    assert "0.weight: shape (64, 32) in the checkpoint, (64, 48) in the model" in message
    assert "1.running_mean" in message and "4.weight" in message

    deeper = nn.Sequential(*mlp(seed=1).layers, nn.ReLU(), nn.Dense(10, 10, seed=4))
    deeper_opt = fnn.optim.Adam(deeper.parameters())
    message = unchanged_after(lambda: fnn.load(path, model=deeper, optimizer=deeper_opt), deeper, deeper_opt)
    assert "6.weight: missing from the checkpoint" in message

    double = mlp(seed=1, dtype=np.float64)
    double_opt = fnn.optim.Adam(double.parameters())
    message = unchanged_after(lambda: fnn.load(path, model=double, optimizer=double_opt), double, double_opt)
    assert "dtype float32 in the checkpoint, float64 in the model" in message


def test_mismatched_optimizer_leaves_the_model_unchanged(tmp_path):
    model, opt, _ = trained()
    path = fnn.save(tmp_path / "ckpt.npz", model=model, optimizer=opt)
    target = mlp(seed=2)
    sgd = fnn.optim.SGD(target.parameters(), lr=0.1)
    message = unchanged_after(lambda: fnn.load(path, model=target, optimizer=sgd), target, sgd)
    assert "Adam" in message and "SGD" in message

    params = target.parameters()
    grouped = fnn.optim.Adam([{"params": params[:2]}, {"params": params[2:]}])
    message = unchanged_after(lambda: fnn.load(path, model=target, optimizer=grouped), target, grouped)
    assert "parameter groups" in message

    bare = fnn.save(tmp_path / "model-only.npz", model=model)
    message = unchanged_after(lambda: fnn.load(bare, model=target, optimizer=sgd), target, sgd)
    assert "no optimizer state" in message


def rewrite_manifest(path, out, change):
    with np.load(path) as npz:
        members = {k: npz[k] for k in npz.files}
    manifest = json.loads(members["__manifest__"].tobytes())
    change(manifest, members)
    members["__manifest__"] = np.frombuffer(json.dumps(manifest).encode(), np.uint8)
    np.savez(out, **members)


def test_format_version_and_foreign_files_are_refused(tmp_path):
    model, opt, _ = trained()
    path = fnn.save(tmp_path / "ckpt.npz", model=model, optimizer=opt)

    rewrite_manifest(path, tmp_path / "v2.npz", lambda m, _: m.update(version=2))
    message = unchanged_after(lambda: fnn.load(tmp_path / "v2.npz", model=model, optimizer=opt), model, opt)
    assert "format version 2" in message

    def drop_first_array(m, members):
        del members["a0"]
    rewrite_manifest(path, tmp_path / "missing.npz", drop_first_array)
    message = unchanged_after(lambda: fnn.load(tmp_path / "missing.npz", model=model, optimizer=opt), model, opt)
    assert "missing" in message and "a0" in message

    def wrong_shape(m, members):
        m["arrays"][0]["shape"] = [1, 2]
    rewrite_manifest(path, tmp_path / "shape.npz", wrong_shape)
    message = unchanged_after(lambda: fnn.load(tmp_path / "shape.npz", model=model, optimizer=opt), model, opt)
    assert "model/0.weight" in message and "[1, 2]" in message

    np.savez(tmp_path / "plain.npz", w=np.ones(3))
    with pytest.raises(CheckpointError, match="not a fastnn checkpoint"):
        fnn.load(tmp_path / "plain.npz", model=model)
    np.save(tmp_path / "array.npy", np.ones(3))
    with pytest.raises(CheckpointError, match="single .npy array"):
        fnn.load(tmp_path / "array.npy")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(CheckpointError, match=r"not a fastnn checkpoint or model file: .* starts with b'hello'"):
        fnn.load(tmp_path / "text.npz")
    with pytest.raises(FileNotFoundError):
        fnn.load(tmp_path / "absent.npz")


def test_no_pickle_anywhere(tmp_path):
    path = fnn.save(tmp_path / "ckpt.npz", model=mlp(), note="x")
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            assert name.endswith(".npy")
    with pytest.raises(TypeError, match="Python objects"):
        fnn.save(tmp_path / "obj.npz", objects=np.array([object()]))
    with pytest.raises(TypeError, match="extras/thing: cannot save a set"):
        fnn.save(tmp_path / "set.npz", thing={1, 2})
    assert not (tmp_path / "obj.npz").exists() and not (tmp_path / "set.npz").exists()
    with pytest.raises(TypeError, match=r"model must be a fastnn Module \(an object with a state_dict\(\) method\), "
                                        r"got int"):
        fnn.save(tmp_path / "int.npz", model=3)
    with pytest.raises(TypeError, match="optimizer must be a fastnn optimizer .* got str"):
        fnn.save(tmp_path / "str.npz", model=mlp(), optimizer="adam")
    assert not (tmp_path / "int.npz").exists() and not (tmp_path / "str.npz").exists()


def leftovers(directory):
    return sorted(name for name in os.listdir(directory) if name.endswith(".tmp"))


def test_a_failed_write_never_replaces_the_previous_checkpoint(tmp_path, monkeypatch):
    model, opt, _ = trained()
    path = fnn.save(tmp_path / "ckpt.npz", model=model, optimizer=opt, version="old")
    original = open(path, "rb").read()
    umask = os.umask(0o022)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask  # the usual permissions, not mkstemp's 0o600
    real_savez = np.savez

    def crash_midway(file, **members):
        real_savez(file, **members)
        file.truncate(file.tell() // 2)
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.np, "savez", crash_midway)
    with pytest.raises(OSError, match="disk full"):
        fnn.save(path, model=model, optimizer=opt, version="new")
    monkeypatch.undo()
    assert open(path, "rb").read() == original
    assert leftovers(tmp_path) == []

    def failing_replace(src, dst):
        raise PermissionError("read-only")

    monkeypatch.setattr(checkpoint.os, "replace", failing_replace)
    with pytest.raises(PermissionError):
        fnn.save(path, model=model, version="new")
    monkeypatch.undo()
    assert open(path, "rb").read() == original
    assert leftovers(tmp_path) == []
    assert fnn.load(path)["version"] == "old"


def test_extras_alone_and_objects_with_state_dicts(tmp_path):
    ema_model = mlp()
    ema = fnn.EMA(ema_model, decay=0.9)
    path = fnn.save(tmp_path / "e.npz", ema=ema, numbers=[1.5, 2])
    extras = fnn.load(path)
    assert extras["numbers"] == [1.5, 2] and extras["ema"]["decay"] == 0.9
    with pytest.raises(CheckpointError, match="no model state"):
        fnn.load(path, model=mlp())


@pytest.mark.gpu
def test_arrays_load_onto_the_models_device(tmp_path):
    import cupy

    model, opt, _ = trained()
    path = fnn.save(tmp_path / "ckpt.npz", model=model.to("cuda"), optimizer=opt)
    target = mlp(seed=4).to("cuda")
    target_opt = fnn.optim.Adam(target.parameters())
    fnn.load(path, model=target, optimizer=target_opt)
    for name, a in target.state_dict().items():
        assert isinstance(a, cupy.ndarray), name
        np.testing.assert_array_equal(a.get(), model.state_dict()[name].get())
    assert all(isinstance(v, cupy.ndarray) for entry in target_opt.state.values()
               for k, v in entry.items() if k != "step")
