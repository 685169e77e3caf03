"""Data as it comes: the task inferred only when it is clear, class labels of any kind encoded
by their distinct values, DataFrames with names (text columns refused with advice), missing
values named or imputed from the training data, and the regression metrics against
scikit-learn."""

import re

import numpy as np
import pytest

import fastnn as fnn
from fastnn import data as D
from fastnn import metrics as M
from fastnn.preprocessing import TRANSFORMERS, MinMaxScaler, PCAWhitening, SimpleImputer, Standardizer


@pytest.mark.parametrize("y, task", [
    (np.array(["setosa", "virginica"] * 5), "classification"),
    (np.array([True, False] * 5), "classification"),
    (np.array([0.5, 1.0, 2.25] * 5), "regression"),
    (np.arange(10).repeat(8), "classification"),                 # digits: 10 values
    (np.array([3, 10**7] * 4), "classification"),
    (np.arange(20).repeat(2), "classification"),                 # 20 values: still classes
    (np.arange(500) * 1000 + 100_000, "regression"),              # prices: every value distinct
    (np.arange(31).repeat(2)[1:], "regression"),                 # 31 values over 61 samples: more than half
    (np.ones((10, 2)), "regression"),                            # several targets
])
def test_infer_task(y, task):
    assert D.infer_task(y) == task


def test_infer_task_when_told_and_when_ambiguous():
    with pytest.raises(ValueError, match="30 distinct whole numbers over 60 samples"):
        D.infer_task(np.arange(30).repeat(2).astype(float))  # exactly half: not more than half
    ambiguous = np.arange(57).repeat(10)
    with pytest.raises(ValueError, match=re.escape("say which with task='classify' or task='regress' "
                                                   "(fastnn train --task classify|regress)")):
        D.infer_task(ambiguous)
    assert D.infer_task(ambiguous, "classify") == "classification"
    assert D.infer_task(ambiguous, "regression") == "regression"
    with pytest.raises(ValueError, match="needs numeric targets, but y holds text"):
        D.infer_task(np.array(["a", "b"]), "regress")
    with pytest.raises(ValueError, match="task must be 'auto', 'classify' or 'regress'"):
        D.infer_task(ambiguous, "cluster")


def test_encode_labels_by_distinct_values():
    classes, codes = D.encode_labels(np.array([10**7, 3, 3, 10**7, 42]))
    assert classes.tolist() == [3, 42, 10**7] and codes.tolist() == [2, 0, 0, 2, 1] and codes.dtype == np.int64
    classes, codes = D.encode_labels(np.array(["virginica", "setosa", "virginica"]))
    assert classes.tolist() == ["setosa", "virginica"] and codes.tolist() == [1, 0, 1]
    np.testing.assert_array_equal(classes[codes], ["virginica", "setosa", "virginica"])
    classes, codes = D.encode_labels(np.array([[1], [0], [1]]))
    assert classes.tolist() == [0, 1] and codes.tolist() == [1, 0, 1]
    with pytest.raises(ValueError, match="one per sample"):
        D.encode_labels(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="NaN"):
        D.encode_labels(np.array([0.0, np.nan]))


def test_pandas_labels_and_features():
    pd = pytest.importorskip("pandas")
    classes, codes = D.encode_labels(pd.Series(["b", "a", "b"]))
    assert classes.tolist() == ["a", "b"] and codes.tolist() == [1, 0, 1]
    assert D.infer_task(pd.Series(["b", "a"])) == "classification"
    frame = pd.DataFrame({"x": [1.0, 2.0], "n": [1, 2], "flag": [True, False]})
    X, names = D.features(frame)
    assert names == ["x", "n", "flag"] and X.dtype == np.float64 and X.flags.c_contiguous
    np.testing.assert_array_equal(X, [[1, 1, 1], [2, 2, 0]])
    for column in (pd.Series(["red", "blue"]), pd.Series(["red", "blue"], dtype="category")):
        frame["colour"] = column
        with pytest.raises(ValueError, match=re.escape(
                "X: the columns ['colour'] hold text or categories, not numbers; one-hot encode them "
                "(e.g. pandas.get_dummies(X, columns=['colour'], dtype=float)) or drop them")):
            D.features(frame)
    # Preprocessing takes DataFrames too, with the same advice for text.
    numeric = frame.drop(columns="colour")
    np.testing.assert_allclose(Standardizer().fit_transform(numeric), Standardizer().fit_transform(X))
    with pytest.raises(ValueError, match="one-hot encode"):
        Standardizer().fit(frame)


def test_check_missing_names_columns_and_rows():
    X = np.zeros((12, 3))
    X[[1, 3, 4, 5, 7, 8, 11], 2] = np.nan
    X[6, 0] = np.nan
    with pytest.raises(ValueError, match=re.escape(
            "X has missing values (NaN) in column 'a' (rows 6; 1 in all), column 'c' (rows 1, 3, 4, 5, 7, ...; "
            "7 in all): fill or drop them, or impute them from the training data")):
        D.check_missing(X, ["a", "b", "c"])
    X = np.zeros((3, 2))
    X[2, 1] = -np.inf
    with pytest.raises(ValueError, match=re.escape("X has infinite values in column 1 (rows 2; 1 in all)")):
        D.check_missing(X)
    D.check_missing(np.zeros((3, 2)))


# --- SimpleImputer -------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["mean", "median"])
def test_simple_imputer_matches_scikit_learn_and_uses_training_statistics(rng, strategy):
    sklearn_impute = pytest.importorskip("sklearn.impute")
    train, test = rng.standard_normal((40, 4)), rng.standard_normal((10, 4)) + 5
    train[rng.random(train.shape) < 0.2] = np.nan
    test[rng.random(test.shape) < 0.3] = np.nan
    ours = SimpleImputer(strategy).fit(train)
    theirs = sklearn_impute.SimpleImputer(strategy=strategy).fit(train)
    np.testing.assert_allclose(ours.statistics, theirs.statistics_)
    np.testing.assert_allclose(ours.transform(test), theirs.transform(test))
    assert not np.isnan(ours.transform(test)).any()
    present = ~np.isnan(test)
    np.testing.assert_array_equal(ours.transform(test)[present], test[present])
    assert ours.transform(test.astype(np.float32)).dtype == np.float32
    np.testing.assert_array_equal(ours.inverse_transform(test), test)


def test_simple_imputer_refuses_what_it_cannot_fill():
    X = np.array([[1.0, np.nan], [2.0, np.nan]])
    with pytest.raises(ValueError, match="feature 1 has no value in the training data"):
        SimpleImputer().fit(X)
    with pytest.raises(ValueError, match="strategy must be one of"):
        SimpleImputer("mode")


@pytest.mark.parametrize("make", [lambda: SimpleImputer("median"), lambda: Standardizer(eps=1e-6),
                                  lambda: MinMaxScaler((-2, 3)), lambda: PCAWhitening(n_components=2, eps=1e-3),
                                  lambda: fnn.preprocessing.MeanCenter()])
def test_configs_rebuild_the_transformer(rng, make):
    X = rng.standard_normal((20, 3))
    fitted = make().fit(X)
    config = fitted.get_config()
    again = TRANSFORMERS[type(fitted).__name__](**config)
    assert again.get_config() == config
    again.load_state_dict(fitted.state_dict())
    np.testing.assert_array_equal(again.transform(X), fitted.transform(X))


# --- regression metrics -----------------------------------------------------------------------


def test_r2_and_rmse_match_scikit_learn(rng):
    sk = pytest.importorskip("sklearn.metrics")
    for shape in ((50,), (50, 1), (50, 3)):
        y = rng.standard_normal(shape) * 3 + 1
        pred = y + rng.standard_normal(shape)
        assert M.r2_score(y, pred) == pytest.approx(sk.r2_score(y, pred), rel=1e-12)
        assert M.rmse(y, pred) == pytest.approx(np.sqrt(sk.mean_squared_error(y, pred)), rel=1e-12)
    y = rng.standard_normal(30)
    assert M.rmse(y, y + 0.5) == pytest.approx(sk.root_mean_squared_error(y, y + 0.5))
    assert M.r2_score(y, np.full(30, y.mean())) == pytest.approx(0.0, abs=1e-12)
    assert M.r2_score(y, y) == 1.0 and M.r2_score(y, 2 * y - y.mean() + 3) < 0
    constant = np.full(5, 2.0)
    assert M.r2_score(constant, constant) == sk.r2_score(constant, constant) == 1.0
    assert M.r2_score(constant, constant + 1) == sk.r2_score(constant, constant + 1) == 0.0
    mixed = np.column_stack([constant, np.arange(5.0)])
    assert M.r2_score(mixed, mixed + [[0, 1]] * 5) == pytest.approx(sk.r2_score(mixed, mixed + [[0, 1]] * 5))
    with pytest.raises(ValueError, match="R\\^2 needs at least two samples"):
        M.r2_score(np.ones(1), np.ones(1))
    with pytest.raises(ValueError, match="must have the same shape"):
        M.r2_score(np.zeros(3), np.zeros((3, 1)))
