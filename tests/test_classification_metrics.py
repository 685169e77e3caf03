"""Precision, recall, F1, ROC AUC and the classification report against scikit-learn's values
on random inputs (scikit-learn's zero_division=0, which fastnn applies without a warning)."""

from __future__ import annotations

import numpy as np
import pytest

from fastnn import metrics

sk = pytest.importorskip("sklearn.metrics")


def random_labels(rng, n, classes, missing=()):
    """Labels in [0, classes) with the classes of ``missing`` left out."""
    allowed = [c for c in range(classes) if c not in missing]
    return rng.choice(allowed, n)


CASES = [  # (classes, missing from y_true, missing from y_pred)
    (2, (), ()), (3, (), ()), (5, (), ()), (6, (2,), ()), (6, (), (4,)), (4, (1,), (1, 3)), (7, (0, 6), (5,)),
]


@pytest.mark.parametrize("average", ["macro", "micro", "weighted", None])
@pytest.mark.parametrize("classes,missing_true,missing_pred", CASES)
@pytest.mark.parametrize("n", [1, 7, 200])
def test_precision_recall_f1_match_sklearn(rng, average, classes, missing_true, missing_pred, n):
    y_true = random_labels(rng, n, classes, missing_true)
    y_pred = random_labels(rng, n, classes, missing_pred)
    for ours, theirs in ((metrics.precision, sk.precision_score), (metrics.recall, sk.recall_score),
                         (metrics.f1_score, sk.f1_score)):
        expected = theirs(y_true, y_pred, average=average, zero_division=0)
        got = ours(y_true, y_pred, average=average)
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15, err_msg=ours.__name__)
        labels = list(range(classes))  # every class, also the absent ones
        np.testing.assert_allclose(ours(y_true, y_pred, average=average, labels=labels),
                                   theirs(y_true, y_pred, average=average, labels=labels, zero_division=0),
                                   rtol=1e-12, atol=1e-15)


def test_binary_average_scores_and_one_hot_inputs(rng):
    y_true, scores = rng.integers(0, 2, 100), rng.random(100)
    y_pred = (scores > 0.5).astype(np.int64)
    for ours, theirs in ((metrics.precision, sk.precision_score), (metrics.recall, sk.recall_score),
                         (metrics.f1_score, sk.f1_score)):
        assert ours(y_true, y_pred, average="binary") == pytest.approx(theirs(y_true, y_pred, zero_division=0))
        assert ours(y_true, y_pred, average="binary", pos_label=0) == pytest.approx(
            theirs(y_true, y_pred, pos_label=0, zero_division=0))
        assert ours(y_true, scores, average="binary", threshold=0.5) == ours(y_true, y_pred, average="binary")
    logits = rng.standard_normal((60, 4))
    y = rng.integers(0, 4, 60)
    one_hot = np.eye(4)[y]
    assert metrics.f1_score(one_hot, logits) == pytest.approx(sk.f1_score(y, logits.argmax(1), average="macro"))
    with pytest.raises(ValueError, match="average='binary' needs the labels 0 and 1"):
        metrics.f1_score(y, logits, average="binary")
    with pytest.raises(ValueError, match="average must be one of"):
        metrics.recall(y, logits, average="samples")
    with pytest.raises(ValueError, match="threshold"):
        metrics.precision(y_true, scores)  # binary scores need a threshold


@pytest.mark.parametrize("average", ["macro", "weighted", None])
@pytest.mark.parametrize("classes", [3, 5])
def test_roc_auc_one_vs_rest_matches_sklearn(rng, average, classes):
    n = 300
    y_true = rng.integers(0, classes, n)
    logits = rng.standard_normal((n, classes)) + 1.5 * np.eye(classes)[y_true]
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    proba = np.round(proba, 2)  # ties, which count one half
    proba /= proba.sum(axis=1, keepdims=True)
    expected = sk.roc_auc_score(y_true, proba, multi_class="ovr", average=average)
    np.testing.assert_allclose(metrics.roc_auc_score(y_true, proba, average=average), expected, rtol=1e-12)


def test_binary_roc_auc_matches_sklearn(rng):
    y_true = rng.integers(0, 2, 500)
    score = rng.standard_normal(500) + y_true
    expected = sk.roc_auc_score(y_true, score)
    assert metrics.roc_auc_score(y_true, score) == pytest.approx(expected, rel=1e-12)
    assert metrics.roc_auc_score(y_true, score[:, None]) == pytest.approx(expected, rel=1e-12)
    two = np.stack([-score, score], axis=1)
    assert metrics.roc_auc_score(y_true, two) == pytest.approx(expected, rel=1e-12)
    rounded = np.round(score)  # many ties
    assert metrics.roc_auc_score(y_true, rounded) == pytest.approx(sk.roc_auc_score(y_true, rounded), rel=1e-12)
    a = np.array
    assert metrics.roc_auc_score(a([0, 0, 1, 1]), a([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert metrics.roc_auc_score(a([0, 0, 1, 1]), a([0.5, 0.5, 0.5, 0.5])) == 0.5
    with pytest.raises(ValueError, match="no positive samples"):
        metrics.roc_auc_score(a([0, 0, 0]), a([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="class 2 has no positive samples"):
        metrics.roc_auc_score(a([0, 1, 0, 1]), rng.random((4, 3)))
    with pytest.raises(ValueError, match="binary scores need labels 0 and 1"):
        metrics.roc_auc_score(a([0, 1, 2]), a([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="NaN"):
        metrics.roc_auc_score(a([0, 1]), a([0.1, np.nan]))


@pytest.mark.parametrize("labels", [None, [0, 1], [0, 1, 2, 3]])
@pytest.mark.parametrize("digits", [2, 4])
def test_classification_report_matches_sklearn(rng, labels, digits):
    y_true = random_labels(rng, 80, 4, missing=(3,))
    y_pred = random_labels(rng, 80, 4)
    text = metrics.classification_report(y_true, y_pred, labels=labels, digits=digits)
    assert text == sk.classification_report(y_true, y_pred, labels=labels, digits=digits, zero_division=0)
    ours = metrics.classification_report(y_true, y_pred, labels=labels, output_dict=True)
    theirs = sk.classification_report(y_true, y_pred, labels=labels, output_dict=True, zero_division=0)
    assert list(ours) == list(theirs)
    for key, value in theirs.items():
        if isinstance(value, dict):
            assert ours[key].keys() == value.keys()
            for name in value:
                assert ours[key][name] == pytest.approx(value[name], rel=1e-12, abs=1e-15), (key, name)
        else:
            assert ours[key] == pytest.approx(value, rel=1e-12)


def test_classification_report_target_names():
    y_true, y_pred = np.array([0, 1, 2, 2]), np.array([0, 2, 2, 1])
    names = ["setosa", "versicolor", "virginica"]
    assert metrics.classification_report(y_true, y_pred, target_names=names) == sk.classification_report(
        y_true, y_pred, target_names=names, zero_division=0)
    with pytest.raises(ValueError, match="target_names has 2 names for 3 classes"):
        metrics.classification_report(y_true, y_pred, target_names=names[:2])
