"""Model files: a trained model that outlives the script that trained it.

::

    fnn.save_model("iris.npz", model, classes=["setosa", "versicolor", "virginica"],
                   preprocessing=[imputer, scaler], feature_names=list(df.columns), metadata={"data": "iris"})
    predictor = fnn.load_model("iris.npz")          # no code from the training script needed
    predictor.predict(new_rows)                     # -> array(['setosa', 'virginica', ...])
    predictor.predict_proba(new_rows)               # -> (N, 3) probabilities

One file holds everything needed to go from raw features to answers: the architecture (a
declarative, versioned spec of every layer and its constructor arguments, see
``fastnn.nn.registry``), the weights and buffers, the fitted preprocessing (a chain of
``fastnn.preprocessing`` transformers, applied in order), the task, the class names (strings,
numbers or booleans, in the order of the model's outputs), the feature names, an optional
transform of the regression targets, and user metadata.

The file is a fastnn checkpoint (``fastnn.checkpoint``: an ``.npz`` archive read with
``allow_pickle=False``, a JSON manifest, a CRC-32 per array, written atomically) whose manifest
has one more section, ``predictor``; ``fnn.load(path, model=model)`` reads its weights like any
checkpoint's. Loading trusts nothing in the file: a damaged file, an unknown layer or
transformer, arguments of the wrong type, an architecture nested too deep, class names that do
not fit the model's outputs... each raise :class:`~fastnn.checkpoint.CheckpointError` saying
what is wrong. Custom layers are saved by name with their ``get_config()`` and need
``fastnn.nn.register_layer`` in the loading process too.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from . import _backend as B
from . import checkpoint as C
from .checkpoint import CheckpointError
from .data import _TASK_NAMES, _is_frame, check_missing, features
from .metrics import probabilities
from .nn import registry
from .nn.module import Module
from .preprocessing import TRANSFORMERS, SimpleImputer
from .prediction import predict_outputs

__all__ = ["save_model", "load_model", "Predictor", "MODEL_FORMAT", "MODEL_VERSION"]

MODEL_FORMAT = "fastnn-model"
MODEL_VERSION = 1
_CLASS_KINDS = {"str": str, "int": int, "float": float, "bool": bool}


def save_model(path, model: Module, *, task: str | None = None, classes=None, preprocessing=None,
               target_transform=None, feature_names=None, metadata: dict | None = None) -> str:
    """Write ``model`` and everything needed to use it to one file at ``path`` (atomically);
    returns ``path``. The arguments are :class:`Predictor`'s (``task`` defaults to
    "classification" when ``classes`` are given). ``fnn.load_model(path)`` reads it back."""
    return Predictor(model, task=task, classes=classes, preprocessing=preprocessing,
                     target_transform=target_transform, feature_names=feature_names, metadata=metadata).save(path)


def load_model(path) -> "Predictor":
    """The :class:`Predictor` saved at ``path`` by :func:`save_model`, on the CPU.
    ``CheckpointError`` for anything wrong with the file; ``FileNotFoundError`` when it is
    missing."""
    return Predictor.load(path)


class Predictor:
    """A trained model ready for raw data: ``predict(X)`` applies the fitted preprocessing,
    runs the model in inference mode (``training=False``) and answers in the user's terms.

    - ``model``: a ``fastnn.nn`` module of registered layers (every built-in one is).
    - ``task``: "classification" (or "classify") or "regression" ("regress"); default
      "classification" when ``classes`` is given, else required.
    - ``classes``: for classification, the class names in the order of the model's outputs
      (strings, numbers or booleans, all of one kind, distinct); default 0..C-1. A model with
      one output is a binary classifier of its logit (two classes).
    - ``preprocessing``: a fitted ``fastnn.preprocessing`` transformer or a list of them,
      applied in order to the raw features (a ``SimpleImputer`` first lets data with missing
      values through).
    - ``target_transform``: for regression, a fitted transformer of the targets (e.g. a
      ``Standardizer`` the model was trained on); predictions are its ``inverse_transform``.
    - ``feature_names``: the feature columns, in order; a DataFrame given to ``predict`` is
      then read by these names (its other columns ignored, missing ones an error).
    - ``metadata``: a dict of anything a checkpoint can hold (numbers, strings, arrays...).

    X may be a NumPy array (N, F) of numbers, anything ``as_array`` takes on the host, or a
    pandas DataFrame. Inputs and outputs are host (NumPy) arrays; ``to("cuda")`` runs the
    model on a GPU, moving batches there.
    """

    def __init__(self, model: Module, *, task: str | None = None, classes=None, preprocessing=None,
                 target_transform=None, feature_names=None, metadata: dict | None = None):
        if not isinstance(model, Module):
            raise TypeError(f"model must be a fastnn.nn.Module, got {type(model).__name__}")
        self.model = model
        if task is None:
            if classes is None:
                raise ValueError("task must be given ('classify' or 'regress') when there are no classes")
            task = "classification"
        if task not in _TASK_NAMES:
            raise ValueError(f"task must be 'classify' or 'regress', got {task!r}")
        self.task = _TASK_NAMES[task]
        self.preprocessing = _transformers(preprocessing, "preprocessing")
        self.target_transform = None
        if target_transform is not None:
            if self.task != "regression":
                raise ValueError("target_transform applies to regression targets; this is a classifier")
            self.target_transform, = _transformers(target_transform, "target_transform")
        self.feature_names = None if feature_names is None else _names(feature_names)
        self.metadata = {} if metadata is None else metadata
        if not isinstance(self.metadata, dict):
            raise TypeError(f"metadata must be a dict, got {type(self.metadata).__name__}")
        outputs = model.out_features
        if self.task == "regression":
            if classes is not None:
                raise ValueError("a regression model has no classes")
            self.classes = None
        else:
            if classes is None:
                if outputs is None:
                    raise ValueError("classes: the model's number of outputs is unknown; pass the class names")
                classes = list(range(max(outputs, 2)))
            self.classes = _classes(classes)
            if outputs is not None and len(self.classes) != max(outputs, 2):
                raise ValueError(f"classes: {len(self.classes)} class names for a model with {outputs} output"
                                 f"{'s' if outputs > 1 else ''} (one per output; two for a single logit)")
        self.n_features = self._feature_count()
        self._check_widths(outputs)

    def _check_widths(self, outputs) -> None:
        """What the preprocessing gives must be what the model takes, and the target transform
        must cover the model's outputs (where the model knows its widths)."""
        if self.preprocessing and self.model.in_features is not None:
            given = int(np.prod(self.preprocessing[-1]._output_shape()))
            if given != self.model.in_features:
                raise ValueError(f"preprocessing gives {given} features but the model takes {self.model.in_features}")
        if self.target_transform is not None and outputs is not None:
            covered = int(np.prod(self.target_transform.feature_shape))
            if covered != outputs:
                raise ValueError(f"target_transform was fitted on {covered} targets but the model has {outputs} "
                                 "outputs")

    def _feature_count(self) -> int | None:
        """The number of raw features, from the names, the first transformer or the model; a
        ValueError when they disagree."""
        counts = {}
        if self.feature_names is not None:
            counts["feature_names"] = len(self.feature_names)
        if self.preprocessing:
            shape = self.preprocessing[0].feature_shape
            counts["preprocessing"] = int(np.prod(shape))
        elif self.model.in_features is not None:
            counts["the model"] = self.model.in_features
        if len(set(counts.values())) > 1:
            raise ValueError("the number of features does not agree: " +
                             ", ".join(f"{n} from {where}" for where, n in counts.items()))
        return next(iter(counts.values()), None)

    def __repr__(self) -> str:
        what = f"classes={self.classes.tolist()!r}" if self.task == "classification" else "regression"
        return (f"Predictor({type(self.model).__name__}, {what}, features={self.n_features}, "
                f"preprocessing=[{', '.join(type(t).__name__ for t in self.preprocessing)}])")

    def to(self, device) -> "Predictor":
        """Run the model on ``device`` ("cpu", "cuda", "cuda:N"); preprocessing stays on the
        host. Returns self."""
        self.model.to(device)
        return self

    # -- answers ----------------------------------------------------------------------------

    def transform(self, X):
        """The raw features X after the preprocessing chain: what the model sees (N, F')."""
        a = self._raw(X)
        for transformer in self.preprocessing:
            a = transformer.transform(a)
        return a

    def decision_function(self, X, batch_size: int = 1024) -> np.ndarray:
        """The model's raw outputs for X (N, outputs): logits for a classifier, the targets
        before ``target_transform`` for a regressor."""
        return B.to_numpy(predict_outputs(self.model, self.transform(X), batch_size))

    def predict_proba(self, X, batch_size: int = 1024) -> np.ndarray:
        """Class probabilities (N, C), columns in the order of ``classes``: the softmax of
        the logits, or (1 - p, p) with p = sigmoid(logit) for a single output."""
        if self.task != "classification":
            raise ValueError("predict_proba: a regression model has no class probabilities; use predict")
        logits = self.decision_function(X, batch_size)
        if logits.ndim == 2 and logits.shape[1] == 1:
            p = probabilities(logits)[:, 0]
            return np.stack([1 - p, p], axis=1)
        self._check_outputs(logits)
        return probabilities(logits)

    def predict(self, X, batch_size: int = 1024) -> np.ndarray:
        """Classification: the predicted class of each sample (N,), as one of ``classes``.
        Regression: the predicted targets, (N,) for one target, else (N, k), in the targets'
        units (``target_transform`` undone)."""
        out = self.decision_function(X, batch_size)
        if self.task == "classification":  # from the logits: probabilities can round to a tie
            if out.ndim == 2 and out.shape[1] == 1:
                return self.classes[(out[:, 0] > 0).astype(np.int64)]
            self._check_outputs(out)
            return self.classes[out.argmax(axis=1)]
        if self.target_transform is not None:
            out = B.to_numpy(self.target_transform.inverse_transform(out))
        return out[:, 0] if out.ndim == 2 and out.shape[1] == 1 else out

    def _check_outputs(self, logits) -> None:
        if logits.ndim != 2 or logits.shape[1] != len(self.classes):
            raise ValueError(f"the model gives outputs of shape {logits.shape[1:]} but there are "
                             f"{len(self.classes)} classes")

    def _raw(self, X) -> np.ndarray:
        """X as a host float64 (N, F) array: a DataFrame's named columns, checked for text,
        for the number of features, and for missing values when no imputer comes first."""
        if isinstance(X, (list, tuple)):
            X = np.asarray(X)
        if _is_frame(X) and self.feature_names is not None:
            absent = [name for name in self.feature_names if name not in [str(c) for c in X.columns]]
            if absent:
                raise ValueError(f"X lacks the feature columns {absent} (the model takes {list(self.feature_names)})")
            X = X[[c for name in self.feature_names for c in X.columns if str(c) == name]]
        a, names = features(X, "X")
        if not isinstance(a, np.ndarray):
            raise ValueError(f"X is on {B.device_of(a)}: a Predictor takes host data (NumPy, pandas, lists) and "
                             "moves batches to the model's device itself")
        if a.ndim == 1:
            raise ValueError(f"X must be (samples, features), got shape {a.shape} (one sample: X.reshape(1, -1))")
        a = a.astype(np.float64).reshape(a.shape[0], int(np.prod(a.shape[1:])))  # (also 0 rows)
        if self.n_features is not None and a.shape[1] != self.n_features:
            raise ValueError(f"X has {a.shape[1]} features, the model takes {self.n_features}" +
                             (f" ({list(self.feature_names)})" if self.feature_names is not None else ""))
        names = names or (None if self.feature_names is None else list(self.feature_names))
        imputes = bool(self.preprocessing) and isinstance(self.preprocessing[0], SimpleImputer)
        check_missing(np.where(np.isnan(a), 0, a) if imputes else a, names, "X")
        return a

    # -- the file ---------------------------------------------------------------------------

    def save(self, path) -> str:
        """Write the model file (see the module's description); returns ``path``."""
        encoder = C._Encoder()
        manifest = C._manifest(encoder, self.model, None, {})
        classes = None
        if self.classes is not None:
            kind = _class_kind(self.classes)
            classes = {"kind": kind, "values": [_CLASS_KINDS[kind](c) for c in self.classes.tolist()]}
        manifest["predictor"] = {
            "format": MODEL_FORMAT, "version": MODEL_VERSION,
            "architecture": registry.to_spec(self.model),
            "task": self.task,
            "classes": classes,
            "feature_names": None if self.feature_names is None else list(self.feature_names),
            "preprocessing": [_transformer_entry(t, encoder, f"preprocessing/{i}")
                              for i, t in enumerate(self.preprocessing)],
            "target_transform": None if self.target_transform is None else
            _transformer_entry(self.target_transform, encoder, "target_transform"),
            "metadata": encoder.tree(self.metadata, "metadata"),
        }
        return C._write(path, manifest, encoder)

    @classmethod
    def load(cls, path) -> "Predictor":
        """Read a model file (see :func:`load_model`)."""
        path = os.fspath(path)
        manifest, arrays = C._read(path)
        section = manifest.get("predictor")
        if not isinstance(section, dict) or section.get("format") != MODEL_FORMAT:
            raise CheckpointError(f"{path} is a fastnn checkpoint but not a model file (no predictor section); "
                                  "write one with fastnn.save_model")
        if type(section.get("version")) is not int or section["version"] != MODEL_VERSION:
            raise CheckpointError(f"{path} has model file version {section.get('version')!r}; this fastnn reads "
                                  f"version {MODEL_VERSION}")
        expected = {"format", "version", "architecture", "task", "classes", "feature_names", "preprocessing",
                    "target_transform", "metadata"}
        if set(section) != expected:
            raise CheckpointError(f"{path}: malformed model file: the predictor section has the keys "
                                  f"{sorted(section)}, expected {sorted(expected)}")
        state = C._section(manifest, "model", arrays, path)
        if state is None:
            raise CheckpointError(f"{path}: malformed model file: it holds no model weights")
        try:
            model = registry.from_spec(section["architecture"], max_elements=sum(a.size for a in arrays))
        except ValueError as exc:
            raise CheckpointError(f"{path}: the architecture cannot be built: {exc}") from None
        problems = model.state_dict_mismatches(state["state"], source="the model file")
        if problems:
            raise CheckpointError(f"{path}: the weights do not fit the architecture:\n  " + "\n  ".join(problems))
        model.load_state_dict(state["state"])
        preprocessing = section["preprocessing"]
        if not isinstance(preprocessing, list):
            raise CheckpointError(f"{path}: malformed model file: preprocessing must be a list, got "
                                  f"{type(preprocessing).__name__}")
        steps = [_read_transformer(entry, arrays, f"{path}: preprocessing[{i}]") for i, entry in
                 enumerate(preprocessing)]
        target = section["target_transform"]
        metadata = C._decode(section["metadata"], arrays, f"{path}: metadata")
        if not isinstance(metadata, dict):
            raise CheckpointError(f"{path}: malformed model file: metadata must be a dict, got "
                                  f"{type(metadata).__name__}")
        try:
            return cls(model, task=_read_task(section["task"]), classes=_read_classes(section["classes"]),
                       preprocessing=steps,
                       target_transform=None if target is None else
                       _read_transformer(target, arrays, f"{path}: target_transform"),
                       feature_names=_read_names(section["feature_names"]), metadata=metadata)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: the model file does not hold together: {exc}") from None


# ---------------------------------------------------------------------------------------------
# The parts of a predictor, checked on the way in (from the user) and on the way out (from a file).


def _transformers(value, name: str) -> tuple:
    """One fitted transformer or a list of them, as a tuple; TypeError / ValueError otherwise."""
    steps = () if value is None else tuple(value) if isinstance(value, (list, tuple)) else (value,)
    for i, step in enumerate(steps):
        if type(step).__name__ not in TRANSFORMERS or TRANSFORMERS[type(step).__name__] is not type(step):
            raise TypeError(f"{name}[{i}]: a model file holds fastnn.preprocessing transformers "
                            f"({', '.join(TRANSFORMERS)}), got {type(step).__name__}")
        if not step.fitted:
            raise ValueError(f"{name}[{i}]: {type(step).__name__} is not fitted; fit it on the training data first")
    return steps


def _names(names) -> tuple[str, ...]:
    names = tuple(names)
    if not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise ValueError(f"feature_names must be distinct strings, got {list(names)!r}")
    return names


def _class_kind(classes: np.ndarray) -> str:
    kind = np.dtype(classes.dtype).kind
    return {"U": "str", "S": "str", "b": "bool", "i": "int", "u": "int", "f": "float"}[kind]


def _classes(classes) -> np.ndarray:
    """The class names as a 1-d NumPy array of one kind (str, int, float or bool), distinct."""
    values = list(classes.tolist() if hasattr(classes, "tolist") else classes)
    kinds = {bool if isinstance(v, (bool, np.bool_)) else str if isinstance(v, str) else
             int if isinstance(v, (int, np.integer)) else float if isinstance(v, (float, np.floating)) else None
             for v in values}
    if not values or None in kinds or (len(kinds) > 1 and kinds != {int, float}):
        raise ValueError(f"classes must be a non-empty list of strings, numbers or booleans of one kind, got "
                         f"{values[:10]!r}")
    array = np.asarray(values)
    if np.dtype(array.dtype).kind == "f" and not np.isfinite(array).all():
        raise ValueError("classes must not be NaN or infinite")
    if len(np.unique(array)) != len(array):
        raise ValueError(f"classes must be distinct, got {values[:10]!r}")
    return array


def _transformer_entry(transformer, encoder, name: str) -> dict:
    return {"type": type(transformer).__name__, "config": registry.json_value(transformer.get_config(), name),
            "state": encoder.tree(transformer.state_dict(), name)}


def _read_transformer(entry, arrays, where: str):
    if not isinstance(entry, dict) or set(entry) != {"type", "config", "state"}:
        raise CheckpointError(f"{where}: a transformer entry is a dict of type, config and state, got "
                              f"{C._brief(entry)}")
    cls = TRANSFORMERS.get(entry["type"]) if isinstance(entry["type"], str) else None
    if cls is None:
        raise CheckpointError(f"{where}: unknown transformer {C._brief(entry['type'])} (known: "
                              f"{', '.join(TRANSFORMERS)})")
    if not isinstance(entry["config"], dict):
        raise CheckpointError(f"{where}: the config of {cls.__name__} must be a dict, got "
                              f"{type(entry['config']).__name__}")
    state = C._decode(entry["state"], arrays, where)
    if not isinstance(state, dict):
        raise CheckpointError(f"{where}: the state of {cls.__name__} must be a dict, got {type(state).__name__}")
    try:
        transformer = cls(**entry["config"])
        transformer.load_state_dict(state)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: {cls.__name__} cannot be rebuilt: {exc}") from None
    return transformer


def _read_task(task) -> str:
    if task not in ("classification", "regression"):
        raise ValueError(f"task must be 'classification' or 'regression', got {C._brief(task)}")
    return task


def _read_classes(classes) -> Any:
    if classes is None:
        return None
    if not isinstance(classes, dict) or set(classes) != {"kind", "values"} or \
            classes["kind"] not in _CLASS_KINDS or not isinstance(classes["values"], list):
        raise ValueError(f"classes must be a dict of kind and a list of values, got {C._brief(classes)}")
    kind = _CLASS_KINDS[classes["kind"]]
    values = classes["values"]
    # JSON writes the float 2.0 as 2.0 and reads it back as a float: only the kind is checked.
    if not all(isinstance(v, kind) and (kind is bool or not isinstance(v, bool)) or
               (kind is float and type(v) is int) for v in values):
        raise ValueError(f"classes of kind {classes['kind']} hold {C._brief(values)}")
    return np.asarray(values, dtype={str: str, int: np.int64, float: np.float64, bool: bool}[kind])


def _read_names(names):
    if names is None:
        return None
    if not isinstance(names, list):
        raise ValueError(f"feature_names must be a list, got {C._brief(names)}")
    return names
