"""A PyTorch model as TorchScript (``torch.jit.trace``) and ONNX (``torch.onnx.export``).

Both trace :class:`ProbabilityGraph`, a wrapper taking the batch's tensors positionally (see
:mod:`ctrkit.export.inputs`) and returning ``sigmoid(logits)`` ``[B]``. Under tracing the fused
interaction blocks run their ``reference_forward`` (``ctrkit.pytorch.layers._fused.exporting``),
so every model traces to plain operations.

* TorchScript: ``torch.jit.trace`` in ``no_grad`` (``torch.jit.script`` cannot compile models that
  take a ``Mapping``); the batch dimension is read from the inputs, so any batch size works.
* ONNX: the TorchScript-based exporter (``dynamo=False``) at opset :data:`ONNX_OPSET` with a
  dynamic ``batch`` axis on every input and the output. It takes about a second per model, where
  the dynamo exporter takes several, and handles every model the same way.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ctrkit.export.inputs import OUTPUT_NAME, InputTensor, example_batch, graph_arrays

#: the ONNX opset every ctrkit ONNX export uses (recorded in the manifest)
ONNX_OPSET = 17


class ProbabilityGraph(nn.Module):
    """``model`` with positional inputs (``sparse[, dense], seq_*``) and the probability as output.

    Shapes: ``sparse`` int ``[B, F]``, ``dense`` float ``[B, n_dense]``, ``seq_<name>`` int
    ``[B, L]`` -> ``[B]`` float32.
    """

    def __init__(self, model: nn.Module, inputs: list[InputTensor]) -> None:
        super().__init__()
        self.model = model
        self.keys = [t.key for t in inputs]

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        output = self.model(dict(zip(self.keys, tensors)))
        logits = output["logits"] if isinstance(output, dict) else output  # (B,)
        return torch.sigmoid(logits.float())  # (B,)


def _example(model: nn.Module, inputs: list[InputTensor]) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(a) for a in graph_arrays(example_batch(model.schema), inputs))


def _quiet():
    """Tracer warnings (Python values baked into the trace, e.g. loop bounds) are expected here."""
    context = warnings.catch_warnings()
    context.__enter__()
    warnings.simplefilter("ignore")
    return context


def export_torchscript(model: nn.Module, inputs: list[InputTensor], path: Path) -> dict[str, Any]:
    """Trace ``model`` (CPU, eval, float32) to TorchScript at ``path``; returns manifest entries."""
    graph = ProbabilityGraph(model.float().eval().cpu(), inputs).eval()
    example = _example(model, inputs)
    context = _quiet()
    try:
        with torch.no_grad():
            traced = torch.jit.trace(graph, example, check_trace=False)
    finally:
        context.__exit__(None, None, None)
    traced.save(str(path))
    return {"torch_version": str(torch.__version__)}


def export_onnx(model: nn.Module, inputs: list[InputTensor], path: Path) -> dict[str, Any]:
    """``model`` as ONNX at ``path`` (opset :data:`ONNX_OPSET`, dynamic batch); returns manifest entries."""
    graph = ProbabilityGraph(model.float().eval().cpu(), inputs).eval()
    example = _example(model, inputs)
    names = [t.name for t in inputs]
    dynamic = {name: {0: "batch"} for name in [*names, OUTPUT_NAME]}
    context = _quiet()
    try:
        with torch.no_grad():
            torch.onnx.export(graph, example, str(path), input_names=names, output_names=[OUTPUT_NAME],
                              opset_version=ONNX_OPSET, dynamic_axes=dynamic, dynamo=False,
                              do_constant_folding=True)
    finally:
        context.__exit__(None, None, None)
    return {"opset": ONNX_OPSET, "torch_version": str(torch.__version__)}


def torch_probabilities(model: nn.Module, batch: dict[str, np.ndarray], inputs: list[InputTensor]) -> np.ndarray:
    """The eager model's probabilities of ``batch`` through :class:`ProbabilityGraph` (float32 ``[B]``)."""
    graph = ProbabilityGraph(model.float().eval().cpu(), inputs).eval()
    with torch.no_grad():
        return graph(*(torch.from_numpy(a) for a in graph_arrays(batch, inputs))).numpy()
