"""fastnn.sklearn: MLPClassifier and MLPRegressor pass scikit-learn's own estimator checks and
work inside Pipeline, GridSearchCV and cross_val_score."""

from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("sklearn", minversion="1.6")

from sklearn.base import clone  # noqa: E402
from sklearn.datasets import load_iris, make_regression  # noqa: E402
from sklearn.model_selection import GridSearchCV, cross_val_score  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import fastnn as fnn  # noqa: E402
from fastnn import nn  # noqa: E402
from fastnn.sklearn import MLPClassifier, MLPRegressor  # noqa: E402

FAST = dict(hidden_layer_sizes=(16,), epochs=30, learning_rate=1e-2)


@parametrize_with_checks([
    MLPClassifier(**FAST), MLPRegressor(**FAST),
    MLPClassifier(hidden_layer_sizes=(16, 8), activation="tanh", batch_norm=True, dropout=0.1, early_stopping=True,
                  epochs=40, learning_rate=1e-2),
    MLPRegressor(hidden_layer_sizes=(16,), activation="gelu", batch_norm=True, optimizer="sgd", learning_rate=0.05,
                 epochs=40),
])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def iris():
    X, y = load_iris(return_X_y=True)
    names = np.array(["setosa", "versicolor", "virginica"])[y]  # string labels
    return X, names


def test_string_labels_probabilities_and_the_network():
    X, y = iris()
    clf = MLPClassifier(hidden_layer_sizes=(32,), epochs=60, learning_rate=1e-2, random_state=0)
    assert clf.fit(StandardScaler().fit_transform(X), y) is clf
    Xs = StandardScaler().fit_transform(X)
    assert list(clf.classes_) == ["setosa", "versicolor", "virginica"]
    assert set(clf.predict(Xs)) <= set(clf.classes_) and clf.score(Xs, y) > 0.9
    proba = clf.predict_proba(Xs)
    assert proba.shape == (150, 3) and proba.dtype == np.float64
    np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=1e-12)
    np.testing.assert_array_equal(clf.classes_[proba.argmax(axis=1)], clf.predict(Xs))
    assert isinstance(clf.model_, nn.Sequential) and clf.model_.dtype == np.float64  # X's dtype
    assert clf.n_iter_ == 60 and len(clf.loss_curve_) == 60 and clf.loss_curve_[-1] < clf.loss_curve_[0]
    assert MLPClassifier(**FAST, random_state=0).fit(Xs.astype(np.float32), y).model_.dtype == np.float32


def test_the_same_random_state_gives_the_same_model():
    X, y = iris()
    X = StandardScaler().fit_transform(X)
    params = dict(hidden_layer_sizes=(8,), dropout=0.2, batch_norm=True, early_stopping=True, epochs=10)
    a = MLPClassifier(**params, random_state=3).fit(X, y)
    b = clone(a).fit(X, y)
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    c = MLPClassifier(**params, random_state=4).fit(X, y)
    assert not np.array_equal(a.predict_proba(X), c.predict_proba(X))
    try:
        fnn.seed(9)
        first = MLPClassifier(**params).fit(X, y).predict_proba(X)
        fnn.seed(9)
        np.testing.assert_array_equal(MLPClassifier(**params).fit(X, y).predict_proba(X), first)
    finally:
        fnn.seed(None)
    again = pickle.loads(pickle.dumps(a))
    np.testing.assert_array_equal(again.predict_proba(X), a.predict_proba(X))


def test_pipeline_grid_search_and_cross_validation():
    X, y = iris()
    pipe = make_pipeline(StandardScaler(), MLPClassifier(epochs=40, learning_rate=1e-2, random_state=0))
    scores = cross_val_score(pipe, X, y, cv=3)
    assert scores.shape == (3,) and scores.mean() > 0.85
    search = GridSearchCV(pipe, {"mlpclassifier__hidden_layer_sizes": [(4,), (32,)],
                                 "mlpclassifier__optimizer": ["adam", "sgd"]}, cv=3)
    search.fit(X, y)
    assert set(search.best_params_) == {"mlpclassifier__hidden_layer_sizes", "mlpclassifier__optimizer"}
    assert search.best_score_ > 0.85 and search.score(X, y) > 0.85
    assert pipe.get_params()["mlpclassifier__epochs"] == 40


def test_regressor_standardizes_targets_of_any_scale():
    X, y = make_regression(n_samples=300, n_features=5, noise=1.0, random_state=0)
    for scale in (1e-3, 1.0, 1e5):
        reg = MLPRegressor(hidden_layer_sizes=(32,), epochs=80, learning_rate=1e-2, random_state=0).fit(X, y * scale)
        assert reg.score(X, y * scale) > 0.95
        assert reg.predict(X).shape == (300,)
    two = np.stack([y, -2 * y], axis=1)
    reg = MLPRegressor(hidden_layer_sizes=(32,), epochs=80, learning_rate=1e-2, random_state=0).fit(X, two)
    assert reg.predict(X).shape == (300, 2) and reg.score(X, two) > 0.95


def test_bad_hyperparameters_are_reported_at_fit():
    X, y = iris()
    for params, message in [({"activation": "swish"}, "activation must be one of"),
                            ({"optimizer": "lbfgs"}, "optimizer must be one of"),
                            ({"hidden_layer_sizes": (0,)}, "hidden_layer_sizes must be positive ints"),
                            ({"dropout": 1.0}, "dropout must be < 1"),
                            ({"epochs": 0}, "epochs must be a positive int"),
                            ({"random_state": "seed"}, "random_state must be None"),
                            ({"device": "tpu"}, "device must be")]:
        clf = MLPClassifier(**params)  # constructing checks nothing (scikit-learn's rule)
        with pytest.raises(ValueError, match=message):
            clf.fit(X, y)
    with pytest.raises(ValueError, match="at least 2 classes"):
        MLPClassifier().fit(X, np.zeros(len(X)))


def test_a_clear_message_without_scikit_learn():
    code = ("import sys; sys.modules['sklearn'] = None\n"
            "try:\n    import fastnn.sklearn\nexcept ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert 'fastnn.sklearn needs scikit-learn >= 1.6: pip install "fastnn[sklearn]"' in out
