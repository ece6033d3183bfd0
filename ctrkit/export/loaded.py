"""A bundle loaded for scoring: :func:`load_bundle` -> :class:`BundleModel`, the interface of
:class:`ctrkit.api.Model` (``predict(df)``, ``predict_batch``, ``encode``, ``metadata``,
``input_columns``) on the bundle's runtime and encoder, without the checkpoint or the model code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ctrkit.api import Model
from ctrkit.errors import ConfigError, InputError
from ctrkit.export.inputs import InputTensor, graph_arrays
from ctrkit.export.manifest import read_manifest


class BundleModel(Model):
    """A model bundle: scores rows of raw values with the exported artifact and the bundle's encoder.

    ``framework`` is the export format (``onnx``, ``torchscript``, ``savedmodel``), ``source_framework``
    that of the checkpoint it came from. ``predict``, ``encode`` and ``input_columns`` behave as
    :class:`~ctrkit.api.Model`'s (same encoder, same messages, NaN for unreadable rows with
    ``strict=False``); the scores equal the checkpoint's within 1e-5 (float32).
    """

    def __init__(self, bundle: Path, manifest: dict[str, Any], encoder: Any, schema: Any, scorer: Any,
                 batch_size: int) -> None:
        self.bundle = bundle
        self.manifest = manifest
        self.encoder = encoder
        self._schema = schema
        self._score = scorer
        self._inputs = [InputTensor.from_dict(t) for t in manifest["inputs"]]
        self.checkpoint = bundle
        self.batch_size = batch_size

    @property
    def name(self) -> str:
        return self.manifest["model"]

    @property
    def framework(self) -> str:
        return self.manifest["export_format"]

    @property
    def source_framework(self) -> str:
        return self.manifest.get("source_framework", "")

    @property
    def schema(self):
        return self._schema

    def metadata(self) -> dict[str, Any]:
        """Model, export format, source, dataset, the raw columns and the graph's tensors (JSON-ready)."""
        m = self.manifest
        return {
            "model": self.name,
            "framework": self.framework,
            "format": self.framework,
            "source_framework": self.source_framework,
            "bundle": str(self.bundle),
            "checkpoint": m.get("source_checkpoint"),
            "ctrkit_version": m.get("ctrkit_version"),
            "dataset": m.get("dataset"),
            "input_columns": self.input_columns,
            "label": m.get("label"),
            "schema": [{"name": f.name, "kind": f.kind, **({"vocab_size": f.vocab_size} if f.kind == "sparse" else {})}
                       for f in self.schema.fields],
            "hyper_parameters": m.get("hyper_parameters", {}),
            "inputs": m["inputs"],
            "output": m["output"],
            **({"opset": m["opset"]} if "opset" in m else {}),
        }

    def __repr__(self) -> str:
        return f"BundleModel({self.name}, {self.framework}, {str(self.bundle)!r})"

    def predict_batch(self, batch: dict[str, Any]) -> np.ndarray:
        """Probabilities (float64) of an encoded batch (``sparse``, ``dense``, ``seq:<name>`` numpy arrays)."""
        from ctrkit.data.contract import check_batch

        features = {k: np.asarray(v) for k, v in batch.items() if k != "label"}
        rows = len(features["sparse"]) if "sparse" in features else 0
        if rows == 0:
            return np.zeros(0)
        check_batch(features, self.schema, where="batch given to predict")
        parts = [self._score(graph_arrays({k: v[s:s + self.batch_size] for k, v in features.items()}, self._inputs))
                 for s in range(0, rows, self.batch_size)]
        return np.concatenate(parts).astype(np.float64)

    def evaluate(self, store: Any, split: str = "test") -> dict[str, Any]:
        """AUC, logloss (and gAUC where the store has user ids) on a split of a store."""
        from ctrkit.data.batches import BatchReader
        from ctrkit.data.store import Store
        from ctrkit.metrics import evaluation_metrics

        store = store if isinstance(store, Store) else Store(store)
        reader = BatchReader(store, split, self.batch_size, rank=0, world_size=1)
        probs, labels, groups = [], [], []
        for batch in reader.iter_epoch(0):
            probs.append(self.predict_batch({k: v for k, v in batch.items() if k in self.manifest_keys}))
            labels.append(batch["label"])
            if "group" in batch:
                groups.append(batch["group"])
        return evaluation_metrics(np.concatenate(labels), np.concatenate(probs),
                                  np.concatenate(groups) if groups else None)

    @property
    def manifest_keys(self) -> set[str]:
        return {t.key for t in self._inputs}


def refuse_options(path: str | os.PathLike, given: list[str]) -> None:
    """One error for options that a bundle settles itself (its encoder, the CPU, float32), named
    in the caller's spelling (``--data`` on the command line, ``encoder`` in the Python API)."""
    if given:
        raise ConfigError(f"{path} is an export bundle (its own encoder, CPU, float32): {', '.join(given)} "
                          "cannot be chosen for it; use its checkpoint for that")


def load_bundle(path: str | os.PathLike, *, batch_size: int = 8192, threads: int = 0) -> BundleModel:
    """The bundle directory ``path`` (written by ``ctrkit export``) ready to score raw rows.

    Needs only the bundle's runtime (onnxruntime, torch or tensorflow) and ctrkit's encoder.
    """
    from ctrkit.data.encoder import load_encoder
    from ctrkit.export.runtimes import open_runtime
    from ctrkit.schema import Schema

    path = Path(path)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    manifest = read_manifest(path)
    encoder = load_encoder(path / manifest["encoder"])
    schema = Schema.from_dict(manifest["schema"])
    if encoder.schema.to_dict() != schema.to_dict():
        raise InputError(f"{path}: its encoder does not describe the model's inputs (the bundle was altered)")
    return BundleModel(path, manifest, encoder, schema, open_runtime(path, manifest, threads), batch_size)
