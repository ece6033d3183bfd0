"""The hand-written backward passes of ``ctrkit.pytorch.layers._fused`` against autograd.

Each fused block is compared with its plain ``reference_forward`` (the textbook formula run
through autograd): same outputs, same gradients for inputs and parameters, ``gradcheck`` in
float64, and sane results under bf16 autocast.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ctrkit.pytorch.layers import (
    BilinearInteraction,
    CompressedInteractionNetwork,
    CrossNet,
    Dice,
    EmbeddingTable,
    FactorizationMachine,
    MultiHeadSelfAttention,
    OperationAwareInteraction,
)
from ctrkit.pytorch.layers import _fused
from ctrkit.pytorch.layers.embedding import _GatherRows

torch.set_num_threads(2)


def _grads(fn, inputs, weight):
    return torch.autograd.grad((fn() * weight).sum(), inputs)


def _assert_same_function(module, x, atol=1e-10):
    """Outputs and all gradients of ``module(x)`` equal those of ``module.reference_forward(x)``."""
    out, ref = module(x), module.reference_forward(x)
    torch.testing.assert_close(out, ref, atol=atol, rtol=1e-9)
    weight = torch.randn_like(ref)
    inputs = [x, *module.parameters()]
    for got, want in zip(_grads(lambda: module(x), inputs, weight), _grads(lambda: module.reference_forward(x), inputs, weight)):
        torch.testing.assert_close(got, want, atol=atol, rtol=1e-9)


@pytest.fixture
def two_threads():
    """Two intra-op threads for the test (earlier tests in the session may have changed the count)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_embedding_gather_gradient_equals_f_embedding(two_threads):
    torch.manual_seed(0)
    table = EmbeddingTable(50, 4).double()
    ids = torch.randint(0, 50, (9, 6))
    ids[0, :3] = 7  # repeated rows accumulate
    out = table(ids)
    torch.testing.assert_close(out, F.embedding(ids, table.weight))
    g = torch.randn_like(out)
    (mine,) = torch.autograd.grad((out * g).sum(), table.weight)
    (ref,) = torch.autograd.grad((F.embedding(ids, table.weight) * g).sum(), table.weight)
    torch.testing.assert_close(mine, ref)
    weight = table.weight.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda w: _GatherRows.apply(w, ids), (weight,))
    assert torch.get_num_threads() == 2  # the backward restores the thread count


def test_fm_gradcheck_and_reference():
    torch.manual_seed(0)
    x = torch.randn(6, 5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_fused.fm_pairwise, (x,))
    _assert_same_function(FactorizationMachine(), x)


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_crossnet_closed_form_matches_recursion(layers):
    torch.manual_seed(layers)
    cross = CrossNet(7, layers).double()
    with torch.no_grad():
        for b in cross.biases:
            b.bias.normal_()
    x0 = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    _assert_same_function(cross, x0)
    params = (cross.weight, *[b.bias for b in cross.biases])
    assert torch.autograd.gradcheck(lambda x, w, *b: _fused._CrossNet.apply(x, w, *b), (x0, *params))


@pytest.mark.parametrize("split_half", [True, False])
@pytest.mark.parametrize("activation", ["identity", "tanh"])
def test_cin_matches_outer_product_form(split_half, activation):
    torch.manual_seed(0)
    cin = CompressedInteractionNetwork(5, (8, 8, 6), split_half=split_half, activation=activation).double()
    x0 = torch.randn(7, 5, 4, dtype=torch.float64, requires_grad=True)
    _assert_same_function(cin, x0)
    weights = [conv.weight for conv in cin.convs]
    for chunk_rows in (1, 3, 7):  # chunk boundaries inside and at the end of the batch
        assert torch.autograd.gradcheck(
            lambda x, *w: _fused._CIN.apply(x, chunk_rows, tuple(cin.next_sizes), cin.activation, *w), (x0, *weights)
        )


@pytest.mark.parametrize("use_residual", [True, False])
@pytest.mark.parametrize("scaled", [False, True])
def test_self_attention_matches_reference(use_residual, scaled):
    torch.manual_seed(0)
    att = MultiHeadSelfAttention(6, attention_dim=3, num_heads=2, use_residual=use_residual, scaled=scaled).double()
    x = torch.randn(5, 7, 6, dtype=torch.float64, requires_grad=True)
    _assert_same_function(att, x)
    w = torch.randn((4 if use_residual else 3) * 6, 6, dtype=torch.float64, requires_grad=True)
    for chunk_rows in (2, 5):
        assert torch.autograd.gradcheck(
            lambda x, w: _fused._SelfAttention.apply(x, w, 2, 3, 0.5 if scaled else 1.0, use_residual, chunk_rows), (x, w)
        )


@pytest.mark.parametrize("bilinear_type", ["field_all", "field_each", "field_interaction"])
def test_pair_bilinear_matches_reference_and_gradcheck(bilinear_type):
    torch.manual_seed(0)
    layer = BilinearInteraction(5, 3, bilinear_type).double()
    x = torch.randn(4, 5, 3, dtype=torch.float64, requires_grad=True)
    _assert_same_function(layer, x)
    weight = layer.matrices.weight.detach().view(layer.groups, 3, 3).clone().requires_grad_()
    per_pair = bilinear_type == "field_interaction"
    assert torch.autograd.gradcheck(lambda x, w: _fused.pair_bilinear(x, w, per_pair), (x, weight))


@pytest.mark.parametrize("product", ["inner", "hadamard"])
def test_operation_aware_matches_reference_and_gradcheck(product):
    torch.manual_seed(0)
    layer = OperationAwareInteraction(4, 3, product).double()
    x = torch.randn(5, 4, 12, dtype=torch.float64, requires_grad=True)
    _assert_same_function(layer, x)
    assert torch.autograd.gradcheck(lambda v: _fused.operation_aware(v.reshape(5, 4, 4, 3), product == "inner"), (x,))


@pytest.mark.parametrize("masked", [False, True])
def test_dice_train_gradcheck(masked):
    torch.manual_seed(0)
    x = torch.randn(13, 4, dtype=torch.float64, requires_grad=True)
    alpha = torch.randn(4, dtype=torch.float64, requires_grad=True)
    weight = (torch.arange(13) % 3 != 0).double().unsqueeze(1) if masked else None  # padding rows included
    assert torch.autograd.gradcheck(lambda x, a: _fused.dice_train(x, a, weight, 1e-8)[0], (x, alpha))
    whole = _fused._DiceTrain.apply(x, alpha, weight, 1e-8, 13)
    for chunk_rows in (1, 4):  # chunk boundaries inside the rows and a short last chunk
        assert torch.autograd.gradcheck(lambda x, a: _fused._DiceTrain.apply(x, a, weight, 1e-8, chunk_rows)[0], (x, alpha))
        for got, want in zip(_fused._DiceTrain.apply(x, alpha, weight, 1e-8, chunk_rows), whole):
            torch.testing.assert_close(got, want)
    with pytest.raises(RuntimeError, match="first-order only"):
        y = _fused.dice_train(x, alpha, weight, 1e-8)[0]
        torch.autograd.grad(y.sum(), x, create_graph=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("masked", [False, True])
def test_dice_c_kernels_match_the_float64_torch_passes(dtype, masked):
    """The C kernels (float32 and bfloat16 storage) against the gradchecked float64 torch passes, on a
    block with more rows than one accumulation block and a width with a vector remainder."""
    from ctrkit import native

    if native.library("dice") is None:
        pytest.skip("no C compiler on this machine: the torch passes are the only path (covered above)")
    g = torch.Generator().manual_seed(3)
    rows, channels = 700, 37
    x64 = torch.randn(rows, channels, generator=g, dtype=torch.float64) * 2 + 0.5
    alpha64 = torch.rand(channels, generator=g, dtype=torch.float64) - 0.5
    upstream = torch.randn(rows, channels, generator=g, dtype=torch.float64)
    weight = (torch.rand(rows, 1, generator=g) > 0.3).float() if masked else None

    def run(x, alpha, w):
        x, alpha = x.clone().requires_grad_(), alpha.clone().requires_grad_()
        y, mean, var = _fused.dice_train(x, alpha, w, 1e-8)
        dx, da = torch.autograd.grad(y, (x, alpha), upstream.to(y.dtype))
        return [t.double() for t in (y, mean, var, dx, da)]

    assert _fused.c_function("dice", "ctrkit_dice_forward", x64.to(dtype)) is not None
    got = run(x64.to(dtype), alpha64.float(), weight)
    want = run(x64.to(dtype).double(), alpha64.float().double(), None if weight is None else weight.double())
    tolerance = 1e-5 if dtype == torch.float32 else 1e-2  # bf16 stores y, dx with 8 significant bits
    for name, a, b in zip(("y", "mean", "var", "dx", "dalpha"), got, want):
        torch.testing.assert_close(a, b, rtol=tolerance, atol=tolerance * b.abs().max().item(), msg=name)


def test_paired_sigmoid_gradcheck_and_c_kernels(monkeypatch):
    """DIEN's auxiliary hidden layer on both pairs: the torch formula against the explicit stack
    (float64, gradcheck), and the C kernels (float32, bfloat16) against the torch formula."""
    from ctrkit import native

    g = torch.Generator().manual_seed(4)
    h = torch.randn(5, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    e = torch.randn(5, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    explicit = torch.sigmoid(torch.stack([h + e[:, 1:], h + torch.cat([e[1:], e[:1]])[:, 1:]]))
    torch.testing.assert_close(_fused.paired_sigmoid(h, e), explicit)
    assert torch.autograd.gradcheck(_fused.paired_sigmoid, (h, e))
    if native.library("paired_sigmoid") is None:
        pytest.skip("no C compiler on this machine: the torch formula is the only path (covered above)")
    h32, e32 = torch.randn(37, 9, 21, generator=g) * 3, torch.randn(37, 10, 21, generator=g) * 3
    upstream = torch.randn(2, 37, 9, 21, generator=g)
    for dtype, tolerance in ((torch.float32, 1e-5), (torch.bfloat16, 1e-2)):
        def run():
            x, y = h32.to(dtype).requires_grad_(), e32.to(dtype).requires_grad_()
            out = _fused.paired_sigmoid(x, y)
            return [out, *torch.autograd.grad(out, (x, y), upstream.to(dtype))]

        with_c = run()
        monkeypatch.setenv(native.ENV_SWITCH, "0")
        with_torch = run()
        monkeypatch.delenv(native.ENV_SWITCH)
        for got, want in zip(with_c, with_torch):
            torch.testing.assert_close(got.double(), want.double(), rtol=tolerance, atol=tolerance)


def test_pair_bilinear_c_backward_matches_torch(monkeypatch):
    """The C pass of the per-pair bilinear backward (float32, and bfloat16 under autocast) gives the
    gradients of the torch products (themselves gradchecked above in float64)."""
    from ctrkit import native

    if native.library("pair_products") is None:
        pytest.skip("no C compiler on this machine: the torch products are the only path (covered above)")
    g = torch.Generator().manual_seed(5)
    x0 = torch.randn(33, 7, 5, generator=g)
    w0 = torch.randn(21, 5, 5, generator=g) * 0.3
    upstream = torch.randn(33, 21, 5, generator=g)
    for autocast, tolerance in ((False, 1e-5), (True, 2e-2)):
        def grads():
            x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                out = _fused.pair_bilinear(x, w, True)
            return [out.float(), *torch.autograd.grad(out, (x, w), upstream.to(out.dtype))]

        with_c = grads()
        monkeypatch.setenv(native.ENV_SWITCH, "0")
        with_torch = grads()
        monkeypatch.delenv(native.ENV_SWITCH)
        for got, want in zip(with_c, with_torch):
            torch.testing.assert_close(got, want, rtol=tolerance, atol=tolerance * want.abs().max().item())


@pytest.mark.parametrize("bilinear_type", ["field_interaction", "field_each"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_bilinear_side_by_side_is_the_concatenation(bilinear_type, dtype):
    """FiBiNET's two bilinear layers written into one tensor: the values and gradients of
    ``torch.cat([layer(x) ...], dim=1)`` (float32: the C backward for one matrix per pair)."""
    from ctrkit.pytorch.layers.interaction import bilinear_side_by_side

    torch.manual_seed(0)
    layers = [BilinearInteraction(6, 4, bilinear_type).to(dtype) for _ in range(2)]
    inputs = [torch.randn(9, 6, 4, dtype=dtype, requires_grad=True) for _ in range(2)]
    upstream = torch.randn(9, 30, 4, dtype=dtype)
    params = [*inputs, *(p for layer in layers for p in layer.parameters())]
    got_out = bilinear_side_by_side(layers, inputs)
    got = torch.autograd.grad(got_out, params, upstream)
    want_out = torch.cat([layer(x) for layer, x in zip(layers, inputs)], dim=1)
    want = torch.autograd.grad(want_out, params, upstream)
    torch.testing.assert_close(got_out, want_out)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_dice_training_gradients_match_the_reference():
    """The fused training node gives the outputs and gradients of eq. 5 written position by position."""
    torch.manual_seed(0)
    dice = Dice(4).double().train()
    with torch.no_grad():
        dice.alpha.bias.uniform_(-0.5, 0.5)
    x = torch.randn(3, 5, 4, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(3, 5) > 0.4
    weight = torch.randn(3, 5, 4, dtype=torch.float64)
    inputs = [x, dice.alpha.bias]
    got = _grads(lambda: dice(x, mask), inputs, weight)
    want = _grads(lambda: dice.reference_forward(x, mask), inputs, weight)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-10, rtol=1e-9)


def test_fused_blocks_under_bf16_autocast_track_fp32():
    torch.manual_seed(0)
    x = torch.randn(64, 39, 16) * 0.3
    blocks = [
        CompressedInteractionNetwork(39, (16, 16, 16)),
        MultiHeadSelfAttention(16, attention_dim=8, num_heads=2),
        FactorizationMachine(),
        Dice(16),
        BilinearInteraction(39, 16, "field_interaction"),
        BilinearInteraction(39, 16, "field_each"),
    ]
    for block in blocks:
        x32 = x.clone().requires_grad_()
        ref = block(x32)
        ref.sum().backward()
        block.zero_grad(set_to_none=True)
        xb = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = block(xb)
        out.float().sum().backward()
        scale = ref.abs().max().item()
        assert (out.float() - ref).abs().max().item() <= 0.05 * scale + 1e-3, type(block).__name__
        assert xb.grad.dtype == torch.float32 and torch.isfinite(xb.grad).all()
        grad_error = ((xb.grad - x32.grad).norm() / x32.grad.norm()).item()  # bf16 has 8 significant bits
        assert grad_error <= 0.05, (type(block).__name__, grad_error)
        assert all(p.grad is None or p.grad.dtype == torch.float32 for p in block.parameters())
