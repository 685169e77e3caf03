"""fastnn.preprocessing: statistics on the training data, test data transformed with the
training statistics (no leakage), PCA whitening, inverses, one_hot, state dicts, errors."""

import numpy as np
import pytest

from fastnn import preprocessing as P
from fastnn._backend import to_numpy
from util import assert_close

DTYPES = [np.float32, np.float64]


def skewed(rng, n, features=5, dtype=np.float64):
    """Features on very different scales and offsets, correlated with each other."""
    mixing = rng.standard_normal((features, features))
    X = rng.standard_normal((n, features)) @ mixing * np.logspace(-2, 2, features) + np.arange(features) * 10
    return X.astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_standardizer_training_statistics_and_no_leakage(xp, rng, dtype):
    train, test = skewed(rng, 500, dtype=dtype), skewed(rng, 80, dtype=dtype) * 3 + 1
    scaler = P.Standardizer()
    Z = scaler.fit_transform(xp.asarray(train))
    assert Z.dtype == dtype and Z.shape == train.shape
    tol = 1e-4 if dtype == np.float32 else 1e-10
    assert_close(Z.mean(axis=0), np.zeros(5), atol=tol)
    assert_close(Z.std(axis=0), np.ones(5), atol=tol, rtol=tol)
    # the test set is scaled with the TRAINING mean and std, computed here independently
    mean, std = train.astype(np.float64).mean(axis=0), train.astype(np.float64).std(axis=0)
    Zt = scaler.transform(xp.asarray(test))
    assert_close(Zt, ((test - mean) / std).astype(dtype), rtol=tol, atol=tol)
    assert np.abs(to_numpy(Zt).mean(axis=0)).max() > 0.1  # its own statistics were not used
    assert_close(scaler.inverse_transform(Zt), test, rtol=tol, atol=tol * 100)


def test_standardizer_constant_feature_is_only_centred(xp, rng):
    X = rng.standard_normal((50, 3))
    X[:, 1] = 4.0
    Z = to_numpy(P.Standardizer().fit_transform(xp.asarray(X)))
    assert np.all(np.isfinite(Z)) and np.all(Z[:, 1] == 0.0)
    np.testing.assert_allclose(Z[:, [0, 2]].std(axis=0), 1.0)


def test_standardizer_works_per_feature_on_image_shaped_data(xp, rng):
    X = rng.uniform(0, 255, (40, 2, 3, 3))
    scaler = P.Standardizer().fit(xp.asarray(X))
    assert scaler.feature_shape == (2, 3, 3)
    Z = to_numpy(scaler.transform(xp.asarray(X)))
    np.testing.assert_allclose(Z.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(Z.std(axis=0), 1.0)


def test_mean_center_and_inverse(xp, rng):
    train, test = skewed(rng, 100), skewed(rng, 10)
    center = P.MeanCenter().fit(xp.asarray(train))
    Z = center.transform(xp.asarray(test))
    assert_close(Z, test - train.mean(axis=0))
    assert_close(center.inverse_transform(Z), test)


@pytest.mark.parametrize("feature_range", [(0.0, 1.0), (-1.0, 1.0), (2.0, 5.0)])
def test_min_max_scaler(xp, rng, feature_range):
    train, test = skewed(rng, 200), skewed(rng, 20)
    low, high = feature_range
    scaler = P.MinMaxScaler(feature_range)
    Z = to_numpy(scaler.fit_transform(xp.asarray(train)))
    np.testing.assert_allclose(Z.min(axis=0), low, atol=1e-12)
    np.testing.assert_allclose(Z.max(axis=0), high, atol=1e-12)
    lo, hi = train.min(axis=0), train.max(axis=0)
    Zt = scaler.transform(xp.asarray(test))
    assert_close(Zt, low + (test - lo) / (hi - lo) * (high - low), rtol=1e-12, atol=1e-12)
    assert_close(scaler.inverse_transform(Zt), test, rtol=1e-12, atol=1e-10)


def test_min_max_scaler_converts_integer_pixels_to_float32(xp):
    X = np.array([[0, 255, 7], [128, 0, 7]], dtype=np.uint8)
    Z = P.MinMaxScaler().fit_transform(xp.asarray(X))
    assert Z.dtype == np.float32
    assert_close(Z, np.array([[0, 1, 0], [1, 0, 0]], np.float32))


@pytest.mark.parametrize("dtype", DTYPES)
def test_pca_whitening_identity_covariance_and_round_trip(xp, rng, dtype):
    train = skewed(rng, 2000, features=6, dtype=dtype)
    train = (train / np.logspace(-1, 1, 6)).astype(dtype)  # smallest variance ~1e-2 >> eps
    whitening = P.PCAWhitening()
    Z = to_numpy(whitening.fit_transform(xp.asarray(train))).astype(np.float64)
    assert Z.shape == (2000, 6)
    covariance = Z.T @ Z / len(Z)
    np.testing.assert_allclose(covariance, np.eye(6), atol=2e-3)
    # principal axes, sorted by decreasing variance, from an independent eigendecomposition;
    # exactly, the covariance is diag(lambda / (lambda + eps))
    centred = train.astype(np.float64) - train.astype(np.float64).mean(axis=0)
    eigenvalues = np.linalg.eigvalsh(centred.T @ centred / len(train))[::-1]
    tol = 1e-4 if dtype == np.float32 else 1e-10
    assert_close(whitening.explained_variance, eigenvalues, rtol=tol)
    np.testing.assert_allclose(covariance, np.diag(eigenvalues / (eigenvalues + 1e-5)), atol=tol)
    np.testing.assert_allclose(Z.mean(axis=0), 0.0, atol=tol)
    U = to_numpy(whitening.components)
    np.testing.assert_allclose(U.T @ U, np.eye(6), atol=1e-10)
    back = whitening.inverse_transform(whitening.transform(xp.asarray(train)))
    assert back.dtype == dtype
    assert_close(back, train, rtol=1e-4 if dtype == np.float32 else 1e-9,
                 atol=1e-3 if dtype == np.float32 else 1e-9)


def test_pca_whitening_n_components_keeps_top_variance(xp, rng):
    # 3 strong directions and 5 weak ones
    basis = np.linalg.qr(rng.standard_normal((8, 8)))[0]
    X = (rng.standard_normal((1000, 8)) * np.array([10, 8, 6, .1, .1, .1, .1, .1])) @ basis.T
    whitening = P.PCAWhitening(n_components=3).fit(xp.asarray(X))
    Z = to_numpy(whitening.transform(xp.asarray(X)))
    assert Z.shape == (1000, 3)
    np.testing.assert_allclose(Z.T @ Z / len(Z), np.eye(3), atol=1e-6)
    # the kept axes span the strong directions
    U = to_numpy(whitening.components)
    projection = basis[:, :3].T @ U
    np.testing.assert_allclose(np.abs(np.linalg.det(projection)), 1.0, atol=1e-3)
    # the inverse is the projection onto those axes: close to X, since the rest is tiny
    residual = to_numpy(whitening.inverse_transform(xp.asarray(Z))) - X
    assert np.abs(residual).max() < 1.0 < np.abs(X).max()


def test_pca_whitening_eps_regularizes_small_directions(rng):
    X = rng.standard_normal((500, 2)) * np.array([1.0, 1e-3])
    Z = P.PCAWhitening(eps=1e-2).fit_transform(X)
    centred = X - X.mean(axis=0)
    lam = np.linalg.eigvalsh(centred.T @ centred / len(X))[::-1]
    # cov(z) = lambda / (lambda + eps): ~1 for the strong axis, ~1e-4 (not an amplified 1) for the weak one
    np.testing.assert_allclose((Z ** 2).mean(axis=0), lam / (lam + 1e-2), rtol=1e-9)
    assert (Z ** 2).mean(axis=0)[1] < 1e-3


def test_pca_whitening_is_reproducible_in_sign(rng):
    X = skewed(rng, 300, features=4)
    a = P.PCAWhitening().fit(X).components
    b = P.PCAWhitening().fit(X[::-1].copy()).components
    np.testing.assert_allclose(a, b, atol=1e-8)
    assert np.all(np.abs(a).argmax(axis=0) == np.argmax(a, axis=0))  # largest entry positive


def test_one_hot(xp):
    got = P.one_hot(xp.asarray([2, 0, 1, 2]), 4)
    assert got.dtype == np.float32 and got.shape == (4, 4)
    assert_close(got, np.array([[0, 0, 1, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]], np.float32))
    assert P.one_hot(xp.asarray([0, 3]), dtype=np.float64).shape == (2, 4)
    with pytest.raises(ValueError, match="label 5 is out of range for 4 classes"):
        P.one_hot(xp.asarray([0, 5]), 4)
    with pytest.raises(ValueError, match="label -1"):
        P.one_hot(xp.asarray([0, -1]))
    with pytest.raises(TypeError, match="integer dtype"):
        P.one_hot(xp.asarray([0.0, 1.0]))
    with pytest.raises(ValueError, match="1-d"):
        P.one_hot(xp.asarray([[0, 1]]))


ALL = [P.Standardizer, P.MeanCenter, P.MinMaxScaler, P.PCAWhitening]


@pytest.mark.parametrize("cls", ALL)
def test_transform_before_fit_and_wrong_feature_count_are_clear_errors(cls):
    transformer = cls()
    with pytest.raises(RuntimeError, match=f"{cls.__name__}.transform: not fitted"):
        transformer.transform(np.zeros((3, 4)))
    with pytest.raises(RuntimeError, match="not fitted"):
        transformer.state_dict()
    transformer.fit(np.random.default_rng(0).standard_normal((20, 4)))
    with pytest.raises(ValueError, match=rf"{cls.__name__}.transform: fitted on features of shape \(4,\), "
                                         r"got X of shape \(3, 5\)"):
        transformer.transform(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        transformer.transform(np.zeros(4))
    with pytest.raises(TypeError, match="dtype"):
        transformer.transform(np.zeros((3, 4), dtype=np.complex64))


@pytest.mark.parametrize("cls", ALL + [P.SimpleImputer])
def test_nan_and_infinity_are_refused_naming_columns_and_rows(rng, cls):
    """Statistics over NaN or inf (or their transform) would silently make whole columns NaN:
    fit and transform refuse them, naming the columns (by name from a DataFrame) and rows.
    SimpleImputer takes NaN (it fills them) but not infinities; inverse_transform takes a
    model's outputs as they are."""
    X = rng.standard_normal((20, 4))
    bad_nan, bad_inf = X.copy(), X.copy()
    bad_nan[[3, 7], 1] = np.nan
    bad_inf[5, 2] = -np.inf
    cases = [(bad_inf, r"infinite values in column 2 \(rows 5; 1 in all\): fix or drop those rows")]
    if cls is not P.SimpleImputer:
        cases.append((bad_nan, r"missing values \(NaN\) in column 1 \(rows 3, 7; 2 in all\).*SimpleImputer"))
    for bad, message in cases:
        with pytest.raises(ValueError, match=rf"{cls.__name__}\.fit: X has {message}"):
            cls().fit(bad)
        fitted = cls().fit(X)
        with pytest.raises(ValueError, match=rf"{cls.__name__}\.transform: X has {message}"):
            fitted.transform(bad)
    if cls is P.SimpleImputer:
        filled = cls().fit(bad_nan).transform(bad_nan)
        assert np.isfinite(filled).all()
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(bad_inf, columns=["a", "b", "c", "d"])
    with pytest.raises(ValueError, match=r"infinite values in column 'c' \(rows 5"):
        cls().fit(frame)
    fitted = cls().fit(X)
    outputs = fitted.transform(X)
    outputs[0, 0] = np.nan
    assert np.isnan(fitted.inverse_transform(outputs)).any()


@pytest.mark.parametrize("cls", ALL)
def test_state_dict_round_trip(rng, cls):
    train, test = skewed(rng, 100, features=4), skewed(rng, 10, features=4)
    fitted = cls().fit(train)
    state = fitted.state_dict()
    assert all(isinstance(v, np.ndarray) for v in state.values())
    restored = cls()
    restored.load_state_dict({k: v.copy() for k, v in state.items()})
    np.testing.assert_array_equal(restored.transform(test), fitted.transform(test))
    np.testing.assert_array_equal(restored.inverse_transform(restored.transform(test)),
                                  fitted.inverse_transform(fitted.transform(test)))


def test_load_state_dict_names_what_is_wrong_and_changes_nothing(rng):
    scaler = P.Standardizer().fit(rng.standard_normal((10, 3)))
    before = {k: v.copy() for k, v in scaler.state_dict().items()}
    with pytest.raises(ValueError, match=r"missing keys \['scale'\], unexpected keys \['std'\]"):
        scaler.load_state_dict({"mean": np.zeros(3), "std": np.ones(3)})
    with pytest.raises(ValueError, match=r"'scale' has shape \(4,\), expected \(3,\)"):
        scaler.load_state_dict({"mean": np.zeros(3), "scale": np.ones(4)})
    with pytest.raises(ValueError, match="do not fit together"):
        P.PCAWhitening().load_state_dict({"mean": np.zeros(3), "components": np.eye(4),
                                          "explained_variance": np.ones(4)})
    for key, value in scaler.state_dict().items():
        np.testing.assert_array_equal(value, before[key])


def test_bad_hyperparameters():
    with pytest.raises(ValueError, match="low < high"):
        P.MinMaxScaler((1, 0))
    with pytest.raises(TypeError, match="pair"):
        P.MinMaxScaler(1)
    with pytest.raises(ValueError, match="n_components"):
        P.PCAWhitening(n_components=0)
    with pytest.raises(ValueError, match="n_components=5 > 3 features"):
        P.PCAWhitening(n_components=5).fit(np.zeros((10, 3)))
    with pytest.raises(ValueError, match=r"\(N, F\)"):
        P.PCAWhitening().fit(np.zeros((10, 3, 2)))
    with pytest.raises(ValueError, match="eps"):
        P.Standardizer(eps=-1)


@pytest.mark.gpu
def test_statistics_stay_on_their_device(rng):
    import cupy

    X = rng.standard_normal((30, 4))
    scaler = P.Standardizer().fit(cupy.asarray(X))
    assert scaler.device == "cuda:0" and isinstance(scaler.mean, cupy.ndarray)
    with pytest.raises(ValueError, match="cuda:0"):
        scaler.transform(X)
    np.testing.assert_allclose(scaler.to("cpu").transform(X), (X - X.mean(0)) / X.std(0))
    assert scaler.device == "cpu"
    assert isinstance(scaler.to("cuda").transform(cupy.asarray(X)), cupy.ndarray)
