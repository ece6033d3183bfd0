"""``TrainConfig``: every training option, from flags, a YAML file, or Python.

Precedence, lowest to highest: the defaults below, the keys of ``--config run.yaml``, then the
flags the user actually typed (flags are registered with ``argparse.SUPPRESS`` defaults, so an
absent flag never overrides the file). Values may arrive as strings (flags), YAML scalars/lists, or
Python objects; :meth:`TrainConfig.validate` coerces them to plain types and raises a
:class:`~ctrkit.errors.ConfigError` naming the flag (``--lr must be > 0, got -1``) for anything out
of range. The original project's flags are kept with their spelling (``--batch_size``,
``--gpu_ids 1,2,3,4``, ``--model_save_dir``...).

Model hyper-parameter flags (``--embed_size``, ``--hidden_units``, ``--cross_layers`` ...) default to
``None`` = "the model's own default"; :meth:`TrainConfig.hparams` passes only those that were set,
plus the free-form ``--model_args key=value,...``, to :func:`ctrkit.registry.build_torch_model`.

This module imports neither torch nor the models, so building the CLI parser stays fast.
"""

from __future__ import annotations

import argparse
import math
import numbers
import os
import re
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from ctrkit.errors import ConfigError
from ctrkit.training.policy import MONITORS

OPTIMIZERS = ("Adam", "AdamW", "Adagrad", "SGD")
LOSSES = ("BCE",)
FRAMEWORKS = ("torch", "tf")
PRECISIONS = ("fp32", "bf16")
#: initialisation of nn.Linear / nn.Conv1d weights: the models' own Xavier normal (FuxiCTR/BARS),
#: or PyTorch's default (Kaiming uniform, a=sqrt(5); what torch-rechub and DeepCTR-Torch's MLPs get)
INITS = ("xavier_normal", "torch_default")
_FRAMEWORK_ALIASES = {"pytorch": "torch", "tensorflow": "tf"}

#: Fields passed through to the model (``None`` = the model's default).
MODEL_HPARAMS = (
    "embed_size",
    "hidden_units",
    "dropout",
    "batch_norm",
    "cross_layers",
    "cin_layer_units",
    "attention_layers",
    "num_heads",
    "attention_dim",
    "attention_factor",
    "aux_loss_weight",
)

# The ranges below are the models' own (``ctrkit/pytorch/layers/_checks.py`` and the constructors);
# tests/test_config.py builds every model at each bound, so the two cannot drift apart silently.
#: Counts and sizes: each must be > 0 (``check_int``'s minimum). DCN without cross layers or
#: AutoInt without attention layers would not be the model the user asked for.
POSITIVE_INT_HPARAMS = (
    "embed_size", "cross_layers", "attention_layers", "num_heads", "attention_dim", "attention_factor",
)
#: Models that are nothing but their DNN: ``--hidden_units ""`` is refused for them (as ``DNN`` does).
#: The other models accept no hidden layers (their deep term becomes one Linear).
MODELS_NEEDING_HIDDEN_UNITS = ("dnn",)


@dataclass
class TrainConfig:
    """All options of a training run (see ``ctrkit train --help`` for each one's meaning)."""

    model: str = ""
    framework: str = "torch"
    data: str = ""
    epochs: int = 100
    batch_size: int = 4096
    optimizer: str = "Adam"
    loss: str = "BCE"
    gpu_ids: list = field(default_factory=list)
    lr: float = 1e-3
    model_save_dir: str = ""
    # model hyper-parameters (None: the model's default)
    embed_size: int | None = None
    hidden_units: list | None = None
    dropout: float | None = None
    batch_norm: bool | None = None
    cross_layers: int | None = None
    cin_layer_units: list | None = None
    attention_layers: int | None = None
    num_heads: int | None = None
    attention_dim: int | None = None
    attention_factor: int | None = None
    aux_loss_weight: float | None = None
    model_args: dict = field(default_factory=dict)
    # initialisation, regularisation and schedule
    init: str = "xavier_normal"
    weight_decay: float = 0.0
    embedding_l2: float = 0.0
    patience: int = 2
    lr_patience: int = 0
    lr_factor: float = 0.1
    monitor: str = "auc"
    # run control
    seed: int = 2018
    num_workers: int = 0
    precision: str = "fp32"
    xla: bool = False
    resume: bool = False
    overwrite: bool = False
    eval_batch_size: int = 0
    checkpoint_every: int = 0
    max_steps: int = 0
    log_every: int = 50
    cpu_processes: int = 0
    threads: int = 0

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_args(cls, args: argparse.Namespace, *, note: Callable[[str], None] | None = None) -> "TrainConfig":
        """Merge ``--config`` (if given) with the flags present in ``args``, then validate.

        ``note`` receives one line per FuxiCTR key read as ctrkit's (default: printed to stderr).
        """
        from ctrkit.fuxictr import FLAG_ALIASES

        merged: dict[str, Any] = {}
        names = field_names()
        flags = {k: v for k, v in vars(args).items() if k in names}
        aliases = {k: v for k, v in vars(args).items() if k in FLAG_ALIASES}
        if aliases:  # --embedding_dim 16: FuxiCTR's name, read as ctrkit's with a note
            flags = options_from({**flags, **aliases}, source="the command line", model=flags.get("model"),
                                 note=note, fuxictr=False)
        config_path = getattr(args, "config", None)
        if config_path:
            merged.update(load_yaml(config_path, model=flags.get("model"), note=note))
        merged.update(flags)
        return cls(**resume_options(merged, note=note)).validate()

    @classmethod
    def from_dict(cls, data: dict, *, strict: bool = True) -> "TrainConfig":
        """Inverse of :meth:`to_dict`; ``strict=False`` drops unknown keys (older checkpoints)."""
        names = field_names()
        unknown = sorted(set(data) - names)
        if unknown and strict:
            raise ConfigError(f"unknown training options: {', '.join(unknown)}")
        return cls(**{k: v for k, v in data.items() if k in names}).validate()

    def to_dict(self) -> dict:
        """Plain types only (str, int, float, bool, None, lists, dicts), for checkpoints and JSON."""
        return asdict(self)

    def replace(self, **changes: Any) -> "TrainConfig":
        """A validated copy with some options changed."""
        return type(self)(**{**self.to_dict(), **changes}).validate()

    # -- derived values ----------------------------------------------------------------------
    @property
    def world_size(self) -> int:
        """Processes the launcher starts: one per GPU id, or ``cpu_processes``, or 1."""
        if len(self.gpu_ids) > 1:
            return len(self.gpu_ids)
        return max(1, self.cpu_processes)

    @property
    def save_dir(self) -> Path:
        return Path(self.model_save_dir)

    def hparams(self) -> dict[str, Any]:
        """Model hyper-parameters that were set (flags, YAML or ``model_args``), for the registry."""
        out = {name: getattr(self, name) for name in MODEL_HPARAMS if getattr(self, name) is not None}
        out.update(self.model_args)
        return out

    # -- validation --------------------------------------------------------------------------
    def validate(self) -> "TrainConfig":
        """Coerce every option to its type and check its range; returns ``self``.

        Raises:
            ConfigError: the message names the flag, e.g. ``--dropout must be in [0, 1), got 1.5``.
        """
        self._validate_required()
        self._validate_run()
        self._validate_training()
        self._validate_model_hparams()
        self._validate_devices()
        return self

    def _validate_required(self) -> None:
        framework = _FRAMEWORK_ALIASES.get(str(self.framework).lower(), self.framework)
        self.framework = _choice("framework", framework, FRAMEWORKS)
        from ctrkit.training.frameworks import check_framework_available  # light: imports no framework

        check_framework_available(self.framework)
        if not self.model or not str(self.model).strip():
            raise ConfigError("--model is required (see `ctrkit models` for the list)")
        from ctrkit.registry import get_model_info  # light: the registry imports no torch

        try:
            self.model = get_model_info(str(self.model)).name
        except ConfigError as exc:
            raise ConfigError(f"--model: {exc}") from None
        self.data = str(self.data or "")  # required by `ctrkit train`, not by Trainer.fit(store)
        self.model_save_dir = str(self.model_save_dir or Path("checkpoints") / self.model)

    def _validate_training(self) -> None:
        self.epochs = _int("epochs", self.epochs, minimum=1)
        self.batch_size = _int("batch_size", self.batch_size, minimum=1)
        self.eval_batch_size = _int("eval_batch_size", self.eval_batch_size, minimum=0)
        self.optimizer = _choice("optimizer", self.optimizer, OPTIMIZERS)
        self.loss = _choice("loss", self.loss, LOSSES)
        self.lr = _float("lr", self.lr, positive=True)
        self.init = _choice("init", self.init, INITS)
        self.weight_decay = _float("weight_decay", self.weight_decay)
        self.embedding_l2 = _float("embedding_l2", self.embedding_l2)
        self.patience = _int("patience", self.patience, minimum=0)
        self.lr_patience = _int("lr_patience", self.lr_patience, minimum=0)
        self.lr_factor = _float("lr_factor", self.lr_factor, positive=True)
        if self.lr_factor >= 1.0:
            raise ConfigError(f"--lr_factor must be in (0, 1), got {_show(self.lr_factor)}")
        self.monitor = _choice("monitor", self.monitor, tuple(MONITORS))

    def _validate_run(self) -> None:
        self.seed = _int("seed", self.seed, minimum=0)
        self.num_workers = _int("num_workers", self.num_workers, minimum=0)
        self.precision = _choice("precision", self.precision, PRECISIONS)
        self.xla = _bool("xla", self.xla)
        if self.xla and self.framework != "tf":
            raise ConfigError("--xla compiles the TensorFlow training step: it needs --framework tf "
                              "(the PyTorch models run their own fused kernels)")
        self.resume = _bool("resume", self.resume)
        self.overwrite = _bool("overwrite", self.overwrite)
        if self.resume and self.overwrite:
            raise ConfigError("--resume and --overwrite exclude each other: --resume continues the run in "
                              "--model_save_dir, --overwrite replaces it")
        self.checkpoint_every = _int("checkpoint_every", self.checkpoint_every, minimum=0)
        self.max_steps = _int("max_steps", self.max_steps, minimum=0)
        self.log_every = _int("log_every", self.log_every, minimum=1)
        self.cpu_processes = _int("cpu_processes", self.cpu_processes, minimum=0)
        self.threads = _int("threads", self.threads, minimum=0)

    def _validate_model_hparams(self) -> None:
        self.model_args = _model_args(self.model_args)
        clash = sorted(set(self.model_args) & set(MODEL_HPARAMS))
        if clash:
            raise ConfigError(f"--model_args: {', '.join(clash)} has its own flag; use --{clash[0]}")
        for name in POSITIVE_INT_HPARAMS:
            setattr(self, name, _optional(_positive_int, name, getattr(self, name)))
        self.dropout = _optional(_dropout, "dropout", self.dropout)
        self.aux_loss_weight = _optional(_float, "aux_loss_weight", self.aux_loss_weight)
        self.batch_norm = _optional(_bool, "batch_norm", self.batch_norm)
        raw = self.hidden_units
        self.hidden_units = _optional(_units, "hidden_units", raw)
        if self.hidden_units == [] and self.model in MODELS_NEEDING_HIDDEN_UNITS:
            raise ConfigError(f"--hidden_units must list at least one layer size for --model {self.model}, got {raw!r}")
        raw = self.cin_layer_units
        self.cin_layer_units = _optional(_units, "cin_layer_units", raw, allow_empty=False)
        # CIN's split_half (xDeepFM's default, off with --model_args split_half=false) halves every
        # layer but the last between the next layer and the output.
        if self.cin_layer_units and self.model_args.get("split_half", True) is not False:
            if any(units % 2 for units in self.cin_layer_units[:-1]):
                raise ConfigError(
                    "--cin_layer_units must be even except the last (split_half is on; "
                    f"--model_args split_half=false allows odd sizes), got {_show(raw)}"
                )

    def _validate_devices(self) -> None:
        self.gpu_ids = _gpu_ids(self.gpu_ids)
        if self.gpu_ids and self.cpu_processes > 1:
            raise ConfigError("--cpu_processes cannot be combined with --gpu_ids (pick CPU or GPU training)")
        world = self.world_size
        if self.batch_size % world:
            flag = "--gpu_ids" if len(self.gpu_ids) > 1 else "--cpu_processes"
            raise ConfigError(
                f"--batch_size {self.batch_size} must be divisible by the number of processes ({world}, from {flag})"
            )


#: options a resumed run does not take from its checkpoint: the run control of one invocation
#: (``max_steps`` counts steps from the start of the run), and what ``--resume`` itself decides
NOT_RESUMED = ("resume", "overwrite", "max_steps", "model_save_dir", "data")


def _given_true(options: dict[str, Any], name: str) -> bool:
    return options.get(name) not in (None, False) and _bool(name, options[name])


def resume_options(given: dict[str, Any], *, note: Callable[[str], None] | None = None) -> dict[str, Any]:
    """``--resume``: the options the run in ``--model_save_dir`` was trained with, under those ``given``
    (``given`` unchanged without ``resume``).

    The model, framework, hyper-parameters and the other options come from the ``last`` checkpoint
    (``last.pt`` or ``last.tf``), so ``ctrkit train --resume --model_save_dir DIR --epochs 5`` needs
    nothing else; ``--data`` defaults to the store the run was trained on. A ``--model`` or
    ``--framework`` that contradicts the checkpoint is a one-line ConfigError naming both.
    """
    from ctrkit.registry import get_model_info
    from ctrkit.training.rundir import find_resume_checkpoint, read_run_entries

    if not _given_true(given, "resume") or _given_true(given, "overwrite"):  # both: validation refuses them
        return given
    model = str(given.get("model") or "").strip()
    try:
        model = get_model_info(model).name if model else ""
    except ConfigError:
        return given  # validation names the unknown model
    save_dir = given.get("model_save_dir") or (str(Path("checkpoints") / model) if model else "")
    if not save_dir:
        raise ConfigError("--resume needs --model_save_dir DIR (the run to continue)")
    framework = given.get("framework")
    if framework is not None:
        framework = _choice("framework", _FRAMEWORK_ALIASES.get(str(framework).lower(), framework), FRAMEWORKS)
    path, framework = find_resume_checkpoint(Path(save_dir), framework)
    entries = read_run_entries(path, framework)
    saved, name = entries["config"], entries["model_name"]
    if model and model != name:
        raise ConfigError(f"--resume: {path} holds a {name} model, not --model {given['model']}")
    names = field_names()
    merged = {k: v for k, v in saved.items() if k in names and k not in NOT_RESUMED}
    merged.update(given, model=name, framework=framework, model_save_dir=save_dir)
    taken = f"--resume: {path}: model {name}, --framework {framework} and the options it was trained with"
    if not given.get("data"):
        recorded = str(saved.get("data") or "")
        if recorded and not Path(recorded).exists():
            raise ConfigError(f"--data not given, and the store {path} was trained on, {recorded}, is gone; "
                              "pass --data STORE")
        merged["data"] = recorded
        taken += f", --data {recorded}" if recorded else ""
    if not model or not given.get("data"):  # say where what was not given came from
        (note or _print_note)(taken + " (flags given override them)")
    return merged


def field_names() -> set[str]:
    return {f.name for f in fields(TrainConfig)}


# ---------------------------------------------------------------------------------------------
# YAML
# ---------------------------------------------------------------------------------------------
def load_yaml(path: str | Path, *, model: str | None = None,
              note: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Read a run file: a mapping of option names (``batch_size`` or ``batch-size``) to values.

    A FuxiCTR ``model_config.yaml`` (``Base`` and one experiment) or FuxiCTR's key names are read as
    ctrkit's options (:func:`options_from`; ``model`` is the ``--model`` flag, for the keys whose
    meaning depends on it). Anything else (a missing, unreadable, binary or non-UTF-8 file, YAML that is not a mapping,
    unknown keys) is a one-line :class:`ConfigError` naming the file.
    """
    import yaml

    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"--config {path}: cannot read it: {(exc.strerror or str(exc)).lower()}") from None
    text = _yaml_text(path, raw)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"--config {path}: not valid YAML: {' '.join(str(exc).split())}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a mapping of option: value, got {type(data).__name__}")
    from ctrkit.fuxictr import flatten_layout

    data, experiment = flatten_layout(data, f"--config {path}")
    return options_from(data, source=f"--config {path}", model=model, note=note, experiment=experiment)


def options_from(options: dict[str, Any], *, source: str, model: str | None = None,
                 note: Callable[[str], None] | None = None, experiment: str | None = None,
                 fuxictr: bool | None = None) -> dict[str, Any]:
    """Training options by name (``batch_size`` or ``batch-size``; FuxiCTR's names too) -> ctrkit's names.

    FuxiCTR's keys (``embedding_dim``, ``net_dropout``, ...) are read as ctrkit's, each with one
    ``note`` line (default: stderr), or refused naming ctrkit's option (:mod:`ctrkit.fuxictr`);
    other unknown names are refused with the closest option. ``source`` starts every message.
    """
    from ctrkit.fuxictr import translate

    data = {str(k).replace("-", "_"): v for k, v in options.items()}
    translated, notes = translate(data, source=source, known=field_names(), model=model, experiment=experiment,
                                  fuxictr=fuxictr)
    for line in notes:
        (note or _print_note)(line)
    return translated


def _print_note(line: str) -> None:
    """One note on stderr, from the first process only (under torchrun every rank reads the options)."""
    if os.environ.get("RANK", "0") == "0":
        print(f"note: {line}", file=sys.stderr)


def _yaml_text(path: Path, raw: bytes) -> str:
    """The text of a run file; a binary or non-UTF-8 file is refused by name (not a decode traceback)."""
    nul = raw.find(b"\0")
    if nul >= 0:
        raise ConfigError(f"--config {path}: is a binary file (a NUL byte at offset {nul}), not YAML")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(f"--config {path}: is not UTF-8 text (byte 0x{raw[exc.start]:02x} on line {line}); "
                          "save it as UTF-8") from None


# ---------------------------------------------------------------------------------------------
# Coercion helpers: each names the flag in its error
# ---------------------------------------------------------------------------------------------
def _show(value: Any) -> str:
    """A value as the user typed it: flags arrive as strings, shown without quotes."""
    return value if isinstance(value, str) else repr(value)


def _int(name: str, value: Any, minimum: int | None = None) -> int:
    number: int | None = None
    if isinstance(value, bool):
        number = None
    elif isinstance(value, numbers.Integral):
        number = int(value)
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        number = int(value)
    if number is None:
        raise ConfigError(f"--{name} must be an integer, got {value!r}")
    if minimum is not None and number < minimum:
        raise ConfigError(f"--{name} must be >= {minimum}, got {_show(value)}")
    return number


def _positive_int(name: str, value: Any) -> int:
    number = _int(name, value)
    if number <= 0:
        raise ConfigError(f"--{name} must be > 0, got {_show(value)}")
    return number


def _float(name: str, value: Any, positive: bool = False) -> float:
    number: float | None = None
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
    if number is None or not math.isfinite(number):
        raise ConfigError(f"--{name} must be a finite number, got {value!r}")
    if positive and number <= 0:
        raise ConfigError(f"--{name} must be > 0, got {_show(value)}")
    if not positive and number < 0:
        raise ConfigError(f"--{name} must be >= 0, got {_show(value)}")
    return number


def _dropout(name: str, value: Any) -> float:
    try:
        number = _float(name, value)
    except ConfigError:
        number = None
    if number is None or not 0.0 <= number < 1.0:
        raise ConfigError(f"--{name} must be in [0, 1), got {_show(value)}")
    return number


def _bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "1", "on"):
        return True
    if text in ("false", "no", "0", "off"):
        return False
    raise ConfigError(f"--{name} must be true or false, got {value!r}")


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    """Case-insensitive match, returned in its canonical spelling."""
    by_key = {c.lower(): c for c in choices}
    key = str(value).strip().lower()
    if key not in by_key:
        raise ConfigError(f"--{name} must be one of {', '.join(choices)}, got {value!r}")
    return by_key[key]


def _int_list(value: Any, error: str, split: Callable[[str], list[str]]) -> list[int]:
    """An int, a string cut by ``split`` or a list/tuple -> ints; anything else -> ``ConfigError(error)``.

    Items must be ints or digit strings (so ``"-1"`` and ``"x"`` are refused here, an int ``-1``
    is left to the caller's range check).
    """
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        items: list[Any] = [value]
    elif isinstance(value, str):
        items = split(value)
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise ConfigError(error)
    for item in items:
        if isinstance(item, bool) or not (
            isinstance(item, numbers.Integral) or (isinstance(item, str) and item.isdigit())
        ):
            raise ConfigError(error)
    return [int(item) for item in items]


def _units(name: str, value: Any, allow_empty: bool = True) -> list[int]:
    """``"400,400,400"``, ``[400, 400]`` or ``""``/``[]`` (no layers) -> list of positive ints."""
    error = f"--{name} must be comma-separated positive integers such as 400,400,400, got {value!r}"

    def split(text: str) -> list[str]:
        text = text.strip().strip("[]()").strip()
        return [t.strip() for t in text.split(",")] if text else []

    units = _int_list(value, error, split)
    if any(size < 1 for size in units):
        raise ConfigError(error)
    if not units and not allow_empty:
        raise ConfigError(f"--{name} must list at least one layer size, got {value!r}")
    return units


def _gpu_ids(value: Any) -> list[int]:
    """``"1,2,3"`` / ``[1, 2]`` / ``0`` / ``""`` / ``None`` -> distinct non-negative ids."""
    if value is None:
        return []
    error = f"--gpu_ids must be comma-separated GPU numbers such as 0,1, got {value!r}"
    ids = _int_list(value, error, lambda text: [t.strip() for t in text.split(",") if t.strip()])
    if any(i < 0 for i in ids):
        raise ConfigError(f"--gpu_ids must be >= 0, got {value!r}")
    if len(set(ids)) != len(ids):
        raise ConfigError(f"--gpu_ids lists a GPU twice: {value!r}")
    return ids


_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _model_args(value: Any) -> dict[str, Any]:
    """``"use_residual=false,activation=gelu"`` or a mapping -> dict with YAML-typed values."""
    import yaml

    if value is None or value == "":
        return {}
    if isinstance(value, dict):
        pairs = list(value.items())
    elif isinstance(value, str):
        pairs = []
        for item in value.split(","):
            key, sep, raw = item.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"--model_args must be key=value pairs separated by commas, got {value!r}")
            try:
                parsed = yaml.safe_load(raw) if raw.strip() else ""
            except yaml.YAMLError:
                parsed = raw.strip()
            pairs.append((key.strip(), parsed))
    else:
        raise ConfigError(f"--model_args must be key=value pairs separated by commas, got {value!r}")
    out = {}
    for key, val in pairs:
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            raise ConfigError(f"--model_args: {key!r} is not a valid hyper-parameter name")
        out[key] = val
    return out


#: Public names of the coercion helpers, for other commands' flags.
parse_int = _int
parse_float = _float
parse_gpu_ids = _gpu_ids


def _optional(check, name: str, value: Any, **kwargs: Any):
    return None if value is None else check(name, value, **kwargs)


# ---------------------------------------------------------------------------------------------
# argparse
# ---------------------------------------------------------------------------------------------
_HELP: dict[str, str] = {
    "model": "model name (see `ctrkit models`), e.g. deepfm",
    "framework": "torch or tf",
    "data": "store directory built by `ctrkit preprocess`",
    "config": "YAML file of options; flags given on the command line override it",
    "epochs": "maximum number of epochs (early stopping may end sooner)",
    "batch_size": "global training batch size (split evenly across processes)",
    "optimizer": "Adam, AdamW, Adagrad or SGD (case-insensitive)",
    "loss": "loss function: BCE (binary cross-entropy on logits)",
    "gpu_ids": 'GPUs to train on, e.g. "0" or "1,2,3,4" (several: DistributedDataParallel); empty: CPU',
    "lr": "learning rate",
    "embed_size": "embedding size",
    "model_save_dir": "directory for checkpoints, metrics.json and TensorBoard logs",
    "hidden_units": "DNN layer sizes, e.g. 400,400,400 (empty string: none, except for dnn)",
    "dropout": "DNN dropout rate in [0, 1)",
    "batch_norm": "batch normalisation in the DNN",
    "cross_layers": "DCN: number of cross layers (> 0)",
    "cin_layer_units": "xDeepFM: CIN layer sizes, e.g. 16,16,16 (even but the last, unless split_half=false)",
    "attention_layers": "AutoInt: number of self-attention layers",
    "num_heads": "AutoInt: attention heads",
    "attention_dim": "AutoInt: attention size per head",
    "attention_factor": "AFM: attention network size",
    "aux_loss_weight": "DIEN: weight of the auxiliary loss (next behaviour against the next row's; "
                       "the model's default 1)",
    "model_args": "other model hyper-parameters as key=value,key=value",
    "init": "weights of Linear/Conv1d layers: xavier_normal (the models' own, as in FuxiCTR/BARS) or "
            "torch_default (PyTorch's Kaiming uniform, as in torch-rechub)",
    "weight_decay": "L2 on weights (not on biases, norms or embeddings); decoupled for AdamW",
    "embedding_l2": "L2 on the embedding rows each batch looks up",
    "patience": "stop after this many epochs without a better validation score (--monitor)",
    "lr_patience": "epochs without improvement before the learning rate is multiplied by --lr_factor",
    "lr_factor": "learning-rate multiplier on a validation plateau",
    "monitor": "the validation metric that early stopping, the best checkpoint and the LR plateau watch: "
               "auc, gauc (AUC per user, weighted by impressions; needs a user column) or logloss",
    "seed": "random seed (initialisation, shuffling, dropout)",
    "num_workers": "DataLoader worker processes per training process",
    "precision": "fp32 or bf16 (autocast of the forward pass)",
    "xla": "TF: compile the training step with XLA (jit_compile; one device); pays for xDeepFM in fp32 "
           "(benchmarks/RESULTS.md)",
    "resume": "continue the run in --model_save_dir from its last.pt (last.tf); its model, framework, "
              "hyper-parameters, other options and store are read from it (flags given override them)",
    "overwrite": "replace the run already in --model_save_dir (its checkpoints, metrics.json and TensorBoard logs)",
    "eval_batch_size": "batch size for evaluation (0: --batch_size)",
    "checkpoint_every": "also write last.pt every N training steps (0: only at the end of epochs)",
    "max_steps": "stop after N training steps (0: no limit)",
    "log_every": "update the progress bar and TensorBoard every N steps",
    "cpu_processes": "N > 1: DistributedDataParallel over N CPU processes (gloo), for testing",
    "threads": "torch intra-op threads per process (0: torch's default)",
}

_BOOLEAN_FLAGS = ("batch_norm", "resume", "overwrite", "xla")
_CHOICES = {"monitor": tuple(MONITORS), "framework": FRAMEWORKS, "optimizer": OPTIMIZERS, "loss": LOSSES, "precision": PRECISIONS, "init": INITS}
_METAVARS = {
    **{name: "{" + ",".join(choices) + "}" for name, choices in _CHOICES.items()},
    "data": "STORE", "model_save_dir": "DIR", "gpu_ids": "IDS",
    "hidden_units": "N,N,...", "cin_layer_units": "N,N,...", "model_args": "KEY=VALUE,...",
}
_SHOWN_DEFAULTS = {"gpu_ids": "CPU", "model_args": "none", "model_save_dir": "checkpoints/<model>"}


def _shown_default(name: str, value: Any) -> str:
    if name in ("model", "data"):
        return "required; --resume reads it from the checkpoint"
    shown = _SHOWN_DEFAULTS.get(name, "the model's" if value is None else str(value))
    return f"default: {shown}"


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add every training flag. Defaults are suppressed so ``from_args`` sees only typed flags.

    FuxiCTR's names of some options (``--embedding_dim``, ``--learning_rate``, ...) are hidden flags
    that ``from_args`` reads as ctrkit's (:data:`ctrkit.fuxictr.FLAG_ALIASES`).
    """
    from ctrkit.fuxictr import FLAG_ALIASES

    for name in FLAG_ALIASES:
        parser.add_argument(f"--{name}", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    defaults = TrainConfig()
    parser.add_argument("--config", metavar="RUN.YAML", default=argparse.SUPPRESS, help=_HELP["config"])
    for f in fields(TrainConfig):
        shown = _shown_default(f.name, getattr(defaults, f.name))
        help_text = f"{_HELP.get(f.name, f.name)} [{shown}]"
        if f.name in _BOOLEAN_FLAGS:
            parser.add_argument(
                f"--{f.name}", action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text
            )
        else:
            metavar = _METAVARS.get(f.name, f.name.upper())
            parser.add_argument(f"--{f.name}", metavar=metavar, default=argparse.SUPPRESS, help=help_text)
    return parser
