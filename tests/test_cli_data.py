"""`fastnn train` then `fastnn predict` on data as it comes (text labels, regression targets,
gaps, files without a header, pandas objects through the job API), and the command line's
edges: --version, --help, options refused while parsing, --out checked before training,
errors that name the flag. Run in-process through fastnn.__main__.main."""

import csv
import json
import os

import numpy as np
import pytest

import fastnn as fnn
from fastnn import _backend, job
from fastnn.__main__ import build_parser, main

QUICK = ["--epochs", "30", "--hidden", "32", "--verbose", "0", "--seed", "1"]


def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        if header:
            writer.writerow(header)
        writer.writerows(rows)
    return str(path)


def read_predictions(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def cli(capsys, *args):
    """(exit status, stdout, stderr) of `fastnn ARGS`."""
    try:
        status = main(list(map(str, args)))
    except SystemExit as exc:  # argparse: --help, --version, bad options
        status = exc.code
    out, err = capsys.readouterr()
    return status, out, err


def flowers(rng, n=240):
    """Three well-separated classes named by strings, and the features as rows."""
    names = np.array(["setosa", "versicolor", "virginica"])
    y = rng.integers(0, 3, n)
    X = rng.standard_normal((n, 3)) * 0.5 + np.array([[0, 0, 0], [3, 0, 1], [0, 3, -1]])[y]
    return X, names[y]


def test_string_labels_train_then_predict(tmp_path, capsys, rng):
    X, y = flowers(rng)
    data = write_csv(tmp_path / "flowers.csv", ["sepal", "petal", "stem", "species"],
                     [[f"{v:.4f}" for v in row] + [label] for row, label in zip(X, y)])
    status, out, err = cli(capsys, "train", "--data", data, "--label-column", "species", "--out", tmp_path / "run",
                           *QUICK)
    assert status == 0, err
    assert float(out.split("test accuracy: ")[1].split()[0]) >= 0.9
    assert f"model file: {tmp_path / 'run' / 'model.npz'}" in out
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["task"] == "classification" and metrics["classes"] == ["setosa", "versicolor", "virginica"]
    assert metrics["features"] == ["sepal", "petal", "stem"]

    # New rows with the columns in another order, an extra column and no label.
    new_X, new_y = flowers(rng, 60)
    new = write_csv(tmp_path / "new.csv", ["id", "stem", "sepal", "petal"],
                    [[i, f"{r[2]:.4f}", f"{r[0]:.4f}", f"{r[1]:.4f}"] for i, r in enumerate(new_X)])
    status, out, err = cli(capsys, "predict", "--model", tmp_path / "run" / "model.npz", "--data", new,
                           "--out", tmp_path / "p.csv", "--proba")
    assert status == 0, err
    assert f"wrote 60 predictions to {tmp_path / 'p.csv'}" in out
    header, rows = read_predictions(tmp_path / "p.csv")
    assert header == ["prediction", "proba_setosa", "proba_versicolor", "proba_virginica"]
    predicted = [row[0] for row in rows]
    assert np.mean(np.array(predicted) == new_y) >= 0.9
    proba = np.array([[float(v) for v in row[1:]] for row in rows])
    np.testing.assert_allclose(proba.sum(axis=1), 1, atol=1e-5)
    assert [header[1:][k][len("proba_"):] for k in proba.argmax(axis=1)] == predicted
    # The same through the API, from a DataFrame of the new rows.
    predictor = fnn.load_model(tmp_path / "run" / "model.npz")
    assert predictor.predict(new_X).tolist() == predicted

    # The training file itself: its label column is ignored.
    status, _, err = cli(capsys, "predict", "--model", tmp_path / "run" / "model.npz", "--data", data,
                         "--out", tmp_path / "q.csv")
    assert status == 0, err
    assert [row[0] for row in read_predictions(tmp_path / "q.csv")[1]][:5] == predictor.predict(X[:5]).tolist()

    missing = write_csv(tmp_path / "few.csv", ["sepal", "stem"], [[1, 2]])
    status, _, err = cli(capsys, "predict", "--model", tmp_path / "run" / "model.npz", "--data", missing,
                         "--out", tmp_path / "x.csv")
    assert status == 2 and "the columns ['petal'] are missing" in err and "Traceback" not in err


def test_regression_train_then_predict(tmp_path, capsys, rng):
    X = rng.uniform(-2, 2, (400, 3))
    price = 50_000 + 8_000 * X[:, 0] - 5_000 * X[:, 1] + 2_000 * X[:, 2] ** 2  # whole numbers, all distinct
    data = write_csv(tmp_path / "houses.csv", ["rooms", "age", "distance", "price"],
                     [[f"{v:.4f}" for v in row] + [f"{p:.0f}"] for row, p in zip(X, price)])
    status, out, err = cli(capsys, "train", "--data", data, "--label-column", "price", "--out", tmp_path / "run",
                           *QUICK, "--epochs", "80")
    assert status == 0, err
    assert out.startswith("test R^2: ") and "RMSE" in out and "MAE" in out
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["task"] == "regression" and metrics["classes"] is None
    assert metrics["test"]["r2"] > 0.9 and metrics["test"]["rmse"] < 3000
    assert metrics["test"]["rmse"] == pytest.approx(np.sqrt(metrics["test"]["mse"]))
    predictor = fnn.load_model(tmp_path / "run" / "model.npz")
    assert predictor.model[-1].out_features == 1  # a linear head, not a softmax over prices

    status, _, err = cli(capsys, "predict", "--model", tmp_path / "run" / "model.npz", "--data", data,
                         "--out", tmp_path / "p.csv")
    assert status == 0, err
    header, rows = read_predictions(tmp_path / "p.csv")
    predicted = np.array([float(row[0]) for row in rows])
    assert header == ["prediction"]
    assert fnn.metrics.r2_score(price, predicted) > 0.9
    status, _, err = cli(capsys, "predict", "--model", tmp_path / "run" / "model.npz", "--data", data,
                         "--out", tmp_path / "p.csv", "--proba")
    assert status == 2 and "--proba: a regression model has no class probabilities" in err


def test_gaps_are_named_or_imputed(tmp_path, capsys, rng):
    X = rng.standard_normal((200, 3))
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    rows = [[f"{v:.4f}" for v in row] + [label] for row, label in zip(X, y)]
    for i in range(0, 200, 7):
        rows[i][i % 3] = ["", "NA", "?"][i % 3]
    data = write_csv(tmp_path / "gaps.csv", ["a", "b", "c", "label"], rows)
    status, _, err = cli(capsys, "train", "--data", data, "--out", tmp_path / "run", *QUICK)
    assert status == 2
    assert "X has missing values (NaN) in column 'a' (rows 1 (line 2), 22 (line 23)" in err
    assert "column 'b' (rows 8 (line 9)" in err and "column 'c' (rows 15 (line 16)" in err
    assert "--impute mean|median" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "model.npz").exists()

    status, out, err = cli(capsys, "train", "--data", data, "--impute", "median", "--out", tmp_path / "run", *QUICK)
    assert status == 0, err
    assert float(out.split("test accuracy: ")[1].split()[0]) >= 0.85
    predictor = fnn.load_model(tmp_path / "run" / "model.npz")
    imputer = predictor.preprocessing[0]
    assert isinstance(imputer, fnn.preprocessing.SimpleImputer) and imputer.strategy == "median"
    status, _, err = cli(capsys, "predict", "--model", tmp_path / "run" / "model.npz", "--data", data,
                         "--out", tmp_path / "p.csv")
    assert status == 0, err
    predicted = np.array([int(row[0]) for row in read_predictions(tmp_path / "p.csv")[1]])
    assert len(predicted) == 200 and np.mean(predicted == y) >= 0.85


def test_class_count_comes_from_the_distinct_labels(tmp_path, capsys, rng):
    # A label of 10**7 in a tiny file: two classes, not a 10**7-way softmax.
    rows = [[f"{v:.3f}", 10**7 if v > 0 else 3] for v in rng.standard_normal(40)]
    data = write_csv(tmp_path / "big.csv", ["x", "label"], rows)
    status, _, err = cli(capsys, "train", "--data", data, "--out", tmp_path / "run", *QUICK, "--epochs", "3")
    assert status == 0, err
    predictor = fnn.load_model(tmp_path / "run" / "model.npz")
    assert predictor.classes.tolist() == [3, 10**7] and predictor.model[-1].out_features == 2
    assert os.path.getsize(tmp_path / "run" / "model.npz") < 200_000


def test_a_single_class_is_named_as_the_file_writes_it(tmp_path, capsys, rng):
    rows = [[f"{v:.3f}", "setosa"] for v in rng.standard_normal(20)]
    data = write_csv(tmp_path / "one.csv", ["x", "label"], rows)
    status, _, err = cli(capsys, "train", "--data", data, "--out", tmp_path / "run", *QUICK)
    assert status != 0 and "every label is 'setosa': classification needs two or more classes" in err, err


def test_task_inference_and_choice(tmp_path, capsys, rng):
    labels = np.repeat(np.arange(30), 10)  # 30 whole numbers over 300 samples: ambiguous
    rows = [[f"{v:.3f}", int(label)] for v, label in zip(rng.standard_normal(300), labels)]
    data = write_csv(tmp_path / "ambiguous.csv", ["x", "label"], rows)
    status, _, err = cli(capsys, "train", "--data", data, "--out", tmp_path / "run", *QUICK, "--epochs", "2")
    assert status == 2 and "30 distinct whole numbers over 300 samples" in err and "--task classify|regress" in err
    for task, outputs in (("classify", 30), ("regress", 1)):
        status, _, err = cli(capsys, "train", "--data", data, "--task", task, "--out", tmp_path / task, *QUICK,
                             "--epochs", "2")
        assert status == 0, err
        assert fnn.load_model(tmp_path / task / "model.npz").model[-1].out_features == outputs
    text = write_csv(tmp_path / "text.csv", ["x", "label"], [[1, "a"], [2, "b"]] * 10)
    status, _, err = cli(capsys, "train", "--data", text, "--task", "regress", "--out", tmp_path / "t", *QUICK)
    assert status == 2 and "task 'regress' needs numeric targets, but y holds text" in err


def test_a_file_without_header(tmp_path, capsys, rng):
    X, y = flowers(rng, 150)
    codes = np.searchsorted(["setosa", "versicolor", "virginica"], y)
    data = write_csv(tmp_path / "plain.csv", None, [[int(c)] + [f"{v:.4f}" for v in row] for row, c in zip(X, codes)])
    status, _, err = cli(capsys, "train", "--data", data, "--out", tmp_path / "run", *QUICK)
    assert status == 2 and "the first row holds numbers" in err and "fastnn train --no-header" in err
    status, out, err = cli(capsys, "train", "--data", data, "--no-header", "--label-column", "0",
                           "--out", tmp_path / "run", *QUICK)
    assert status == 0, err
    assert float(out.split("test accuracy: ")[1].split()[0]) >= 0.9
    predictor = fnn.load_model(tmp_path / "run" / "model.npz")
    assert predictor.feature_names is None and predictor.metadata["label_index"] == 0
    # Predicting on rows with or without the label column, by position.
    for name, rows in (("with.csv", [[9] + list(r) for r in X[:20]]), ("without.csv", X[:20].tolist())):
        write_csv(tmp_path / name, None, rows)
        status, _, err = cli(capsys, "predict", "--model", tmp_path / "run" / "model.npz", "--data",
                             tmp_path / name, "--no-header", "--out", tmp_path / "p.csv")
        assert status == 0, err
        assert [int(r[0]) for r in read_predictions(tmp_path / "p.csv")[1]] == predictor.predict(X[:20]).tolist()
    write_csv(tmp_path / "wide.csv", None, [[1, 2, 3, 4, 5]])
    status, _, err = cli(capsys, "predict", "--model", tmp_path / "run" / "model.npz", "--data",
                         tmp_path / "wide.csv", "--no-header", "--out", tmp_path / "p.csv")
    assert status == 2 and "has 5 columns but the model takes 3 features (and the label was column 0)" in err
    # The default label column without a header is the last one.
    last = write_csv(tmp_path / "last.csv", None, [[f"{v:.4f}" for v in row] + [int(c)] for row, c in zip(X, codes)])
    status, _, err = cli(capsys, "train", "--data", last, "--no-header", "--out", tmp_path / "last", *QUICK)
    assert status == 0, err
    assert fnn.load_model(tmp_path / "last" / "model.npz").metadata["label_index"] == 3


def test_the_job_api_takes_pandas_objects(tmp_path, rng):
    pd = pytest.importorskip("pandas")
    X, y = flowers(rng)
    frame = pd.DataFrame(X, columns=["sepal", "petal", "stem"])
    config = job.JobConfig(epochs=20, hidden=(16,), verbose=0, out=str(tmp_path / "run"))
    metrics = job.run(config, X=frame, y=pd.Series(y))
    assert metrics["features"] == ["sepal", "petal", "stem"] and metrics["test"]["accuracy"] >= 0.9
    predictor = fnn.load_model(metrics["files"]["model"])
    assert predictor.predict(frame[["stem", "sepal", "petal"]]).tolist() == predictor.predict(X).tolist()
    frame["colour"] = ["red"] * len(frame)
    with pytest.raises(ValueError, match=r"the columns \['colour'\] hold text or categories, not numbers; one-hot"):
        job.run(config, X=frame, y=y)


# --- the command line's edges ---------------------------------------------------------------


def test_version(capsys):
    status, out, _ = cli(capsys, "--version")
    assert status == 0 and out.strip() == f"fastnn {fnn.__version__}"


@pytest.mark.parametrize("command", ["train", "predict", "bench", "info"])
def test_help_explains_every_option_and_its_default(capsys, command):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    status, out, _ = cli(capsys, command, "--help")
    assert status == 0
    text = " ".join(out.split())
    for action in sub._actions:
        assert action.help, f"{command} {action.option_strings or action.dest} has no help"
        if action.nargs != 0 and action.default is not None and action.default != "==SUPPRESS==":
            assert f"(default: {action.default})" in text, action.dest


@pytest.mark.parametrize("args, message", [
    (["--dropout", "-0.5"], "argument --dropout: must be in [0, 1), got -0.5"),
    (["--dropout", "nan"], "argument --dropout: must be a finite number, got nan"),
    (["--dropout", "1"], "argument --dropout: must be in [0, 1), got 1.0"),
    (["--lr", "0"], "argument --lr: must be in (0, inf), got 0.0"),
    (["--lr", "inf"], "argument --lr: must be a finite number"),
    (["--weight-decay=-1e-4"], "argument --weight-decay: must be in [0, inf)"),
    (["--epochs", "0"], "argument --epochs: must be at least 1, got 0"),
    (["--epochs", "2.5"], "argument --epochs: expected an integer, got '2.5'"),
    (["--batch-size", "-3"], "argument --batch-size: must be at least 1"),
    (["--patience", "0"], "argument --patience: must be at least 1"),
    (["--test-size", "1.5"], "argument --test-size: must be in (0, 1), got 1.5"),
    (["--validation-split", "0"], "argument --validation-split: must be in (0, 1), got 0.0"),
    (["--seed", "-1"], "argument --seed: must be at least 0"),
    (["--seed", "x"], "argument --seed: expected an integer, got 'x'"),
    (["--task", "cluster"], "argument --task: invalid choice: 'cluster'"),
    (["--impute", "zero"], "argument --impute: invalid choice: 'zero'"),
])
def test_out_of_range_options_are_refused_while_parsing(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.setattr(job, "run", lambda *a, **k: pytest.fail("the job ran"))
    status, _, err = cli(capsys, "train", *args, "--out", tmp_path / "x")
    assert status == 2 and message in err
    assert not (tmp_path / "x").exists()


def test_the_job_api_checks_the_same_options(tmp_path):
    for field, value, message in (("dropout", -0.5, "--dropout must be in [0, 1), got -0.5"),
                                  ("epochs", 0, "--epochs must be at least 1, got 0"),
                                  ("test_size", float("nan"), "--test-size must be a finite number"),
                                  ("hidden", (8, 0), "--hidden must be positive layer widths"),
                                  ("impute", "zero", "--impute must be one of None, mean, median")):
        config = job.JobConfig(out=str(tmp_path / "x"), **{field: value})
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
            job.run(config)


def test_a_bad_out_fails_before_training(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(job, "load_data", lambda *a, **k: pytest.fail("data was loaded"))
    (tmp_path / "file").write_text("x")
    for out, message in ((tmp_path / "file", "is a file, not a folder"),
                         (tmp_path / "file" / "run", "cannot write there (Not a directory)")):
        status, _, err = cli(capsys, "train", "--out", out, *QUICK)
        assert status == 2 and f"--out '{out}': {message}" in err and "Traceback" not in err
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        status, _, err = cli(capsys, "train", "--out", locked / "run", *QUICK)
        assert status == 2 and "cannot write there (Permission denied)" in err
    status, _, err = cli(capsys, "predict", "--model", "m.npz", "--data", "d.csv", "--out", tmp_path / "file" / "p.csv")
    assert status == 2 and f"--out '{tmp_path / 'file'}': is a file, not a folder" in err
    status, _, err = cli(capsys, "predict", "--model", "m.npz", "--data", "d.csv", "--out", tmp_path)
    assert status == 2 and "is a folder" in err


def test_errors_name_the_flag_not_the_parameter(tmp_path, capsys):
    data = write_csv(tmp_path / "tiny.csv", ["x", "label"], [[1, 0], [2, 1], [3, 0]])
    status, _, err = cli(capsys, "train", "--data", data, "--test-size", "0.9", "--out", tmp_path / "run", *QUICK)
    assert status == 2 and "--test-size 0.9 of 3 samples leaves no training data" in err and "test_size" not in err
    status, _, err = cli(capsys, "train", "--data", data, "--test-size", "0.3", "--out", tmp_path / "run", *QUICK)
    assert status == 2 and "--validation-split 0.15 and --test-size 0.3 leave 1 of 2 training samples" in err
    status, _, err = cli(capsys, "train", "--data", "spirals", "--epochs", "1", "--out", tmp_path / "run",
                         "--verbose", "0")
    assert status == 0 and "T_max" not in err, err


def test_cuda_without_a_gpu_suggests_auto(tmp_path, capsys):
    if _backend.gpu_unavailable_reason() is None:
        pytest.skip("a GPU is usable here")
    status, _, err = cli(capsys, "train", "--device", "cuda", "--out", tmp_path / "x")
    assert status == 2 and "--device cuda: " in err and "use --device auto" in err


def test_predict_errors_are_clear(tmp_path, capsys):
    status, _, err = cli(capsys, "predict", "--model", tmp_path / "absent.npz", "--data", "d.csv",
                         "--out", tmp_path / "p.csv")
    assert status == 2 and "file not found" in err and "absent.npz" in err
    fnn.save(tmp_path / "ckpt.npz", note="not a model")
    status, _, err = cli(capsys, "predict", "--model", tmp_path / "ckpt.npz", "--data", "d.csv",
                         "--out", tmp_path / "p.csv")
    assert status == 2 and "not a model file" in err and "Traceback" not in err
