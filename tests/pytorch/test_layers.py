"""Unit tests of ctrkit.pytorch.layers: reference loops, shapes, padding, init, bf16."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from ctrkit.errors import ConfigError
from ctrkit.pytorch.layers import (
    MLP,
    AttentionalPooling,
    Bias,
    CompressedInteractionNetwork,
    CrossNet,
    EmbeddingTable,
    FactorizationMachine,
    FieldAwareFactorizationMachine,
    FieldEmbedding,
    Linear,
    MultiHeadSelfAttention,
)
from ctrkit.schema import Field, Schema

torch.set_num_threads(2)


def mixed_schema() -> Schema:
    return Schema(
        (
            Field("user", "sparse", vocab_size=5),
            Field("item", "sparse", vocab_size=7),
            Field("price", "dense"),
            Field("age", "dense"),
            Field("history", "sequence", max_len=4, shares="item"),
            Field("recent", "sequence", max_len=2, shares="user"),
        )
    )


def mixed_batch() -> dict[str, torch.Tensor]:
    return {
        "label": torch.tensor([1.0, 0.0, 1.0]),
        "sparse": torch.tensor([[1, 2], [0, 6], [4, 3]], dtype=torch.int32),
        "dense": torch.tensor([[0.5, -1.0], [2.0, 0.0], [1.0, 3.0]]),
        "seq:history": torch.tensor([[0, 0, 3, 5], [0, 0, 0, 0], [1, 2, 0, 6]], dtype=torch.int32),
        "seq:recent": torch.tensor([[2, 4], [0, 1], [0, 0]]),
    }


# -- EmbeddingTable / Bias -------------------------------------------------------------------------


def test_embedding_table_gathers_rows_and_accepts_int32():
    table = EmbeddingTable(10, 3)
    ids = torch.tensor([[1, 9], [0, 1]], dtype=torch.int32)
    out = table(ids)
    assert out.shape == (2, 2, 3)
    torch.testing.assert_close(out[0, 0], table.weight[1])
    torch.testing.assert_close(out[0, 1], table.weight[9])


def test_embedding_table_init_is_small_normal():
    torch.manual_seed(0)
    table = EmbeddingTable(2000, 50)
    assert abs(table.weight.std().item() - 1e-4) < 5e-6
    assert abs(table.weight.mean().item()) < 5e-6


def test_bias_is_zero_initialised_and_added():
    bias = Bias(3)
    assert torch.equal(bias.bias.detach(), torch.zeros(3))
    with torch.no_grad():
        bias.bias.fill_(2.0)
    torch.testing.assert_close(bias(torch.ones(4, 3)), torch.full((4, 3), 3.0))


# -- FieldEmbedding ------------------------------------------------------------------------------------


def test_field_embedding_layout_and_values():
    schema = mixed_schema()
    emb = FieldEmbedding(schema, 4)
    assert emb.num_fields == 6
    assert emb.table.weight.shape == (5 + 7 + 2, 4)
    with torch.no_grad():
        emb.table.weight.copy_(torch.randn_like(emb.table.weight))
    batch = mixed_batch()
    out = emb(batch)
    assert out.shape == (3, 6, 4)
    w = emb.table.weight.detach()
    item_offset = 5
    # sparse: local id + field offset
    torch.testing.assert_close(out[0, 0], w[1])
    torch.testing.assert_close(out[0, 1], w[item_offset + 2])
    torch.testing.assert_close(out[1, 0], w[0])  # OOV id 0 is a real row
    # dense: the field's row times the value
    torch.testing.assert_close(out[0, 2], w[12] * 0.5)
    torch.testing.assert_close(out[2, 3], w[13] * 3.0)
    torch.testing.assert_close(out[1, 3], torch.zeros(4))
    # sequence over item's vocabulary: mean of non-padding items
    torch.testing.assert_close(out[0, 4], (w[item_offset + 3] + w[item_offset + 5]) / 2)
    torch.testing.assert_close(out[2, 4], (w[item_offset + 1] + w[item_offset + 2] + w[item_offset + 6]) / 3)
    torch.testing.assert_close(out[1, 4], torch.zeros(4))  # all padding
    # sequence over user's vocabulary
    torch.testing.assert_close(out[0, 5], (w[2] + w[4]) / 2)
    torch.testing.assert_close(out[1, 5], w[1])
    torch.testing.assert_close(out[2, 5], torch.zeros(4))


def test_field_embedding_sequence_padding_is_never_looked_up():
    schema = mixed_schema()
    emb = FieldEmbedding(schema, 2)
    seen = []
    emb.table.register_forward_hook(lambda module, args, output: seen.append(args[0].clone()))
    batch = mixed_batch()
    emb(batch)
    (ids,) = seen
    non_padding = int((batch["seq:history"] != 0).sum() + (batch["seq:recent"] != 0).sum())
    assert ids.numel() == 3 * 4 + non_padding  # B * (sparse + dense) + real items
    # changing the padding row (the OOV row of "item") does not change the pooled sequence
    out1 = emb(batch)
    with torch.no_grad():
        emb.table.weight[5].add_(100.0)
    out2 = emb(batch)
    torch.testing.assert_close(out1[:, 4], out2[:, 4])


def test_field_embedding_without_dense_and_sequence():
    schema = Schema((Field("a", "sparse", vocab_size=3), Field("b", "sparse", vocab_size=4)))
    emb = FieldEmbedding(schema, 5)
    assert emb.offsets.tolist() == [0, 3]
    out = emb({"sparse": torch.tensor([[2, 3]])})
    torch.testing.assert_close(out[0, 1], emb.table.weight[6])


def test_field_embedding_dense_only():
    schema = Schema((Field("x", "dense"), Field("y", "dense")))
    emb = FieldEmbedding(schema, 3)
    out = emb({"dense": torch.tensor([[1.0, 2.0]])})
    torch.testing.assert_close(out[0], emb.table.weight * torch.tensor([[1.0], [2.0]]))


def test_linear_is_bias_plus_sum_of_first_order_weights():
    schema = mixed_schema()
    linear = Linear(schema)
    with torch.no_grad():
        linear.bias.bias.fill_(0.25)
    batch = mixed_batch()
    expected = linear.weights(batch).sum(dim=(1, 2)) + 0.25
    out = linear(batch)
    assert out.shape == (3, 1)
    torch.testing.assert_close(out[:, 0], expected)


# -- FM / FFM ------------------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(batch=st.integers(1, 3), fields=st.integers(1, 6), dim=st.integers(1, 5), seed=st.integers(0, 10_000))
def test_fm_pairwise_equals_double_loop(batch, fields, dim, seed):
    x = torch.randn(batch, fields, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    expected = torch.zeros(batch, 1, dtype=torch.float64)
    for i in range(fields):
        for j in range(i + 1, fields):
            expected[:, 0] += (x[:, i] * x[:, j]).sum(-1)
    torch.testing.assert_close(FactorizationMachine()(x), expected)


@settings(max_examples=25, deadline=None)
@given(batch=st.integers(1, 3), fields=st.integers(1, 5), k=st.integers(1, 4), seed=st.integers(0, 10_000))
def test_ffm_pairwise_equals_double_loop(batch, fields, k, seed):
    x = torch.randn(batch, fields, fields * k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    expected = torch.zeros(batch, 1, dtype=torch.float64)
    for i in range(fields):
        for j in range(i + 1, fields):
            v_i_fj = x[:, i, j * k:(j + 1) * k]
            v_j_fi = x[:, j, i * k:(i + 1) * k]
            expected[:, 0] += (v_i_fj * v_j_fi).sum(-1)
    torch.testing.assert_close(FieldAwareFactorizationMachine(fields, k)(x), expected)


# -- CrossNet ------------------------------------------------------------------------------------------


def test_crossnet_matches_formula():
    torch.manual_seed(0)
    cross = CrossNet(6, num_layers=2)
    with torch.no_grad():
        for b in cross.biases:
            b.bias.normal_()
    x0 = torch.randn(4, 6)
    xl = x0
    for layer in range(2):
        xl = x0 * (xl @ cross.weight[layer]).unsqueeze(1) + cross.biases[layer].bias + xl
    out = cross(x0)
    assert out.shape == (4, 6)
    torch.testing.assert_close(out, xl)
    assert all(isinstance(b, Bias) for b in cross.biases)
    assert not any(name.endswith("bias") and "biases" not in name for name, _ in cross.named_parameters())


def test_crossnet_rejects_zero_layers():
    with pytest.raises(ConfigError, match="cross_layers"):
        CrossNet(4, num_layers=0)


# -- CIN -----------------------------------------------------------------------------------------------


def _cin_reference(cin: CompressedInteractionNetwork, x0: torch.Tensor) -> torch.Tensor:
    """Explicit loops over feature maps, fields and filters (eq. 6 of the xDeepFM paper)."""
    batch, m, dim = x0.shape
    h = x0
    outputs = []
    for index, conv in enumerate(cin.convs):
        w = conv.weight[:, :, 0].view(conv.out_channels, h.shape[1], m)
        z = torch.zeros(batch, conv.out_channels, dim, dtype=x0.dtype)
        for o in range(conv.out_channels):
            for i in range(h.shape[1]):
                for j in range(m):
                    z[:, o] += w[o, i, j] * h[:, i] * x0[:, j]
        keep = cin.next_sizes[index]
        if keep < conv.out_channels:
            h, out = z[:, :keep], z[:, keep:]
        else:
            h, out = z, z
        outputs.append(out.sum(-1))
    return torch.cat(outputs, 1)


@pytest.mark.parametrize("split_half, expected_dim", [(True, 4 + 4 + 6), (False, 8 + 8 + 6)])
def test_cin_shapes_and_reference(split_half, expected_dim):
    torch.manual_seed(0)
    cin = CompressedInteractionNetwork(5, (8, 8, 6), split_half=split_half).double()
    assert cin.output_dim == expected_dim
    x0 = torch.randn(3, 5, 4, dtype=torch.float64)
    out = cin(x0)
    assert out.shape == (3, expected_dim)
    torch.testing.assert_close(out, _cin_reference(cin, x0))


def test_cin_split_half_needs_even_units():
    with pytest.raises(ConfigError, match="cin_layer_units"):
        CompressedInteractionNetwork(5, (7, 8), split_half=True)
    CompressedInteractionNetwork(5, (8, 7), split_half=True)  # the last layer may be odd
    with pytest.raises(ConfigError, match="cin_layer_units"):
        CompressedInteractionNetwork(5, ())


# -- self-attention ------------------------------------------------------------------------------------


@pytest.mark.parametrize("use_residual", [True, False])
def test_self_attention_matches_per_head_loop(use_residual):
    torch.manual_seed(0)
    att = MultiHeadSelfAttention(6, attention_dim=3, num_heads=2, use_residual=use_residual).double()
    x = torch.randn(2, 5, 6, dtype=torch.float64)
    out = att(x)
    assert out.shape == (2, 5, 6)
    heads = []
    for h in range(2):
        cols = slice(h * 3, (h + 1) * 3)
        q = x @ att.query.weight[cols].T
        k = x @ att.key.weight[cols].T
        v = x @ att.value.weight[cols].T
        alpha = torch.softmax(q @ k.transpose(1, 2), dim=-1)  # unscaled, as in AutoInt
        heads.append(alpha @ v)
    expected = torch.cat(heads, dim=-1)
    if use_residual:
        expected = expected + x @ att.residual.weight.T
    torch.testing.assert_close(out, torch.relu(expected))
    assert all(p.dim() == 2 for p in att.parameters())  # projections only, no free biases


def test_self_attention_stack_widths():
    att = MultiHeadSelfAttention(16, attention_dim=32, num_heads=2)
    assert att(torch.randn(4, 7, 16)).shape == (4, 7, 64)
    assert att.output_dim == 64


# -- AFM pooling ---------------------------------------------------------------------------------------


def test_attentional_pooling_matches_pair_loop():
    torch.manual_seed(0)
    pool = AttentionalPooling(4, 3, attention_factor=5).double()
    x = torch.randn(2, 4, 3, dtype=torch.float64)
    pairs = [x[:, i] * x[:, j] for i in range(4) for j in range(i + 1, 4)]
    scores = torch.stack(
        [pool.score(torch.relu(pool.attention(p))) for p in pairs], dim=1
    )  # (B, 6, 1)
    weights = torch.softmax(scores, dim=1)
    pooled = sum(weights[:, n] * p for n, p in enumerate(pairs))
    expected = pooled @ pool.projection.weight.T
    out = pool(x)
    assert out.shape == (2, 1)
    torch.testing.assert_close(out, expected)


def test_attentional_pooling_needs_two_fields():
    with pytest.raises(ConfigError, match="num_fields"):
        AttentionalPooling(1, 4)


# -- MLP and init --------------------------------------------------------------------------------------


def test_mlp_structure_and_output():
    mlp = MLP(10, (8, 4), activation="tanh", dropout=0.5, batch_norm=True, output_dim=1)
    kinds = [type(m).__name__ for m in mlp.layers]
    assert kinds == [
        "Linear", "BatchNorm1d", "Tanh", "Dropout", "Linear", "BatchNorm1d", "Tanh", "Dropout", "Linear",
    ]
    assert mlp(torch.randn(5, 10)).shape == (5, 1)
    assert MLP(10, (8, 4)).output_dim == 4
    assert MLP(10, ()).output_dim == 10


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"dropout": -0.1}, "dropout"),
        ({"dropout": 1.0}, "dropout"),
        ({"activation": "bogus"}, "activation"),
        ({"hidden_units": (4, 0)}, "hidden_units"),
        ({"batch_norm": "yes"}, "batch_norm"),
    ],
)
def test_mlp_rejects_bad_values(kwargs, name):
    with pytest.raises(ConfigError, match=name):
        MLP(4, **kwargs)


def test_xavier_normal_init_and_zero_biases():
    torch.manual_seed(0)
    mlp = MLP(600, (400,), output_dim=1)
    linear = mlp.layers[0]
    assert abs(linear.weight.std().item() - math.sqrt(2.0 / (600 + 400))) < 2e-3
    assert torch.equal(linear.bias.detach(), torch.zeros(400))
    cin = CompressedInteractionNetwork(20, (200,), split_half=False)
    fan_in, fan_out = 20 * 20, 200
    assert abs(cin.convs[0].weight.std().item() - math.sqrt(2.0 / (fan_in + fan_out))) < 2e-3
    cross = CrossNet(500, 3)
    assert abs(cross.weight.std().item() - math.sqrt(2.0 / 501)) < 3e-3


# -- bf16 autocast -------------------------------------------------------------------------------------


def test_layers_run_under_bf16_autocast():
    torch.manual_seed(0)
    x = torch.randn(4, 5, 8)
    blocks = [
        (FactorizationMachine(), (4, 1)),
        (CompressedInteractionNetwork(5, (8, 8)), (4, 12)),
        (MultiHeadSelfAttention(8, 4, 2), (4, 5, 8)),
        (AttentionalPooling(5, 8, 4), (4, 1)),
    ]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for block, shape in blocks:
            out = block(x)
            assert out.shape == shape
            assert torch.isfinite(out.float()).all()
        out = CrossNet(40, 2)(x.flatten(1))
        assert out.shape == (4, 40)
        emb = FieldEmbedding(mixed_schema(), 4)(mixed_batch())
        assert emb.shape == (3, 6, 4)
