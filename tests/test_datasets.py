"""fastnn.datasets: the shipped digits (against scikit-learn's copy), the synthetic generators,
.npz/.csv loading and every error path."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pytest

import fastnn
from fastnn import datasets as ds

# Computed once from scikit-learn 1.9.1's `sklearn.datasets.load_digits()` when digits.npz was
# extracted (X as C-contiguous float32, y as int64), independently of fastnn's loader.
DIGITS_X_SHA256 = "a627aed550b0b29bf76a981bc1ecbab5ef775aac454c94154f20ec9f61a04c83"
DIGITS_Y_SHA256 = "a3c91c262eddcf7ba8f0e37507c30284493c9b20412ffe4af30d536401f7ba21"
DIGITS_CLASS_COUNTS = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


def sha256(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


# --- digits -------------------------------------------------------------------------------


def test_digits_shapes_dtypes_values():
    X, y = ds.load_digits()
    assert X.shape == (1797, 64) and X.dtype == np.float32 and X.flags.c_contiguous
    assert y.shape == (1797,) and y.dtype == np.int64
    assert X.min() == 0 and X.max() == 16 and np.array_equal(X, np.round(X))
    assert np.array_equal(np.bincount(y, minlength=10), DIGITS_CLASS_COUNTS)


def test_digits_match_scikit_learn_checksums():
    X, y = ds.load_digits()
    assert sha256(X) == DIGITS_X_SHA256
    assert sha256(y) == DIGITS_Y_SHA256


def test_digits_images_and_fresh_copies():
    X, y = ds.load_digits()
    images, y2 = ds.load_digits(return_images=True)
    assert images.shape == (1797, 8, 8) and images.dtype == np.float32
    assert np.array_equal(images.reshape(1797, 64), X) and np.array_equal(y, y2)
    X[:] = -1
    y[:] = -1
    X3, y3 = ds.load_digits()
    assert sha256(X3) == DIGITS_X_SHA256 and sha256(y3) == DIGITS_Y_SHA256


def test_digits_through_package_and_dispatcher():
    X, y = fastnn.datasets.load("digits")
    assert sha256(X) == DIGITS_X_SHA256 and sha256(y) == DIGITS_Y_SHA256
    images, _ = ds.load("Digits", return_images=True)
    assert images.shape == (1797, 8, 8)


# --- spirals ------------------------------------------------------------------------------


def test_spirals_shapes_labels():
    X, y = ds.spirals(n_per_class=50, classes=4, seed=0)
    assert X.shape == (200, 2) and X.dtype == np.float32
    assert y.shape == (200,) and y.dtype == np.int64
    assert np.array_equal(np.bincount(y), [50] * 4)
    assert not np.all(np.diff(y) >= 0), "shuffled by default"
    _, y_ordered = ds.spirals(n_per_class=50, classes=4, seed=0, shuffle=False)
    assert np.array_equal(y_ordered, np.repeat(np.arange(4), 50))


def test_spirals_geometry_without_noise():
    # Arm j: radius r = linspace(0, 1), angle 4j + 4r, point (r sin t, r cos t).
    n, k = 40, 3
    X, y = ds.spirals(n, k, noise=0.0, seed=1)
    r = np.hypot(X[:, 0], X[:, 1]).astype(np.float64)
    for c in range(k):
        np.testing.assert_allclose(np.sort(r[y == c]), np.linspace(0, 1, n), atol=1e-6)
    away = r > 0.05
    angle = np.arctan2(X[away, 0], X[away, 1])
    wrapped = np.angle(np.exp(1j * (angle - 4.0 * (y[away] + r[away]))))
    np.testing.assert_allclose(wrapped, 0.0, atol=1e-4)


def test_spirals_noise_moves_angles_only():
    X0, y0 = ds.spirals(30, 2, noise=0.0, seed=3, shuffle=False)
    X1, y1 = ds.spirals(30, 2, noise=0.5, seed=3, shuffle=False)
    np.testing.assert_allclose(np.hypot(*X1.T), np.hypot(*X0.T), atol=1e-6)
    assert not np.allclose(X0, X1)


def test_spirals_seeding():
    a, b = ds.spirals(seed=7), ds.spirals(seed=7)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    c = ds.spirals(seed=8)
    assert not np.array_equal(a[0], c[0])
    g = np.random.default_rng(7)
    first, second = ds.spirals(seed=g), ds.spirals(seed=g)
    assert np.array_equal(first[0], a[0]), "a Generator seeded 7 draws like seed=7"
    assert not np.array_equal(first[0], second[0]), "a Generator is advanced"


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(n_per_class=0), ValueError, "n_per_class must be >= 1, got 0"),
    (dict(n_per_class=2.5), TypeError, "n_per_class must be an integer, got float"),
    (dict(classes=0), ValueError, "classes must be >= 1, got 0"),
    (dict(classes=True), TypeError, "classes must be an integer, got bool"),
    (dict(noise=-0.1), ValueError, "noise must be >= 0.0"),
    (dict(noise="a lot"), TypeError, "noise must be a real number"),
    (dict(noise=float("nan")), ValueError, "noise must be finite"),
])
def test_spirals_errors(kwargs, error, message):
    with pytest.raises(error, match=re.escape(message)):
        ds.spirals(**kwargs)


# --- blobs --------------------------------------------------------------------------------


def test_blobs_shapes_labels():
    X, y = ds.blobs(seed=0)
    assert X.shape == (300, 2) and X.dtype == np.float32 and y.dtype == np.int64
    assert np.array_equal(np.bincount(y), [100] * 3)
    X, y = ds.blobs(n_samples=10, centers=3, features=5, seed=0, shuffle=False)
    assert X.shape == (10, 5)
    assert np.array_equal(y, [0, 0, 0, 0, 1, 1, 1, 2, 2, 2])


def test_blobs_centres_in_box_and_spread():
    X, y = ds.blobs(n_samples=60, centers=4, features=3, std=0.0, center_box=(2, 5), seed=4)
    for c in range(4):
        points = X[y == c]
        assert np.all(points == points[0]), "std=0 puts a class on its centre"
        assert np.all((points[0] >= 2) & (points[0] <= 5))
    X, y = ds.blobs(n_samples=20000, centers=2, features=2, std=2.5, seed=5)
    for c in range(2):
        points = X[y == c].astype(np.float64)
        np.testing.assert_allclose(points.std(axis=0), 2.5, rtol=0.05)


def test_blobs_seeding():
    a, b, c = ds.blobs(seed=1), ds.blobs(seed=1), ds.blobs(seed=2)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    X, y = ds.load("blobs", n_samples=30, seed=1)
    assert np.array_equal(X, ds.blobs(30, seed=1)[0])


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(n_samples=0), ValueError, "n_samples must be >= 1, got 0"),
    (dict(centers=0), ValueError, "centers must be >= 1, got 0"),
    (dict(centers=None), TypeError, "centers must be an integer, got NoneType"),
    (dict(features=0), ValueError, "features must be >= 1, got 0"),
    (dict(std=-1), ValueError, "std must be >= 0.0"),
    (dict(center_box=(3, 3)), ValueError, "center_box must have low < high, got (3, 3)"),
    (dict(center_box=(0,)), ValueError, "center_box must be a pair of finite numbers (low, high), got (0,)"),
    (dict(center_box=(0, float("inf"))), ValueError, "center_box must be a pair of finite numbers"),
    (dict(center_box=5), TypeError, "center_box must be a pair of finite numbers (low, high), got 5"),
])
def test_blobs_errors(kwargs, error, message):
    with pytest.raises(error, match=re.escape(message)):
        ds.blobs(**kwargs)


# --- .npz ---------------------------------------------------------------------------------


def test_npz_round_trip(tmp_path, rng):
    X = rng.standard_normal((20, 3))
    y = rng.integers(0, 4, 20).astype(np.int32)
    np.savez(tmp_path / "d.npz", X=X, y=y, extra=np.ones(2))
    X2, y2 = ds.load_npz(tmp_path / "d.npz")
    assert X2.dtype == np.float32 and y2.dtype == np.int64
    assert np.array_equal(X2, X.astype(np.float32)) and np.array_equal(y2, y)
    X3, y3 = ds.load(str(tmp_path / "d.npz"))
    assert np.array_equal(X3, X2) and np.array_equal(y3, y2)


def test_npz_label_kinds_and_shapes(tmp_path, rng):
    images = rng.random((5, 4, 4))
    np.savez_compressed(tmp_path / "a.npz", X=images, y=np.array([0.0, 1.0, 2.0, 1.0, 0.0]))
    X, y = ds.load_npz(tmp_path / "a.npz")
    assert X.shape == (5, 4, 4) and y.dtype == np.int64, "whole-number floats are class labels"
    targets = rng.standard_normal(5)
    with open(tmp_path / "b.NPZ", "wb") as f:  # a path not ending in .npz would get one appended
        np.savez(f, X=images.reshape(5, 16) > 0.5, y=targets)
    X, y = ds.load(tmp_path / "b.NPZ")
    assert X.dtype == np.float32 and set(np.unique(X)) <= {0.0, 1.0}
    assert y.dtype == np.float32 and np.array_equal(y, targets.astype(np.float32))
    np.savez(tmp_path / "c.npz", X=images.reshape(5, 16), y=np.array([1, 2, 3, 4, 2**60]) * 1.0)
    assert ds.load_npz(tmp_path / "c.npz")[1].dtype == np.float32, "too big for exact int64"


def npz_file(tmp_path, **arrays):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    return path


def test_npz_errors(tmp_path):
    X, y = np.zeros((4, 2)), np.zeros(4)
    with pytest.raises(FileNotFoundError, match=r"nope\.npz: no such file"):
        ds.load_npz(tmp_path / "nope.npz")
    (tmp_path / "dir.npz").mkdir()
    with pytest.raises(FileNotFoundError, match=r"dir\.npz: no such file \(it is a directory\)"):
        ds.load_npz(tmp_path / "dir.npz")
    with pytest.raises(ValueError, match=re.escape("no array named 'X'; the file has ['features', 'y']")):
        ds.load_npz(npz_file(tmp_path, features=X, y=y))
    with pytest.raises(ValueError, match=re.escape("no array named 'y'; the file has ['X', 'labels']")):
        ds.load_npz(npz_file(tmp_path, X=X, labels=y))
    with pytest.raises(ValueError, match="X must hold numbers, got dtype <U"):
        ds.load_npz(npz_file(tmp_path, X=np.array([["a", "b"]] * 4), y=y))
    with pytest.raises(ValueError, match="y must hold numbers or text labels, got dtype complex128"):
        ds.load_npz(npz_file(tmp_path, X=X, y=y + 1j))
    with pytest.raises(ValueError, match="Object arrays cannot be loaded"):
        ds.load_npz(npz_file(tmp_path, X=np.array([[1, "a"]] * 4, dtype=object), y=y))
    with pytest.raises(ValueError, match=re.escape(
            "X must be (samples, features) with at least one sample, got shape (4,)")):
        ds.load_npz(npz_file(tmp_path, X=y, y=y))
    with pytest.raises(ValueError, match=re.escape("got shape (0, 2)")):
        ds.load_npz(npz_file(tmp_path, X=X[:0], y=y[:0]))
    with pytest.raises(ValueError, match=re.escape(
            "y must have one entry per sample of X (4), got shape (3,)")):
        ds.load_npz(npz_file(tmp_path, X=X, y=y[:3]))
    X_nan = X.copy()
    X_nan[2, 1] = np.nan
    with pytest.raises(ValueError, match=re.escape("X has missing values (NaN) in column 1 (rows 2; 1 in all)")):
        ds.load_npz(npz_file(tmp_path, X=X_nan, y=y))
    X_kept, _ = ds.load_npz(npz_file(tmp_path, X=X_nan, y=y), missing="keep")
    assert np.isnan(X_kept[2, 1]) and np.isnan(X_kept).sum() == 1
    X_nan[3, 0] = np.inf
    with pytest.raises(ValueError, match=re.escape("X has infinite values in column 0 (rows 3")):
        ds.load_npz(npz_file(tmp_path, X=X_nan, y=y), missing="keep")
    with pytest.raises(ValueError, match=re.escape("y has infinite values in column 0 (rows 0")):
        ds.load_npz(npz_file(tmp_path, X=X, y=np.array([np.inf, 0, 0, 0])))
    with pytest.raises(ValueError, match="missing must be 'error' or 'keep'"):
        ds.load_npz(npz_file(tmp_path, X=X, y=y), missing="drop")
    np.save(tmp_path / "single.npy", X)
    (tmp_path / "single.npy").rename(tmp_path / "single.npz")
    with pytest.raises(ValueError, match="not an .npz archive"):
        ds.load_npz(tmp_path / "single.npz")
    (tmp_path / "text.npz").write_text("X,y\n1,2\n")
    with pytest.raises(ValueError, match=r"text\.npz: not a readable \.npz file"):
        ds.load_npz(tmp_path / "text.npz")
    whole = npz_file(tmp_path, X=np.arange(400.0).reshape(100, 4), y=np.zeros(100)).read_bytes()
    (tmp_path / "cut.npz").write_bytes(whole[:len(whole) // 2])
    with pytest.raises(ValueError, match=r"cut\.npz: not a readable \.npz file \(File is not a zip file\)"):
        ds.load_npz(tmp_path / "cut.npz")
    damaged = bytearray(whole)
    damaged[200:1000] = bytes(800)
    (tmp_path / "damaged.npz").write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match=r"damaged\.npz: cannot read X and y"):
        ds.load_npz(tmp_path / "damaged.npz")


# --- .csv ---------------------------------------------------------------------------------


def write(tmp_path, text, name="data.csv", encoding="utf-8"):
    path = tmp_path / name
    path.write_text(text, encoding=encoding)
    return path


def test_csv_round_trip(tmp_path, rng):
    X = rng.standard_normal((15, 3)).round(4)
    y = rng.integers(0, 3, 15)
    lines = ["a,b,label,c"] + [f"{r[0]},{r[1]},{lab},{r[2]}" for r, lab in zip(X, y)]
    path = write(tmp_path, "\n".join(lines) + "\n")
    X2, y2 = ds.load_csv(path)
    assert X2.dtype == np.float32 and y2.dtype == np.int64 and X2.shape == (15, 3)
    assert np.array_equal(X2, X.astype(np.float32)) and np.array_equal(y2, y)
    for column in (2, -2):
        assert np.array_equal(ds.load_csv(path, label_column=column)[1], y)
    X3, y3 = ds.load(path)
    assert np.array_equal(X3, X2) and np.array_equal(y3, y2)


def test_csv_regression_targets_and_options(tmp_path):
    path = write(tmp_path, "\ufeffx ; target\n\n1.5;0.25\n 2 ; \"-1\"\n\n3e2;7.5\n", "r.CSV",
                 encoding="utf-8")
    X, y = ds.load(path, label_column="target", delimiter=";")
    assert np.array_equal(X, np.array([[1.5], [2.0], [300.0]], dtype=np.float32))
    assert y.dtype == np.float32 and np.array_equal(y, np.array([0.25, -1.0, 7.5], dtype=np.float32))


def test_csv_without_header(tmp_path):
    path = write(tmp_path, "0,1,2\n1,3,4\n2,5,6\n")
    X, y = ds.load_csv(path, label_column=0, header=False)
    assert np.array_equal(y, [0, 1, 2]) and np.array_equal(X, [[1, 2], [3, 4], [5, 6]])
    X, y = ds.load_csv(path, label_column=-1, header=False)
    assert np.array_equal(y, [2, 4, 6]) and np.array_equal(X, [[0, 1], [1, 3], [2, 5]])


@pytest.mark.parametrize("text, options, error, message", [
    ("a,b,y\n1,2,0\n", {}, ValueError,
     "no column named 'label'; the columns are ['a', 'b', 'y']"),
    ("a,b\n1,2\n", dict(header=False), ValueError,
     "with header=False, label_column must be a column index (0..1 or negative), got 'label'"),
    ("a,b\n1,2\n", dict(label_column=2), ValueError,
     "label_column 2 is out of range for 2 columns ['a', 'b']"),
    ("a,b\n1,2\n", dict(label_column=-3), ValueError, "label_column -3 is out of range"),
    ("a,b\n1,2\n", dict(label_column=1.0), TypeError,
     "label_column must be a column name or index, got float"),
    ("label,x,label\n1,2,3\n", {}, ValueError,
     "2 columns are named 'label'; give label_column as an index ([0, 2])"),
    ("x,label\n1,0\n\n,1\n", {}, ValueError,
     "X has missing values (NaN) in column 'x' (rows 2 (line 4); 1 in all): fill or drop them, or impute them"),
    ("1,0\n2,x\n", dict(label_column=0, header=False), ValueError,
     "row 2 (line 2), column 'column 1': 'x' is not a number (1 text field in that column); a text or "
     "categorical feature must be one-hot encoded"),
    ("x,label\n1,0\nnan,1\n", {}, ValueError,
     "X has missing values (NaN) in column 'x' (rows 2 (line 3); 1 in all)"),
    ("x,label\n1,0\ninf,1\n", {}, ValueError,
     "X has infinite values in column 'x' (rows 2 (line 3); 1 in all)"),
    ("x,label\n1,0\n2,NA\n3,\n", {}, ValueError,
     "the label column 'label' has missing values in rows 2 (line 3), 3 (line 4) (2 in all); drop those rows"),
    ("x,label\n1,0\n2,-inf\n", {}, ValueError, "row 2 (line 3), column 'label': '-inf' is infinite"),
    ("x,y,label\n1,2,0\n1,2\n", {}, ValueError,
     "line 3 has 2 fields, expected 3 (like the header)"),
    ("1,2,0\n1,2,0,4\n", dict(label_column=2, header=False), ValueError,
     "line 2 has 4 fields, expected 3 (like the first row)"),
    ("", {}, ValueError, "the file is empty (expected a header row)"),
    ("x,label\n\n", {}, ValueError, "no data rows"),
    ("", dict(label_column=0, header=False), ValueError, "no data rows"),
    ("label\n1\n", {}, ValueError, "only the label column 'label'; there are no feature columns"),
    ('x,label\n"1,0\n', {}, ValueError, "line 2 has 1 fields, expected 2 (like the header)"),
])
def test_csv_errors(tmp_path, text, options, error, message):
    path = write(tmp_path, text)
    with pytest.raises(error, match=re.escape(message)) as info:
        ds.load_csv(path, **options)
    assert str(path) in str(info.value) or error is TypeError


def test_csv_text_labels_missing_values_and_column_names(tmp_path):
    path = write(tmp_path, "sepal, petal ,species\n5.1,1.4,setosa\n7.0,NA,versicolor\n,1.5, setosa\n"
                           "6.3,?,1\n")
    X, y = ds.load_csv(path, label_column="species", missing="keep")
    assert y.dtype.kind == "U" and list(y) == ["setosa", "versicolor", "setosa", "1"]
    np.testing.assert_array_equal(np.isnan(X), [[False, False], [False, True], [True, False], [False, True]])
    table = ds.read_csv(path, "species", missing="keep")
    assert table.feature_names == ["sepal", "petal"] and table.label_name == "species" and table.lines == [2, 3, 4, 5]
    with pytest.raises(ValueError, match=re.escape("X has missing values (NaN) in column 'sepal' (rows 3 (line 4); "
                                                   "1 in all), column 'petal' (rows 2 (line 3), 4 (line 5); 2 in all)")):
        ds.load_csv(path, label_column="species")
    # Picking feature columns by name: any order, others (the label) ignored, absent ones named.
    features = ds.read_csv(path, None, columns=["petal", "sepal"], missing="keep")
    np.testing.assert_array_equal(features.X, X[:, ::-1])
    assert features.y is None and features.feature_names == ["petal", "sepal"]
    with pytest.raises(ValueError, match="missing must be 'error' or 'keep'"):
        ds.load_csv(path, label_column="species", missing="impute")
    with pytest.raises(ValueError, match=re.escape("the columns ['width', 'height'] are missing; the file has "
                                                   "['sepal', 'petal', 'species']")):
        ds.read_csv(path, None, columns=["sepal", "width", "height"])
    # Numbers that are not whole stay float targets; a label 10**7 is just a number.
    path = write(tmp_path, "x,label\n1,0.5\n2,10000000\n", "t.csv")
    assert ds.load_csv(path)[1].dtype == np.float32
    path = write(tmp_path, "x,label\n1,3\n2,10000000\n", "u.csv")
    assert ds.load_csv(path)[1].tolist() == [3, 10**7]


def test_csv_unreadable_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.csv: no such file"):
        ds.load_csv(tmp_path / "missing.csv")
    path = tmp_path / "binary.csv"
    path.write_bytes(b"x,label\n\xff\xfe\x00,1\n")
    with pytest.raises(ValueError, match=r"binary\.csv: not a readable UTF-8 CSV file"):
        ds.load_csv(path)


# --- the dispatcher -----------------------------------------------------------------------


def test_load_by_name_passes_options():
    X, y = ds.load("spirals", n_per_class=5, classes=2, seed=3)
    X2, y2 = ds.spirals(5, 2, seed=3)
    assert np.array_equal(X, X2) and np.array_equal(y, y2)
    with pytest.raises(TypeError, match="unexpected keyword argument 'label_column'"):
        ds.load("blobs", label_column="y")


@pytest.mark.parametrize("name", ["mnist", "data.txt", "data", "data.csv.gz"])
def test_load_unknown(name):
    with pytest.raises(ValueError, match=re.escape(
            f"unknown dataset {name!r}: expected one of 'digits', 'spirals', 'blobs', "
            "or a path ending in .npz or .csv")):
        ds.load(name)


def test_load_bad_type_and_missing_file(tmp_path):
    with pytest.raises(TypeError, match="load\\(\\) takes a dataset name or a path, got int"):
        ds.load(3)
    with pytest.raises(FileNotFoundError, match="no such file"):
        ds.load(tmp_path / "absent.csv")
