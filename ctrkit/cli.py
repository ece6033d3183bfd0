"""The ``ctrkit`` command: one sub-command per module in :mod:`ctrkit.commands`.

Each command module defines ``register(subparsers)``, which adds its parser and sets
``func=run``. Modules import heavy libraries (torch, polars) inside ``run`` only, so that
``ctrkit --help`` and ``ctrkit inspect`` start quickly.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys

from ctrkit import __version__
from ctrkit.errors import CtrkitError

COMMANDS = ("synth", "preprocess", "inspect", "models", "train", "evaluate", "predict", "convert")


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
        return int(getattr(exc, "exit_code", 2))  # e.g. 143 for a run stopped by SIGTERM
    except KeyboardInterrupt:
        print(f"ctrkit {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `ctrkit predict ... --out - | head`: the reader has all it wanted
        _drop_stdout()
        return 128 + signal.SIGPIPE
    except Exception as exc:
        message = _file_system_error(exc)
        if message is None:
            raise
        print(f"ctrkit {args.command}: error: {message}", file=sys.stderr)
        return 2


def _file_system_error(exc: Exception) -> str | None:
    """One line for a failure of the disk or of a path that no command turned into its own error."""
    from ctrkit.fileio import is_disk_full, os_error_message

    if isinstance(exc, OSError):
        return os_error_message(exc)
    if is_disk_full(exc):  # lmdb.Error, torch's zip writer (RuntimeError), ...
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return f"no space left on device ({first_line})"
    return None


def _drop_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's last flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout replaced, e.g. captured by a test
        pass


if __name__ == "__main__":
    sys.exit(main())
