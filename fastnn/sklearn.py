"""scikit-learn estimators: ``MLPClassifier`` and ``MLPRegressor``, fastnn's networks behind
scikit-learn's interface, so they work in ``Pipeline``, ``GridSearchCV`` and
``cross_val_score``::

    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.model_selection import cross_val_score
    from fastnn.sklearn import MLPClassifier

    clf = make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(64,), epochs=30, random_state=0))
    cross_val_score(clf, X, y, cv=5)

Every hyperparameter is a constructor argument (``get_params`` / ``set_params``); nothing is
checked before ``fit``, as scikit-learn requires. ``fit`` builds a ``fastnn.nn.Sequential``
(``model_``) of Dense layers (each optionally followed by BatchNorm) with the activation and
dropout asked for, and trains it with ``fastnn.train.Trainer``. The network computes in X's
float dtype (float32 or float64; other dtypes in float64) unless ``dtype`` says otherwise.

- ``MLPClassifier``: softmax cross-entropy over the classes found in y (any labels, strings
  too: ``classes_``); ``predict`` returns labels from ``classes_``, ``predict_proba`` (N, C)
  probabilities in the order of ``classes_``, ``score`` the accuracy.
- ``MLPRegressor``: mean squared error on targets standardized with the training targets'
  mean and standard deviation (mapped back by ``predict``, so any scale of target trains
  alike); y (N,) or (N, targets); ``score`` is R^2.

``random_state`` (an int, a ``numpy.random.RandomState`` / ``Generator``, or None:
``fastnn.seed``'s sequence) seeds the initial weights, dropout, shuffling and the early-stopping
split: the same value gives the same model. scikit-learn is an optional dependency
(``pip install "fastnn[sklearn]"``), imported when this module is.
(sklearn.neural_network.MLPClassifier / MLPRegressor, with fastnn's layers and optimizers)
"""

from __future__ import annotations

import numpy as np

try:
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
    from sklearn.utils.multiclass import check_classification_targets, type_of_target
    from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data
except ImportError as exc:  # scikit-learn missing, or older than 1.6 (validate_data)
    raise ImportError(f"fastnn.sklearn needs scikit-learn >= 1.6: pip install \"fastnn[sklearn]\" ({exc})") from None

from . import _backend as B
from . import data as D
from . import nn
from . import optim
from . import seeding
from .callbacks import EarlyStopping
from .prediction import predict_outputs
from .train import Trainer

__all__ = ["MLPClassifier", "MLPRegressor"]

OPTIMIZERS = {"adam": optim.Adam, "adamw": optim.AdamW, "sgd": optim.SGD, "rmsprop": optim.RMSprop,
              "adagrad": optim.Adagrad, "rprop": optim.Rprop}
ACTIVATIONS = ("relu", "leaky_relu", "tanh", "sigmoid", "gelu", "identity")


def _generator(random_state) -> np.random.Generator:
    """One generator for everything random in a fit, from scikit-learn's ``random_state``."""
    if random_state is None:
        return seeding.generator()
    if isinstance(random_state, np.random.RandomState):
        return np.random.default_rng(random_state.randint(2**31 - 1))
    if isinstance(random_state, np.random.Generator):
        return random_state
    if isinstance(random_state, (bool, np.bool_)) or not isinstance(random_state, (int, np.integer)):
        raise ValueError(f"random_state must be None, an int, a numpy RandomState or Generator, got {random_state!r}")
    return np.random.default_rng(int(random_state))


class _MLP(BaseEstimator):
    """What the classifier and the regressor share: the hyperparameters, the network, the
    training."""

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, dropout=0.0, batch_norm=False,
                 optimizer="adam", learning_rate=1e-3, momentum=0.9, weight_decay=0.0, l1=0.0, l2=0.0, epochs=100,
                 batch_size=32, shuffle=True, early_stopping=False, validation_fraction=0.1, patience=10,
                 random_state=None, dtype=None, device="cpu", verbose=0):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.dropout = dropout
        self.batch_norm = batch_norm
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.l1 = l1
        self.l2 = l2
        self.epochs = epochs
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.random_state = random_state
        self.dtype = dtype
        self.device = device
        self.verbose = verbose

    # -- building -------------------------------------------------------------------------

    def _check_hyperparameters(self) -> tuple[int, ...]:
        sizes = (self.hidden_layer_sizes,) if isinstance(self.hidden_layer_sizes, (int, np.integer)) else \
            tuple(self.hidden_layer_sizes)
        if any(isinstance(s, (bool, np.bool_)) or not isinstance(s, (int, np.integer)) or s < 1 for s in sizes):
            raise ValueError(f"hidden_layer_sizes must be positive ints, got {self.hidden_layer_sizes!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}, got {self.optimizer!r}")
        B.check_scalar(self.dropout, "dropout", low=0.0, high=1.0, high_open=True)
        B.check_scalar(self.learning_rate, "learning_rate", low=0.0, low_open=True)
        B.check_scalar(self.validation_fraction, "validation_fraction", low=0.0, high=1.0, low_open=True,
                       high_open=True)
        for name in ("epochs", "batch_size", "patience"):
            value = getattr(self, name)
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.dtype is not None and np.dtype(self.dtype) not in B.FLOAT_DTYPES:
            raise ValueError(f"dtype must be None, float32 or float64, got {self.dtype!r}")
        if self.device not in ("cpu", "cuda") and not str(self.device).startswith("cuda:"):
            raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        return tuple(int(s) for s in sizes)

    def _build(self, features: int, outputs: int, dtype, rng) -> nn.Sequential:
        layers, width = [], features
        for size in self._check_hyperparameters():
            if self.batch_norm:
                layers += [nn.Dense(width, size, dtype=dtype, rng=rng), nn.BatchNorm(size, dtype=dtype)]
                if self.activation != "identity":
                    layers.append(_activation_layer(self.activation))
            else:
                layers.append(nn.Dense(width, size, None if self.activation == "identity" else self.activation,
                                       dtype=dtype, rng=rng))
            if self.dropout:
                layers.append(nn.Dropout(self.dropout, rng=rng))
            width = size
        layers.append(nn.Dense(width, outputs, init="xavier", dtype=dtype, rng=rng))
        return nn.Sequential(*layers)

    def _optimizer(self, model):
        kwargs = {"lr": self.learning_rate}
        if self.optimizer != "rprop":
            kwargs["weight_decay"] = self.weight_decay
        if self.optimizer == "sgd":
            kwargs["momentum"] = self.momentum
        return OPTIMIZERS[self.optimizer](model.parameters(), **kwargs)

    def _train(self, X, targets, loss, outputs: int, metrics, stratify: bool):
        """Build ``model_`` and train it on (X, targets) with ``loss``."""
        self._check_hyperparameters()
        rng = _generator(self.random_state)
        dtype = np.dtype(self.dtype) if self.dtype is not None else \
            (X.dtype if X.dtype in B.FLOAT_DTYPES else np.dtype(np.float64))
        model = self._build(X.shape[1], outputs, dtype, rng)
        if self.device != "cpu":
            model.to(self.device)
        X = X.astype(dtype, copy=False)
        validation, callbacks = None, []
        if self.early_stopping:
            if len(X) < 4:
                raise ValueError(f"early_stopping needs at least 4 samples to hold some out, got {len(X)} "
                                 f"sample{'' if len(X) == 1 else 's'}")
            X, X_val, targets, y_val = D.train_test_split(X, targets, test_size=self.validation_fraction, seed=rng,
                                                          stratify=stratify and _every_class_twice(targets))
            validation = (X_val, y_val)
            callbacks.append(EarlyStopping("val_loss", patience=self.patience))
        batch_size = min(self.batch_size, len(X))
        if self.batch_norm and len(X) < 2:
            raise ValueError("batch_norm=True needs at least 2 samples (batch statistics of 1 sample are undefined)")
        trainer = Trainer(model, loss, self._optimizer(model), metrics=metrics, callbacks=callbacks, l1=self.l1,
                          l2=self.l2, seed=rng)
        # BatchNorm cannot train on a last batch of one sample: drop it (it comes back shuffled).
        history = trainer.fit(X, targets, epochs=self.epochs, batch_size=batch_size, validation_data=validation,
                              shuffle=self.shuffle, verbose=self.verbose,
                              drop_last=bool(self.batch_norm) and len(X) % batch_size == 1)
        self.model_, self.n_iter_ = model, len(history)
        self.loss_curve_ = list(history.history["loss"])
        self.validation_scores_ = list(history.history.get("val_loss", []))
        return self

    def _outputs(self, X):
        """The raw network outputs for X (validated against the fit), float64 on the host."""
        check_is_fitted(self, "model_")
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        return B.to_numpy(predict_outputs(self.model_, X.astype(self.model_.dtype, copy=False))).astype(np.float64)


def _activation_layer(name: str) -> nn.Module:
    return {"relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid,
            "gelu": nn.GELU}[name]()


def _every_class_twice(labels) -> bool:
    """Whether every class has two samples or more (what a stratified split needs)."""
    return bool(np.bincount(labels).min() >= 2)


class MLPClassifier(ClassifierMixin, _MLP):
    """A multilayer perceptron classifier trained with softmax cross-entropy (see the module's
    docstring for the hyperparameters). After ``fit``: ``classes_``, ``n_features_in_``,
    ``model_`` (the fastnn network), ``n_iter_`` (epochs run), ``loss_curve_`` and, with
    early stopping, ``validation_scores_`` (validation losses). (sklearn.neural_network.
    MLPClassifier)"""

    def fit(self, X, y):
        """Train on X (N, features) and class labels y (N,). Returns self."""
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32])
        y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        self.classes_, encoded = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(f"MLPClassifier needs samples of at least 2 classes, got 1 class ({self.classes_[0]!r})")
        return self._train(X, encoded.astype(np.int64), nn.SoftmaxCrossEntropy(), len(self.classes_), [],
                           stratify=True)

    def predict_proba(self, X):
        """Class probabilities (N, C), columns in the order of ``classes_``, float64."""
        logits = self._outputs(X)
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, X):
        """The most probable class of each sample, a label of ``classes_`` (N,)."""
        best = self._outputs(X).argmax(axis=1)
        return self.classes_[best]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = True
        return tags


class MLPRegressor(RegressorMixin, _MLP):
    """A multilayer perceptron regressor trained with the mean squared error on standardized
    targets (see the module's docstring). After ``fit``: ``n_features_in_``, ``model_``,
    ``n_iter_``, ``loss_curve_`` (in standardized units), ``y_mean_`` and ``y_scale_``.
    (sklearn.neural_network.MLPRegressor)"""

    def fit(self, X, y):
        """Train on X (N, features) and targets y (N,) or (N, targets). Returns self."""
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32], multi_output=True, y_numeric=True)
        if type_of_target(y) not in ("continuous", "continuous-multioutput", "binary", "multiclass",
                                     "multiclass-multioutput"):
            raise ValueError(f"MLPRegressor needs numeric targets, got {type_of_target(y)} y")
        y = np.asarray(y, np.float64)
        self._one_target = y.ndim == 1
        targets = y.reshape(len(y), -1)
        self.y_mean_ = targets.mean(axis=0)
        spread = targets.std(axis=0)
        self.y_scale_ = np.where(spread > 0, spread, 1.0)
        standardized = (targets - self.y_mean_) / self.y_scale_
        return self._train(X, standardized, nn.MSE(), targets.shape[1], [], stratify=False)

    def predict(self, X):
        """Predicted targets, (N,) when y was (N,), else (N, targets); float64."""
        values = self._outputs(X) * self.y_scale_ + self.y_mean_
        return values[:, 0] if self._one_target else values

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags
