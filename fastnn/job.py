"""The jobs behind ``fastnn train`` and ``fastnn predict``: a careful practitioner's training
run, end to end, and its model applied to new data.

``run(config)`` (``fastnn train``):

1. Check every option and the output folder (before any data is read), then load the data
   (the bundled UCI digits by default; ``spirals``, ``blobs``, a ``.npz`` / ``.csv`` file, or
   arrays / pandas objects passed to ``run``).
2. Decide the task (``config.task``, or inferred when that is unambiguous:
   ``fastnn.data.infer_task``). Classification encodes the distinct labels (text too) as
   0..C-1; regression standardizes the targets with training statistics.
3. Split off a test set (seeded; stratified for classification), fit the preprocessing on the
   training part only: a ``SimpleImputer`` with ``impute`` (missing values are an error
   otherwise), then a ``Standardizer``.
4. Build an MLP: ``Dense -> BatchNorm -> ReLU -> Dropout`` per hidden layer, then a linear
   output layer (He initialisation for the ReLU layers, Xavier for the output); softmax
   cross-entropy for classes, MSE for regression.
5. Train with the chosen optimizer, a linear warm-up into cosine annealing of the learning
   rate, and early stopping on the validation loss (the best weights restored).
6. Report the test accuracy (classification) or R^2, RMSE and MAE in the targets' units
   (regression), and write into ``out``: ``model.npz`` (the model file: architecture,
   weights, preprocessing, classes; ``fastnn.load_model`` / ``fastnn predict``),
   ``curves.png``, ``metrics.json`` and ``checkpoint.npz`` (model, optimizer, preprocessing,
   history and the run's configuration, for ``fastnn.load``).

Started as several processes (``mpirun -n 4 fastnn train ...``, or ``torchrun``), the job
trains one model data-parallel (``Trainer(distributed=True)``; ``--batch-size`` is then per
process) and rank 0 alone writes the files; a rank that fails ends them all.

``predict(model, data, out)`` (``fastnn predict``) reads a model file and a ``.csv`` / ``.npz``
file of raw features, and writes one prediction per row to a CSV file.

Errors name the command-line option they concern (``--test-size``), so the CLI can show them
as they are.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import tempfile
import time
from typing import Any, NamedTuple

import numpy as np

from . import _backend as B
from . import callbacks as cb
from . import datasets, distributed, nn, optim
from .checkpoint import save
from .data import check_missing, encode_labels, features, infer_task, train_test_split
from .metrics import mae, mse, r2_score, rmse
from .model_file import load_model, save_model
from .optim.lr_scheduler import CosineAnnealingLR, LinearWarmup
from .preprocessing import SimpleImputer, Standardizer
from .prediction import predict_outputs
from .train import Trainer

# The optimizers `--optimizer` offers, with the settings a practitioner starts from.
OPTIMIZERS = {
    "adam": lambda params, lr, wd, state: optim.Adam(params, lr=lr, weight_decay=wd, state_dtype=state),
    "adamw": lambda params, lr, wd, state: optim.AdamW(params, lr=lr, weight_decay=wd or 1e-2, state_dtype=state),
    "sgd": lambda params, lr, wd, state: optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=wd,
                                                   state_dtype=state),
    "rmsprop": lambda params, lr, wd, state: optim.RMSprop(params, lr=lr, weight_decay=wd, state_dtype=state),
    "adagrad": lambda params, lr, wd, state: optim.Adagrad(params, lr=lr, weight_decay=wd, state_dtype=state),
    "rprop": lambda params, lr, wd, state: optim.Rprop(params, lr=lr, state_dtype=state),
}
# How the optimizer stores its state (`--state-dtype`): float32 (8 bytes per parameter for Adam),
# bfloat16 (4) or block-wise int8 (about 2; tensors under 4096 elements keep float32).
STATE_DTYPE_CHOICES = ("float32", "bfloat16", "int8")
TASK_CHOICES = ("auto", "classify", "regress")
IMPUTE_CHOICES = ("mean", "median")
DEVICE_CHOICES = ("cpu", "cuda", "auto")

# What each numeric option accepts: (low, high, low_open, high_open) for reals, the minimum for
# ints. The CLI checks them while parsing, run() again for callers of the API.
REAL_RANGES = {"dropout": (0.0, 1.0, False, True), "lr": (0.0, None, True, False),
               "weight_decay": (0.0, None, False, False), "test_size": (0.0, 1.0, True, True),
               "validation_split": (0.0, 1.0, True, True)}
INT_MINIMUMS = {"epochs": 1, "batch_size": 1, "patience": 1, "seed": 0}


@dataclasses.dataclass
class JobConfig:
    """Everything ``fastnn train`` can be told (the CLI's options, with the same defaults).

    ``label_column``: a header name (default ``"label"``) or, with ``header=False``, a 0-based
    column index (default the last column). ``task``: "auto", "classify" or "regress".
    ``impute``: None (missing values are an error), "mean" or "median"."""

    data: str = "digits"
    label_column: str | int | None = None
    header: bool = True
    task: str = "auto"
    impute: str | None = None
    hidden: tuple[int, ...] = (256, 128)
    dropout: float = 0.2
    optimizer: str = "adam"
    state_dtype: str = "float32"
    lr: float = 3e-3
    weight_decay: float = 0.0
    epochs: int = 60
    batch_size: int = 64
    patience: int = 10
    test_size: float = 0.2
    validation_split: float = 0.15
    device: str = "auto"
    seed: int = 0
    out: str = "runs/train"
    verbose: int = 1


def flag(field: str) -> str:
    """The command-line option of a ``JobConfig`` field: ``test_size`` -> ``--test-size``."""
    return "--" + field.replace("_", "-")


def option_problem(field: str, value) -> str | None:
    """What is wrong with ``value`` for the numeric option ``field`` (None when it is fine)."""
    if field in INT_MINIMUMS:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            return f"must be an integer, got {value!r}"
        return None if value >= INT_MINIMUMS[field] else f"must be at least {INT_MINIMUMS[field]}, got {value!r}"
    low, high, low_open, high_open = REAL_RANGES[field]
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return f"must be a number, got {value!r}"
    if not math.isfinite(value):
        return f"must be a finite number, got {value!r}"
    too_low = value < low or (low_open and value == low)
    too_high = high is not None and (value > high or (high_open and value == high))
    if too_low or too_high:
        upper = "inf)" if high is None else f"{high:g}" + (")" if high_open else "]")
        return f"must be in {'(' if low_open else '['}{low:g}, {upper}, got {value!r}"
    return None


def check_config(config: JobConfig) -> None:
    """ValueError naming the option (as a flag) for anything ``config`` cannot run with."""
    for field in (*REAL_RANGES, *INT_MINIMUMS):
        problem = option_problem(field, getattr(config, field))
        if problem:
            raise ValueError(f"{flag(field)} {problem}")
    for field, choices in (("optimizer", tuple(OPTIMIZERS)), ("state_dtype", STATE_DTYPE_CHOICES),
                           ("task", TASK_CHOICES), ("device", DEVICE_CHOICES), ("impute", (None, *IMPUTE_CHOICES))):
        if getattr(config, field) not in choices:
            raise ValueError(f"{flag(field)} must be one of {', '.join(map(str, choices))}, got "
                             f"{getattr(config, field)!r}")
    if config.optimizer == "rprop" and config.state_dtype != "float32":
        raise ValueError(f"--state-dtype {config.state_dtype} is not available with --optimizer rprop (its step "
                         "sizes stay float32); use another optimizer or --state-dtype float32")
    hidden = config.hidden
    if not isinstance(hidden, (tuple, list)) or \
            not all(isinstance(w, (int, np.integer)) and not isinstance(w, bool) and w > 0 for w in hidden):
        raise ValueError(f"--hidden must be positive layer widths such as 256,128, got {hidden!r}")


def resolve_device(device: str) -> str:
    """``"cpu"``, ``"cuda"`` or ``"auto"`` (the GPU when CuPy, fastnn's CUDA kernels and a GPU
    are all present) -> ``"cpu"`` or ``"cuda"``; ``"cuda"`` without a usable GPU is a
    RuntimeError that says what is missing and suggests ``--device auto``."""
    if device not in DEVICE_CHOICES:
        raise ValueError(f"--device must be 'cpu', 'cuda' or 'auto', got {device!r}")
    if device == "cpu":
        return "cpu"
    missing = B.gpu_unavailable_reason()
    if missing is None:
        return "cuda"
    if device == "cuda":
        raise RuntimeError(f"--device cuda: {missing}; use --device auto to train on the GPU when one is usable and "
                           "on the CPU otherwise (or --device cpu)")
    return "cpu"


def prepare_out(out: str, option: str = "--out") -> None:
    """Create the output folder ``out`` and check that files can be written in it, so that a
    bad ``--out`` fails before the work, not after it."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"{option} {out!r}: is a file, not a folder")
    try:
        os.makedirs(out, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise ValueError(f"{option} {out!r}: cannot write there ({exc.strerror or exc})") from None


class Data(NamedTuple):
    """What the job trains on: features X (N, F), targets y, the feature names (None without
    a header), and where the label was in the file (for ``fastnn predict``)."""

    X: Any
    y: Any
    feature_names: list[str] | None
    label_name: str | None = None
    label_index: int | None = None


def load_data(config: JobConfig, X=None, y=None) -> Data:
    """The data for ``config.data``, or ``X`` and ``y`` themselves (arrays or pandas objects:
    a DataFrame's column names become the feature names). Missing values are an error unless
    ``config.impute`` is set."""
    missing = "keep" if config.impute else "error"
    if X is not None or y is not None:
        if X is None or y is None:
            raise ValueError("pass both X and y, or neither (then config.data is loaded)")
        X, names = features(X, "X")
        X = B.to_numpy(X).astype(np.float32)
        y = np.asarray(y.to_numpy() if hasattr(y, "to_numpy") else B.to_numpy(B.as_array(y, "y")))
        if len(X) != len(y):
            raise ValueError(f"X has {len(X)} samples but y has {len(y)}")
        check_missing(np.where(np.isnan(X), 0, X) if config.impute else X, names, "X")
        return Data(X, y, names)
    name = config.data.lower()
    if name in ("spirals", "blobs"):
        return Data(*datasets.load(name, seed=config.seed), None)
    if name.endswith(".csv"):
        label = config.label_column
        if label is None:
            label = "label" if config.header else -1
        elif not config.header and isinstance(label, str) and label.lstrip("-").isdigit():
            label = int(label)
        table = datasets.read_csv(config.data, label, header=config.header, missing=missing)
        return Data(table.X, table.y, table.feature_names if config.header else None, table.label_name,
                    table.label_index)
    if name.endswith(".npz"):
        return Data(*datasets.load_npz(config.data, missing=missing), None)
    return Data(*datasets.load(config.data), None)


def build_model(features: int, outputs: int, config: JobConfig) -> nn.Sequential:
    """The MLP: (Dense -> BatchNorm -> ReLU -> Dropout) per hidden width, then Dense."""
    layers, width = [], features
    for k, hidden in enumerate(config.hidden):
        layers += [nn.Dense(width, hidden, init="he", seed=config.seed + k), nn.BatchNorm(hidden), nn.ReLU()]
        if config.dropout > 0:
            layers.append(nn.Dropout(config.dropout, seed=config.seed + 100 + k))
        width = hidden
    layers.append(nn.Dense(width, outputs, init="xavier", seed=config.seed + len(config.hidden)))
    return nn.Sequential(*layers)


def _split(X, y, config: JobConfig, stratify: bool):
    """The train/test split; too little data for ``--test-size`` is an error in its terms."""
    n = len(X)
    n_test = math.ceil(config.test_size * n)
    if n_test >= n:
        raise ValueError(f"--test-size {config.test_size} of {n} samples leaves no training data")
    return train_test_split(X, y, test_size=config.test_size, seed=config.seed, stratify=stratify)


def _fit_sizes(n_train: int, config: JobConfig) -> bool:
    """Check that the training part leaves a validation set and at least two samples to fit
    on (batch norm needs two); return whether to drop each epoch's last batch (when it would
    hold a single sample)."""
    n_val = math.ceil(config.validation_split * n_train)
    n_fit = n_train - n_val
    if n_fit < 2:
        raise ValueError(f"--validation-split {config.validation_split} and --test-size {config.test_size} leave "
                         f"{n_fit} of {n_train} training samples to fit on; at least 2 are needed (more data, "
                         "or smaller splits)")
    return n_fit % config.batch_size == 1


def run(config: JobConfig, X=None, y=None) -> dict:
    """Run the job on ``config.data`` (or on ``X`` and ``y`` when given: arrays or a pandas
    DataFrame and Series); return the metrics written to ``metrics.json``."""
    check_config(config)
    device = resolve_device(config.device)
    parallel = distributed.init(device=device) if distributed.launched() else None
    prepare_out(config.out)
    start = time.perf_counter()

    data = load_data(config, X, y)
    X = data.X.reshape(len(data.X), -1)
    task = infer_task(data.y, config.task)
    classes = None
    if task == "classification":
        classes, targets = encode_labels(data.y)
        if len(classes) < 2:
            raise ValueError(f"every label is {classes[0].item()!r}: classification needs two or more classes")
    else:
        targets = np.asarray(data.y, dtype=np.float32).reshape(len(data.y), -1)
    X_train, X_test, y_train, y_test = _split(X, targets, config, stratify=task == "classification")
    drop_last = _fit_sizes(len(X_train), config)

    steps = ([SimpleImputer(config.impute)] if config.impute else []) + [Standardizer()]
    for step in steps:
        X_train = step.fit_transform(X_train)
    X_test = _apply(steps, X_test)
    target_scaler = None
    if task == "regression":
        target_scaler = Standardizer().fit(y_train)
        y_train = target_scaler.transform(y_train)

    outputs = len(classes) if task == "classification" else y_train.shape[1]
    model = build_model(X.shape[1], outputs, config)
    if device == "cuda":
        model.to(distributed.device() if parallel else "cuda")  # batches follow the model onto the GPU
    loss = nn.SoftmaxCrossEntropy() if task == "classification" else nn.MSE()
    opt = OPTIMIZERS[config.optimizer](model.parameters(), config.lr, config.weight_decay, config.state_dtype)
    warmup = max(1, min(5, config.epochs // 10))
    schedule = LinearWarmup(CosineAnnealingLR(opt, T_max=config.epochs), warmup_epochs=warmup)
    stopper = cb.EarlyStopping(monitor="val_loss", patience=config.patience, restore_best=True)
    trainer = Trainer(model, loss, opt, metrics=["accuracy"] if task == "classification" else ["mae"],
                      callbacks=[cb.LRScheduler(schedule), stopper], seed=config.seed,
                      distributed=parallel is not None)
    history = trainer.fit(X_train, y_train, epochs=config.epochs, batch_size=config.batch_size,
                          validation_split=config.validation_split, verbose=config.verbose, drop_last=drop_last)
    if task == "classification":
        test = trainer.evaluate(X_test, y_test)
    else:
        predicted = B.to_numpy(target_scaler.inverse_transform(B.to_numpy(predict_outputs(model, X_test))))
        test = {"loss": trainer.evaluate(X_test, target_scaler.transform(y_test))["loss"],
                "r2": r2_score(y_test, predicted) if len(y_test) > 1 else math.nan,
                "rmse": rmse(y_test, predicted), "mae": mae(y_test, predicted), "mse": mse(y_test, predicted)}
    if not trainer.is_main_process:
        return {"rank": parallel.rank, "test": {k: float(v) for k, v in test.items()}}  # rank 0 writes

    out = config.out
    from .plot import history as plot_history  # matplotlib: optional

    try:
        curves = plot_history(history, os.path.join(out, "curves.png"), loss_name=_LOSS_NAMES[task],
                              best_epoch=stopper.best_epoch,  # restored, stopped early or not
                              title=f"fastnn: {config.data}, MLP {'-'.join(map(str, config.hidden))}")
    except ImportError as exc:
        curves = None
        print(f"fastnn: curves not plotted ({exc})")
    settings = dataclasses.asdict(config)
    checkpoint = save(os.path.join(out, "checkpoint.npz"), model=model, optimizer=opt, preprocessing=steps,
                      target_scaler=target_scaler, history=history.history, config=settings)
    model_path = save_model(os.path.join(out, "model.npz"), model, task=task, classes=classes, preprocessing=steps,
                            target_transform=target_scaler, feature_names=data.feature_names,
                            metadata={"data": config.data, "label_column": data.label_name,
                                      "label_index": data.label_index, "header": config.header, "config": settings})
    metrics = {
        "data": config.data,
        "device": device,
        "data_parallel": parallel.describe() if parallel else None,
        "task": task,
        "optimizer": {"rule": config.optimizer, "state_dtype": config.state_dtype},
        "classes": None if classes is None else classes.tolist(),
        "features": data.feature_names,
        "samples": {"train": int(len(y_train)), "test": int(len(y_test))},
        "epochs_run": len(history.history["loss"]),
        "stopped_early": trainer.stop_reason is not None,
        "test": {k: float(v) for k, v in test.items()},
        "final_train": {k: float(v[-1]) for k, v in history.history.items() if v and _is_number(v[-1])},
        "seconds": round(time.perf_counter() - start, 2),
        "files": {"model": model_path, "curves": curves, "checkpoint": checkpoint},
        "config": settings,
    }
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    return metrics


_LOSS_NAMES = {"classification": "softmax cross-entropy", "regression": "MSE, standardized targets"}


def _apply(steps, X):
    for step in steps:
        X = step.transform(X)
    return X


def _is_number(v) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


# ---------------------------------------------------------------------------------------------
# fastnn predict


def predict(model: str, data: str, out: str, *, header: bool = True, proba: bool = False) -> tuple[int, str]:
    """Apply the model file ``model`` to the raw features in ``data`` and write one prediction
    per row to the CSV file ``out``; returns (rows, out).

    ``data`` is a ``.csv`` file, read as in training: with a header, the model's feature
    columns by name (in any order; other columns, the label's included, ignored; missing ones
    an error naming them); without one (``header=False``), the model's features by position,
    with the label column dropped where the file still has it (one column more than the
    features). A ``.npz`` file gives its array ``X``. Missing values are filled when the model
    has an imputer, else an error naming the columns and rows.

    ``out`` gets a column ``prediction`` (``prediction_0``, ... for several regression
    targets) and, with ``proba``, one ``proba_<class>`` column per class.
    """
    directory = os.path.dirname(os.path.abspath(out))
    if os.path.isdir(out):
        raise ValueError(f"--out {out!r} is a folder; give the path of the CSV file to write")
    prepare_out(directory)
    predictor = load_model(model)
    if proba and predictor.task != "classification":
        raise ValueError("--proba: a regression model has no class probabilities")
    X = _features_for(predictor, data, header)
    predictions = predictor.predict(X)
    columns = [predictions.reshape(len(X), -1)[:, k] for k in range(predictions.reshape(len(X), -1).shape[1])]
    names = ["prediction"] if len(columns) == 1 else [f"prediction_{k}" for k in range(len(columns))]
    if proba:
        p = predictor.predict_proba(X)
        columns += [p[:, k] for k in range(p.shape[1])]
        names += [f"proba_{c}" for c in predictor.classes.tolist()]
    with open(out, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(names)
        writer.writerows(zip(*([str(v) for v in column] for column in columns)))
    return len(X), out


def _features_for(predictor, data: str, header: bool) -> np.ndarray:
    """The raw feature rows of ``data`` for ``predictor`` (see :func:`predict`)."""
    lowered = data.lower()
    imputes = bool(predictor.preprocessing) and isinstance(predictor.preprocessing[0], SimpleImputer)
    missing = "keep" if imputes else "error"
    if lowered.endswith(".npz"):
        if not os.path.isfile(data):
            raise FileNotFoundError(2, "no such file", data)
        try:
            with np.load(data, allow_pickle=False) as npz:
                if "X" not in npz.files:
                    raise ValueError(f"{data}: no array named 'X'; the file has {sorted(npz.files)}")
                return npz["X"]
        except (OSError, EOFError, AttributeError) as exc:
            raise ValueError(f"{data}: not a readable .npz file ({exc})") from None
    if not lowered.endswith(".csv"):
        raise ValueError(f"--data {data!r}: expected a .csv or .npz file")
    names = predictor.feature_names
    if header and names is not None:
        return datasets.read_csv(data, None, header=True, columns=list(names), missing=missing).X
    X = datasets.read_csv(data, None, header=header, missing=missing).X
    expected = predictor.n_features
    label = predictor.metadata.get("label_index")
    if expected is not None and X.shape[1] == expected + 1 and isinstance(label, int) and 0 <= label < X.shape[1]:
        X = np.delete(X, label, axis=1)
    if expected is not None and X.shape[1] != expected:
        raise ValueError(f"{data} has {X.shape[1]} columns but the model takes {expected} features"
                         + (f" (and the label was column {label})" if isinstance(label, int) else ""))
    return X
