"""``ctrkit train``: train a model on a store (flags in :mod:`ctrkit.config`)."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    from ctrkit.config import add_train_arguments

    parser = subparsers.add_parser(
        "train",
        help="train a model on a store",
        description=(
            "Train a CTR model on a store built by `ctrkit preprocess`. Options come from the flags "
            "and an optional --config YAML file (flags win). Writes best.pt and last.pt (--framework tf: "
            "best.tf and last.tf, safetensors), metrics.json and TensorBoard logs to --model_save_dir; a "
            "directory holding a previous run needs --resume or --overwrite. SIGINT/SIGTERM stop after "
            "the current step with the last checkpoint saved (exit code 130/143); --resume continues exactly, "
            "reading the model, framework, options and store from the run's last checkpoint "
            "(`ctrkit train --resume --model_save_dir DIR`). FuxiCTR's option names (embedding_dim, "
            "net_dropout, a model_config.yaml with Base and one experiment) are read as ctrkit's, with a note."
        ),
    )
    add_train_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ctrkit.config import TrainConfig

    config = TrainConfig.from_args(args)
    from ctrkit.training.errors import TrainingInterrupted
    from ctrkit.training.frameworks import framework_module, train_from_config

    try:
        metrics = train_from_config(config, warn=lambda message: print(message, file=sys.stderr))
    except TrainingInterrupted as exc:
        # not an error of the user's making: the shell's code for death by that signal, one line
        print(f"ctrkit train: {exc}", file=sys.stderr)
        return exc.exit_code
    if metrics.get("test") and framework_module(config.framework).launch_rank(config)[0] == 0:  # torchrun's RANK, TF_CONFIG's task
        print(f"test auc {metrics['test']['auc']:.5f}  logloss {metrics['test']['logloss']:.5f}  "
              f"(best epoch {metrics['best_epoch']}; {config.save_dir})")
    return 0
