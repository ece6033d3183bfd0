"""``ctrkit models [MODEL] [--json]``: the models, their papers and default hyper-parameters.

Without a model: one line per model (name, title, year, paper, frameworks) and an indented line of
its default hyper-parameters. With one (``ctrkit models deepfm`` or ``--model deepfm``): the
model's paper, frameworks, aliases, the inputs it needs, and each hyper-parameter with its default,
the flag that sets it (``--embed_size`` or ``--model_args key=value``) and its meaning. ``--json``
prints the same as JSON. Imports no framework (:func:`ctrkit.registry.model_hparams` reads the
defaults from the model's source).
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "models", help="list the models and their default hyper-parameters",
        description="List the models with paper, year and default hyper-parameters; with a model name, "
                    "its details: frameworks, inputs, and each hyper-parameter with its flag and meaning.")
    parser.add_argument("name", nargs="?", metavar="MODEL", help="show one model in detail (e.g. deepfm)")
    parser.add_argument("--model", dest="model_flag", metavar="MODEL", help="the same as MODEL")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ctrkit.errors import ConfigError
    from ctrkit.registry import MODELS, get_model_info

    names = [n for n in (args.name, args.model_flag) if n]
    if len(names) == 2 and get_model_info(names[0]).name != get_model_info(names[1]).name:
        raise ConfigError(f"MODEL {names[0]} and --model {names[1]} name different models; give one")
    if names:
        info = get_model_info(names[0])
        described = describe(info.name)
        print(json.dumps(described, indent=2) if args.json else "\n".join(detail_lines(described)))
        return 0
    described = [describe(name) for name in MODELS]
    if args.json:
        print(json.dumps(described, indent=2))
        return 0
    width = max(len(d["name"]) for d in described)
    for d in described:
        print(f"{d['name']:<{width}}  {d['title']:<10} {d['year']}  {d['paper']}  [{', '.join(d['frameworks'])}]")
        defaults = " ".join(f"{h['name']}={_show(h['default'])}" for h in d["hparams"])
        print(f"{'':<{width}}    {defaults or '(no hyper-parameters)'}")
    return 0


def describe(name: str) -> dict[str, Any]:
    """What ``ctrkit models`` shows of one model, as plain values (the ``--json`` form)."""
    from ctrkit.config import MODEL_HPARAMS
    from ctrkit.registry import ALIASES, get_model_info, model_hparams

    info = get_model_info(name)
    hparams = []
    for h in model_hparams(info.name):
        flag = f"--{h.name}" if h.name in MODEL_HPARAMS else f"--model_args {h.name}=VALUE"
        fixed = h.name in info.defaults  # set by the name (autoint+: use_dnn), not by a flag
        hparams.append({"name": h.name, "default": h.default, "flag": None if fixed else flag,
                        "meaning": _meaning(h.name, h.meaning)})
    return {
        "name": info.name, "title": info.title, "paper": info.paper, "year": info.year,
        "frameworks": ["torch"] + (["tf"] if info.tf_class else []),
        "aliases": sorted(alias for alias, target in ALIASES.items() if target == info.name),
        "inputs": _inputs(info.needs_sequence),
        "hparams": hparams,
    }


def detail_lines(d: dict[str, Any]) -> list[str]:
    """The text of ``ctrkit models MODEL``."""
    lines = [f"{d['title']} ({d['name']}): {d['paper']}",
             f"  frameworks: {', '.join(d['frameworks'])}"]
    if d["aliases"]:
        lines.append(f"  aliases: {', '.join(d['aliases'])}")
    lines.append(f"  inputs: {d['inputs']}")
    if not d["hparams"]:
        lines.append("  hyper-parameters: none")
        return lines
    lines.append("  hyper-parameters (default, how to set it, meaning):")
    rows = [(f"{h['name']}={_show(h['default'])}", h["flag"] or f"fixed by --model {d['name']}", h["meaning"])
            for h in d["hparams"]]
    first = max(len(r[0]) for r in rows)
    second = max(len(r[1]) for r in rows)
    lines += [f"    {a:<{first}}  {b:<{second}}  {c}".rstrip() for a, b, c in rows]
    return lines


def _meaning(name: str, docstring: str) -> str:
    """The model's own words for a keyword, or the flag's help where the docstring gives only a symbol."""
    from ctrkit.config import _HELP

    if len(docstring.split()) >= 2:
        return docstring
    return _HELP.get(name, docstring)


def _inputs(needs_sequence: bool) -> str:
    if needs_sequence:
        return ("sparse and dense fields, and at least one sequence field (a behaviour history, all of one "
                "max_len; the field it shares a vocabulary with is the candidate), e.g. a Taobao store")
    return "sparse and dense fields (sequence fields, if any, mean-pooled), e.g. a Criteo store"


def _show(value: Any) -> str:
    return str(value)
