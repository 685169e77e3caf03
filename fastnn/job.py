"""The main job behind ``fastnn train``: a careful practitioner's training run, end to end.

1. Load the data (the bundled UCI digits by default; ``spirals``, ``blobs``, or a ``.npz`` /
   ``.csv`` file), split off a stratified test set (seeded).
2. Standardize with statistics of the training part only.
3. Build an MLP: ``Dense -> BatchNorm -> ReLU -> Dropout`` per hidden layer, then a linear
   output layer (He initialisation for the ReLU layers, Xavier for the output).
4. Train with the chosen optimizer, a linear warm-up into cosine annealing of the learning
   rate, and early stopping on the validation loss (the best weights restored).
5. Report the test accuracy (or test MSE for regression targets) and write into ``out``:
   ``curves.png`` (loss and accuracy, train vs validation), ``metrics.json`` and
   ``checkpoint.npz`` (model, optimizer, standardizer, history and the run's configuration;
   ``fastnn.load`` reads it back).

Started as several processes (``mpirun -n 4 fastnn train ...``, or ``torchrun``), the job
trains one model data-parallel (``Trainer(distributed=True)``; ``--batch-size`` is then per
process) and rank 0 alone writes the files; a rank that fails ends them all.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time

import numpy as np

from . import _backend as B
from . import callbacks as cb
from . import datasets, distributed, nn, optim
from .checkpoint import save
from .data import train_test_split
from .optim.lr_scheduler import CosineAnnealingLR, LinearWarmup
from .preprocessing import Standardizer
from .train import Trainer

# The optimizers `--optimizer` offers, with the settings a practitioner starts from.
OPTIMIZERS = {
    "adam": lambda params, lr, wd: optim.Adam(params, lr=lr, weight_decay=wd),
    "adamw": lambda params, lr, wd: optim.AdamW(params, lr=lr, weight_decay=wd or 1e-2),
    "sgd": lambda params, lr, wd: optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=wd),
    "rmsprop": lambda params, lr, wd: optim.RMSprop(params, lr=lr, weight_decay=wd),
    "adagrad": lambda params, lr, wd: optim.Adagrad(params, lr=lr, weight_decay=wd),
    "rprop": lambda params, lr, wd: optim.Rprop(params, lr=lr),
}


@dataclasses.dataclass
class JobConfig:
    """Everything ``fastnn train`` can be told (the CLI's options, with the same defaults)."""

    data: str = "digits"
    label_column: str = "label"
    hidden: tuple[int, ...] = (256, 128)
    dropout: float = 0.2
    optimizer: str = "adam"
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


def resolve_device(device: str) -> str:
    """``"cpu"``, ``"cuda"`` or ``"auto"`` (the GPU when CuPy, fastnn's CUDA kernels and a GPU
    are all present) -> ``"cpu"`` or ``"cuda"``; ``"cuda"`` without a usable GPU is a
    RuntimeError that says what is missing."""
    if device not in ("cpu", "cuda", "auto"):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'auto', got {device!r}")
    if device == "cpu":
        return "cpu"
    missing = B.gpu_unavailable_reason()
    if missing is None:
        return "cuda"
    if device == "cuda":
        raise RuntimeError(f"--device cuda: {missing}")
    return "cpu"


def load_data(config: JobConfig):
    """(X, y) for ``config.data``: options each source understands, seeded where random."""
    name = config.data.lower()
    if name in ("spirals", "blobs"):
        return datasets.load(name, seed=config.seed)
    if name.endswith(".csv"):
        return datasets.load(config.data, label_column=config.label_column)
    return datasets.load(config.data)


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


def run(config: JobConfig) -> dict:
    """Run the job; return the metrics written to ``metrics.json``."""
    if config.optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {config.optimizer!r}; choose from {', '.join(OPTIMIZERS)}")
    device = resolve_device(config.device)
    parallel = distributed.init(device=device) if distributed.launched() else None
    start = time.perf_counter()

    X, y = load_data(config)
    X = X.reshape(len(X), -1)
    classify = np.issubdtype(y.dtype, np.integer)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=config.test_size, seed=config.seed,
                                                        stratify=classify)
    scaler = Standardizer().fit(X_train)
    X_train, X_test = scaler.transform(X_train), scaler.transform(X_test)
    classes = int(y.max()) + 1 if classify else None
    outputs = classes if classify else (1 if y.ndim == 1 else y.shape[1])
    if not classify:
        y_train, y_test = (t.reshape(len(t), -1).astype(np.float32) for t in (y_train, y_test))

    model = build_model(X.shape[1], outputs, config)
    if device == "cuda":
        model.to(distributed.device() if parallel else "cuda")  # batches follow the model onto the GPU
    loss = nn.SoftmaxCrossEntropy() if classify else nn.MSE()
    opt = OPTIMIZERS[config.optimizer](model.parameters(), config.lr, config.weight_decay)
    warmup = max(1, min(5, config.epochs // 10))
    schedule = LinearWarmup(CosineAnnealingLR(opt, T_max=config.epochs), warmup_epochs=warmup)
    stopper = cb.EarlyStopping(monitor="val_loss", patience=config.patience, restore_best=True)
    trainer = Trainer(model, loss, opt, metrics=["accuracy"] if classify else ["mae"],
                      callbacks=[cb.LRScheduler(schedule), stopper], seed=config.seed,
                      distributed=parallel is not None)
    history = trainer.fit(X_train, y_train, epochs=config.epochs, batch_size=config.batch_size,
                          validation_split=config.validation_split, verbose=config.verbose)
    test = trainer.evaluate(X_test, y_test)
    if not trainer.is_main_process:
        return {"rank": parallel.rank, "test": {k: float(v) for k, v in test.items()}}  # rank 0 writes

    os.makedirs(config.out, exist_ok=True)
    from .plot import history as plot_history  # matplotlib: optional

    try:
        curves = plot_history(history, os.path.join(config.out, "curves.png"),
                              title=f"fastnn: {config.data}, MLP {'-'.join(map(str, config.hidden))}")
    except ImportError as exc:
        curves = None
        print(f"fastnn: curves not plotted ({exc})")
    checkpoint = save(os.path.join(config.out, "checkpoint.npz"), model=model, optimizer=opt,
                      preprocessing=scaler, history=history.history, config=dataclasses.asdict(config))
    metrics = {
        "data": config.data,
        "device": device,
        "data_parallel": parallel.describe() if parallel else None,
        "task": "classification" if classify else "regression",
        "samples": {"train": int(len(y_train)), "test": int(len(y_test))},
        "epochs_run": len(history.history["loss"]),
        "stopped_early": trainer.stop_reason is not None,
        "test": {k: float(v) for k, v in test.items()},
        "final_train": {k: float(v[-1]) for k, v in history.history.items() if v and _is_number(v[-1])},
        "seconds": round(time.perf_counter() - start, 2),
        "files": {"curves": curves, "checkpoint": checkpoint},
        "config": dataclasses.asdict(config),
    }
    with open(os.path.join(config.out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    return metrics


def _is_number(v) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False
