"""Preprocessing fitted on the training data and applied unchanged to everything after it.

Every transformer learns its statistics in ``fit(X_train)`` and applies *those* statistics in
``transform(X)`` to any later data (validation, test, production), so nothing leaks from the
held-out sets into the model. ``fit_transform`` is ``fit`` then ``transform``; ``inverse_transform``
undoes ``transform``. The state is a plain dict of arrays (``state_dict`` / ``load_state_dict``)
and goes into checkpoints next to the model.

X is (N, ...) with the features along the trailing axes (``PCAWhitening``: exactly (N, F)).
Float32 and float64 inputs keep their dtype; integer and bool inputs (e.g. uint8 pixels) become
float32, the project's default. Statistics are computed and kept in float64 on the device of the
training data (NumPy or CuPy); ``to(device)`` moves them, as ``model.to`` does for weights.

======================= =============================================== =================================
transformer             transform                                       scikit-learn equivalent
======================= =============================================== =================================
``Standardizer``        (x - mean) / std, per feature                   ``StandardScaler``
``MeanCenter``          x - mean, per feature                           ``StandardScaler(with_std=False)``
``MinMaxScaler``        a + (x - min) (b - a) / (max - min)             ``MinMaxScaler``
``PCAWhitening``        (x - mean) U / sqrt(lambda + eps)               ``PCA(whiten=True)``
``SimpleImputer``       NaN -> the feature's mean or median             ``SimpleImputer``
======================= =============================================== =================================

X may also be a pandas DataFrame of numeric columns (a text or categorical column is a
ValueError that says to one-hot encode or drop it). ``get_config()`` returns a transformer's
constructor arguments; with ``TRANSFORMERS`` (name -> class) and the state dict, that is how
model files (``fastnn.save_model``) store fitted preprocessing.
"""

from __future__ import annotations

import numpy as np

from . import _backend as B
from .data import check_missing, features
from .metrics import check_labels

__all__ = ["Standardizer", "MeanCenter", "MinMaxScaler", "PCAWhitening", "SimpleImputer", "one_hot", "TRANSFORMERS"]


def _as_features(X, min_ndim: int = 2, who: str | None = None, allow_nan: bool = False):
    """X as a float array (N, ...): float32/float64 kept, integers and bools made float32
    (a DataFrame's columns: float64). ``who`` (a method's name): NaN (unless ``allow_nan``) and
    infinities are a ValueError naming the columns and rows, since statistics over them, or
    their transform, would silently turn whole columns into NaN."""
    a, names = features(X, "X")
    xp = B.array_module(a)
    kind = np.dtype(a.dtype).kind
    if kind in "biu":
        a = a.astype(xp.float32)
    elif np.dtype(a.dtype) not in B.FLOAT_DTYPES:
        raise TypeError(f"X: expected a float32, float64, integer or bool array, got dtype {np.dtype(a.dtype)}")
    if a.ndim < min_ndim:
        raise ValueError(f"X must be (N, features...) with at least {min_ndim} dimensions, got shape {tuple(a.shape)}")
    if who is not None:
        _refuse_nonfinite(a, names, who, allow_nan)
    return a


def _refuse_nonfinite(X, names, who: str, allow_nan: bool) -> None:
    """The ValueError of :func:`fastnn.data.check_missing` (columns and rows named) when X holds
    infinities, or NaN unless ``allow_nan``. Checked on X's device; the host copy is made only
    to name the culprits."""
    xp = B.array_module(X)
    if X.size == 0 or bool((~xp.isinf(X) if allow_nan else xp.isfinite(X)).all()):
        return
    flat = B.to_numpy(X).reshape(X.shape[0], -1)
    if allow_nan:
        flat = np.where(np.isnan(flat), 0.0, flat)
    check_missing(flat, names if names is not None and len(names) == flat.shape[1] else None, name=f"{who}: X")


class _Transformer:
    """Shared machinery: the fitted state (the float64 arrays named in ``_state``), the checks
    of ``transform`` and the state dict. Subclasses compute the state in ``_fit`` and apply it in
    ``_transform`` / ``_inverse``."""

    _state: tuple[str, ...] = ()
    _min_ndim = 2
    _allow_nan = False  # NaN in X is refused (SimpleImputer: it is what it fills)

    def __init__(self):
        self.fitted = False
        self.feature_shape: tuple | None = None

    # -- what subclasses provide ------------------------------------------------------------

    def _fit(self, X, xp) -> dict:
        raise NotImplementedError

    def _transform(self, X, xp):
        raise NotImplementedError

    def _inverse(self, Z, xp):
        raise NotImplementedError

    def _feature_shape(self, state: dict) -> tuple:
        """The feature shape (X.shape[1:]) that the state was fitted on; ValueError if the state's
        arrays do not fit together."""
        shape = tuple(state[self._state[0]].shape)
        for name in self._state[1:]:
            if tuple(state[name].shape) != shape:
                raise ValueError(f"{type(self).__name__} state: {name!r} has shape {tuple(state[name].shape)}, "
                                 f"expected {shape} like {self._state[0]!r}")
        return shape

    # -- the public interface ---------------------------------------------------------------

    def fit(self, X):
        """Learn the statistics of the training data X (N, ...). Returns self."""
        X = _as_features(X, self._min_ndim, f"{type(self).__name__}.fit", self._allow_nan)
        if X.shape[0] < 1:
            raise ValueError(f"{type(self).__name__}.fit needs at least one sample, got shape {tuple(X.shape)}")
        xp = B.array_module(X)
        self._set_state(self._fit(X.astype(xp.float64), xp))
        return self

    def transform(self, X):
        """Apply the training statistics to X (N, ...), which may be any later data. Returns an
        array shaped like X (``PCAWhitening``: (N, n_components)) in X's float dtype."""
        X = self._check(X, "transform")
        return self._transform(X, B.array_module(X)).astype(X.dtype, copy=False)

    def fit_transform(self, X):
        """``fit(X)`` then ``transform(X)``."""
        return self.fit(X).transform(X)

    def get_config(self) -> dict:
        """The constructor's arguments (JSON values): ``type(self)(**get_config())`` is this
        transformer unfitted."""
        return {}

    def inverse_transform(self, Z):
        """Undo ``transform``: map transformed data back to the original units."""
        Z = self._check(Z, "inverse_transform", transformed=True)
        return self._inverse(Z, B.array_module(Z)).astype(Z.dtype, copy=False)

    def state_dict(self) -> dict:
        """The fitted statistics: a dict of float64 arrays (on the fitted device), for checkpoints."""
        self._require_fitted("state_dict")
        return {name: getattr(self, name) for name in self._state}

    def load_state_dict(self, state: dict) -> None:
        """Restore statistics saved by ``state_dict`` (arrays may be NumPy or CuPy; they stay on
        their device). Checks the keys and shapes and names what does not match; on an error
        the transformer is left as it was."""
        missing = sorted(set(self._state) - set(state))
        unexpected = sorted(set(state) - set(self._state))
        if missing or unexpected:
            raise ValueError(f"{type(self).__name__}.load_state_dict: missing keys {missing}, "
                             f"unexpected keys {unexpected}")
        arrays = {}
        for name in self._state:
            try:
                value = B.as_array(state[name], name)
            except TypeError:  # nested lists, e.g. from a JSON file
                value = np.asarray(state[name])
            arrays[name] = B.array_module(value).asarray(value, dtype=np.float64)
        self._feature_shape(arrays)
        self._set_state(arrays)

    def to(self, device):
        """Move the fitted statistics to ``device`` (``"cpu"``, ``"cuda"`` or ``"cuda:N"``). Returns self."""
        target = B.parse_device(device)
        if target is None:
            raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
        self._require_fitted("to")
        self._set_state({name: B.to_device(getattr(self, name), target) for name in self._state})
        return self

    @property
    def device(self) -> str:
        """Where the fitted statistics live."""
        self._require_fitted("device")
        return str(B.device_of(getattr(self, self._state[0])))

    # -- internals ------------------------------------------------------------------------

    def _set_state(self, arrays: dict) -> None:
        self.feature_shape = self._feature_shape(arrays)
        for name, value in arrays.items():
            setattr(self, name, value)
        self.fitted = True

    def _output_shape(self) -> tuple:
        return self.feature_shape

    def _require_fitted(self, method: str) -> None:
        if not self.fitted:
            raise RuntimeError(f"{type(self).__name__}.{method}: not fitted yet; call fit(X_train) first")

    def _check(self, X, method: str, transformed: bool = False):
        """X validated against the fitted feature shape (of the output when ``transformed``)."""
        self._require_fitted(method)
        feature_shape = self._output_shape() if transformed else self.feature_shape
        # (inverse_transform takes a model's outputs as they are)
        X = _as_features(X, len(feature_shape) + 1, None if transformed else f"{type(self).__name__}.{method}",
                         self._allow_nan)
        if tuple(X.shape[1:]) != feature_shape:
            raise ValueError(f"{type(self).__name__}.{method}: fitted on features of shape {feature_shape}, "
                             f"got X of shape {tuple(X.shape)} (features {tuple(X.shape[1:])})")
        here, fitted = B.device_of(X), B.device_of(getattr(self, self._state[0]))
        if here != fitted:
            raise ValueError(f"{type(self).__name__}.{method}: X is on {here} but the statistics are on "
                             f"{fitted}; move one of them first (e.g. .to('{here}'))")
        return X

    def __repr__(self) -> str:
        status = f"features={self.feature_shape}" if self.fitted else "not fitted"
        return f"{type(self).__name__}({status})"


class Standardizer(_Transformer):
    """Per-feature standardization: z = (x - mean) / std, with the mean and the (population,
    ddof=0) standard deviation of the training data, so the training data gets mean 0 and
    std 1 in every feature. Features whose std is at most ``eps`` are only centred (scale 1)
    instead of dividing by ~0. inverse: x = z std + mean.

    State: ``mean``, ``scale`` (the std, or 1), each of the feature shape.
    (sklearn.preprocessing.StandardScaler)
    """

    _state = ("mean", "scale")

    def __init__(self, eps: float = 1e-8):
        super().__init__()
        self.eps = B.check_scalar(eps, "eps", low=0.0)

    def get_config(self) -> dict:
        return {"eps": self.eps}

    def _fit(self, X, xp):
        std = X.std(axis=0)
        return {"mean": X.mean(axis=0), "scale": xp.where(std > self.eps, std, 1.0)}

    def _transform(self, X, xp):
        return (X - self.mean) / self.scale

    def _inverse(self, Z, xp):
        return Z * self.scale + self.mean


class MeanCenter(_Transformer):
    """Per-feature centring: z = x - mean, with the training data's mean. inverse: x = z + mean.

    State: ``mean`` of the feature shape. (sklearn StandardScaler(with_std=False))
    """

    _state = ("mean",)

    def _fit(self, X, xp):
        return {"mean": X.mean(axis=0)}

    def _transform(self, X, xp):
        return X - self.mean

    def _inverse(self, Z, xp):
        return Z + self.mean


class MinMaxScaler(_Transformer):
    """Per-feature scaling onto ``feature_range=(a, b)``: z = a + (x - min) (b - a) / (max - min),
    with the training data's min and max, so the training data spans exactly [a, b]. Constant
    features map to a. Later data may fall outside [a, b] (no clipping). inverse undoes it.

    State: ``data_min``, ``data_max`` of the feature shape. (sklearn.preprocessing.MinMaxScaler)
    """

    _state = ("data_min", "data_max")

    def __init__(self, feature_range=(0.0, 1.0)):
        super().__init__()
        try:
            low, high = feature_range
        except (TypeError, ValueError):
            raise TypeError(f"feature_range must be a pair (low, high), got {feature_range!r}") from None
        low, high = B.check_scalar(low, "feature_range[0]"), B.check_scalar(high, "feature_range[1]")
        if not low < high:
            raise ValueError(f"feature_range must have low < high, got {feature_range!r}")
        self.feature_range = (low, high)

    def get_config(self) -> dict:
        return {"feature_range": list(self.feature_range)}

    def _fit(self, X, xp):
        return {"data_min": X.min(axis=0), "data_max": X.max(axis=0)}

    def _span(self, xp):
        span = self.data_max - self.data_min
        return xp.where(span > 0, span, 1.0)

    def _transform(self, X, xp):
        low, high = self.feature_range
        return low + (X - self.data_min) * ((high - low) / self._span(xp))

    def _inverse(self, Z, xp):
        low, high = self.feature_range
        return (Z - low) * (self._span(xp) / (high - low)) + self.data_min


class PCAWhitening(_Transformer):
    """PCA whitening: rotate onto the principal axes of the training data and scale each axis
    to unit variance.

    With the training mean m and covariance C = (X - m)^T (X - m) / N = U diag(lambda) U^T
    (eigenvalues in decreasing order), z = (x - m) U_k / sqrt(lambda_k + eps) keeps the first
    ``n_components`` axes (all F when None). On the training data cov(z) = diag(lambda / (lambda
    + eps)), the identity up to ``eps``, which keeps near-zero-variance directions from being
    blown up. inverse: x = z sqrt(lambda_k + eps) U_k^T + m (exact when k = F; the projection
    onto the kept axes otherwise). Each axis's sign is fixed so that its largest-magnitude
    entry is positive, so results are reproducible.

    X: (N, F). State: ``mean`` (F,), ``components`` U_k (F, k), ``explained_variance``
    lambda_k (k,). (sklearn PCA(whiten=True); cs231n's "PCA and whitening")
    """

    _state = ("mean", "components", "explained_variance")

    def __init__(self, n_components: int | None = None, eps: float = 1e-5):
        super().__init__()
        if n_components is not None and (isinstance(n_components, bool) or
                                         not isinstance(n_components, (int, np.integer)) or n_components < 1):
            raise ValueError(f"n_components must be a positive int or None, got {n_components!r}")
        self.n_components = None if n_components is None else int(n_components)
        self.eps = B.check_scalar(eps, "eps", low=0.0)

    def get_config(self) -> dict:
        return {"n_components": self.n_components, "eps": self.eps}

    def _fit(self, X, xp):
        # The mean and the principal axes of the training data X, which must be (N, F).
        if X.ndim != 2:
            raise ValueError(f"PCAWhitening needs X of shape (N, F), got {tuple(X.shape)}; flatten the features first")
        if self.n_components is not None and self.n_components > X.shape[1]:
            raise ValueError(f"PCAWhitening: n_components={self.n_components} > {X.shape[1]} features")
        mean = X.mean(axis=0)
        centred = X - mean
        eigenvalues, eigenvectors = xp.linalg.eigh(centred.T @ centred / X.shape[0])
        k = self.n_components or X.shape[1]
        order = xp.argsort(eigenvalues)[::-1][:k]
        components = eigenvectors[:, order]
        largest = xp.argmax(xp.abs(components), axis=0)
        components = components * xp.sign(components[largest, xp.arange(k)])
        return {"mean": mean, "components": components,
                "explained_variance": xp.maximum(eigenvalues[order], 0.0)}

    def _feature_shape(self, state):
        (features,), (rows, k), (count,) = (state[name].shape for name in self._state)
        if rows != features or count != k:
            raise ValueError(f"PCAWhitening state: mean {tuple(state['mean'].shape)}, components "
                             f"{tuple(state['components'].shape)} and explained_variance "
                             f"{tuple(state['explained_variance'].shape)} do not fit together "
                             "(expected (F,), (F, k), (k,))")
        return (features,)

    def _output_shape(self):
        return (self.components.shape[1],)

    def _transform(self, X, xp):
        return (X - self.mean) @ self.components / xp.sqrt(self.explained_variance + self.eps)

    def _inverse(self, Z, xp):
        return (Z * xp.sqrt(self.explained_variance + self.eps)) @ self.components.T + self.mean


class SimpleImputer(_Transformer):
    """Missing values filled from the training data: every NaN of feature j becomes
    ``statistics[j]``, the mean (``strategy="mean"``) or the median (``"median"``) of the
    values present in feature j of the training data. A feature with no value at all in the
    training data is a ``ValueError`` at ``fit`` (there is nothing to fill it with). Other
    values pass through unchanged; ``inverse_transform`` is the identity (which values were
    filled is not kept). Put it first in a chain: the transformers after it need numbers.

    State: ``statistics`` of the feature shape. (sklearn.impute.SimpleImputer)
    """

    _state = ("statistics",)
    _allow_nan = True
    STRATEGIES = ("mean", "median")

    def __init__(self, strategy: str = "mean"):
        super().__init__()
        if strategy not in self.STRATEGIES:
            raise ValueError(f"SimpleImputer: strategy must be one of {self.STRATEGIES}, got {strategy!r}")
        self.strategy = strategy

    def get_config(self) -> dict:
        return {"strategy": self.strategy}

    def _fit(self, X, xp):
        empty = xp.isnan(X).all(axis=0)
        if bool(empty.any()):
            index = tuple(int(i) for i in np.argwhere(B.to_numpy(empty))[0])
            raise ValueError(f"SimpleImputer: feature {index[0] if len(index) == 1 else index} has no value in the "
                             "training data (all NaN), so there is nothing to fill it with; drop it")
        return {"statistics": xp.nanmean(X, axis=0) if self.strategy == "mean" else xp.nanmedian(X, axis=0)}

    def _transform(self, X, xp):
        return xp.where(xp.isnan(X), self.statistics, X)

    def _inverse(self, Z, xp):
        return Z


TRANSFORMERS = {cls.__name__: cls for cls in (Standardizer, MeanCenter, MinMaxScaler, PCAWhitening, SimpleImputer)}
"""The transformers by class name (what model files store with each one's config and state)."""


def one_hot(y, num_classes: int | None = None, dtype=np.float32):
    """One-hot encoding: out[i, y[i]] = 1, zeros elsewhere.

    y: (N,) integer class labels in [0, num_classes); ``num_classes`` defaults to max(y) + 1.
    Returns (N, num_classes) of ``dtype`` on y's device. (torch.nn.functional.one_hot, as float)
    """
    y, num_classes = check_labels(y, "y", num_classes)
    xp = B.array_module(y)
    out = xp.zeros((y.shape[0], num_classes), dtype=dtype)
    out[xp.arange(y.shape[0]), y] = 1
    return out
