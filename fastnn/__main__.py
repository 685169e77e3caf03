"""The ``fastnn`` command line: ``python -m fastnn info|train|bench``."""

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
    if metrics["task"] == "classification":
        print(f"test accuracy: {test['accuracy']:.4f}  (test loss {test['loss']:.4f}, "
              f"{metrics['epochs_run']} epochs, {metrics['seconds']:.1f} s on {where})")
    else:
        print(f"test mse: {test['loss']:.4f}  (mae {test.get('mae', float('nan')):.4f}, "
              f"{metrics['epochs_run']} epochs, {metrics['seconds']:.1f} s on {where})")
    written = [path for path in metrics["files"].values() if path] + [os.path.join(args.out, "metrics.json")]
    print("wrote " + ", ".join(written))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastnn", description="fastnn: dense networks trained fast.")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="what this installation can run (backend report)")
    info.add_argument("--json", action="store_true", help="print as JSON")
    info.set_defaults(func=_info)

    from .job import OPTIMIZERS, JobConfig

    d = JobConfig()
    train = sub.add_parser("train", help="train an MLP (bundled digits by default) and report the test accuracy",
                           description="Train Dense-BatchNorm-ReLU-Dropout MLP with a warm-up + cosine schedule "
                                       "and early stopping; write curves.png, metrics.json and checkpoint.npz.")
    train.add_argument("--data", default=d.data, help="digits | spirals | blobs | a .npz (X, y) or .csv file "
                                                      f"(default {d.data})")
    train.add_argument("--label-column", default=d.label_column, help="the label column of a .csv file")
    train.add_argument("--hidden", type=_widths, default=d.hidden, help="hidden widths, e.g. 256,128")
    train.add_argument("--dropout", type=float, default=d.dropout)
    train.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default=d.optimizer)
    train.add_argument("--lr", type=float, default=d.lr)
    train.add_argument("--weight-decay", type=float, default=d.weight_decay)
    train.add_argument("--epochs", type=int, default=d.epochs)
    train.add_argument("--batch-size", type=int, default=d.batch_size)
    train.add_argument("--patience", type=int, default=d.patience, help="early-stopping patience in epochs")
    train.add_argument("--test-size", type=float, default=d.test_size)
    train.add_argument("--validation-split", type=float, default=d.validation_split)
    train.add_argument("--device", choices=["cpu", "cuda", "auto"], default=d.device)
    train.add_argument("--seed", type=int, default=d.seed)
    train.add_argument("--out", default=d.out, help=f"output folder (default {d.out})")
    train.add_argument("--verbose", type=int, choices=[0, 1, 2], default=d.verbose)
    train.set_defaults(func=_train)

    bench = sub.add_parser("bench", help="throughput against NumPy, PyTorch and CuPy, as ratios measured in one run")
    bench.add_argument("suite", nargs="?", default="all", choices=["optim", "mlp", "dist", "all"])
    bench.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
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
