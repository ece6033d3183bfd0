"""Unit tests of ctrkit.tensorflow.layers: shapes, config round trips, saving, init, padding, bf16.

(No ``__init__.py`` in this folder on purpose: ``tests/`` is on ``sys.path`` for ``_train_helpers``,
and a regular package ``tests/tensorflow`` would shadow the real ``tensorflow``.)
"""

from __future__ import annotations

import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
import keras  # noqa: E402

from ctrkit import hparam_checks, parity  # noqa: E402
from ctrkit.errors import ConfigError  # noqa: E402
from ctrkit.schema import Field, Schema  # noqa: E402
from ctrkit.tensorflow import layers as kl  # noqa: E402


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


def mixed_batch() -> dict:
    return {
        "sparse": tf.constant([[1, 2], [0, 6], [4, 3]], tf.int32),
        "dense": tf.constant([[0.5, -1.0], [2.0, 0.0], [1.0, 3.0]]),
        "seq:history": tf.constant([[0, 0, 3, 5], [0, 0, 0, 0], [1, 2, 0, 6]], tf.int32),
        "seq:recent": tf.constant([[2, 4], [0, 1], [0, 0]], tf.int64),
    }


def randn(*shape: int, seed: int = 0) -> tf.Tensor:
    return tf.constant(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))


# -- embedding blocks -----------------------------------------------------------------------------


def test_embedding_table_gathers_rows_and_is_small_normal():
    keras.utils.set_random_seed(0)
    table = kl.EmbeddingTable(2000, 50)
    out = table(tf.constant([[1, 1999], [0, 1]]))
    assert out.shape == (2, 2, 50)
    np.testing.assert_array_equal(out[0, 1].numpy(), table.weight.numpy()[1999])
    weight = table.weight.numpy()
    assert abs(weight.std() - hparam_checks.EMBEDDING_INIT_STD) < 5e-6 and abs(weight.mean()) < 5e-6


def test_embedding_init_std_is_the_torch_one():
    torch_embedding = pytest.importorskip("ctrkit.pytorch.layers.embedding")
    assert torch_embedding.EMBEDDING_INIT_STD == hparam_checks.EMBEDDING_INIT_STD


def test_field_embedding_fields_in_order_with_dense_scaling_and_mean_pooled_sequences():
    schema = mixed_schema()
    emb = kl.FieldEmbedding(schema, 3)
    out = emb(mixed_batch()).numpy()
    assert out.shape == (3, emb.num_fields, 3) and emb.num_fields == 6
    table = emb.table.weight.numpy()
    off = schema.sparse_offsets
    np.testing.assert_allclose(out[0, 0], table[off[0] + 1])
    np.testing.assert_allclose(out[1, 1], table[off[1] + 6])
    np.testing.assert_allclose(out[2, 3], table[schema.total_vocab + 1] * 3.0)  # age row * value
    np.testing.assert_allclose(out[0, 4], (table[off[1] + 3] + table[off[1] + 5]) / 2, rtol=1e-6)
    np.testing.assert_allclose(out[2, 4], (table[off[1] + 1] + table[off[1] + 2] + table[off[1] + 6]) / 3, rtol=1e-6)
    np.testing.assert_array_equal(out[1, 4], 0.0)  # all padding
    np.testing.assert_allclose(out[1, 5], table[off[0] + 1])
    np.testing.assert_array_equal(out[2, 5], 0.0)


@pytest.mark.parametrize("kinds", [("sparse",), ("dense",), ("sequence",), ("dense", "sequence")])
def test_field_embedding_with_a_subset_of_the_field_kinds(kinds):
    fields = [f for f in mixed_schema().fields if f.kind in kinds or (f.kind == "sparse" and "sequence" in kinds)]
    schema = Schema(tuple(fields))
    batch = {k: v for k, v in mixed_batch().items() if k == "sparse" and schema.sparse or k == "dense" and schema.dense
             or k.startswith("seq:") and k[4:] in schema}
    emb = kl.FieldEmbedding(schema, 2)
    assert emb(batch).shape == (3, emb.num_fields, 2)


def test_field_embedding_with_unknown_sequence_length():
    emb = kl.FieldEmbedding(mixed_schema(), 3)
    spec = {k: tf.TensorSpec((None, None) if k.startswith("seq:") else (None, v.shape[1]), v.dtype)
            for k, v in mixed_batch().items()}
    fn = tf.function(lambda batch: emb(batch), input_signature=[spec])
    np.testing.assert_allclose(fn(mixed_batch()).numpy(), emb(mixed_batch()).numpy(), rtol=1e-6)


def test_field_embedding_without_fields_is_a_config_error():
    with pytest.raises(ConfigError):
        kl.FieldEmbedding(Schema(()), 4)


def test_field_embedding_under_tf_function_with_unknown_batch_size():
    emb = kl.FieldEmbedding(mixed_schema(), 3)
    spec = {k: tf.TensorSpec((None,) + tuple(v.shape[1:]), v.dtype) for k, v in mixed_batch().items()}
    fn = tf.function(lambda batch: emb(batch), input_signature=[spec], jit_compile=True)
    np.testing.assert_allclose(fn(mixed_batch()).numpy(), emb(mixed_batch()).numpy(), rtol=1e-6)


def test_linear_is_bias_plus_sum_of_first_order_weights():
    lin = kl.Linear(mixed_schema())
    lin.bias.bias.assign([0.25])
    w = lin.field_weights(mixed_batch()).numpy()
    np.testing.assert_allclose(lin(mixed_batch()).numpy(), w.sum(axis=1) + 0.25, rtol=1e-6)


def test_bias_is_zero_initialised_and_added():
    bias = kl.Bias(3)
    np.testing.assert_array_equal(bias.bias.numpy(), 0.0)
    bias.bias.assign([2.0, 2.0, 2.0])
    np.testing.assert_array_equal(bias(tf.ones((4, 3))).numpy(), 3.0)


# -- MLP ------------------------------------------------------------------------------------------


def test_mlp_shapes_init_and_layer_indices():
    keras.utils.set_random_seed(0)
    mlp = kl.MLP(300, (200, 100), dropout=0.5, batch_norm=True, output_dim=1)
    assert mlp(randn(8, 300), training=True).shape == (8, 1)
    kernel = mlp.layers[0].kernel.numpy()
    assert abs(kernel.std() - math.sqrt(2 / 500)) < 0.03 * math.sqrt(2 / 500)
    assert np.abs(kernel).max() > 2.5 * math.sqrt(2 / 500)  # untruncated normal (GlorotNormal truncates at 2 std)
    np.testing.assert_array_equal(mlp.layers[0].bias.numpy(), 0.0)
    assert sorted({k.split(".")[1] for k in mlp.torch_parameters()}) == ["0", "1", "4", "5", "8"]
    assert kl.MLP(5, ()).output_dim == 5 and kl.MLP(5, (), output_dim=2).output_dim == 2


@pytest.mark.parametrize("bad", [dict(hidden_units=(0,)), dict(dropout=1.0), dict(activation="nope"),
                                 dict(batch_norm="yes"), dict(output_dim=0)])
def test_mlp_rejects_bad_hyper_parameters(bad):
    with pytest.raises(ConfigError):
        kl.MLP(4, **{"hidden_units": (3,), **bad})


@pytest.mark.parametrize("name", hparam_checks.ACTIVATIONS)
def test_activations_match_torch(name):
    torch = pytest.importorskip("torch")
    from ctrkit.pytorch.layers import make_activation as torch_activation

    x = np.linspace(-3, 3, 13).astype(np.float32)
    got = kl.make_activation(name)(tf.constant(x)).numpy()
    expected = torch_activation(name)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_torch_default_initialise_redraws_linear_weights_and_their_biases_only():
    keras.utils.set_random_seed(0)
    pool = kl.AttentionalPooling(4, 64, attention_factor=256)
    mlp = kl.MLP(64, (256,), output_dim=1)
    cross = kl.CrossNet(64, 1)
    before = cross.weight.numpy().copy()
    for layer in (pool, mlp, cross):
        kl.torch_default_initialise(layer)
    np.testing.assert_array_equal(cross.weight.numpy(), before)  # not an nn.Linear in torch
    for weight, bias, fan_in in [(pool.attention.kernel, pool.attention.bias, 64), (mlp.layers[0].kernel,
                                  mlp.layers[0].bias, 64), (mlp.layers[2].kernel, mlp.layers[2].bias, 256)]:
        for v in (weight.numpy(), bias.numpy()):
            assert np.abs(v).max() <= 1 / math.sqrt(fan_in)
            assert v.size < 50 or np.abs(v).max() > 0.9 / math.sqrt(fan_in)  # uniform over the whole range
    assert abs(pool.score.kernel.numpy().std() - 1 / math.sqrt(3 * 256)) < 0.2 / math.sqrt(3 * 256)


def test_batch_norm_inference_uses_running_statistics():
    bn = kl.BatchNorm1d(2)
    bn.moving_mean.assign([1.0, -1.0])
    bn.moving_variance.assign([4.0, 1.0])
    out = bn(tf.constant([[3.0, 0.0]]), training=False).numpy()
    np.testing.assert_allclose(out, [[2.0 / math.sqrt(4 + 1e-5), 1.0 / math.sqrt(1 + 1e-5)]], rtol=1e-6)
    assert int(bn.num_batches_tracked.numpy()) == 0


# -- interaction blocks ---------------------------------------------------------------------------


def test_fm_equals_the_sum_over_pairs():
    x = randn(4, 5, 3)
    pairs = sum(tf.reduce_sum(x[:, i] * x[:, j], axis=1) for i in range(5) for j in range(i + 1, 5))
    np.testing.assert_allclose(kl.FactorizationMachine()(x).numpy()[:, 0], pairs.numpy(), rtol=1e-5, atol=1e-5)


def test_ffm_equals_the_sum_over_field_aware_pairs():
    f, k = 4, 2
    x = randn(3, f, f * k)
    e = x.numpy().reshape(3, f, f, k)
    expected = sum((e[:, i, j] * e[:, j, i]).sum(-1) for i in range(f) for j in range(i + 1, f))
    np.testing.assert_allclose(kl.FieldAwareFactorizationMachine(f, k)(x).numpy()[:, 0], expected, rtol=1e-5)


def test_crossnet_one_layer_formula():
    cross = kl.CrossNet(4, 1)
    cross.biases[0].bias.assign([0.1, 0.2, 0.3, 0.4])
    x = randn(3, 4).numpy()
    w = cross.weight.numpy()[0]
    expected = x * (x @ w)[:, None] + [0.1, 0.2, 0.3, 0.4] + x
    np.testing.assert_allclose(cross(tf.constant(x)).numpy(), expected, rtol=1e-5)


@pytest.mark.parametrize("units, split_half, expected", [((16, 16, 16), True, 32), ((6, 5), False, 11), ((3,), True, 3)])
def test_cin_output_width(units, split_half, expected):
    cin = kl.CompressedInteractionNetwork(4, units, split_half=split_half)
    assert cin.output_dim == expected and cin(randn(2, 4, 3)).shape == (2, expected)


def test_cin_both_contraction_orders_agree_with_the_outer_product_formula():
    m, dim = 4, 3
    cin = kl.CompressedInteractionNetwork(m, (2, 8), split_half=False)  # 2 < m, 8 >= m: both orders
    x0 = randn(5, m, dim).numpy()
    h, pooled = x0, []
    for kernel in cin.convs:
        w = kernel.numpy().reshape(h.shape[1], m, -1)  # [H, m, H_k]
        z = np.einsum("bid,bjd,ijo->bod", h, x0, w)
        pooled.append(z.sum(-1))
        h = z
    np.testing.assert_allclose(cin(tf.constant(x0)).numpy(), np.concatenate(pooled, 1), rtol=1e-4, atol=1e-5)


def test_cin_odd_units_with_split_half_is_a_config_error():
    with pytest.raises(ConfigError):
        kl.CompressedInteractionNetwork(4, (3, 4))


def test_self_attention_and_pooling_shapes():
    assert kl.MultiHeadSelfAttention(16, attention_dim=8, num_heads=2)(randn(4, 10, 16)).shape == (4, 10, 16)
    assert kl.AttentionalPooling(10, 8)(randn(4, 10, 8)).shape == (4, 1)
    with pytest.raises(ConfigError):
        kl.AttentionalPooling(1, 8)


# -- configs and saving ---------------------------------------------------------------------------

BLOCKS = [
    (lambda: kl.EmbeddingTable(10, 3, init_std=0.5), lambda: tf.constant([[1, 2]])),
    (lambda: kl.Bias((2, 3)), lambda: randn(4, 2, 3)),
    (lambda: kl.FieldEmbedding(mixed_schema(), 4), mixed_batch),
    (lambda: kl.Linear(mixed_schema()), mixed_batch),
    (lambda: kl.MLP(6, (5, 4), activation="elu", dropout=0.1, batch_norm=True, output_dim=2), lambda: randn(3, 6)),
    (lambda: kl.BatchNorm1d(3, momentum=0.8), lambda: randn(3, 3)),
    (lambda: kl.FactorizationMachine(), lambda: randn(3, 4, 2)),
    (lambda: kl.FieldAwareFactorizationMachine(3, 2), lambda: randn(3, 3, 6)),
    (lambda: kl.CrossNet(5, 2), lambda: randn(3, 5)),
    (lambda: kl.CompressedInteractionNetwork(3, (4, 3), split_half=True, activation="relu"), lambda: randn(3, 3, 2)),
    (lambda: kl.MultiHeadSelfAttention(4, 3, 2, use_residual=False, scaled=True), lambda: randn(3, 5, 4)),
    (lambda: kl.AttentionalPooling(4, 3, attention_factor=5, dropout=0.1), lambda: randn(3, 4, 3)),
]


@pytest.mark.parametrize("make, make_input", BLOCKS, ids=lambda b: "")
def test_from_config_builds_the_same_layer(make, make_input):
    layer = make()
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    assert [tuple(v.shape) for v in clone.weights] == [tuple(v.shape) for v in layer.weights]
    parity.torch_state_to_tf(clone, parity.tf_to_torch_state(layer))
    x = make_input()
    np.testing.assert_allclose(clone(x).numpy(), layer(x).numpy(), rtol=1e-6)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is type(layer) and restored.get_config() == config


def test_saved_keras_file_reloads_without_custom_objects(tmp_path):
    model = keras.Sequential([keras.Input((4, 3)), kl.MultiHeadSelfAttention(3, 2, 2), kl.FactorizationMachine(),
                              kl.MLP(1, (3,), batch_norm=True, output_dim=1)])
    x = randn(5, 4, 3)
    model(x, training=True)  # moves the BatchNorm statistics off their initial values
    path = tmp_path / "blocks.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), rtol=1e-6)
    assert isinstance(loaded.layers[2], kl.MLP)


# -- mixed precision ------------------------------------------------------------------------------

BF16 = [
    ("field_embedding", lambda d: kl.FieldEmbedding(mixed_schema(), 4, dtype=d), mixed_batch),
    ("linear", lambda d: kl.Linear(mixed_schema(), dtype=d), mixed_batch),
    ("mlp", lambda d: kl.MLP(6, (8, 4), batch_norm=True, output_dim=1, dtype=d), lambda: randn(16, 6)),
    ("fm", lambda d: kl.FactorizationMachine(dtype=d), lambda: randn(4, 6, 4)),
    ("ffm", lambda d: kl.FieldAwareFactorizationMachine(3, 2, dtype=d), lambda: randn(4, 3, 6)),
    ("crossnet", lambda d: kl.CrossNet(6, 2, dtype=d), lambda: randn(4, 6)),
    ("cin", lambda d: kl.CompressedInteractionNetwork(4, (6, 4), dtype=d), lambda: randn(4, 4, 3)),
    ("mhsa", lambda d: kl.MultiHeadSelfAttention(4, 4, 2, dtype=d), lambda: randn(4, 5, 4)),
    ("afm", lambda d: kl.AttentionalPooling(5, 4, dtype=d), lambda: randn(4, 5, 4)),
]


@pytest.mark.parametrize("name, make, make_input", BF16, ids=[b[0] for b in BF16])
def test_mixed_bfloat16_keeps_float32_variables_and_is_close_to_float32(name, make, make_input):
    full, mixed = make("float32"), make("mixed_bfloat16")
    for variable in full.weights:  # non-trivial weights (embeddings N(0, 0.1^2) instead of ~0)
        if variable.dtype == "float32" and "moving" not in variable.path:
            variable.assign(np.random.default_rng(1).standard_normal(variable.shape).astype(np.float32) * 0.3)
    parity.torch_state_to_tf(mixed, parity.tf_to_torch_state(full))
    assert all(v.dtype in ("float32", "int64") for v in mixed.weights)
    x = make_input()
    expected = full(x, training=True).numpy() if name == "mlp" else full(x).numpy()
    out = mixed(x, training=True) if name == "mlp" else mixed(x)
    if name in {"field_embedding", "linear", "fm", "ffm", "crossnet"}:  # torch computes these outside autocast
        assert out.dtype == tf.float32
        np.testing.assert_allclose(out.numpy(), expected, rtol=1e-6, atol=1e-6)
    else:
        assert out.dtype in (tf.bfloat16, tf.float32)
        scale = np.abs(expected).max() + 1e-3
        np.testing.assert_allclose(tf.cast(out, tf.float32).numpy(), expected, atol=0.05 * scale, rtol=0.05)


def test_mixed_bfloat16_embedding_rows_and_biases_stay_float32():
    table = kl.EmbeddingTable(10, 3, dtype="mixed_bfloat16")
    rows = table(tf.constant([1, 2]))
    assert rows.dtype == tf.float32
    np.testing.assert_array_equal(rows.numpy(), table.weight.numpy()[[1, 2]])
    bias = kl.Bias(3, dtype="mixed_bfloat16")
    assert bias(tf.ones((2, 3), tf.bfloat16)).dtype == tf.float32  # torch's promotion of bf16 + fp32


def test_fm_of_bf16_input_sums_in_float32():
    x = tf.cast(randn(2, 30, 8), tf.bfloat16)
    out = kl.FactorizationMachine(dtype="mixed_bfloat16")(x)
    assert out.dtype == tf.float32
    expected = kl.FactorizationMachine()(tf.cast(x, tf.float32))  # the same bf16 values, exact fp32 sums
    np.testing.assert_allclose(out.numpy(), expected.numpy(), rtol=1e-6)


def test_float64_policy_computes_in_float64():
    x = tf.constant(np.random.default_rng(0).standard_normal((3, 4, 2)))
    fm = kl.FactorizationMachine(dtype="float64")
    assert fm(x).dtype == tf.float64
    cross = kl.CrossNet(8, 2, dtype="float64")
    assert cross.weight.dtype == "float64" and cross(tf.reshape(x, (3, 8))).dtype == tf.float64
