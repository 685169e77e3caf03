"""The ``fastnn`` command line: ``python -m fastnn info|train|bench``."""

from __future__ import annotations

import argparse
import importlib
import json
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
    from ._backend import native_available
    from ._info import backend_info

    info = backend_info()
    if not info["cupy_installed"]:
        raise CommandError(f"{command} --device cuda: CuPy is not installed "
                           "(pip install \"fastnn[cuda]\", or fastnn[cuda12] for CUDA 12)")
    if not native_available("cuda"):
        raise CommandError(f"{command} --device cuda: this fastnn was built without its CUDA kernels "
                           "(reinstall with the CUDA toolkit on PATH, FASTNN_CUDA=ON)")
    if info["cuda_devices"] == 0:
        raise CommandError(f"{command} --device cuda: no CUDA GPU is visible on this machine")


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastnn", description="fastnn: dense networks trained fast.")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="what this installation can run (backend report)")
    info.add_argument("--json", action="store_true", help="print as JSON")
    info.set_defaults(func=_info)

    bench = sub.add_parser("bench", help="throughput against NumPy, PyTorch and CuPy, as ratios measured in one run")
    bench.add_argument("suite", nargs="?", default="all", choices=["optim", "mlp", "all"])
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
