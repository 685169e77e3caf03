"""fastnn.data: train/test splits (sizes, disjointness, stratification, reproducibility) and the
mini-batch iterator (coverage, drop_last, reshuffling, seeding)."""

import numpy as np
import pytest

from fastnn import data
from fastnn._backend import to_numpy


def labelled(xp, n=100, classes=(0, 1, 2), weights=(0.6, 0.3, 0.1)):
    """X whose first column is the sample's index (to recover which samples went where)."""
    counts = np.round(np.asarray(weights) * n).astype(int)
    y = np.repeat(np.asarray(classes), counts)
    X = np.stack([np.arange(len(y)), np.arange(len(y)) * 2.0], axis=1)
    return xp.asarray(X), xp.asarray(y)


def ids(X):
    return to_numpy(X)[:, 0].astype(int)


@pytest.mark.parametrize("test_size,expected", [(0.25, 25), (0.1, 10), (0.333, 34), (7, 7)])
def test_split_sizes_disjoint_and_complete(xp, test_size, expected):
    X, y = labelled(xp)
    X_train, X_test, y_train, y_test = data.train_test_split(X, y, test_size=test_size, seed=0)
    assert len(X_test) == len(y_test) == expected
    assert len(X_train) == len(y_train) == 100 - expected
    train, test = ids(X_train), ids(X_test)
    assert not set(train) & set(test)
    assert sorted(np.concatenate([train, test])) == list(range(100))
    # rows stay paired with their labels
    np.testing.assert_array_equal(to_numpy(y)[test], to_numpy(y_test))
    np.testing.assert_array_equal(to_numpy(X)[train], to_numpy(X_train))


def test_split_reproducible_and_seed_dependent(xp):
    X, y = labelled(xp)
    first = data.train_test_split(X, y, seed=3)
    again = data.train_test_split(X, y, seed=3)
    other = data.train_test_split(X, y, seed=4)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    assert set(ids(first[1])) != set(ids(other[1]))
    from_generator = data.train_test_split(X, y, seed=np.random.default_rng(3))
    np.testing.assert_array_equal(ids(first[1]), ids(from_generator[1]))


def test_split_without_shuffle_holds_out_the_tail(xp):
    X, y = labelled(xp)
    X_train, X_test = data.train_test_split(X, test_size=0.2, shuffle=False)
    assert list(ids(X_train)) == list(range(80)) and list(ids(X_test)) == list(range(80, 100))


@pytest.mark.parametrize("seed", range(5))
def test_stratified_split_keeps_class_proportions(xp, seed):
    X, y = labelled(xp, n=200, classes=(0, 1, 2, 3), weights=(0.5, 0.3, 0.15, 0.05))
    X_train, X_test, y_train, y_test = data.train_test_split(X, y, test_size=0.3, seed=seed, stratify=True)
    assert len(y_test) == 60
    total = np.bincount(to_numpy(y))
    test_counts = np.bincount(to_numpy(y_test), minlength=4)
    train_counts = np.bincount(to_numpy(y_train), minlength=4)
    np.testing.assert_array_equal(test_counts + train_counts, total)
    # each class within one sample of its exact share
    assert np.all(np.abs(test_counts - total * 0.3) <= 1), test_counts
    assert not set(ids(X_train)) & set(ids(X_test))


def test_stratified_split_keeps_rare_classes_in_both_parts(xp):
    # 2 samples of class 2 among 50: a plain 10% share would round to 0 test samples
    y = np.array([0] * 30 + [1] * 18 + [2] * 2)
    X = np.arange(50.0)[:, None]
    _, _, y_train, y_test = data.train_test_split(xp.asarray(X), xp.asarray(y), test_size=0.1, seed=1,
                                                  stratify=True)
    assert set(to_numpy(y_test)) == {0, 1, 2} and set(to_numpy(y_train)) == {0, 1, 2}
    assert len(y_test) == 5


def test_stratified_differs_from_plain_shuffle_only_in_balance():
    # a plain random split of a 90/10 data set misses the rare class in the test part for some
    # seeds; the stratified one never does
    y = np.array([0] * 90 + [1] * 10)
    X = np.arange(100.0)[:, None]
    plain_misses = sum(1 not in data.train_test_split(X, y, test_size=5, seed=s)[3] for s in range(40))
    assert plain_misses > 0
    for s in range(40):
        assert 1 in data.train_test_split(X, y, test_size=5, seed=s, stratify=True)[3]


@pytest.mark.parametrize("kwargs,message", [
    ({"test_size": 0.0}, "fraction"), ({"test_size": 1.0}, "fraction"), ({"test_size": 10}, "leaves no"),
    ({"test_size": 0}, "leaves no"), ({"test_size": True}, "bool"),
])
def test_split_rejects_bad_sizes(kwargs, message):
    X, y = np.zeros((10, 2)), np.zeros(10, int)
    with pytest.raises((ValueError, TypeError), match=message):
        data.train_test_split(X, y, **kwargs)


def test_split_rejects_mismatched_lengths_and_bad_stratify():
    with pytest.raises(ValueError, match="X: 10, y: 9"):
        data.train_test_split(np.zeros((10, 2)), np.zeros(9))
    with pytest.raises(ValueError, match="needs the labels"):
        data.train_test_split(np.zeros((10, 2)), stratify=True)
    with pytest.raises(ValueError, match="shuffle=True"):
        data.train_test_split(np.zeros((10, 2)), np.zeros(10, int), stratify=True, shuffle=False)
    with pytest.raises(TypeError, match="seed"):
        data.train_test_split(np.zeros((10, 2)), seed="zero")


@pytest.mark.parametrize("n,batch_size,drop_last", [(100, 32, False), (100, 32, True), (96, 32, True), (5, 8, False)])
def test_batches_cover_each_sample_once_per_epoch(xp, n, batch_size, drop_last):
    X = xp.asarray(np.arange(n, dtype=np.float64)[:, None] * np.ones(3))
    y = xp.asarray(np.arange(n))
    loader = data.batches(X, y, batch_size=batch_size, seed=0, drop_last=drop_last)
    expected_batches = n // batch_size if drop_last else -(-n // batch_size)
    assert len(loader) == expected_batches
    for _ in range(3):
        seen = []
        count = 0
        for Xb, yb in loader:
            count += 1
            assert Xb.shape[1:] == (3,) and len(Xb) == len(yb) <= batch_size
            if drop_last:
                assert len(Xb) == batch_size
            np.testing.assert_array_equal(to_numpy(Xb)[:, 0], to_numpy(yb))  # still paired
            seen.extend(to_numpy(yb).tolist())
        assert count == expected_batches
        assert len(seen) == len(set(seen)) == (expected_batches * batch_size if drop_last else n)
        if not drop_last:
            assert sorted(seen) == list(range(n))


def test_batches_reshuffle_each_epoch_reproducibly():
    X = np.arange(50.0)[:, None]
    loader = data.batches(X, batch_size=10, seed=7)
    epochs = [np.concatenate(list(loader))[:, 0] for _ in range(3)]
    assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])
    again = data.batches(X, batch_size=10, seed=7)
    for epoch in epochs:
        np.testing.assert_array_equal(np.concatenate(list(again))[:, 0], epoch)
    other = np.concatenate(list(data.batches(X, batch_size=10, seed=8)))[:, 0]
    assert not np.array_equal(other, epochs[0])


def test_batches_in_order_without_shuffle():
    X = np.arange(10.0)[:, None]
    got = [b[:, 0].tolist() for b in data.batches(X, batch_size=4, shuffle=False)]
    assert got == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    got = [b[:, 0].tolist() for b in data.batches(X, batch_size=4, shuffle=False, drop_last=True)]
    assert got == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_batches_reject_bad_arguments():
    with pytest.raises(ValueError, match="batch_size"):
        data.batches(np.zeros((4, 2)), batch_size=0)
    with pytest.raises(ValueError, match="no batch"):
        data.batches(np.zeros((4, 2)), batch_size=5, drop_last=True)
    with pytest.raises(ValueError, match="same number of samples"):
        data.batches(np.zeros((4, 2)), np.zeros(3))
    with pytest.raises(ValueError, match="empty"):
        data.batches(np.zeros((0, 2)))
    for call in (lambda: data.batches(None, np.zeros(3)), lambda: data.train_test_split(None, np.zeros(3))):
        with pytest.raises(TypeError, match="X must be an array, got None"):
            call()
