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


# -- sums over batches, on the device -------------------------------------------------------


def epoch_mean(metric, y_true, y_pred, batch_size=7):
    """A BatchMetric's per-sample mean over the data, summed batch by batch as the Trainer does."""
    M.check_targets([metric], y_true, "test")
    sums = M.MetricSums()
    for start in range(0, y_pred.shape[0], batch_size):
        sums.add(metric.name, metric.batch_sum(y_true[start:start + batch_size], y_pred[start:start + batch_size]))
        sums.count += y_pred[start:start + batch_size].shape[0]
    return sums.means()[metric.name]


@pytest.mark.parametrize("trial", range(3))
def test_batch_sums_of_the_classification_metrics_match_the_host_functions(xp, trial):
    rng = np.random.default_rng(trial)
    n, c = 61, 5
    logits = xp.asarray(rng.standard_normal((n, c)).astype(np.float32))
    logits[::9, 1] = logits[::9, 3]  # ties: top-k counts them in the true class's favour
    labels = xp.asarray(rng.integers(0, c, n))
    proba = M.probabilities(logits)
    one_hot = xp.eye(c, dtype=xp.float32)[labels]
    for y_true in (labels, one_hot, labels.astype(xp.float32)):
        for scores in (logits, proba, M.predicted_labels(logits)):
            metric = M.batch_metric("accuracy")
            assert epoch_mean(metric, y_true, scores) == pytest.approx(M.accuracy(y_true, scores), rel=1e-12)
        for k in range(1, c + 1):
            metric = M.batch_metric(f"top_{k}_accuracy")
            assert epoch_mean(metric, y_true, logits) == pytest.approx(M.top_k_accuracy(y_true, logits, k=k),
                                                                        rel=1e-12)
    assert M.batch_metric("top_k_accuracy").batch_sum(labels, logits) == M.top_k_accuracy(labels, logits) * n


@pytest.mark.parametrize("shape", [(40,), (40, 1)])
def test_batch_sums_of_binary_accuracy_threshold_like_the_host_function(xp, shape):
    rng = np.random.default_rng(4)
    logits = xp.asarray(rng.standard_normal(shape))
    labels = xp.asarray(rng.integers(0, 2, shape).astype(np.float64))
    proba = M.probabilities(logits)
    for scores, threshold in ((logits, 0.0), (proba, 0.5), (proba, 0.7)):
        metric = M.batch_metric("accuracy", threshold=threshold)
        host = M.accuracy(labels, scores, threshold=threshold)
        assert epoch_mean(metric, labels, scores) == pytest.approx(host, rel=1e-12)
    with pytest.raises(ValueError, match="threshold=0.5 for probabilities or threshold=0.0 for logits"):
        M.batch_metric("accuracy").batch_sum(labels, logits)


@pytest.mark.parametrize("shape", [(33,), (33, 1), (33, 4)])
def test_batch_sums_of_the_errors_match_mse_and_mae(xp, shape):
    rng = np.random.default_rng(5)
    y_true = xp.asarray(rng.standard_normal(shape).astype(np.float32))
    y_pred = xp.asarray(rng.standard_normal(shape).astype(np.float32))
    for name, host in (("mse", M.mse), ("mae", M.mae)):
        assert epoch_mean(M.batch_metric(name), y_true, y_pred) == pytest.approx(host(y_true, y_pred), rel=1e-12)
    with pytest.raises(ValueError, match=r"mse: targets \(3,\) and outputs \(3, 1\) must have the same shape"):
        M.batch_metric("mse").batch_sum(xp.zeros(3), xp.zeros((3, 1)))


def test_batch_sums_stay_on_the_device_and_user_functions_run_on_the_host(xp):
    rng = np.random.default_rng(6)
    logits, labels = xp.asarray(rng.standard_normal((10, 3))), xp.asarray(rng.integers(0, 3, 10))
    for name in ("accuracy", "top_2_accuracy", "mse"):
        y = xp.eye(3)[labels] if name == "mse" else labels
        total = M.batch_metric(name).batch_sum(y, logits)
        assert isinstance(total, (np.ndarray, np.generic) if xp is np else xp.ndarray) and total.shape == ()

    def largest(y_true, y_pred):
        return float(y_pred.max())

    for spec in (largest, ("biggest", largest)):
        metric = M.batch_metric(spec)
        assert metric.name == ("largest" if spec is largest else "biggest") and not metric.needs_labels
        assert metric.batch_sum(labels, logits) == pytest.approx(10 * float(logits.max()))


def test_batch_metric_and_check_targets_refuse_bad_input():
    with pytest.raises(ValueError, match="unknown metric 'f1'"):
        M.batch_metric("f1")
    with pytest.raises(TypeError, match="a metric must be a name"):
        M.batch_metric(3)
    with pytest.raises(ValueError, match=r"top_4_accuracy needs scores \(N, C\) with at least 4 classes"):
        M.batch_metric("top_4_accuracy").batch_sum(np.array([0, 1]), np.zeros((2, 3)))
    metrics = [M.batch_metric("mse"), M.batch_metric("accuracy"), M.batch_metric("top_2_accuracy")]
    with pytest.raises(ValueError, match=r"fit: the metrics \['accuracy', 'top_2_accuracy'\] need class labels: "
                                         "y_true holds non-integral floats"):
        M.check_targets(metrics, np.array([0.5, 1.0]), "fit")
    M.check_targets(metrics[:1], np.array([0.5, 1.0]), "fit")  # mse takes any float targets
    M.check_targets(metrics, np.array([0.0, 2.0]), "fit")


def test_predicted_labels_and_probabilities(xp):
    scores = xp.asarray(SCORES)
    np.testing.assert_array_equal(to_numpy(M.predicted_labels(scores)), [0, 2, 1, 1, 2])
    np.testing.assert_array_equal(to_numpy(M.predicted_labels(xp.asarray([[0.2], [-0.1]]), threshold=0.0)), [1, 0])
    np.testing.assert_array_equal(to_numpy(M.predicted_labels(xp.asarray([3, 1]))), [3, 1])
    e = np.exp(SCORES - SCORES.max(axis=1, keepdims=True))
    np.testing.assert_allclose(to_numpy(M.probabilities(scores)), e / e.sum(axis=1, keepdims=True), rtol=1e-12)
    np.testing.assert_allclose(to_numpy(M.probabilities(xp.asarray([0.0, 2.0]))), [0.5, 1 / (1 + np.exp(-2.0))])
    with pytest.raises(ValueError, match="logits must be"):
        M.probabilities(xp.zeros((2, 2, 2)))


def test_the_trainer_imports_keep_working():
    import fastnn.train as T
    assert T.probabilities is M.probabilities
