"""fastnn.metrics against hand-computed values on small explicit cases, and their errors."""

import numpy as np
import pytest

from fastnn import metrics as M
from fastnn._backend import to_numpy

# 5 samples, 3 classes. argmax of each row: 0, 2, 1, 1, 2
SCORES = np.array([[2.0, 1.0, 0.1],
                   [0.1, 0.3, 0.7],
                   [0.2, 0.9, 0.4],
                   [0.5, 0.6, -1.0],
                   [-3.0, 0.0, 4.0]])
TRUE = np.array([0, 1, 1, 0, 2])  # correct: samples 0, 2, 4 -> 3/5


def test_accuracy_from_labels_scores_and_one_hot(xp):
    scores, true = xp.asarray(SCORES), xp.asarray(TRUE)
    assert M.accuracy(true, xp.asarray([0, 2, 1, 1, 2])) == pytest.approx(3 / 5)
    assert M.accuracy(true, scores) == pytest.approx(3 / 5)
    probabilities = xp.exp(scores) / xp.exp(scores).sum(axis=1, keepdims=True)
    assert M.accuracy(true, probabilities) == pytest.approx(3 / 5)
    one_hot = xp.eye(3)[true]
    assert M.accuracy(one_hot, scores) == pytest.approx(3 / 5)
    assert M.accuracy(true.astype(xp.float64), scores) == pytest.approx(3 / 5)
    assert M.accuracy(true, true) == 1.0


def test_accuracy_binary_scores_need_a_threshold(xp):
    true = xp.asarray([1, 0, 1, 1])
    probabilities = xp.asarray([0.9, 0.6, 0.4, 0.7])   # predicted 1, 1, 0, 1 -> 2/4
    logits = xp.asarray([[2.0], [-1.0], [0.5], [-0.2]])  # predicted 1, 0, 1, 0 -> 3/4
    assert M.accuracy(true, probabilities, threshold=0.5) == pytest.approx(0.5)
    assert M.accuracy(true, logits, threshold=0.0) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="threshold=0.5 for probabilities or threshold=0.0 for logits"):
        M.accuracy(true, probabilities)


def test_top_k_accuracy(xp):
    scores, true = xp.asarray(SCORES), xp.asarray(TRUE)
    # rank of the true class per sample: 1, 2, 1, 2, 1
    assert M.top_k_accuracy(true, scores, k=1) == pytest.approx(3 / 5)
    assert M.top_k_accuracy(true, scores, k=2) == pytest.approx(1.0)
    assert M.top_k_accuracy(true, scores, k=3) == 1.0
    assert M.top_k_accuracy(xp.asarray([2, 2]), xp.asarray([[3.0, 2.0, 1.0], [1.0, 1.0, 1.0]]), k=2) == 0.5
    with pytest.raises(ValueError, match=r"k must be an int in \[1, 3\]"):
        M.top_k_accuracy(true, scores, k=4)
    with pytest.raises(ValueError, match="out of range for 3 classes"):
        M.top_k_accuracy(xp.asarray([0, 1, 1, 0, 3]), scores, k=1)


def test_confusion_matrix(xp):
    got = M.confusion_matrix(xp.asarray(TRUE), xp.asarray(SCORES))
    # truth -> prediction: 0->0, 1->2, 1->1, 0->1, 2->2
    expected = np.array([[1, 1, 0],
                         [0, 1, 1],
                         [0, 0, 1]])
    np.testing.assert_array_equal(to_numpy(got), expected)
    assert got.dtype == np.int64
    assert int(np.trace(to_numpy(got))) == 3
    padded = to_numpy(M.confusion_matrix(xp.asarray([0, 1]), xp.asarray([1, 1]), num_classes=4))
    np.testing.assert_array_equal(padded, [[0, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    with pytest.raises(ValueError, match="out of range"):
        M.confusion_matrix(xp.asarray([0, 3]), xp.asarray([0, 1]), num_classes=3)


def test_mse_and_mae(xp):
    true = xp.asarray([[1.0, 2.0], [3.0, 4.0]])
    pred = xp.asarray([[1.5, 2.0], [1.0, 5.0]])
    # errors 0.5, 0, -2, 1
    assert M.mse(true, pred) == pytest.approx((0.25 + 0 + 4 + 1) / 4)
    assert M.mae(true, pred) == pytest.approx((0.5 + 0 + 2 + 1) / 4)
    assert isinstance(M.mse(true, pred), float)


def test_shape_mismatches_are_errors_not_broadcasts(xp):
    with pytest.raises(ValueError, match=r"y_true \(3,\) and y_pred \(3, 1\) must have the same shape"):
        M.mse(xp.zeros(3), xp.zeros((3, 1)))
    with pytest.raises(ValueError, match="same shape"):
        M.mae(xp.zeros((2, 2)), xp.zeros(4))
    with pytest.raises(ValueError, match="same samples"):
        M.accuracy(xp.asarray([0, 1, 1]), xp.asarray(SCORES))
    with pytest.raises(ValueError, match="same samples"):
        M.confusion_matrix(xp.asarray([0, 1]), xp.asarray([0, 1, 1]))
    with pytest.raises(ValueError, match="non-integral"):
        M.accuracy(xp.asarray([0.5, 1.0]), xp.asarray([0, 1]))


def test_metrics_by_name():
    assert M.METRICS["accuracy"] is M.accuracy and set(M.METRICS) >= {"accuracy", "top_k_accuracy", "mse", "mae"}
