"""``ctrkit models``: the models this version implements, with their papers."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("models", help="list the models", description="List the models with paper and year.")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ctrkit.registry import MODELS

    width = max(len(name) for name in MODELS)
    for name, info in MODELS.items():
        frameworks = "torch" + (", tf" if info.tf_class else "")
        print(f"{name:<{width}}  {info.title:<10} {info.year}  {info.paper}  [{frameworks}]")
    return 0
