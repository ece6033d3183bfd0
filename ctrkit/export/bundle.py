"""Write a model bundle: the exported model, the dataset's encoder and ``manifest.json``, atomically.

``export_bundle(CKPT, "onnx", OUT)`` loads the checkpoint (``best.pt``/``best.tf`` or its run
directory) with its run's ``encoder.npz``, traces the model in the framework the format needs
(ONNX and TorchScript from PyTorch, SavedModel from TensorFlow; a checkpoint of the other
framework is first converted with :mod:`ctrkit.commands.convert`'s weight mapping, which gives the
same scores within 1e-5), checks that the artifact scores a batch as the checkpoint does, and
writes::

    OUT/
      model.onnx | model.pt | savedmodel/     the model: encoded tensors in, probabilities [B] out
      encoder.npz                             spec + vocabularies: raw rows -> tensors
      manifest.json                           see ctrkit.export.manifest

The bundle is built in ``.OUT.tmp-PID`` beside ``OUT`` and renamed into place once complete (an
existing bundle is replaced only with ``overwrite``, after the new one is complete), under the
target's lock, so a reader never sees half a bundle.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ctrkit.errors import ConfigError, InputError, OutputError
from ctrkit.export.inputs import OUTPUT_NAME, example_batch, input_tensors
from ctrkit.export.manifest import BUNDLE_FORMAT, BUNDLE_VERSION, FORMATS, MANIFEST_FILE, is_bundle

#: largest difference allowed between the artifact's and the checkpoint's probabilities at export
VERIFY_TOLERANCE = 1e-5


def check_format(fmt: str) -> str:
    """``fmt`` lower-cased, or ConfigError naming the formats."""
    key = str(fmt).strip().lower()
    if key not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return key


def check_out(out: Path, overwrite: bool) -> None:
    """ConfigError unless ``out`` may be written: absent, or (with ``overwrite``) a bundle or an empty directory."""
    if not os.path.lexists(out):
        return
    if not overwrite:
        raise ConfigError(f"--out {out} already exists; give --overwrite to replace it")
    if not out.is_dir() or (any(out.iterdir()) and not is_bundle(out)):
        raise ConfigError(f"--out {out} exists and is not a ctrkit bundle; refusing to replace it")


def load_source(checkpoint: Path, framework: str, encoder: Path, scratch: Path):
    """The checkpoint as an :class:`~ctrkit.api.Model` in ``framework`` (float32, CPU), converted if needed."""
    from ctrkit.api import load
    from ctrkit.training.frameworks import checkpoint_framework, check_framework_available
    from ctrkit.training.rundir import FRAMEWORK_NAMES, checkpoint_name

    source = checkpoint_framework(checkpoint)
    check_framework_available(framework, subject=f"exporting to this format (a {FRAMEWORK_NAMES[framework]} model)")
    if source != framework:
        from ctrkit.commands.convert import tf_to_torch, torch_to_tf

        check_framework_available(source, subject=f"{checkpoint} (a {FRAMEWORK_NAMES[source]} checkpoint)")
        converted = scratch / checkpoint_name(framework, "best")
        (torch_to_tf if framework == "tf" else tf_to_torch)(checkpoint, converted)
        checkpoint = converted
    return load(checkpoint, encoder=encoder, precision="fp32", batch_size=8192), source


def _export_artifact(fmt: str, model: Any, inputs, path: Path) -> dict[str, Any]:
    if fmt == "savedmodel":
        from ctrkit.export.tf_export import export_savedmodel

        return export_savedmodel(model, inputs, path)
    from ctrkit.export import torch_export

    return (torch_export.export_onnx if fmt == "onnx" else torch_export.export_torchscript)(model, inputs, path)


def _reference(fmt: str, model: Any, batch: dict[str, np.ndarray], inputs) -> np.ndarray:
    if fmt == "savedmodel":
        from ctrkit.export.tf_export import tf_probabilities

        return tf_probabilities(model, batch, inputs)
    from ctrkit.export.torch_export import torch_probabilities

    return torch_probabilities(model, batch, inputs)


def _manifest(fmt: str, loaded, source_framework: str, checkpoint: Path, inputs, runtime: dict) -> dict[str, Any]:
    from ctrkit import __version__

    meta = loaded.metadata()
    manifest = {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_VERSION,
        "ctrkit_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": loaded.name,
        "source_framework": source_framework,
        "source_checkpoint": str(checkpoint),
        "export_format": fmt,
        "artifact": FORMATS[fmt][1],
        "precision": "fp32",
    }
    if "opset" in runtime:
        manifest["opset"] = runtime.pop("opset")
    manifest.update({
        "encoder": "encoder.npz",
        "inputs": [t.to_dict() for t in inputs],
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": [None], "meaning": "click probability"},
        "input_columns": meta["input_columns"],
        "label": meta["label"],
        "dataset": meta["dataset"],
        "schema": loaded.schema.to_dict(),
        "hyper_parameters": meta["hyper_parameters"],
        "runtime": runtime,
    })
    return manifest


def _verify(directory: Path, manifest: dict, reference: np.ndarray, batch: dict[str, np.ndarray]) -> float:
    """Largest difference between the written artifact's and the eager model's probabilities of ``batch``."""
    from ctrkit.export.runtimes import open_runtime
    from ctrkit.export.inputs import InputTensor, graph_arrays

    inputs = [InputTensor.from_dict(t) for t in manifest["inputs"]]
    scores = open_runtime(directory, manifest)(graph_arrays(batch, inputs))
    diff = float(np.max(np.abs(scores.astype(np.float64) - reference))) if len(reference) else 0.0
    if not diff <= VERIFY_TOLERANCE:
        raise OutputError(f"the exported {manifest['export_format']} model scores differently from the checkpoint "
                          f"(max difference {diff:.3g} > {VERIFY_TOLERANCE}); nothing was written")
    return diff


def export_bundle(checkpoint: str | os.PathLike, fmt: str, out: str | os.PathLike, *, overwrite: bool = False,
                  encoder: str | os.PathLike | None = None, verify: bool = True) -> dict[str, Any]:
    """Export ``checkpoint`` as a bundle directory ``out`` in format ``fmt``; returns the manifest.

    Args:
        checkpoint: ``best.pt``/``best.tf`` or a run directory.
        fmt: ``onnx``, ``torchscript`` or ``savedmodel``.
        out: the bundle directory to create.
        overwrite: replace an existing bundle (or empty directory) at ``out``.
        encoder: a store, store path or ``encoder.npz`` (default: the run directory's ``encoder.npz``).
        verify: score a batch with the written artifact's runtime and compare with the checkpoint.

    Raises:
        ConfigError: a bad format, or an ``out`` that exists (without ``overwrite``).
        InputError: a missing or broken checkpoint, no encoder.
        OutputError: the bundle cannot be written, or scores differently (nothing is left behind).
    """
    from ctrkit.data.encoder import ENCODER_FILE, export_encoder, run_dir_encoder
    from ctrkit.fileio import clean_debris, target_lock, temporary_sibling

    fmt = check_format(fmt)
    checkpoint, out = Path(checkpoint), Path(out)
    if not checkpoint.exists():
        raise InputError(f"{checkpoint}: no such checkpoint or run directory")
    check_out(out, overwrite)
    encoder_source = Path(encoder) if encoder is not None else run_dir_encoder(checkpoint)
    if encoder_source is None:
        raise InputError(f"{checkpoint}: no {ENCODER_FILE} in its run directory; give --encoder STORE "
                         "(the store it was trained on)")
    framework, artifact = FORMATS[fmt]
    with tempfile.TemporaryDirectory(prefix="ctrkit-export-") as scratch:
        loaded, source_framework = load_source(checkpoint, framework, encoder_source, Path(scratch))
        inputs = input_tensors(loaded.schema)
        model = loaded.trainer.model
        if out.parent != Path(""):
            out.parent.mkdir(parents=True, exist_ok=True)
        with target_lock(out, "exporting a bundle"):
            clean_debris(out)
            check_out(out, overwrite)  # again, under the lock
            tmp = temporary_sibling(out)
            try:
                tmp.mkdir()
                runtime = _export_artifact(fmt, model, inputs, tmp / artifact)
                export_encoder(encoder_source, tmp)
                manifest = _manifest(fmt, loaded, source_framework, checkpoint, inputs, runtime)
                if verify:
                    batch = example_batch(loaded.schema, rows=16, seed=1)
                    manifest["verified_max_abs_diff"] = _verify(tmp, manifest, _reference(fmt, model, batch, inputs),
                                                                batch)
                from ctrkit.fileio import write_json_atomic

                write_json_atomic(tmp / MANIFEST_FILE, manifest)
                _sync_tree(tmp)
                _move_into_place(tmp, out)
            except OSError as exc:
                from ctrkit.fileio import os_error_message

                raise OutputError(f"cannot write bundle {out}: {os_error_message(exc)}; "
                                  f"{'the previous bundle is unchanged' if out.exists() else 'nothing was written'}"
                                  ) from None
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def _sync_tree(directory: Path) -> None:
    """fsync every file and directory under ``directory`` (its content survives a crash after the rename)."""
    for path in [*sorted(directory.rglob("*")), directory]:
        flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0)
        fd = os.open(path, flags)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename the complete ``tmp`` to ``out``; an existing ``out`` is set aside first and removed after."""
    from ctrkit.fileio import temporary_sibling

    old = None
    if os.path.lexists(out):
        old = temporary_sibling(out, "old")
        os.rename(out, old)
    os.rename(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
