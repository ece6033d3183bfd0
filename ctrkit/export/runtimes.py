"""Scoring an exported artifact with its runtime only: onnxruntime, ``torch.jit.load`` or
``tf.saved_model.load`` (no ctrkit model code).

:func:`open_runtime` returns a function ``arrays -> probabilities``: the graph's inputs as numpy
arrays in manifest order (:func:`ctrkit.export.inputs.graph_arrays`) to float32 ``[B]``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ctrkit.errors import ConfigError, InputError

Scorer = Callable[[list[np.ndarray]], np.ndarray]


def open_runtime(bundle: str | Path, manifest: dict[str, Any], threads: int = 0) -> Scorer:
    """The scorer of the bundle's artifact (``threads``: intra-op threads, 0 = the runtime's default)."""
    fmt = manifest["export_format"]
    path = Path(bundle) / manifest["artifact"]
    names = [t["name"] for t in manifest["inputs"]]
    output = manifest["output"]["name"]
    opener = {"onnx": _onnx, "torchscript": _torchscript, "savedmodel": _savedmodel}[fmt]
    try:
        return opener(path, names, output, threads)
    except ImportError as exc:
        package = {"onnx": "onnxruntime", "torchscript": "torch", "savedmodel": "tensorflow"}[fmt]
        raise ConfigError(f"{Path(bundle)}: a {fmt} bundle needs {package} ({exc})") from None


def _onnx(path: Path, names: list[str], output: str, threads: int) -> Scorer:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own types for broken files
        raise InputError(f"{path}: onnxruntime cannot load it: {str(exc).splitlines()[0]}") from None

    def score(arrays: list[np.ndarray]) -> np.ndarray:
        return session.run([output], dict(zip(names, arrays)))[0]

    return score


def _torchscript(path: Path, names: list[str], output: str, threads: int) -> Scorer:
    import torch

    if threads:
        torch.set_num_threads(threads)
    try:
        with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript in favour of torch.export
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as exc:  # RuntimeError and others for broken files
        raise InputError(f"{path}: torch.jit.load cannot load it: {str(exc).splitlines()[0]}") from None

    def score(arrays: list[np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            return module(*(torch.from_numpy(a) for a in arrays)).numpy()

    return score


def _savedmodel(path: Path, names: list[str], output: str, threads: int) -> Scorer:
    import tensorflow as tf

    if threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
        except RuntimeError:  # already initialised in this process: keep its setting
            pass
    try:
        serve = tf.saved_model.load(str(path)).signatures["serving_default"]
    except Exception as exc:  # OSError, ValueError, KeyError for broken directories
        raise InputError(f"{path}: tf.saved_model.load cannot load it: {str(exc).splitlines()[0]}") from None

    def score(arrays: list[np.ndarray]) -> np.ndarray:
        return serve(**{name: tf.constant(a) for name, a in zip(names, arrays)})[output].numpy()

    return score
