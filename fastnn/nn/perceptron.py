"""``Perceptron``: Rosenblatt's threshold unit and its learning rule."""

from __future__ import annotations

import numpy as np

from .. import _backend as B
from ..data import as_generator

__all__ = ["Perceptron"]


class Perceptron:
    """The classic perceptron (Rosenblatt, 1958): a linear threshold unit for two classes.

    Output: yhat = H(x . w + b), with the Heaviside step H(z) = 1 if z >= 0 else 0.
    Learning rule, one sample at a time: w += lr (y - yhat) x and b += lr (y - yhat), which
    changes the weights only on a mistake. ``fit`` starts from w = 0, b = 0 and stops after the
    first epoch without a mistake.

    On linearly separable data it converges (Novikoff's theorem): if some unit vector u in the
    augmented space (w, b) separates the classes with margin gamma = min_i y_i u . (x_i, 1)
    (y in {-1, +1}) and R = max_i ||(x_i, 1)||, the total number of mistakes is at most
    (R / gamma)^2, whatever ``lr`` and the order of the samples. On data that is not separable
    it never settles and stops after ``epochs``.

    Labels are {0, 1} or {-1, 1}; ``predict`` answers in the labels ``fit`` saw. X: (N, F) NumPy
    or CuPy; the rule is sequential, so ``fit`` runs on the CPU (a CuPy X is copied to the host
    once) and keeps ``weight`` (F,) and ``bias`` as NumPy/float; ``predict`` and
    ``decision_function`` return arrays on X's device. After ``fit``: ``mistakes`` (per epoch),
    ``converged``. (sklearn.linear_model.Perceptron with eta0=lr, no penalty)
    """

    def __init__(self):
        self.weight: np.ndarray | None = None
        self.bias = 0.0
        self.labels = (0, 1)
        self.mistakes: list[int] = []
        self.converged = False

    def fit(self, X, y, epochs: int = 100, lr: float = 1.0, seed=None, shuffle: bool = True):
        """Train with the perceptron rule for at most ``epochs`` passes (each in a random order
        from ``seed`` when ``shuffle``), stopping early after a pass with no mistake. Returns self."""
        X = B.to_numpy(B.as_array(X, "X")).astype(np.float64)
        if X.ndim != 2 or X.shape[0] == 0:
            raise ValueError(f"X must be (N, F) with N >= 1, got shape {X.shape}")
        targets = self._targets(y, X.shape[0])
        if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1:
            raise ValueError(f"epochs must be a positive int, got {epochs!r}")
        lr = B.check_scalar(lr, "lr", low=0.0, low_open=True)
        rng = as_generator(seed)
        weight, bias = np.zeros(X.shape[1]), 0.0
        self.mistakes, self.converged = [], False
        for _ in range(epochs):
            order = rng.permutation(X.shape[0]) if shuffle else range(X.shape[0])
            mistakes = 0
            for i in order:
                error = targets[i] - (1.0 if X[i] @ weight + bias >= 0.0 else 0.0)
                if error:
                    weight += lr * error * X[i]
                    bias += lr * error
                    mistakes += 1
            self.mistakes.append(mistakes)
            if mistakes == 0:
                self.converged = True
                break
        self.weight, self.bias = weight, bias
        return self

    def _targets(self, y, n: int) -> np.ndarray:
        """Targets in {0, 1} from labels in {0, 1} or {-1, 1}; remembers which."""
        y = B.to_numpy(B.as_array(y, "y"))
        if y.shape != (n,):
            raise ValueError(f"y must have shape ({n},) to match X, got {y.shape}")
        values = set(np.unique(y).tolist())
        if values <= {0, 1}:
            self.labels = (0, 1)
        elif values <= {-1, 1}:
            self.labels = (-1, 1)
        else:
            raise ValueError(f"Perceptron labels must be {{0, 1}} or {{-1, 1}}, got {sorted(values)}")
        return (y == 1).astype(np.float64)

    def decision_function(self, X):
        """z = X w + b, (N,) on X's device, in X's float dtype (float64 for other dtypes);
        the predicted class is 1 where z >= 0."""
        if self.weight is None:
            raise RuntimeError("Perceptron is not fitted yet; call fit(X, y) first")
        X = B.as_array(X, "X")
        if X.ndim != 2 or X.shape[1] != self.weight.shape[0]:
            raise ValueError(f"Perceptron was fitted on {self.weight.shape[0]} features, "
                             f"got X of shape {tuple(X.shape)}")
        xp = B.array_module(X)
        dtype = np.dtype(X.dtype) if np.dtype(X.dtype) in B.FLOAT_DTYPES else np.dtype(np.float64)
        return X.astype(dtype, copy=False) @ xp.asarray(self.weight, dtype=dtype) + dtype.type(self.bias)

    def predict(self, X):
        """Class labels (N,), in the label set seen by ``fit``, on X's device."""
        xp = B.array_module(B.as_array(X, "X"))
        negative, positive = self.labels
        return xp.where(self.decision_function(X) >= 0, positive, negative)

    def __repr__(self) -> str:
        if self.weight is None:
            return "Perceptron(not fitted)"
        return (f"Perceptron(features={self.weight.shape[0]}, epochs={len(self.mistakes)}, "
                f"converged={self.converged})")
