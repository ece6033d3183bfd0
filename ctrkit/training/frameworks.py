"""Dispatch on the framework: ``train_from_config`` for ``ctrkit train``, ``load_for_inference`` for
``ctrkit evaluate`` and ``ctrkit predict``.

Each framework's trainer module (``ctrkit.pytorch.trainer``, ``ctrkit.tensorflow.trainer``) provides,
at module level:

* ``launch_rank(config) -> (rank, world_size)`` — this process's place among those training
  together, after checking the devices the config names (``ConfigError`` for a missing GPU);
* ``fit_from_config(config, store, *, warn) -> dict`` — seed, build the model from the registry,
  ``warn`` about options the model does not use (``warn`` is None on ranks other than 0), train;
  returns the ``metrics.json`` content;
* ``load_for_inference(path, **overrides)`` — a trainer rebuilt from a checkpoint, with
  ``evaluate(store, split) -> dict``, ``predict(batches) -> np.ndarray`` and
  ``check_schema(store)``; ``overrides`` are ``gpu_ids``, ``eval_batch_size``, ``num_workers``
  and ``threads``, already validated.

This module imports neither framework; :func:`check_framework_available` tells whether one can be
used without importing it.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Any, Callable

from ctrkit.errors import ConfigError, StoreError
from ctrkit.training.rundir import (
    CHECKPOINT_NAMES,
    FRAMEWORK_NAMES,
    check_previous_run,
    check_resume_source,
    check_run_directory,
)

#: The trainer module of each framework, and the package it needs.
TRAINER_MODULES = {"torch": "ctrkit.pytorch.trainer", "tf": "ctrkit.tensorflow.trainer"}
REQUIRED_PACKAGES = {"torch": ("torch", "PyTorch", "torch"), "tf": ("tensorflow", "TensorFlow", "tf")}


def check_framework_available(framework: str, subject: str = "") -> None:
    """ConfigError (one line, naming what to install) unless ``framework`` can be used here.

    ``subject`` starts the message (default ``--framework <framework>``). Imports nothing.
    """
    package, shown, extra = REQUIRED_PACKAGES[framework]
    subject = subject or f"--framework {framework}"
    if importlib.util.find_spec(package) is None:
        raise ConfigError(f"{subject}: {shown} is not installed; install it with pip install 'ctrkit[{extra}]'")
    module_file = Path(__file__).resolve().parents[1].joinpath(*TRAINER_MODULES[framework].split(".")[1:])
    if not module_file.with_suffix(".py").is_file():
        raise ConfigError(f"{subject}: {shown} training is not available yet; use --framework torch")


def framework_module(framework: str, subject: str = "") -> Any:
    """The trainer module of ``framework`` (see the module docstring for what it provides)."""
    check_framework_available(framework, subject)
    try:
        return importlib.import_module(TRAINER_MODULES[framework])
    except ImportError as exc:
        _, shown, extra = REQUIRED_PACKAGES[framework]
        raise ConfigError(f"{subject or '--framework ' + framework}: {shown} cannot be imported ({exc}); "
                          f"reinstall it with pip install 'ctrkit[{extra}]'") from None


# ---------------------------------------------------------------------------------------------
# ctrkit train
# ---------------------------------------------------------------------------------------------
def train_from_config(config: Any, *, warn: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Check everything that can be checked, then build the model and train it in its framework.

    All user errors (framework not installed, bad GPU ids, missing or incomplete store, unknown
    model, bad hyper-parameter values, ``--resume`` without a ``last`` checkpoint of this framework,
    a ``--model_save_dir`` that cannot be a directory or that holds a previous run without
    ``--resume``/``--overwrite``) are raised before a file is written.
    """
    from ctrkit.data.store import Store
    from ctrkit.registry import check_fits_in_memory

    config.validate()
    if not config.data:
        raise ConfigError("--data STORE is required (a store built by `ctrkit preprocess`)")
    module = framework_module(config.framework)
    rank, _ = module.launch_rank(config)
    try:
        store = Store(config.data)
    except StoreError as exc:
        raise StoreError(f"--data: {exc}") from None
    for split in ("train", "valid"):
        if split not in store.splits or not store.splits[split].labeled:
            raise StoreError(f"--data: store {store.path} has no labeled {split!r} split, which training needs")
    check_fits_in_memory(config.model, store.schema, config.hparams())  # before a table is allocated
    if config.monitor == "gauc" and not store.carries_groups("valid"):  # rather than after an epoch
        raise ConfigError(f"--monitor gauc: the validation rows of store {store.path} carry no user (group) column, "
                          "so gAUC cannot be computed; use a store with one, or --monitor auc")
    main_process = rank == 0
    if config.resume and main_process:  # rank 0 reads it
        check_resume_source(config.save_dir, config.framework)
    if main_process:  # the path and a previous run, before any work (fit checks again under the lock)
        check_run_directory(config.save_dir)
        check_previous_run(config.save_dir, resume=config.resume, overwrite=config.overwrite)
    return module.fit_from_config(config, store, warn=warn if main_process else None)


# ---------------------------------------------------------------------------------------------
# ctrkit evaluate / predict
# ---------------------------------------------------------------------------------------------
def checkpoint_framework(path: str | Path) -> str:
    """``torch`` or ``tf``: the framework whose checkpoint ``path`` is (a file, or a run directory).

    By name, without reading it: ``*.tf`` (file or directory) and a run directory holding
    ``best.tf`` but no ``best.pt`` are TensorFlow's; a directory holding neither checkpoint is an
    anything else is left to the PyTorch loader, whose errors name what is wrong (``no checkpoint
    at DIR/best.pt``, ``not a readable ctrkit checkpoint``).
    """
    path = Path(path)
    tf_suffix = Path(CHECKPOINT_NAMES["tf"]["best"]).suffix
    if path.suffix == tf_suffix:
        return "tf"
    if path.is_dir():
        tf_best, torch_best = (path / CHECKPOINT_NAMES[fw]["best"] for fw in ("tf", "torch"))
        if tf_best.exists() and not torch_best.exists():
            return "tf"
    return "torch"


def load_for_inference(path: str | Path, **overrides: Any) -> Any:
    """The trainer of the checkpoint at ``path``, in its framework, ready to evaluate and predict."""
    framework = checkpoint_framework(path)
    module = framework_module(framework, subject=f"{path} is a {FRAMEWORK_NAMES[framework]} checkpoint")
    return module.load_for_inference(path, **overrides)
