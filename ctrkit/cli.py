"""The ``ctrkit`` command: one sub-command per module in :mod:`ctrkit.commands`.

Each command module defines ``register(subparsers)``, which adds its parser and sets
``func=run``. Modules import heavy libraries (torch, polars) inside ``run`` only, so that
``ctrkit --help`` and ``ctrkit inspect`` start quickly.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ctrkit import __version__
from ctrkit.errors import CtrkitError

COMMANDS = ("synth", "preprocess", "inspect", "models", "train", "evaluate", "predict")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ctrkit",
        description="Deep CTR models in PyTorch and TensorFlow, trained from an LMDB store.",
    )
    parser.add_argument("--version", action="version", version=f"ctrkit {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"ctrkit.commands.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CtrkitError as exc:
        print(f"ctrkit {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ctrkit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
