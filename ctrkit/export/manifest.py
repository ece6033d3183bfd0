"""``manifest.json`` of a model bundle: what the bundle holds and how to feed its model.

::

    {
      "format": "ctrkit-bundle", "format_version": 1, "ctrkit_version": "0.1.0",
      "model": "deepfm", "source_framework": "torch", "source_checkpoint": "runs/deepfm/best.pt",
      "export_format": "onnx", "artifact": "model.onnx", "opset": 17, "encoder": "encoder.npz",
      "inputs": [{"name": "sparse", "batch_key": "sparse", "dtype": "int32", "shape": [null, 39]}, ...],
      "output": {"name": "probability", "dtype": "float32", "shape": [null]},
      "input_columns": ["I1", ..., "C26"], "label": "label", "dataset": "criteo",
      "schema": {...}, "hyper_parameters": {...}, "runtime": {"torch_version": "..."}
    }

``shape`` ``null`` is the free batch dimension. Imports no framework.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ctrkit.errors import InputError

MANIFEST_FILE = "manifest.json"
BUNDLE_FORMAT = "ctrkit-bundle"
BUNDLE_VERSION = 1

#: export format -> (the framework its graph is traced from, the artifact's name in the bundle)
FORMATS: dict[str, tuple[str, str]] = {
    "onnx": ("torch", "model.onnx"),
    "torchscript": ("torch", "model.pt"),
    "savedmodel": ("tf", "savedmodel"),
}

_REQUIRED = ("format_version", "model", "export_format", "artifact", "encoder", "inputs", "output", "input_columns")


def is_bundle(path: str | Path) -> bool:
    """Whether ``path`` is a bundle directory (it holds a ``manifest.json``)."""
    return Path(path).is_dir() and (Path(path) / MANIFEST_FILE).is_file()


def read_manifest(bundle: str | Path) -> dict[str, Any]:
    """The checked manifest of the bundle directory ``bundle``; InputError (one line) naming what is wrong."""
    path = Path(bundle) / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{bundle}: no {MANIFEST_FILE} (not a ctrkit export bundle)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a readable manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise InputError(f"{path}: not a ctrkit bundle manifest (format is not {BUNDLE_FORMAT!r})")
    missing = [key for key in _REQUIRED if key not in manifest]
    if missing:
        raise InputError(f"{path}: missing entr{'ies' if len(missing) > 1 else 'y'} {', '.join(missing)}")
    if manifest["format_version"] > BUNDLE_VERSION:
        raise InputError(f"{path}: bundle format version {manifest['format_version']}, newer than this ctrkit reads")
    if manifest["export_format"] not in FORMATS:
        raise InputError(f"{path}: unknown export_format {manifest['export_format']!r}")
    for key in ("artifact", "encoder"):
        if not (Path(bundle) / manifest[key]).exists():
            raise InputError(f"{bundle}: the manifest names {manifest[key]} but the bundle has no such file")
    return manifest
