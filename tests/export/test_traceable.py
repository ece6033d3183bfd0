"""The models with fused blocks (FM, CrossNet, CIN, self-attention, GRU/AUGRU) trace and export as
plain operations: ``torch.export`` with a dynamic batch gives the eager model's probabilities."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.slow  # torch.export takes a few seconds per model

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _sequence_batches import SEQUENCE_MODELS, taobao_like_schema  # noqa: E402

from ctrkit.export.inputs import example_batch, graph_arrays, input_tensors  # noqa: E402
from ctrkit.export.torch_export import ProbabilityGraph  # noqa: E402
from ctrkit.pytorch.layers import _fused  # noqa: E402
from ctrkit.registry import build_torch_model  # noqa: E402
from ctrkit.schema import Field, Schema  # noqa: E402


def graph_of(name: str):
    schema = taobao_like_schema() if name in SEQUENCE_MODELS else Schema(
        tuple(Field(f"C{i}", "sparse", vocab_size=10 + i) for i in range(5)) + (Field("I1", "dense"),))
    model, _ = build_torch_model(name, schema, {"embed_size": 4, **SEQUENCE_MODELS.get(name, {})})
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.05)
    inputs = input_tensors(schema)
    return ProbabilityGraph(model.eval(), inputs).eval(), schema, inputs


@pytest.mark.parametrize("name", ["deepfm", "dcn", "xdeepfm", "autoint+", "dien"])
def test_torch_export_with_a_dynamic_batch_gives_the_eager_scores(name):
    graph, schema, inputs = graph_of(name)
    example = tuple(torch.from_numpy(a) for a in graph_arrays(example_batch(schema, 4), inputs))
    batch = torch.export.Dim("batch")
    with torch.no_grad():
        program = torch.export.export(graph, example, dynamic_shapes=(tuple({0: batch} for _ in example),))
    for rows in (9, 2):
        arrays = [torch.from_numpy(a) for a in graph_arrays(example_batch(schema, rows, seed=rows), inputs)]
        with torch.no_grad():
            expected = graph(*arrays)
            got = program.module()(*arrays)
        assert got.shape == (rows,) and (rows < 9 or float(expected.std()) > 1e-3)
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=0, atol=1e-6)


def test_the_fallback_is_taken_only_under_tracing():
    graph, schema, inputs = graph_of("deepfm")
    assert not _fused.exporting()
    seen = []
    graph.model.fm.register_forward_hook(lambda module, args, out: seen.append(_fused.exporting()))
    example = tuple(torch.from_numpy(a) for a in graph_arrays(example_batch(schema, 3), inputs))
    with torch.no_grad():
        graph(*example)
        traced = torch.jit.trace(graph, example, check_trace=False)
    assert seen == [False, True]
    assert "PythonOp" not in str(traced.inlined_graph)  # no autograd Function left in the trace
