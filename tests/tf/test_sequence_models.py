"""DIN and DIEN in TensorFlow: the unpooled embedding, each sequence block against the torch block
(whose reference_forward the torch tests check), masking, the aux_loss contract, parity of the
logits both ways and of one SGD step, a traced training step, config round trips."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
torch = pytest.importorskip("torch")
import keras  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from _sequence_batches import SEQUENCE_MODELS, make_batch, pad_left, taobao_like_schema  # noqa: E402

from ctrkit import parity  # noqa: E402
from ctrkit.errors import ConfigError  # noqa: E402
from ctrkit.pytorch.layers import sequence as torch_seq  # noqa: E402
from ctrkit.pytorch.layers.embedding import FieldEmbedding as TorchFieldEmbedding  # noqa: E402
from ctrkit.registry import build_tf_model, build_torch_model  # noqa: E402
from ctrkit.schema import Field, Schema  # noqa: E402
from ctrkit.tensorflow.layers import FieldEmbedding, set_embedding_l2  # noqa: E402
from ctrkit.tensorflow.layers import sequence as tf_seq  # noqa: E402
from ctrkit.training.objective import split_output, training_objective  # noqa: E402

torch.set_num_threads(2)
TOL = dict(rtol=1e-5, atol=1e-5)


def to_tf(batch: dict) -> dict:
    return {k: tf.constant(v.numpy()) for k, v in batch.items()}


def randomise(torch_module: torch.nn.Module, seed: int = 0, std: float = 0.3) -> None:
    """Weights ~ N(0, std^2) (embeddings too), running variances in [0.5, 2]."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, value in torch_module.state_dict().items():
            if name.endswith("running_var"):
                value.copy_(torch.rand(value.shape, generator=g) * 1.5 + 0.5)
            elif value.is_floating_point():
                value.copy_(torch.randn(value.shape, generator=g) * std)


def mirrored(torch_module: torch.nn.Module, tf_layer):
    """``tf_layer`` with the torch module's weights (checks the mapping is complete)."""
    assert parity.unmapped_variables(tf_layer) == []
    parity.torch_state_to_tf(tf_layer, torch_module.state_dict())
    return tf_layer


def ragged(batch: int, length: int, dim: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, length, dim)).astype(np.float32)
    mask = rng.random((batch, length)) > 0.35
    mask[0], mask[1] = False, True
    return x, mask


def both(*arrays):
    return [torch.from_numpy(a) for a in arrays], [tf.constant(a) for a in arrays]


# -- the embedding layer ----------------------------------------------------------------------------------


def test_unpooled_matches_torch_and_call():
    schema = taobao_like_schema()
    torch_emb = TorchFieldEmbedding(schema, 5)
    randomise(torch_emb)
    emb = mirrored(torch_emb, FieldEmbedding(schema, 5))
    batch = make_batch(schema)
    expected = torch_emb.unpooled(batch)
    got = emb.unpooled(to_tf(batch))
    np.testing.assert_allclose(got.fields.numpy(), expected.fields.detach().numpy(), **TOL)
    for a, b in zip(got.sequences, expected.sequences):
        np.testing.assert_allclose(a.numpy(), b.detach().numpy(), **TOL)
    for a, b in zip(got.masks, expected.masks):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_allclose(got.fields.numpy(), emb(to_tf(batch))[:, :4].numpy(), **TOL)
    np.testing.assert_allclose(emb.candidates(got.fields).numpy(),
                               torch_emb.candidates(expected.fields).detach().numpy(), **TOL)


def test_unpooled_regulariser_counts_only_items():
    schema = taobao_like_schema()
    emb = FieldEmbedding(schema, 3)
    set_embedding_l2(emb, 0.5)
    batch = to_tf(make_batch(schema))
    fields, sequences, _ = emb.unpooled(batch, training=True)
    rows = tf.reduce_sum(tf.square(fields[:, :3])) + sum(tf.reduce_sum(tf.square(s)) for s in sequences)
    dense_rows = tf.reduce_sum(tf.square(emb.table.weight[-1])) * 16.0  # the dense field's row, read per row
    expected = 0.5 * (rows + dense_rows) / 16.0
    np.testing.assert_allclose(float(sum(emb.losses)), float(expected), rtol=1e-5)


# -- the blocks against the torch blocks -------------------------------------------------------------------


@pytest.mark.parametrize("training", [True, False])
def test_dice_matches_torch(training):
    torch_block = torch_seq.Dice(4).train(training)
    randomise(torch_block)
    block = mirrored(torch_block, tf_seq.Dice(4))
    x, mask = ragged(3, 5, 4)
    (tx, tm), (kx, km) = both(x, mask)
    np.testing.assert_allclose(block(kx, mask=km, training=training).numpy(),
                               torch_block(tx, tm).detach().numpy(), **TOL)
    np.testing.assert_allclose(block.running_mean.numpy(), torch_block.running_mean.numpy(), **TOL)
    np.testing.assert_allclose(block.running_var.numpy(), torch_block.running_var.numpy(), **TOL)


@pytest.mark.parametrize("activation", ["dice", "sigmoid"])
@pytest.mark.parametrize("training", [True, False])
def test_attention_blocks_match_torch(activation, training):
    keys, mask = ragged(5, 7, 4)
    query = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)
    (tq, tk, tm), (kq, kk, km) = both(query, keys, mask)
    unit = torch_seq.TargetAttention(4, (6, 5), activation).train(training)
    randomise(unit)
    tf_unit = mirrored(unit, tf_seq.TargetAttention(4, (6, 5), activation))
    out = tf_unit(kq, kk, km, training=training).numpy()
    np.testing.assert_allclose(out, unit(tq, tk, tm).detach().numpy(), **TOL)
    assert np.array_equal(out[0], np.zeros(4, np.float32))
    att = torch_seq.InterestAttention(4, 4, (6,), activation).train(training)
    randomise(att)
    tf_att = mirrored(att, tf_seq.InterestAttention(4, 4, (6,), activation))
    a = tf_att(kq, kk, km, training=training).numpy()
    np.testing.assert_allclose(a, att(tq, tk, tm).detach().numpy(), **TOL)
    np.testing.assert_array_equal(a[0], np.zeros(7, np.float32))


def test_gru_augru_and_auxiliary_loss_match_torch():
    x, mask = ragged(4, 6, 3)
    attention = np.random.default_rng(2).random((4, 6)).astype(np.float32)
    (tx, tm, ta), (kx, km, ka) = both(x, mask, attention)
    gru = torch_seq.GRU(3, 5)
    randomise(gru)
    tf_gru = mirrored(gru, tf_seq.GRU(3, 5))
    states = tf_gru(kx, km).numpy()
    np.testing.assert_allclose(states, gru(tx, tm).detach().numpy(), **TOL)
    np.testing.assert_array_equal(states[0], np.zeros((6, 5), np.float32))
    augru = torch_seq.AUGRU(3, 5)
    randomise(augru)
    tf_augru = mirrored(augru, tf_seq.AUGRU(3, 5))
    np.testing.assert_allclose(tf_augru(kx, ka, km).numpy(), augru(tx, ta, tm).detach().numpy(), **TOL)
    aux = torch_seq.AuxiliaryLoss(5, 3, (4,))
    randomise(aux)
    tf_aux = mirrored(aux, tf_seq.AuxiliaryLoss(5, 3, (4,)))
    s = np.random.default_rng(3).standard_normal((4, 6, 5)).astype(np.float32)
    np.testing.assert_allclose(float(tf_aux(tf.constant(s), kx, km)),
                               float(aux(torch.from_numpy(s), tx, tm).detach()), **TOL)


def test_gru_under_tf_function_with_unknown_length():
    gru = tf_seq.GRU(3, 4)
    run = tf.function(lambda x, m: gru(x, m),
                      input_signature=[tf.TensorSpec((None, None, 3)), tf.TensorSpec((None, None), tf.bool)])
    x, mask = ragged(2, 5, 3)
    np.testing.assert_allclose(run(x, mask).numpy(), gru(tf.constant(x), tf.constant(mask)).numpy(), **TOL)


# -- the models --------------------------------------------------------------------------------------------


def build_pair(name: str, schema: Schema, **overrides):
    hparams = {**SEQUENCE_MODELS[name], **overrides}
    torch.manual_seed(0)
    torch_model, _ = build_torch_model(name, schema, hparams)
    keras.utils.set_random_seed(0)
    tf_model, _ = build_tf_model(name, schema, hparams)
    return torch_model, tf_model


@pytest.mark.parametrize("name", ["din", "dien"])
def test_needs_a_sequence_field(name):
    criteo_like = Schema(tuple(Field(f"C{i}", "sparse", vocab_size=7) for i in range(3)))
    with pytest.raises(ConfigError, match="needs a store with at least one sequence field"):
        build_tf_model(name, criteo_like, {})


@pytest.mark.parametrize("direction", ["torch->tf", "tf->torch"])
@pytest.mark.parametrize("name", ["din", "dien"])
def test_same_logits_both_ways(name, direction):
    schema = taobao_like_schema()
    torch_model, tf_model = build_pair(name, schema)
    if direction == "torch->tf":
        randomise(torch_model)
        mirrored(torch_model, tf_model)
    else:
        rng = np.random.default_rng(5)
        for _, (variable, _) in tf_model.torch_parameters().items():
            if variable.dtype in ("float32", tf.float32):
                variable.assign(rng.standard_normal(variable.shape).astype(np.float32) * 0.3)
        torch_model.load_state_dict({k: torch.from_numpy(np.array(v))
                                     for k, v in parity.tf_to_torch_state(tf_model).items()})
    batch = make_batch(schema)
    with torch.no_grad():
        expected = torch_model.eval()(batch).numpy()
    np.testing.assert_allclose(tf_model(to_tf(batch), training=False).numpy(), expected, **TOL)


@pytest.mark.parametrize("name, overrides", [("din", {}), ("din", {"mba_l2": 0.01}), ("dien", {})])
def test_one_sgd_step_gives_the_same_weights(name, overrides):
    schema = taobao_like_schema()
    torch_model, tf_model = build_pair(name, schema, **overrides)
    randomise(torch_model)
    mirrored(torch_model, tf_model)
    batch = make_batch(schema, batch_size=32)
    before = {k: v.detach().clone() for k, v in torch_model.state_dict().items()}

    logits, aux = split_output(torch_model.train()(batch))
    assert (aux is not None) == (name == "dien" or "mba_l2" in overrides)
    torch_loss = training_objective(F.binary_cross_entropy_with_logits(logits, batch["label"]), aux_loss=aux)
    torch_loss.backward()
    with torch.no_grad():
        for p in torch_model.parameters():
            p -= 0.1 * p.grad

    tf_batch = to_tf(batch)
    with tf.GradientTape() as tape:
        tf_logits, tf_aux = split_output(tf_model(tf_batch, training=True))
        bce = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(tf_batch["label"], tf_logits))
        tf_loss = training_objective(bce, aux_loss=tf_aux)
    np.testing.assert_allclose(float(tf_loss), float(torch_loss), **TOL)
    variables = tf_model.trainable_variables
    for variable, grad in zip(variables, tape.gradient(tf_loss, variables)):
        variable.assign_sub(0.1 * tf.convert_to_tensor(grad))

    after = torch_model.state_dict()
    moved = [k for k in after if after[k].is_floating_point() and not torch.equal(after[k], before[k])]
    assert len(moved) > len(after) // 2
    got = parity.tf_to_torch_state(tf_model)
    for key, value in after.items():
        np.testing.assert_allclose(got[key], value.numpy(), rtol=1e-5, atol=1e-5, err_msg=key)


@pytest.mark.parametrize("name", ["din", "dien"])
@pytest.mark.parametrize("training", [True, False])
def test_padding_does_not_change_outputs(name, training):
    schema = taobao_like_schema()
    _, tf_model = build_pair(name, schema)
    tf_model.embedding.table.weight.assign(np.random.default_rng(0).standard_normal(
        tf_model.embedding.table.weight.shape).astype(np.float32) * 0.3)
    batch = make_batch(schema)
    a = split_output(tf_model(to_tf(batch), training=training))
    b = split_output(tf_model(to_tf(pad_left(batch, 3)), training=training))
    np.testing.assert_allclose(a.logits.numpy(), b.logits.numpy(), **TOL)
    assert (a.aux_loss is not None) == (training and name == "dien")
    if a.aux_loss is not None:
        np.testing.assert_allclose(float(a.aux_loss), float(b.aux_loss), **TOL)


@pytest.mark.parametrize("name", ["din", "dien"])
def test_traced_training_steps_lower_the_loss_and_config_round_trips(name):
    schema = taobao_like_schema()
    _, model = build_pair(name, schema)
    batch = to_tf(make_batch(schema, batch_size=64, seed=3))
    optimizer = keras.optimizers.Adam(1e-2)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            logits, aux = split_output(model(batch, training=True))
            bce = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(batch["label"], logits))
            loss = training_objective(bce, aux_loss=aux)
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        return bce

    losses = [float(step()) for _ in range(30)]
    assert losses[-1] < losses[0] - 0.05, losses
    clone = type(model).from_config(model.get_config())
    assert clone.get_config() == model.get_config()
    parity.torch_state_to_tf(clone, parity.tf_to_torch_state(model))
    np.testing.assert_allclose(clone(batch).numpy(), model(batch).numpy(), **TOL)
