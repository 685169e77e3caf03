"""Model files: every built-in layer round-trips through the architecture spec with its
arguments and weights; the loaded Predictor answers in the user's class names from raw
features (preprocessing applied, missing values imputed or named, DataFrames by column name);
custom layers register; hostile or damaged files raise CheckpointError."""

import json
import math
import zipfile

import numpy as np
import pytest

import fastnn as fnn
from fastnn import nn
from fastnn.checkpoint import CheckpointError
from fastnn.nn import registry
from fastnn.preprocessing import MinMaxScaler, PCAWhitening, SimpleImputer, Standardizer


def every_layer(dtype=np.float32):
    """A model with every built-in layer kind and non-default arguments."""
    return nn.Sequential(
        nn.Dense(5, 8, activation="leaky_relu", alpha=0.2, seed=0, dtype=dtype),
        nn.BatchNorm(8, eps=1e-3, momentum=0.3, dtype=dtype),
        nn.ReLU(), nn.Dropout(0.25, seed=7),
        nn.Residual(nn.Sequential(nn.Dense(8, 8, activation="tanh", seed=1, dtype=dtype), nn.PReLU(8, dtype=dtype),
                                  nn.Sigmoid())),
        nn.Residual(nn.Sequential(nn.Dense(8, 6, bias=False, seed=2, dtype=dtype), nn.GELU(approximate="tanh")),
                    seed=3),
        nn.LeakyReLU(0.05), nn.Tanh(), nn.GELU(), nn.PReLU(dtype=dtype),
        nn.Sequential(nn.Dense(6, 4, activation="gelu", seed=4, dtype=dtype), nn.ReLU(), fuse=False),
        nn.Dense(4, 3, seed=5, dtype=dtype), nn.Softmax())


def trained_a_little(model, X, steps=3):
    """Move the weights and running statistics away from their initial values."""
    opt = fnn.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        out = model.forward(X, training=True)
        model.backward(out - out.mean(axis=0), need_input_grad=False)
        opt.step()
        opt.zero_grad()
    return model


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_builtin_layer_round_trips(tmp_path, rng, dtype):
    X = rng.standard_normal((32, 5)).astype(dtype)
    model = trained_a_little(every_layer(dtype), X)
    path = fnn.save_model(tmp_path / "m.npz", model, classes=["a", "b", "c"])
    loaded = fnn.load_model(path)
    assert registry.to_spec(loaded.model) == registry.to_spec(model)
    assert repr(loaded.model) == repr(model)
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(loaded.model.state_dict()[key], value, err_msg=key)
    np.testing.assert_array_equal(loaded.model.forward(X, training=False), model.forward(X, training=False))
    assert loaded.model[3].seed == 7 and loaded.model[3].p == 0.25
    # The file is a checkpoint: its weights load into a model built in code.
    fresh = every_layer(dtype)
    fnn.load(path, model=fresh)
    np.testing.assert_array_equal(fresh.forward(X, training=False), model.forward(X, training=False))


def test_the_spec_is_declarative_json():
    spec = registry.to_spec(nn.Sequential(nn.Dense(2, 3, activation="relu"), nn.Dropout(0.5, seed=1)))
    assert json.loads(json.dumps(spec)) == spec == {"version": 1, "root": {
        "layer": "Sequential", "config": {"fuse": True}, "children": [
            {"layer": "Dense", "config": {"in_features": 2, "out_features": 3, "activation": "relu", "alpha": 0.01,
                                          "bias": True, "dtype": "float32"}},
            {"layer": "Dropout", "config": {"p": 0.5, "seed": 1}}]}}


def classifier(rng, features=4, classes=3):
    model = nn.Sequential(nn.Dense(features, 16, seed=0), nn.BatchNorm(16), nn.ReLU(), nn.Dense(16, classes, seed=1))
    return trained_a_little(model, rng.standard_normal((20, features)).astype(np.float32))


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("classes", [["setosa", "versicolor", "virginica"], [3, 10**7, -1], [0.5, 1.5, 2.5],
                                     np.array(["x", "y", "z"])])
def test_predictions_in_the_users_class_names(tmp_path, rng, classes):
    X = rng.standard_normal((50, 4)) * 3 + 1
    imputer, scaler = SimpleImputer("median").fit(X), Standardizer().fit(X)
    model = classifier(rng)
    predictor = fnn.load_model(fnn.save_model(tmp_path / "m.npz", model, classes=classes,
                                              preprocessing=[imputer, scaler]))
    logits = model.forward(scaler.transform(X).astype(np.float32), training=False)
    proba = predictor.predict_proba(X)
    np.testing.assert_allclose(proba, softmax(logits.astype(np.float64)), rtol=1e-5, atol=1e-6)
    predicted = predictor.predict(X)
    assert predicted.tolist() == [np.asarray(classes).tolist()[k] for k in logits.argmax(axis=1)]
    assert predictor.classes.tolist() == np.asarray(classes).tolist()


def test_binary_single_logit_and_boolean_classes(tmp_path, rng):
    model = nn.Sequential(nn.Dense(3, 1, seed=0))
    X = rng.standard_normal((40, 3))
    predictor = fnn.load_model(fnn.save_model(tmp_path / "b.npz", model, classes=[False, True]))
    z = X.astype(np.float32) @ model[0].weight.data + model[0].bias.data
    p = 1 / (1 + np.exp(-z[:, 0].astype(np.float64)))
    np.testing.assert_allclose(predictor.predict_proba(X), np.stack([1 - p, p], axis=1), rtol=1e-5)
    assert predictor.predict(X).tolist() == (p > 0.5).tolist() and predictor.predict(X).dtype == bool
    assert fnn.Predictor(model, task="classify").classes.tolist() == [0, 1]


def test_regression_undoes_the_target_transform(tmp_path, rng):
    X = rng.standard_normal((30, 2))
    y = rng.standard_normal((30, 1)) * 1000 + 5e4
    target = Standardizer().fit(y)
    model = nn.Sequential(nn.Dense(2, 4, seed=0), nn.Tanh(), nn.Dense(4, 1, seed=1))
    predictor = fnn.load_model(fnn.save_model(tmp_path / "r.npz", model, task="regress", target_transform=target,
                                              preprocessing=MinMaxScaler((-1, 1)).fit(X),
                                              metadata={"units": "EUR", "seen": np.arange(3)}))
    z = model.forward(predictor.transform(X).astype(np.float32), training=False)
    expected = (z.astype(np.float64) * target.scale + target.mean)[:, 0]
    assert predictor.task == "regression" and predictor.classes is None
    np.testing.assert_allclose(predictor.predict(X), expected, rtol=1e-6)
    assert predictor.metadata["units"] == "EUR" and predictor.metadata["seen"].tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="a regression model has no class probabilities"):
        predictor.predict_proba(X)
    two = nn.Sequential(nn.Dense(2, 2, seed=0))
    assert fnn.Predictor(two, task="regression").predict(X).shape == (30, 2)


def test_missing_values_are_imputed_or_named(tmp_path, rng):
    X = rng.standard_normal((40, 3))
    model = classifier(rng, features=3, classes=2)
    gaps = X.copy()
    gaps[[2, 5], 1] = np.nan
    with_imputer = fnn.load_model(fnn.save_model(tmp_path / "i.npz", model, classes=["no", "yes"],
                                                 preprocessing=[SimpleImputer().fit(X), Standardizer().fit(X)]))
    filled = X.copy()
    filled[[2, 5], 1] = X[:, 1].mean()
    np.testing.assert_array_equal(with_imputer.predict_proba(gaps), with_imputer.predict_proba(filled))
    without = fnn.load_model(fnn.save_model(tmp_path / "n.npz", model, classes=["no", "yes"],
                                            preprocessing=Standardizer().fit(X), feature_names=["a", "b", "c"]))
    with pytest.raises(ValueError, match=r"X has missing values \(NaN\) in column 'b' \(rows 2, 5; 2 in all\)"):
        without.predict(gaps)
    gaps[0, 0] = np.inf
    with pytest.raises(ValueError, match="X has infinite values in column 0"):
        with_imputer.predict(gaps)


def test_dataframes_are_read_by_column_name(tmp_path, rng):
    pd = pytest.importorskip("pandas")
    X = rng.standard_normal((25, 3))
    model = classifier(rng, features=3, classes=2)
    predictor = fnn.load_model(fnn.save_model(tmp_path / "d.npz", model, classes=["n", "y"],
                                              preprocessing=Standardizer().fit(X), feature_names=["a", "b", "c"]))
    frame = pd.DataFrame({"c": X[:, 2], "id": np.arange(25), "a": X[:, 0], "b": X[:, 1], "label": ["n"] * 25})
    np.testing.assert_array_equal(predictor.predict_proba(frame), predictor.predict_proba(X))
    with pytest.raises(ValueError, match=r"X lacks the feature columns \['b'\]"):
        predictor.predict(frame.drop(columns="b"))
    frame["b"] = frame["b"].astype(str)
    with pytest.raises(ValueError, match=r"the columns \['b'\] hold text or categories, not numbers; one-hot encode"):
        predictor.predict(frame)
    unnamed = fnn.Predictor(model, classes=["n", "y"], preprocessing=Standardizer().fit(X))
    np.testing.assert_array_equal(unnamed.predict(pd.DataFrame(X)), predictor.predict(X))
    np.testing.assert_array_equal(unnamed.predict(X.tolist()), predictor.predict(X))
    # no rows (a filter that matched nothing): empty answers, as Trainer.predict gives
    for empty in (pd.DataFrame(X, columns=["a", "b", "c"]).iloc[:0], X[:0]):
        labels, proba = predictor.predict(empty), predictor.predict_proba(empty)
        assert labels.shape == (0,) and labels.dtype == predictor.classes.dtype and proba.shape == (0, 2)


def test_wrong_inputs_are_named(tmp_path, rng):
    model = classifier(rng, features=3, classes=2)
    predictor = fnn.Predictor(model, classes=["n", "y"])
    with pytest.raises(ValueError, match="X has 4 features, the model takes 3"):
        predictor.predict(np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"one sample: X.reshape\(1, -1\)"):
        predictor.predict(np.zeros(3))
    with pytest.raises(TypeError, match="X must hold numbers"):
        predictor.predict(np.array([["a", "b", "c"]]))


def test_what_a_predictor_refuses_to_be(rng):
    model = classifier(rng, features=4, classes=3)
    X = rng.standard_normal((10, 4))
    with pytest.raises(ValueError, match="2 class names for a model with 3 outputs"):
        fnn.Predictor(model, classes=["a", "b"])
    with pytest.raises(ValueError, match="classes must be distinct"):
        fnn.Predictor(model, classes=["a", "b", "a"])
    with pytest.raises(ValueError, match="of one kind"):
        fnn.Predictor(model, classes=["a", 1, 2])
    with pytest.raises(ValueError, match="task must be given"):
        fnn.Predictor(model)
    with pytest.raises(ValueError, match="task must be 'classify' or 'regress'"):
        fnn.Predictor(model, task="cluster")
    with pytest.raises(ValueError, match="not fitted"):
        fnn.Predictor(model, task="classify", preprocessing=Standardizer())
    with pytest.raises(TypeError, match="a model file holds fastnn.preprocessing transformers"):
        fnn.Predictor(model, task="classify", preprocessing=[object()])
    with pytest.raises(ValueError, match="preprocessing gives 2 features but the model takes 4"):
        fnn.Predictor(model, task="classify", preprocessing=PCAWhitening(n_components=2).fit(X))
    with pytest.raises(ValueError, match="4 from feature_names, 5 from preprocessing"):
        fnn.Predictor(model, task="classify", feature_names=list("abcd"),
                      preprocessing=Standardizer().fit(np.zeros((3, 5))))
    with pytest.raises(ValueError, match="a regression model has no classes"):
        fnn.Predictor(model, task="regress", classes=[1, 2, 3])


def test_no_pickle_in_a_model_file(tmp_path, rng):
    path = fnn.save_model(tmp_path / "m.npz", classifier(rng), classes=["a", "b", "c"], metadata={"k": [1, 2]})
    with zipfile.ZipFile(path) as archive:
        assert all(name.endswith(".npy") for name in archive.namelist())
    with np.load(path, allow_pickle=False) as npz:
        for name in npz.files:
            assert npz[name].dtype != object
    with pytest.raises(TypeError, match="cannot save a set"):
        fnn.save_model(tmp_path / "x.npz", classifier(rng), classes=["a", "b", "c"], metadata={"k": {1}})


# --- custom layers ------------------------------------------------------------------------


class Scale(nn.Module):
    """y = factor * x (a registered custom layer)."""

    def __init__(self, factor=2.0, tags=("a",)):
        super().__init__()
        self.factor, self.tags = factor, list(tags)

    def get_config(self):
        return {"factor": self.factor, "tags": self.tags}

    def forward(self, x, training=True):
        return x * self.factor


def test_custom_layers_register_to_be_saved(tmp_path, rng, monkeypatch):
    monkeypatch.setattr(registry, "_CUSTOM", {})
    model = nn.Sequential(nn.Dense(3, 2, seed=0), Scale(3.5, tags=("x", "y")))
    with pytest.raises(TypeError, match=r"test_model_file.Scale is not a registered layer; register it with "
                                        r"fastnn.nn.register_layer"):
        fnn.save_model(tmp_path / "m.npz", model, task="regress")
    assert nn.register_layer(Scale) is Scale
    path = fnn.save_model(tmp_path / "m.npz", model, task="regress")
    loaded = fnn.load_model(path)
    assert isinstance(loaded.model[1], Scale) and loaded.model[1].factor == 3.5 and loaded.model[1].tags == ["x", "y"]
    X = rng.standard_normal((4, 3))
    np.testing.assert_array_equal(loaded.predict(X), model.forward(X.astype(np.float32))[:, :])
    # Loading in a process that has not registered the class.
    monkeypatch.setattr(registry, "_CUSTOM", {})
    with pytest.raises(CheckpointError, match="unknown layer 'Scale'; a custom layer must be registered"):
        fnn.load_model(path)


def test_register_layer_names_and_checks(monkeypatch):
    monkeypatch.setattr(registry, "_CUSTOM", {})

    @nn.register_layer(name="Times")
    class Other(Scale):
        pass

    assert registry.registered_layers()["Times"] is Other
    nn.register_layer(Other, name="Times")  # the same class again: fine
    with pytest.raises(ValueError, match="the name 'Times' is taken"):
        nn.register_layer(Scale, name="Times")
    with pytest.raises(ValueError, match="the name 'Dense' is taken by fastnn.nn.dense.Dense"):
        nn.register_layer(Scale, name="Dense")
    with pytest.raises(TypeError, match="needs a get_config"):
        nn.register_layer(nn.ReLU)
    with pytest.raises(TypeError, match="subclass of fastnn.nn.Module"):
        nn.register_layer(int)

    class NotJSON(Scale):
        def get_config(self):
            return {"factor": object()}

    nn.register_layer(NotJSON)
    with pytest.raises(TypeError, match=r"root.children\[0\].config.factor: a object is not JSON"):
        fnn.save_model("unused.npz", nn.Sequential(NotJSON(), nn.Dense(2, 2)), task="regress")


# --- hostile and damaged files ------------------------------------------------------------


def rewrite_predictor(path, out, change):
    with np.load(path) as npz:
        members = {k: npz[k] for k in npz.files}
    manifest = json.loads(members["__manifest__"].tobytes())
    change(manifest["predictor"])
    members["__manifest__"] = np.frombuffer(json.dumps(manifest).encode(), np.uint8)
    np.savez(out, **members)
    return out


def root(p):
    return p["architecture"]["root"]


def deep_spec(p):
    node = {"layer": "ReLU", "config": {}}
    for _ in range(registry.MAX_DEPTH + 2):
        node = {"layer": "Sequential", "config": {}, "children": [node]}
    p["architecture"]["root"] = node


@pytest.mark.parametrize("change, match", [
    (lambda p: root(p).update(layer="Conv2d"), "unknown layer 'Conv2d'"),
    (lambda p: root(p).update(layer=["Sequential"]), "the layer name must be a string"),
    (lambda p: root(p)["children"][0].update(config={"in_features": "4", "out_features": 16}),
     r"root.children\[0\]: Dense argument 'in_features' must be int, got str"),
    (lambda p: root(p)["children"][0]["config"].update(in_features=True),
     "Dense argument 'in_features' must be int, got bool"),
    (lambda p: root(p)["children"][0]["config"].update(in_features=-4),
     r"Dense\(\*\*.*\) failed: ValueError: Dense: in_features must be a positive integer"),
    (lambda p: root(p)["children"][0]["config"].update(activation="swish"), "activation must be None or one of"),
    (lambda p: root(p)["children"][0]["config"].update(init="he"), "Dense has no argument 'init'"),
    (lambda p: root(p)["children"][0]["config"].update(in_features=10**6, out_features=10**6),
     "declares 1,000,000,000,000 weights but the file holds"),
    (lambda p: root(p)["children"][1]["config"].update(momentum=2.0), "BatchNorm: momentum must be <= 1"),
    (lambda p: root(p)["children"][1]["config"].update(dtype="object"), "BatchNorm: dtype"),
    (lambda p: root(p).update(children={"0": {}}), "the children of Sequential must be a list, got dict"),
    (lambda p: root(p).update(config=[]), "the config of Sequential must be a dict, got list"),
    (lambda p: root(p)["children"].__setitem__(0, ["Dense", {}]), r"root.children\[0\]: expected a layer \(a dict\)"),
    (lambda p: root(p)["children"][2].update(children=[{"layer": "ReLU"}]), "ReLU takes no children, got 1"),
    (lambda p: root(p).update(extra=1), "a layer has the keys 'layer', 'config' and 'children'"),
    (lambda p: p["architecture"].update(version=2), "architecture spec version 2"),
    (lambda p: p.update(architecture=[]), "the architecture must be a dict"),
    (deep_spec, "nested deeper than 32 levels"),
    (lambda p: root(p)["children"].extend([{"layer": "ReLU", "config": {}}] * 10_001), "more than 10000 layers"),
    (lambda p: root(p)["children"].append({"layer": "ReLU", "config": {}}) or
     root(p)["children"].insert(0, {"layer": "Dense", "config": {"in_features": 4, "out_features": 4}}),
     "the weights do not fit the architecture"),
    (lambda p: p.update(preprocessing={"type": "Standardizer"}), "preprocessing must be a list, got dict"),
    (lambda p: p["preprocessing"][0].update(type="RobustScaler"), r"preprocessing\[0\]: unknown transformer"),
    (lambda p: p["preprocessing"][0].update(config={"eps": "tiny"}), "Standardizer cannot be rebuilt"),
    (lambda p: p["preprocessing"][0].update(config={"with_mean": False}), "Standardizer cannot be rebuilt"),
    (lambda p: p["preprocessing"][0].update(state=[1]), "the state of Standardizer must be a dict, got list"),
    (lambda p: p["classes"].update(values=["a", "b"]), "2 class names for a model with 3 outputs"),
    (lambda p: p["classes"].update(values=["a", "b", 3]), "classes of kind str hold"),
    (lambda p: p["classes"].update(kind="object"), "classes must be a dict of kind and a list of values"),
    (lambda p: p.update(classes=["a", "b", "c"]), "classes must be a dict of kind and a list of values"),
    (lambda p: p.update(task="clustering"), "task must be 'classification' or 'regression'"),
    (lambda p: p.update(feature_names="abcd"), "feature_names must be a list"),
    (lambda p: p.update(feature_names=["a", "a", "b", "c"]), "feature_names must be distinct strings"),
    (lambda p: p.update(metadata=[]), "metadata must be a dict, got list"),
    (lambda p: p.pop("task"), "the predictor section has the keys"),
    (lambda p: p.update(version=2), "model file version 2"),
    (lambda p: p.update(format="other"), "not a model file"),
])
def test_hostile_model_files_raise_checkpoint_error(tmp_path, rng, change, match):
    X = rng.standard_normal((10, 4))
    path = fnn.save_model(tmp_path / "m.npz", classifier(rng), classes=["a", "b", "c"],
                          preprocessing=Standardizer().fit(X), feature_names=list("abcd"))
    with pytest.raises(CheckpointError, match=match):
        fnn.load_model(rewrite_predictor(path, tmp_path / "bad.npz", change))


def test_damaged_and_foreign_files(tmp_path, rng):
    model = classifier(rng)
    path = fnn.save_model(tmp_path / "m.npz", model, classes=["a", "b", "c"])
    data = open(path, "rb").read()
    (tmp_path / "short.npz").write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        fnn.load_model(tmp_path / "short.npz")
    weights = model.state_dict()["3.weight"].tobytes()
    damaged = bytearray(data)
    damaged[data.find(weights) + 5] ^= 0xFF
    (tmp_path / "flipped.npz").write_bytes(bytes(damaged))
    with pytest.raises(CheckpointError, match="array .model/3.weight."):
        fnn.load_model(tmp_path / "flipped.npz")
    fnn.save(tmp_path / "ckpt.npz", model=model)
    with pytest.raises(CheckpointError, match="a fastnn checkpoint but not a model file"):
        fnn.load_model(tmp_path / "ckpt.npz")
    with pytest.raises(FileNotFoundError):
        fnn.load_model(tmp_path / "absent.npz")
    # a file of another kind is named as such (np.load would have suggested allow_pickle=True)
    (tmp_path / "data.csv").write_text("a,b,label\n1,2,x\n")
    with pytest.raises(CheckpointError, match=r"not a fastnn checkpoint or model file: those are \.npz \(zip\) "
                                              r"archives, and this file starts with b'a,b,la'"):
        fnn.load_model(tmp_path / "data.csv")
    with pytest.raises(CheckpointError, match=r"is a folder, not a checkpoint or model file .*model\.npz"):
        fnn.load_model(tmp_path)


def test_json_values_for_configs():
    assert registry.json_value({"a": (1, np.float32(2.5)), "b": [None, True, "x"]}, "c") == \
        {"a": [1, 2.5], "b": [None, True, "x"]}
    with pytest.raises(ValueError, match="c.a: nan is not a finite number"):
        registry.json_value({"a": math.nan}, "c")
    with pytest.raises(TypeError, match="keys must be strings"):
        registry.json_value({1: 2}, "c")
