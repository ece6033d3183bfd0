"""Precision and higher-order derivatives of the layers (issue 7, "smaller defects").

* AFM's attention softmax ran in float32 whatever the input, so a float64 AFM failed gradcheck.
* The fused autograd Functions' backwards are built from intermediates the forward computed
  without a graph; a double backward through them silently returned wrong Hessian-vector products.
  Now each either gives the reference formula's value or raises; it never silently differs.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ctrkit.pytorch.layers import (
    AttentionalPooling,
    CompressedInteractionNetwork,
    CrossNet,
    EmbeddingTable,
    FactorizationMachine,
    MultiHeadSelfAttention,
)
from ctrkit.registry import build_torch_model
from ctrkit.schema import Field, Schema

DOUBLE_BACKWARD_REFUSED = "first-order only"


def tiny_schema() -> Schema:
    return Schema((Field("C1", "sparse", vocab_size=4), Field("C2", "sparse", vocab_size=5),
                   Field("C3", "sparse", vocab_size=3), Field("I1", "dense")))


def tiny_batch(rows: int = 5, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    sparse = torch.stack([torch.randint(0, v, (rows,), generator=gen) for v in (4, 5, 3)], dim=1)
    return {"sparse": sparse.int(), "dense": torch.randn(rows, 1, generator=gen, dtype=torch.float64)}


def spread_parameters(module: nn.Module, std: float = 0.5, seed: int = 0) -> None:
    """Parameters of order 1 (the default embedding init, 1e-4, makes every interaction vanish)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, std)


class _Call(nn.Module):
    """``call(inner, x)`` as a forward, so ``functional_call`` can swap the parameters of any method."""

    def __init__(self, inner: nn.Module, call) -> None:
        super().__init__()
        self.inner = inner
        self.call = call

    def forward(self, x):
        return self.call(self.inner, x)


def with_parameters(module: nn.Module, call):
    """``f(x, *params)``: ``call(module, x)`` with ``params`` (in ``named_parameters`` order) swapped in."""
    wrapped = _Call(module, call)
    names = [name for name, _ in wrapped.named_parameters()]
    return lambda x, *params: functional_call(wrapped, dict(zip(names, params)), (x,))


def logits_of(model: nn.Module) -> nn.Module:
    """``model.logits``: ``model(batch)`` casts to float32 (for autocast), the logits keep the model's dtype."""
    return _Call(model, lambda m, batch: m.logits(batch))


# ---------------------------------------------------------------------------------------------
# AFM in float64
# ---------------------------------------------------------------------------------------------
def test_attentional_pooling_passes_gradcheck_in_float64():
    pool = AttentionalPooling(4, 3, attention_factor=5).double()
    spread_parameters(pool)
    x = torch.randn(3, 4, 3, dtype=torch.float64, requires_grad=True)
    names, params = zip(*pool.named_parameters())

    def f(x, *ps):
        return functional_call(pool, dict(zip(names, ps)), (x,))

    assert pool(x).dtype == torch.float64
    assert torch.autograd.gradcheck(f, (x, *[p.detach().clone().requires_grad_() for p in params]))


def test_attentional_pooling_keeps_fp32_softmax_under_bf16():
    pool = AttentionalPooling(4, 3, attention_factor=5)
    x = torch.randn(8, 4, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = pool(x)
    torch.testing.assert_close(out.float(), pool(x), atol=0.05, rtol=0.05)


def test_float64_afm_model_passes_gradcheck():
    model, _ = build_torch_model("afm", tiny_schema(), {"embed_size": 3, "attention_factor": 4})
    wrapped = logits_of(model.double())
    spread_parameters(wrapped)
    batch = tiny_batch()
    names, params = zip(*wrapped.named_parameters())

    def logits(*ps):
        return functional_call(wrapped, dict(zip(names, ps)), (batch,))

    assert logits(*params).dtype == torch.float64
    assert torch.autograd.gradcheck(logits, tuple(p.detach().clone().requires_grad_() for p in params))


# ---------------------------------------------------------------------------------------------
# Double backward through the fused Functions
# ---------------------------------------------------------------------------------------------
HEADS = {
    # the incoming gradient is a constant: torch's once_differentiable lets this one through
    "linear": lambda out, w: (out * w).sum(),
    "tanh": lambda out, w: (torch.tanh(out) * w).sum(),
}


def hessian_vector_product(fn, inputs, head, seed=0):
    """``H v`` of ``head(fn(*inputs)) + sum(x^3)``: the cubic is a second path from every input."""
    gen = torch.Generator().manual_seed(seed)
    out = fn(*inputs)
    loss = HEADS[head](out, torch.randn(out.shape, generator=gen, dtype=out.dtype))
    loss = loss + sum((x ** 3).sum() for x in inputs)
    grads = torch.autograd.grad(loss, inputs, create_graph=True)
    vectors = [torch.randn(x.shape, generator=gen, dtype=x.dtype) for x in inputs]
    return torch.autograd.grad(sum((g * v).sum() for g, v in zip(grads, vectors)), inputs)


def double_backward_is_exact_or_refused(fused, reference, inputs, head) -> bool:
    """True when exact, False when refused with the clear message; fails when silently different."""
    try:
        got = hessian_vector_product(fused, inputs, head)
    except RuntimeError as exc:
        assert DOUBLE_BACKWARD_REFUSED in str(exc), exc
        return False
    want = hessian_vector_product(reference, inputs, head)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-10)
    return True


def attention_reference(module: MultiHeadSelfAttention, x: torch.Tensor) -> torch.Tensor:
    """AutoInt's layer with an explicit softmax (SDPA in ``reference_forward`` has no double backward)."""
    batch, fields, _ = x.shape
    shape = (batch, fields, module.num_heads, module.attention_dim)
    q, k, v = (layer(x).view(shape).transpose(1, 2) for layer in (module.query, module.key, module.value))
    scale = 1.0 / math.sqrt(module.attention_dim) if module.scaled else 1.0
    attn = torch.softmax(q @ k.transpose(-1, -2) * scale, dim=-1)
    out = (attn @ v).transpose(1, 2).reshape(batch, fields, module.output_dim)
    if module.residual is not None:
        out = out + module.residual(x)
    return F.relu(out)


def reference_forward(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return module.reference_forward(x)


def _blocks():
    torch.manual_seed(0)
    cross = CrossNet(5, 2).double()
    spread_parameters(cross, seed=1)
    cin = {act: CompressedInteractionNetwork(3, (4, 2), activation=act).double() for act in ("identity", "tanh")}
    attention = MultiHeadSelfAttention(4, attention_dim=3, num_heads=2).double()
    return {
        "fm": (FactorizationMachine(), reference_forward, torch.randn(3, 4, 3, dtype=torch.float64)),
        "crossnet": (cross, reference_forward, torch.randn(4, 5, dtype=torch.float64)),
        "cin-identity": (cin["identity"], reference_forward, torch.randn(3, 3, 4, dtype=torch.float64)),
        "cin-tanh": (cin["tanh"], reference_forward, torch.randn(3, 3, 4, dtype=torch.float64)),
        "self-attention": (attention, attention_reference, torch.randn(2, 4, 4, dtype=torch.float64)),
    }


@pytest.mark.parametrize("head", sorted(HEADS))
@pytest.mark.parametrize("block", ["fm", "crossnet", "cin-identity", "cin-tanh", "self-attention"])
def test_double_backward_through_fused_blocks_is_exact_or_refused(block, head):
    module, reference, x = _blocks()[block]
    inputs = (x.requires_grad_(), *[p.detach().clone().requires_grad_() for p in module.parameters()])
    fused = with_parameters(module, lambda m, x: m(x))
    exact = double_backward_is_exact_or_refused(fused, with_parameters(module, reference), inputs, head)
    if block == "fm":
        assert exact  # its backward rebuilds the one saved sum under create_graph


@pytest.mark.parametrize("head", sorted(HEADS))
def test_double_backward_through_the_embedding_scatter_is_exact(head):
    table = EmbeddingTable(7, 3).double()
    spread_parameters(table)
    ids = torch.tensor([[1, 2, 2], [6, 0, 1]])
    weight = table.weight.detach().clone().requires_grad_()

    fused = with_parameters(table, lambda m, ids: m(ids))
    reference = with_parameters(table, lambda m, ids: F.embedding(ids, m.weight))
    assert double_backward_is_exact_or_refused(lambda w: fused(ids, w), lambda w: reference(ids, w), (weight,), head)


def _model_hvp(model: nn.Module, batch: dict) -> list[torch.Tensor]:
    """``H v`` of the logistic loss of ``model.logits`` with respect to all its parameters."""
    wrapped = logits_of(model)
    names, params = zip(*[(n, p.detach().clone().requires_grad_()) for n, p in wrapped.named_parameters()])
    logits = functional_call(wrapped, dict(zip(names, params)), (batch,)).reshape(-1)
    labels = (torch.arange(len(logits)) % 2).to(logits.dtype)
    loss = F.binary_cross_entropy_with_logits(logits, labels)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    gen = torch.Generator().manual_seed(1)
    vectors = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
    return list(torch.autograd.grad(sum((g * v).sum() for g, v in zip(grads, vectors)), params))


def _use_reference_formulas(model: nn.Module) -> None:
    """Swap every fused block of ``model`` for its plain formula (autograd all the way down)."""
    for module in model.modules():
        if isinstance(module, EmbeddingTable):
            module.forward = lambda ids, m=module: F.embedding(ids.long(), m.weight)
        elif hasattr(module, "reference_forward"):
            module.forward = module.reference_forward


def test_deepfm_hessian_vector_product_equals_the_plain_formulas():
    model, _ = build_torch_model("deepfm", tiny_schema(), {"embed_size": 3, "hidden_units": [4]})
    model = model.double()
    spread_parameters(model)
    batch = tiny_batch(6)
    fused = _model_hvp(model, batch)
    _use_reference_formulas(model)
    for got, want in zip(fused, _model_hvp(model, batch)):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", ["dcn", "xdeepfm"])
def test_models_with_first_order_blocks_refuse_double_backward(name):
    model, _ = build_torch_model(name, tiny_schema(), {"embed_size": 3, "hidden_units": [4]})
    model = model.double()
    spread_parameters(model)
    with pytest.raises(RuntimeError, match=DOUBLE_BACKWARD_REFUSED):
        _model_hvp(model, tiny_batch(6))
