"""The Python API: what the command line does, for notebooks and scripts.

::

    import ctrkit
    store = ctrkit.preprocess("criteo", "train.txt", out="criteo.lmdb")
    run = ctrkit.train("deepfm", store, framework="torch", epochs=3, embed_size=16, model_save_dir="runs/deepfm")
    run.metrics                          # the metrics.json content
    model = ctrkit.load("runs/deepfm")   # checkpoint + encoder.npz: no store needed
    scores = model.predict(df)           # pandas/polars DataFrame, dict of columns, list of row dicts

Each function builds what the corresponding command builds (``preprocess`` parses the options with
the command's own parser; ``train`` fills the same :class:`~ctrkit.config.TrainConfig`), so the
options, their names and their validation are the command line's: ``ctrkit train --embed_size 16``
is ``ctrkit.train(..., embed_size=16)``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ctrkit.errors import ConfigError, InputError

PathLike = str | os.PathLike


# ---------------------------------------------------------------------------------------------
# preprocess
# ---------------------------------------------------------------------------------------------
def preprocess(dataset: str, raw: PathLike | list[PathLike] | None = None, *, out: PathLike, **options: Any):
    """Build a store from raw logs, as ``ctrkit preprocess DATASET RAW... --out OUT [--option value]``.

    ``dataset`` is a built-in dataset (``criteo``, ``avazu``, ``movielens``, ``taobao-joined``,
    ``taobao``) or ``table`` with ``spec=``. ``options`` are the command's flags by name
    (``min_count=10``, ``valid="valid.txt"``, ``overwrite=True``, ``spec="my.yaml"``). Returns
    the :class:`~ctrkit.data.store.Store`.
    """
    from ctrkit.cli import build_parser

    files = [] if raw is None else [raw] if isinstance(raw, (str, os.PathLike)) else list(raw)
    argv = ["preprocess", str(dataset), *map(str, files), "--out", str(out), *_flags(options)]
    parser = build_parser()
    try:
        args, extras = parser.parse_known_args(argv)
    except SystemExit:  # argparse already printed why (an unknown dataset, a missing value)
        raise ConfigError(f"ctrkit.preprocess: invalid arguments {argv[1:]}") from None
    if extras:
        raise ConfigError(f"ctrkit.preprocess({dataset!r}): unknown option(s) {', '.join(extras)}")
    return args.build(args).store


def _flags(options: dict[str, Any]) -> list[str]:
    flags: list[str] = []
    for name, value in options.items():
        flag = "--" + name
        if value is True:
            flags.append(flag)
        elif value is False or value is None:
            continue
        elif isinstance(value, (list, tuple)):
            flags += [flag, *map(str, value)]
        else:
            flags += [flag, str(value)]
    return flags


# ---------------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------------
@dataclass
class Run:
    """A finished training run: its directory, options and ``metrics.json`` content."""

    directory: Path
    config: Any  # TrainConfig
    metrics: dict

    def load(self, **options: Any) -> "Model":
        """The run's best checkpoint (see :func:`load`)."""
        return load(self.directory, **options)

    def __repr__(self) -> str:
        test = self.metrics.get("test") or {}
        shown = f" test auc {test['auc']:.5f}" if "auc" in test else ""
        return f"Run({self.config.model}, {self.config.framework}, {str(self.directory)!r}{shown})"


def train(model: str, store: Any, *, config: PathLike | None = None, **options: Any) -> Run:
    """Train ``model`` on ``store`` (a Store or its path), as ``ctrkit train --model M --data STORE``.

    ``options`` are the training options by their flag names (``framework="tf"``, ``epochs=3``,
    ``model_save_dir="runs/x"``, ``hidden_units=[400, 400]``); ``config`` is a YAML file as for
    ``--config`` (``options`` win). Raises :class:`~ctrkit.errors.ConfigError` for an unknown or
    invalid option, exactly as the command line would.
    """
    from ctrkit.config import TrainConfig, load_yaml, options_from, resume_options
    from ctrkit.training.frameworks import train_from_config

    merged: dict[str, Any] = load_yaml(config, model=model) if config else {}
    options = options_from(options, source="ctrkit.train", model=model)  # FuxiCTR's names too; unknown refused
    path = getattr(store, "path", store)
    merged.update(options, model=model, data=str(path))
    if not merged.get("model_save_dir"):
        raise ConfigError("ctrkit.train: model_save_dir is required (the run directory)")
    config_object = TrainConfig(**resume_options(merged)).validate()  # resume=True: the run's own options
    metrics = train_from_config(config_object)
    return Run(config_object.save_dir, config_object, metrics)


# ---------------------------------------------------------------------------------------------
# load → predict
# ---------------------------------------------------------------------------------------------
class Model:
    """A trained model with the encoder of its raw rows: scores rows of raw values.

    Built by :func:`load`. Thread-safe for concurrent :meth:`predict` calls only in the sense the
    framework is (the service serialises them through its micro-batcher).
    """

    def __init__(self, trainer: Any, encoder: Any, checkpoint: Path, batch_size: int):
        self.trainer = trainer
        self.encoder = encoder
        self.checkpoint = checkpoint
        self.batch_size = batch_size

    # -- what it is -----------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.trainer.config.model

    @property
    def framework(self) -> str:
        return self.trainer.config.framework

    @property
    def schema(self):
        return self.trainer.schema

    @property
    def input_columns(self) -> list[str]:
        """The raw columns :meth:`predict` reads (others are ignored)."""
        from ctrkit.data.frames import required_columns

        return required_columns(self.encoder.spec)

    def metadata(self) -> dict[str, Any]:
        """Model, framework, checkpoint, dataset and the raw columns it reads (JSON-ready)."""
        from ctrkit import __version__

        spec = self.encoder.spec
        return {
            "model": self.name,
            "framework": self.framework,
            "checkpoint": str(self.checkpoint),
            "ctrkit_version": __version__,
            "dataset": spec.name,
            "input_columns": self.input_columns,
            "label": spec.label.column,
            "schema": [{"name": f.name, "kind": f.kind, **({"vocab_size": f.vocab_size} if f.kind == "sparse" else {})}
                       for f in self.schema.fields],
            "hyper_parameters": self.trainer.config.hparams(),
        }

    def __repr__(self) -> str:
        return f"Model({self.name}, {self.framework}, {str(self.checkpoint)!r})"

    # -- scoring -------------------------------------------------------------------------------
    def encode(self, data: Any, *, strict: bool = True):
        """Rows of raw values → :class:`~ctrkit.data.frames.EncodedRows` (ids by the training encoder)."""
        from ctrkit.data.frames import encode_rows

        return encode_rows(self.encoder, data, strict=strict)

    def predict(self, data: Any, *, strict: bool = True) -> np.ndarray:
        """Click probabilities (float64, one per row, in input order) of rows of raw values.

        ``data``: a pandas or polars DataFrame, a dict of columns, or a list of row dicts, holding
        at least :attr:`input_columns` with values as in the raw files (numbers may be floats;
        ``None``/``NaN`` is missing). A row that cannot be read raises an
        :class:`~ctrkit.errors.InputError` naming it; with ``strict=False`` its score is NaN.
        """
        encoded = self.encode(data, strict=strict)
        scores = np.full(encoded.rows, np.nan)
        scores[encoded.kept] = self.predict_batch(encoded.batch)
        return scores

    def predict_batch(self, batch: dict[str, Any]) -> np.ndarray:
        """Probabilities of an encoded batch (``sparse`` ids, ``dense``, ``seq:<name>``: numpy arrays)."""
        rows = len(batch["sparse"])
        if rows == 0:
            return np.zeros(0)
        parts = [{k: v[start:start + self.batch_size] for k, v in batch.items() if k != "label"}
                 for start in range(0, rows, self.batch_size)]
        return self.trainer.predict(parts)

    def evaluate(self, store: Any, split: str = "test") -> dict[str, Any]:
        """AUC, logloss (and gAUC where the store has user ids) on a split of a store."""
        return self.trainer.evaluate(store, split)


def load(path: PathLike, *, encoder: PathLike | None = None, gpu_ids: list[int] | str | None = None,
         batch_size: int = 8192, threads: int = 0, precision: str | None = None) -> Model:
    """A checkpoint (``best.pt``/``best.tf``, a file or its run directory) with its encoder.

    A bundle directory of ``ctrkit export`` (it holds ``manifest.json``) loads as a
    :class:`~ctrkit.export.loaded.BundleModel` with the same interface, scored by the bundle's
    runtime (onnxruntime, TorchScript or TensorFlow) and its own encoder.

    The encoder is the run directory's ``encoder.npz`` (training writes it there), or ``encoder``
    (a store, a store path or an ``encoder.npz``). ``gpu_ids``: one GPU to score on (default CPU).
    ``precision``: ``fp32`` or ``bf16`` compute (default: the precision it was trained in).
    """
    from ctrkit.config import parse_gpu_ids
    from ctrkit.data.encoder import ENCODER_FILE, load_encoder, run_dir_encoder
    from ctrkit.training.frameworks import load_for_inference
    from ctrkit.training.rundir import CHECKPOINT_NAMES

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such checkpoint or run directory")
    if (path / "manifest.json").is_file():  # a bundle of `ctrkit export`: scored by its runtime
        return _load_bundle(path, encoder=encoder, gpu_ids=gpu_ids, batch_size=batch_size, threads=threads,
                            precision=precision)
    ids = parse_gpu_ids(",".join(map(str, gpu_ids)) if isinstance(gpu_ids, (list, tuple)) else (gpu_ids or ""))
    if len(ids) > 1:
        raise ConfigError(f"gpu_ids {gpu_ids}: a loaded model runs on one GPU; give one id")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    overrides = {"gpu_ids": ids, "eval_batch_size": batch_size, "num_workers": 0, "threads": threads}
    if precision is not None:
        overrides["precision"] = precision
    trainer = load_for_inference(path, **overrides)
    source = encoder if encoder is not None else run_dir_encoder(path)
    if source is None:
        raise InputError(f"{path}: no {ENCODER_FILE} in its run directory; pass encoder=STORE (the store it was trained on)")
    dataset_encoder = load_encoder(source)
    if dataset_encoder.schema.to_dict() != trainer.schema.to_dict():
        raise InputError(f"{path}: the encoder {dataset_encoder.source} does not describe the model's inputs "
                         "(a store other than the one it was trained on?)")
    checkpoint = path
    if path.is_dir():
        names = CHECKPOINT_NAMES[trainer.config.framework]
        checkpoint = path / names["best"]
    return Model(trainer, dataset_encoder, checkpoint, batch_size)


def _load_bundle(path: Path, *, encoder, gpu_ids, batch_size: int, threads: int, precision: str | None) -> Model:
    """A bundle directory (``ctrkit export``): :func:`ctrkit.export.load_bundle` (CPU, the exported precision)."""
    from ctrkit.export import load_bundle
    from ctrkit.export.loaded import refuse_options

    refuse_options(path, [name for name, value in (("encoder", encoder), ("gpu_ids", gpu_ids), ("precision", precision))
                          if value])
    return load_bundle(path, batch_size=batch_size, threads=threads)


def read_metrics(run_dir: PathLike) -> dict:
    """The ``metrics.json`` of a run directory."""
    path = Path(run_dir) / "metrics.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{run_dir}: no metrics.json (not a finished training run)") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None
