"""The ``fastnn`` command line: ``python -m fastnn info|train|bench``."""

from __future__ import annotations

import argparse
import json
import sys


def _info(args: argparse.Namespace) -> int:
    from ._info import backend_info, format_info

    info = backend_info()
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastnn", description="fastnn: dense networks trained fast.")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="what this installation can run (backend report)")
    info.add_argument("--json", action="store_true", help="print as JSON")
    info.set_defaults(func=_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
