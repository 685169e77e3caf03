"""The ``fastnn`` command line: ``python -m fastnn info|train|predict|bench``."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys


def _info(args: argparse.Namespace) -> int:
    from ._info import backend_info, format_info

    info = backend_info()
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


class CommandError(Exception):
    """A user error the CLI reports as one line on stderr, exiting with status 2."""


def require_gpu(command: str) -> None:
    """Raise CommandError unless a CUDA GPU can be used from Python here."""
    from ._backend import gpu_unavailable_reason

    reason = gpu_unavailable_reason()
    if reason is not None:
        raise CommandError(f"{command} --device cuda: {reason}")


def _bench(args: argparse.Namespace) -> int:
    from .benchmarks import SUITES

    if args.device == "cuda":
        require_gpu("fastnn bench")
    suites = SUITES if args.suite == "all" else (args.suite,)
    status = 0
    for suite in suites:
        print(f"== fastnn bench {suite} ({args.device})", flush=True)
        argv = ["--device", args.device, "--out", args.out] + (["--quick"] if args.quick else [])
        status |= int(importlib.import_module(f"fastnn.benchmarks.{suite}").main(argv) or 0)
    return status


def _widths(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(w) for w in text.split(",") if w.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer widths such as 256,128, got {text!r}") from None
    if any(w <= 0 for w in widths):
        raise argparse.ArgumentTypeError(f"layer widths must be positive, got {text!r}")
    return widths


def _option(field: str, parse):
    """An argparse type for the ``JobConfig`` field ``field``: the text parsed by ``parse``
    and checked against ``job.option_problem``, so a bad value is refused while parsing, by
    the option's name (``argument --dropout: must be in [0, 1), got -0.5``)."""
    from .job import option_problem

    def convert(text: str):
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if parse is int else 'a number'}, got "
                                             f"{text!r}") from None
        problem = option_problem(field, value)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    return convert


def _train(args: argparse.Namespace) -> int:
    from .distributed import abort_on_error
    from .job import JobConfig, run

    fields = {f: getattr(args, f) for f in JobConfig.__dataclass_fields__}
    try:
        with abort_on_error():  # under mpirun, one rank's error ends every rank
            metrics = run(JobConfig(**fields))
    except FileNotFoundError as exc:
        raise CommandError(f"fastnn train: data file not found: {exc.filename or exc}") from None
    except (ValueError, TypeError, RuntimeError, ImportError) as exc:  # ImportError: mpirun without mpi4py
        raise CommandError(f"fastnn train: {exc}") from None
    if metrics.get("rank", 0):
        return 0  # rank 0 reports
    test = metrics["test"]
    where = metrics["device"] + (f", data parallel: {metrics['data_parallel']}" if metrics.get("data_parallel") else "")
    done = f"{metrics['epochs_run']} epochs, {metrics['seconds']:.1f} s on {where}"
    if metrics["task"] == "classification":
        print(f"test accuracy: {test['accuracy']:.4f}  (test loss {test['loss']:.4f}, {done})")
    else:
        print(f"test R^2: {test['r2']:.4f}  (RMSE {test['rmse']:.4g}, MAE {test['mae']:.4g}, {done})")
    model = metrics["files"]["model"]
    print(f"model file: {model}  (use it: fastnn predict --model {model} --data new.csv --out predictions.csv)")
    written = [path for path in metrics["files"].values() if path] + [os.path.join(args.out, "metrics.json")]
    print("wrote " + ", ".join(written))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from .job import predict

    try:
        rows, out = predict(args.model, args.data, args.out, header=args.header, proba=args.proba)
    except FileNotFoundError as exc:
        raise CommandError(f"fastnn predict: file not found: {exc.filename or exc}") from None
    except (ValueError, TypeError, RuntimeError) as exc:
        raise CommandError(f"fastnn predict: {exc}") from None
    print(f"wrote {rows} predictions to {out}")
    return 0


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default, except flags (off unless given) and options
    whose help says what happens without them."""

    def _get_help_string(self, action):
        if action.nargs == 0 or action.default is None:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    from ._version import __version__

    formatter = _HelpFormatter
    parser = argparse.ArgumentParser(prog="fastnn", description="fastnn: dense networks trained fast.",
                                     formatter_class=formatter)
    parser.add_argument("--version", action="version", version=f"fastnn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="what this installation can run (backend report)", formatter_class=formatter)
    info.add_argument("--json", action="store_true", help="print as JSON")
    info.set_defaults(func=_info)

    from .job import DEVICE_CHOICES, IMPUTE_CHOICES, OPTIMIZERS, STATE_DTYPE_CHOICES, TASK_CHOICES, JobConfig

    d = JobConfig()
    train = sub.add_parser("train", help="train an MLP (bundled digits by default) and report the test accuracy",
                           formatter_class=formatter,
                           description="Train a Dense-BatchNorm-ReLU-Dropout MLP with a warm-up + cosine schedule "
                                       "and early stopping; write model.npz (for fastnn predict), curves.png, "
                                       "metrics.json and checkpoint.npz into --out.")
    train.add_argument("--data", default=d.data, help="digits | spirals | blobs | a .npz (X, y) or .csv file")
    train.add_argument("--label-column", default=d.label_column,
                       help="the label column of a .csv file: a header name ('label' when not given), or with "
                            "--no-header a 0-based index (the last column when not given)")
    train.add_argument("--no-header", dest="header", action="store_false",
                       help="the .csv file has no header row: columns are numbered from 0")
    train.add_argument("--task", choices=TASK_CHOICES, default=d.task,
                       help="classify or regress; auto infers it when unambiguous (text, booleans or at most 20 "
                            "distinct whole numbers: classes; fractions, or more distinct values than half the "
                            "samples: regression) and asks otherwise")
    train.add_argument("--impute", choices=IMPUTE_CHOICES, default=d.impute,
                       help="fill missing feature values with the training data's mean or median (saved with the "
                            "model); without it missing values are an error")
    train.add_argument("--hidden", type=_widths, default=",".join(map(str, d.hidden)),  # parsed by argparse
                       help="hidden layer widths")
    train.add_argument("--dropout", type=_option("dropout", float), default=d.dropout,
                       help="dropout probability after each hidden layer, in [0, 1)")
    train.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default=d.optimizer, help="the update rule")
    train.add_argument("--state-dtype", choices=STATE_DTYPE_CHOICES, default=d.state_dtype,
                       help="how the optimizer stores its state: float32, bfloat16 (half the bytes) or block-wise "
                            "int8 (about a quarter; not with rprop)")
    train.add_argument("--lr", type=_option("lr", float), default=d.lr,
                       help="peak learning rate (after the warm-up), > 0")
    train.add_argument("--weight-decay", type=_option("weight_decay", float), default=d.weight_decay,
                       help="L2 weight decay, >= 0 (adamw: decoupled, 0.01 when 0)")
    train.add_argument("--epochs", type=_option("epochs", int), default=d.epochs,
                       help="the most epochs to train (early stopping may end sooner)")
    train.add_argument("--batch-size", type=_option("batch_size", int), default=d.batch_size,
                       help="samples per training step")
    train.add_argument("--patience", type=_option("patience", int), default=d.patience,
                       help="early stopping: epochs without a better validation loss before stopping")
    train.add_argument("--test-size", type=_option("test_size", float), default=d.test_size,
                       help="fraction of the data held out for the final test, in (0, 1)")
    train.add_argument("--validation-split", type=_option("validation_split", float), default=d.validation_split,
                       help="fraction of the training part held out for validation, in (0, 1)")
    train.add_argument("--device", choices=DEVICE_CHOICES, default=d.device,
                       help="where to train; auto: the GPU when one is usable, else the CPU")
    train.add_argument("--seed", type=_option("seed", int), default=d.seed,
                       help="seed of the split, the initialisation, dropout and shuffling")
    train.add_argument("--out", default=d.out, help="output folder")
    train.add_argument("--verbose", type=int, choices=[0, 1, 2], default=d.verbose,
                       help="0: silent, 1: a progress bar, 2: one line per epoch")
    train.set_defaults(func=_train)

    predict = sub.add_parser("predict", help="apply a model file written by fastnn train to new data",
                             formatter_class=formatter,
                             description="Read a model file and a .csv (or .npz with X) of raw features, with the "
                                         "same column handling as training, and write one prediction per row.")
    predict.add_argument("--model", required=True, help="the model file (model.npz from fastnn train)")
    predict.add_argument("--data", required=True,
                         help="a .csv file (its feature columns by name; a label column is ignored) or a .npz with X")
    predict.add_argument("--out", default="predictions.csv", help="the CSV file to write")
    predict.add_argument("--no-header", dest="header", action="store_false",
                         help="the .csv file has no header row: features by position (a label column, if "
                              "present, where it was in training)")
    predict.add_argument("--proba", action="store_true", help="also write each class's probability (classifiers)")
    predict.set_defaults(func=_predict)

    bench = sub.add_parser("bench", help="throughput against NumPy, PyTorch and CuPy, as ratios measured in one run",
                           formatter_class=formatter)
    bench.add_argument("suite", nargs="?", default="all", choices=["optim", "mlp", "dist", "all"], help="which suite")
    bench.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where to measure")
    bench.add_argument("--out", default="bench/results", help="folder for the JSON, Markdown and PNG results")
    bench.add_argument("--quick", action="store_true", help="small cases and short timings (a smoke test)")
    bench.set_defaults(func=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CommandError as exc:
        print(f"fastnn: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
