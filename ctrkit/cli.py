"""The ``ctrkit`` command: one sub-command per module in :mod:`ctrkit.commands`.

Each command module defines ``register(subparsers)``, which adds its parser and sets
``func=run``. Modules import heavy libraries (torch, polars) inside ``run`` only, so that
``ctrkit --help`` and ``ctrkit inspect`` start quickly.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import signal
import sys

from ctrkit import __version__
from ctrkit.errors import CtrkitError

COMMANDS = ("synth", "preprocess", "inspect", "models", "train", "evaluate", "predict", "convert", "export", "serve", "report")


class CtrkitArgumentParser(argparse.ArgumentParser):
    """``argparse`` with both spellings of every long flag (``--batch_size`` and ``--batch-size``)
    and a "did you mean" for an unknown one. Sub-command parsers are of this class too."""

    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        return super().parse_known_args([self._known_spelling(token) for token in args], namespace)

    def _known_spelling(self, token: str) -> str:
        """``token`` with ``-`` and ``_`` swapped in its flag name where only that spelling is known."""
        if not token.startswith("--") or len(token) < 3:
            return token
        name, equals, value = token.partition("=")
        if name in self._option_string_actions:
            return token
        body = name[2:]
        negated = body.startswith(("no-", "no_"))  # --no-batch-norm: BooleanOptionalAction's --no-batch_norm
        rest = body[3:] if negated else body
        for prefix in ("no-", "no_") if negated else ("",):
            for candidate in (rest.replace("-", "_"), rest.replace("_", "-")):
                spelled = f"--{prefix}{candidate}"
                if spelled in self._option_string_actions:
                    return spelled + equals + value
        return token

    def unknown_flags_message(self, extras: list[str]) -> str:
        """``unrecognized arguments: …`` with the closest known flag for each unknown one."""
        by_spelling = {o.replace("-", "_"): o for o in sorted(self._option_string_actions) if o.startswith("--")}
        hints = []
        for token in extras:
            name = token.partition("=")[0]
            if name.startswith("--"):
                close = difflib.get_close_matches(name.replace("-", "_"), list(by_spelling), n=1)
                if close:
                    hints.append(f"{name}: did you mean {by_spelling[close[0]]}?")
        message = f"unrecognized arguments: {' '.join(extras)}"
        return message + ("; " + "; ".join(hints) if hints else "")


def build_parser() -> argparse.ArgumentParser:
    parser = CtrkitArgumentParser(
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
    args, extras = parser.parse_known_args(argv)
    if extras:  # the sub-command's own usage line and the closest flags, not the top-level usage
        command = _chosen_parser(parser, args)
        command.error(command.unknown_flags_message(extras))
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


def _chosen_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The parser of the sub-command ``args`` chose, the deepest one (``preprocess criteo``)."""
    while True:
        actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        chosen = getattr(args, actions[0].dest, None) if actions else None
        if chosen not in (actions[0].choices if actions else {}):
            return parser
        parser = actions[0].choices[chosen]


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
