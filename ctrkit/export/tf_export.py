"""A TensorFlow (Keras 3) model as a SavedModel: one ``serve`` signature, loadable with TensorFlow alone.

The model is wrapped in a ``tf.Module`` whose ``serve`` is a ``tf.function`` with an
``input_signature`` (batch dimension ``None``) taking the inputs of :mod:`ctrkit.export.inputs`
by name and returning ``{"probability": sigmoid(logits)}`` float32 ``[B]``. ``tf.saved_model.load``
then scores without ctrkit or Keras::

    graph = tf.saved_model.load("bundle/savedmodel")
    graph.serve(sparse=ids, dense=values)["probability"]          # or graph.signatures["serving_default"]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from ctrkit.export.inputs import OUTPUT_NAME, InputTensor, graph_arrays


class ProbabilityModule(tf.Module):
    """``model`` behind a fixed signature: named inputs (``sparse[, dense], seq_*``) -> ``{probability: [B]}``."""

    def __init__(self, model: Any, inputs: list[InputTensor]) -> None:
        super().__init__()
        self.model = model
        keys = {t.name: t.key for t in inputs}
        signature = [tf.TensorSpec([None, t.width], tf.as_dtype(t.dtype), name=t.name) for t in inputs]

        def serve(*tensors):
            batch = {keys[spec.name]: tensor for spec, tensor in zip(signature, tensors)}
            logits = self.model(batch, training=False)
            logits = logits["logits"] if isinstance(logits, dict) else logits  # (B,)
            return {OUTPUT_NAME: tf.sigmoid(tf.cast(logits, tf.float32))}  # (B,)

        self.serve = tf.function(serve, input_signature=signature)


def export_savedmodel(model: Any, inputs: list[InputTensor], path: Path) -> dict[str, Any]:
    """Save ``model`` (float32 policy) as a SavedModel directory at ``path``; returns manifest entries."""
    module = ProbabilityModule(model, inputs)
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return {"tensorflow_version": str(tf.__version__), "signature": "serving_default"}


def tf_probabilities(model: Any, batch: dict[str, np.ndarray], inputs: list[InputTensor]) -> np.ndarray:
    """The Keras model's probabilities of ``batch`` through :class:`ProbabilityModule` (float32 ``[B]``)."""
    module = ProbabilityModule(model, inputs)
    return module.serve(*graph_arrays(batch, inputs))[OUTPUT_NAME].numpy()
