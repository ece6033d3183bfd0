"""``ctrkit export``: being written (issue 11)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help="(not available yet)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ctrkit.errors import ConfigError

    raise ConfigError("ctrkit export is not available yet")
