"""TensorFlow ONN, FiBiNET and DCN-V2 against PyTorch: the new blocks and every model structure.

Blocks (CrossNetV2, CrossNetMix, SqueezeExcitation, BilinearInteraction,
OperationAwareInteraction): weights mapped by :mod:`ctrkit.parity` give the outputs and the
gradients of the torch ``reference_forward`` (the loop-by-loop specification), in both
directions; configs round-trip; a saved Keras file reloads without ``custom_objects``; bf16.
Models: every structure (DCN-V2 stacked/parallel x full-rank/low-rank mixture, with and without
a DNN; FiBiNET field_all/field_each/field_interaction; ONN inner/hadamard) gives torch's logits
and loss gradients in both directions, and a saved model reloads with the same logits.
(``tests/test_parity_models.py`` covers the registry defaults, the SGD step and Adam.)
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
torch = pytest.importorskip("torch")
import keras  # noqa: E402

from ctrkit import parity  # noqa: E402
from ctrkit.errors import ConfigError  # noqa: E402
from ctrkit.pytorch import layers as tl  # noqa: E402
from ctrkit.registry import build_tf_model, build_torch_model  # noqa: E402
from ctrkit.schema import Field, Schema  # noqa: E402
from ctrkit.tensorflow import layers as kl  # noqa: E402

torch.set_num_threads(2)

TOL = dict(rtol=1e-5, atol=1e-5)


def float_input(*shape: int, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def torch_state(module: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


def load_torch(module: torch.nn.Module, state: dict[str, np.ndarray]) -> None:
    module.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()}, strict=True)


def random_value(name: str, shape: tuple, rng: np.random.Generator) -> np.ndarray:
    """Weights ~ N(0, 0.3^2), embeddings ~ N(0, 1) (products of several embeddings stay well above
    the tolerance), biases ~ N(0, 0.05^2) (few dead ReLUs), positive BatchNorm variances."""
    if name.endswith("num_batches_tracked"):
        return np.array(5, np.int64)
    if name.endswith("running_var"):
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    std = 1.0 if name.endswith("table.weight") else 0.05 if name.endswith(("bias", "running_mean")) else 0.3
    return (rng.standard_normal(shape) * std).astype(np.float32)


def randomise_torch(module: torch.nn.Module, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for name, value in module.state_dict().items():
            value.copy_(torch.from_numpy(random_value(name, tuple(value.shape), rng)))


def randomise_tf(layer, seed: int = 1) -> None:
    """The same recipe, drawn in TF's layouts."""
    rng = np.random.default_rng(seed)
    for name, (variable, _) in parity.torch_parameters_of(layer).items():
        variable.assign(random_value(name, tuple(variable.shape), rng))


def dense_grad(grad) -> np.ndarray:
    return tf.convert_to_tensor(grad).numpy()


# -- blocks ---------------------------------------------------------------------------------------

#: (id, torch factory, tf factory, input factory)
BLOCKS = [
    ("crossnet_v2", lambda: tl.CrossNetV2(8, 3), lambda: kl.CrossNetV2(8, 3), lambda: float_input(5, 8)),
    ("crossnet_v2_one_layer", lambda: tl.CrossNetV2(6, 1), lambda: kl.CrossNetV2(6, 1), lambda: float_input(4, 6)),
    ("crossnet_mix", lambda: tl.CrossNetMix(8, 2, low_rank=3, num_experts=4),
     lambda: kl.CrossNetMix(8, 2, low_rank=3, num_experts=4), lambda: float_input(5, 8)),
    ("crossnet_mix_linear", lambda: tl.CrossNetMix(6, 3, low_rank=2, num_experts=2, activation="identity"),
     lambda: kl.CrossNetMix(6, 3, low_rank=2, num_experts=2, activation="identity"), lambda: float_input(5, 6)),
    ("senet", lambda: tl.SqueezeExcitation(7, 3), lambda: kl.SqueezeExcitation(7, 3), lambda: float_input(5, 7, 4)),
    ("senet_ratio_above_fields", lambda: tl.SqueezeExcitation(3, 5), lambda: kl.SqueezeExcitation(3, 5),
     lambda: float_input(8, 3, 2, seed=5)),
    ("bilinear_field_all", lambda: tl.BilinearInteraction(5, 4, "field_all"),
     lambda: kl.BilinearInteraction(5, 4, "field_all"), lambda: float_input(3, 5, 4)),
    ("bilinear_field_each", lambda: tl.BilinearInteraction(5, 4, "field_each"),
     lambda: kl.BilinearInteraction(5, 4, "field_each"), lambda: float_input(3, 5, 4)),
    ("bilinear_field_interaction", lambda: tl.BilinearInteraction(5, 4, "field_interaction"),
     lambda: kl.BilinearInteraction(5, 4, "field_interaction"), lambda: float_input(3, 5, 4)),
    ("bilinear_two_fields", lambda: tl.BilinearInteraction(2, 3, "field_each"),
     lambda: kl.BilinearInteraction(2, 3, "field_each"), lambda: float_input(3, 2, 3)),
    ("onn_inner", lambda: tl.OperationAwareInteraction(4, 3, "inner"),
     lambda: kl.OperationAwareInteraction(4, 3, "inner"), lambda: float_input(3, 4, 12)),
    ("onn_hadamard", lambda: tl.OperationAwareInteraction(4, 3, "hadamard"),
     lambda: kl.OperationAwareInteraction(4, 3, "hadamard"), lambda: float_input(3, 4, 12)),
]
BLOCK_IDS = [b[0] for b in BLOCKS]


def reference(module: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module.reference_forward(torch.from_numpy(x.copy())).numpy()


@pytest.mark.parametrize("name, make_torch, make_tf, make_input", BLOCKS, ids=BLOCK_IDS)
def test_block_with_torch_weights_computes_the_reference_forward(name, make_torch, make_tf, make_input):
    torch.manual_seed(0)
    module, layer, x = make_torch(), make_tf(), make_input()
    randomise_torch(module)
    assert set(parity.torch_parameters_of(layer)) == set(module.state_dict())
    parity.torch_state_to_tf(layer, torch_state(module))
    assert parity.unmapped_variables(layer) == []
    expected = reference(module, x)
    assert expected.std() > 1e-3  # rows differ by far more than the tolerance
    got = layer(tf.constant(x)).numpy()
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, **TOL)
    with torch.no_grad():
        np.testing.assert_allclose(module(torch.from_numpy(x.copy())).numpy(), got, **TOL)


@pytest.mark.parametrize("name, make_torch, make_tf, make_input", BLOCKS, ids=BLOCK_IDS)
def test_block_with_tf_weights_computes_the_reference_forward_in_torch(name, make_torch, make_tf, make_input):
    torch.manual_seed(0)
    module, layer, x = make_torch(), make_tf(), make_input()
    randomise_tf(layer)
    state = parity.tf_to_torch_state(layer)
    load_torch(module, state)
    np.testing.assert_allclose(reference(module, x), layer(tf.constant(x)).numpy(), **TOL)
    again = make_tf()  # and back: the round trip is exact
    parity.torch_state_to_tf(again, torch_state(module))
    for key, value in parity.tf_to_torch_state(again).items():
        np.testing.assert_array_equal(value, state[key])


@pytest.mark.parametrize("name, make_torch, make_tf, make_input", BLOCKS, ids=BLOCK_IDS)
def test_block_gradients_are_those_of_the_reference_forward(name, make_torch, make_tf, make_input):
    """Gradients of ``sum(out * r)`` w.r.t. the input and every weight, against torch's reference_forward."""
    torch.manual_seed(0)
    module, layer, x = make_torch(), make_tf(), make_input()
    randomise_torch(module)
    parity.torch_state_to_tf(layer, torch_state(module))
    t_in = torch.from_numpy(x.copy()).requires_grad_(True)
    t_out = module.reference_forward(t_in)
    r = np.random.default_rng(9).standard_normal(tuple(t_out.shape)).astype(np.float32)
    (t_out * torch.from_numpy(r)).sum().backward()

    params = parity.torch_parameters_of(layer)
    k_in = tf.Variable(x)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(k_in) * r)
    grads = tape.gradient(loss, [k_in, *(v for v, _ in params.values())])
    np.testing.assert_allclose(dense_grad(grads[0]), t_in.grad.numpy(), **TOL)
    named = dict(module.named_parameters())
    assert set(named) == set(params)
    for (key, (_, layout)), grad in zip(params.items(), grads[1:]):
        expected = named[key].grad.numpy()
        assert np.abs(expected).max() > 1e-4, key  # a weight the output depends on
        np.testing.assert_allclose(parity.LAYOUTS[layout].to_torch(dense_grad(grad)), expected, err_msg=key, **TOL)


@pytest.mark.parametrize("name, make_torch, make_tf, make_input", BLOCKS, ids=BLOCK_IDS)
def test_block_config_round_trip(name, make_torch, make_tf, make_input):
    layer = make_tf()
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    assert [tuple(v.shape) for v in clone.weights] == [tuple(v.shape) for v in layer.weights]
    parity.torch_state_to_tf(clone, parity.tf_to_torch_state(layer))
    x = tf.constant(make_input())
    np.testing.assert_allclose(clone(x).numpy(), layer(x).numpy(), rtol=1e-6)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is type(layer) and restored.get_config() == config


def test_saved_keras_file_with_the_new_blocks_reloads_without_custom_objects(tmp_path):
    fields, d = 4, 3
    pairs = fields * (fields - 1) // 2
    onn_input = keras.Input((fields, fields * d))
    onn = kl.OperationAwareInteraction(fields, d, "hadamard")(onn_input)  # (B, F*D + P*D)
    cross = kl.CrossNetMix(onn.shape[1], 2, low_rank=2, num_experts=3)(kl.CrossNetV2(onn.shape[1], 2)(onn))
    field_input = keras.Input((fields, d))
    senet = kl.SqueezeExcitation(fields, 2)(field_input)
    bilinear = keras.layers.Reshape((pairs * d,))(kl.BilinearInteraction(fields, d, "field_each")(senet))
    model = keras.Model([onn_input, field_input], keras.layers.Concatenate()([cross, bilinear]))
    inputs = [tf.constant(float_input(5, fields, fields * d)), tf.constant(float_input(5, fields, d, seed=4))]
    for variable in model.weights:  # away from the initial values, so a reload that re-initialises fails
        variable.assign(float_input(*variable.shape, seed=7) * 0.3)
    path = tmp_path / "blocks.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded(inputs).numpy(), model(inputs).numpy(), rtol=1e-6)
    kinds = {type(layer) for layer in loaded.layers}
    assert {kl.OperationAwareInteraction, kl.CrossNetV2, kl.CrossNetMix, kl.SqueezeExcitation,
            kl.BilinearInteraction} <= kinds


# the output dtype under mixed_bfloat16: float32 where the float32 input's residual/product is
# promoted (as torch's addcmul / mul); bf16 for the bilinear layer, whose products both run in bf16
# (as torch's _fused.pair_bilinear under autocast: the next layer's GEMM would round them anyway)
BF16 = [
    ("crossnet_v2", lambda p: kl.CrossNetV2(8, 2, dtype=p), lambda: float_input(16, 8), tf.float32),
    ("crossnet_mix", lambda p: kl.CrossNetMix(8, 2, low_rank=3, num_experts=2, dtype=p), lambda: float_input(16, 8),
     tf.float32),
    ("senet", lambda p: kl.SqueezeExcitation(6, 2, dtype=p), lambda: float_input(16, 6, 4), tf.float32),
    ("bilinear", lambda p: kl.BilinearInteraction(4, 4, "field_interaction", dtype=p), lambda: float_input(16, 4, 4),
     tf.bfloat16),
]


@pytest.mark.parametrize("name, make, make_input, out_dtype", BF16, ids=[b[0] for b in BF16])
def test_mixed_bfloat16_keeps_float32_variables_and_outputs_close_to_float32(name, make, make_input, out_dtype):
    """As torch autocast: float32 variables, the GEMMs in bf16, the output close to float32's."""
    full, mixed = make("float32"), make("mixed_bfloat16")
    randomise_tf(full)
    parity.torch_state_to_tf(mixed, parity.tf_to_torch_state(full))
    assert all(v.dtype == "float32" for v in mixed.weights)
    x = tf.constant(make_input())
    expected = full(x).numpy()
    out = mixed(x)
    assert out.dtype == out_dtype
    out = tf.cast(out, tf.float32).numpy()
    assert not np.allclose(out, expected, rtol=1e-6, atol=1e-6)  # the bf16 GEMMs did run
    scale = np.abs(expected).max()
    np.testing.assert_allclose(out, expected, atol=0.03 * scale, rtol=0.03)


def test_onn_interaction_keeps_the_input_dtype_under_mixed_bfloat16():
    x = tf.constant(float_input(3, 3, 6))
    mixed = kl.OperationAwareInteraction(3, 2, "inner", dtype="mixed_bfloat16")(x)
    assert mixed.dtype == tf.float32
    np.testing.assert_array_equal(mixed.numpy(), kl.OperationAwareInteraction(3, 2, "inner")(x).numpy())


@pytest.mark.parametrize("make, message", [
    (lambda: kl.BilinearInteraction(4, 3, "field_pair"), "bilinear_type must be one of field_all, field_each"),
    (lambda: kl.BilinearInteraction(1, 3), "num_fields"),
    (lambda: kl.OperationAwareInteraction(3, 2, "outer"), "product must be one of inner, hadamard"),
    (lambda: kl.CrossNetMix(8, 2, low_rank=0), "low_rank"),
    (lambda: kl.CrossNetMix(8, 2, activation="swish7"), "activation"),
    (lambda: kl.CrossNetV2(8, 0), "cross_layers"),
    (lambda: kl.SqueezeExcitation(5, 0), "reduction_ratio"),
])
def test_bad_block_arguments_are_one_line_config_errors(make, message):
    with pytest.raises(ConfigError, match=message) as info:
        make()
    assert "\n" not in str(info.value)


def test_bilinear_types_have_their_number_of_matrices():
    d = 3
    assert kl.BilinearInteraction(5, d, "field_all").matrices.shape == (d, d)
    assert kl.BilinearInteraction(5, d, "field_each").matrices.shape == (d, 4 * d)
    assert kl.BilinearInteraction(5, d, "field_interaction").matrices.shape == (d, 10 * d)


def test_stacked_blocks_start_xavier_normal_per_block():
    """Each expert's / pair's matrix is Xavier-normal as its own matrix, not over the whole kernel."""
    keras.utils.set_random_seed(0)
    bilinear = kl.BilinearInteraction(20, 8, "field_interaction")  # 190 blocks of 8 x 8: std 1/sqrt(8)
    np.testing.assert_allclose(bilinear.matrices.numpy().std(), np.sqrt(2 / 16), rtol=0.03)
    mix = kl.CrossNetMix(64, 1, low_rank=16, num_experts=8)
    np.testing.assert_allclose(mix.down[0].kernel.numpy().std(), np.sqrt(2 / (64 + 16)), rtol=0.03)
    np.testing.assert_allclose(mix.mid[0].numpy().std(), np.sqrt(2 / 32), rtol=0.05)
    np.testing.assert_allclose(mix.up[0].kernel.numpy().std(), np.sqrt(2 / (64 + 16)), rtol=0.03)
    assert np.all(mix.up[0].bias.numpy() == 0)


# -- models ---------------------------------------------------------------------------------------


def schema() -> Schema:
    return Schema(
        (
            Field("C1", "sparse", vocab_size=6),
            Field("C2", "sparse", vocab_size=9),
            Field("C3", "sparse", vocab_size=4),
            Field("I1", "dense"),
            Field("hist", "sequence", max_len=4, shares="C2"),
        )
    )


def batch(rows: int = 32, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    s = schema()
    seq = rng.integers(0, s["C2"].vocab_size, (rows, 4)).astype(np.int32)
    seq[0] = 0  # an all-padding row
    return {
        "label": (rng.random(rows) < 0.4).astype(np.float32),
        "sparse": np.stack([rng.integers(0, f.vocab_size, rows) for f in s.sparse], 1).astype(np.int32),
        "dense": rng.standard_normal((rows, 1)).astype(np.float32),
        "seq:hist": seq,
    }


SMALL = {"embed_size": 3, "hidden_units": (8, 4), "dropout": 0.0}
#: (id, registry name, hyper-parameters)
MODELS = [
    ("dcnv2_parallel", "dcnv2", {"model_structure": "parallel", "cross_layers": 2}),
    ("dcnv2_stacked", "dcnv2", {"model_structure": "stacked", "cross_layers": 2}),
    ("dcnv2_mix_parallel", "dcnv2", {"use_low_rank_mixture": True, "low_rank": 2, "num_experts": 3}),
    ("dcnv2_mix_stacked_bn", "dcnv2", {"model_structure": "stacked", "use_low_rank_mixture": True, "low_rank": 2,
                                       "num_experts": 2, "low_rank_activation": "identity", "batch_norm": True}),
    ("dcnv2_cross_only", "dcnv2", {"model_structure": "stacked", "hidden_units": ()}),
    ("dcnv2_mix_cross_only", "dcnv2", {"use_low_rank_mixture": True, "low_rank": 2, "hidden_units": ()}),
    ("fibinet_field_all", "fibinet", {"bilinear_type": "field_all", "reduction_ratio": 2}),
    ("fibinet_field_each", "fibinet", {"bilinear_type": "field_each"}),
    ("fibinet_field_interaction_bn", "fibinet", {"bilinear_type": "field_interaction", "batch_norm": True}),
    ("onn_inner", "onn", {"product": "inner"}),
    ("onn_hadamard", "onn", {"product": "hadamard", "activation": "tanh"}),
]
MODEL_IDS = [m[0] for m in MODELS]


def build_pair(name: str, hparams: dict):
    torch.manual_seed(0)
    torch_model, _ = build_torch_model(name, schema(), {**SMALL, **hparams})
    keras.utils.set_random_seed(0)
    tf_model, _ = build_tf_model(name, schema(), {**SMALL, **hparams})
    return torch_model, tf_model


def tf_inputs(rows: dict[str, np.ndarray]) -> dict:
    return {k: tf.constant(v) for k, v in rows.items()}


def torch_inputs(rows: dict[str, np.ndarray]) -> dict:
    return {k: torch.from_numpy(v.copy()) for k, v in rows.items()}


def torch_eval_logits(model, rows) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(torch_inputs(rows)).numpy()


@pytest.mark.parametrize("case, name, hparams", MODELS, ids=MODEL_IDS)
def test_model_with_torch_weights_gives_torch_logits(case, name, hparams):
    torch_model, tf_model = build_pair(name, hparams)
    assert set(tf_model.torch_parameters()) == set(torch_model.state_dict())
    assert parity.unmapped_variables(tf_model) == []
    randomise_torch(torch_model)
    parity.torch_state_to_tf(tf_model, torch_model.state_dict())
    rows = batch()
    expected = torch_eval_logits(torch_model, rows)
    assert expected.std() > 1e-2
    np.testing.assert_allclose(tf_model(tf_inputs(rows), training=False).numpy(), expected, **TOL)


@pytest.mark.parametrize("case, name, hparams", MODELS, ids=MODEL_IDS)
def test_model_with_tf_weights_gives_tf_logits_in_torch(case, name, hparams):
    torch_model, tf_model = build_pair(name, hparams)
    randomise_tf(tf_model)
    load_torch(torch_model, parity.tf_to_torch_state(tf_model))
    rows = batch(seed=1)
    expected = tf_model(tf_inputs(rows), training=False).numpy()
    assert expected.std() > 1e-2
    np.testing.assert_allclose(torch_eval_logits(torch_model, rows), expected, **TOL)


@pytest.mark.parametrize("case, name, hparams", MODELS, ids=MODEL_IDS)
def test_model_loss_gradients_match_torch(case, name, hparams):
    """Training-mode gradients of the mean log loss w.r.t. every weight (what one SGD step applies)."""
    torch_model, tf_model = build_pair(name, hparams)
    randomise_torch(torch_model)
    parity.torch_state_to_tf(tf_model, torch_model.state_dict())
    rows = batch(seed=2)
    t_in = torch_inputs(rows)
    torch_model.train()
    torch.nn.functional.binary_cross_entropy_with_logits(torch_model(t_in), t_in["label"]).backward()

    params = tf_model.torch_parameters()
    trainable = {k: entry for k, entry in params.items() if entry[0].trainable}
    inputs = tf_inputs(rows)
    with tf.GradientTape() as tape:
        logits = tf_model(inputs, training=True)
        loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=inputs["label"], logits=logits))
    grads = tape.gradient(loss, [v for v, _ in trainable.values()])
    named = dict(torch_model.named_parameters())
    assert set(named) == set(trainable)
    moving = 0
    for (key, (_, layout)), grad in zip(trainable.items(), grads):
        expected = named[key].grad.numpy()
        moving += bool(np.abs(expected).max() > 1e-6)
        np.testing.assert_allclose(parity.LAYOUTS[layout].to_torch(dense_grad(grad)), expected, err_msg=key, **TOL)
    assert moving >= len(named) - 2  # a bias before BatchNorm gets ~0 (the normalisation removes it)


SAVED = [MODELS[i] for i in (3, 8, 10)]  # one structure of each model, BatchNorm included


@pytest.mark.parametrize("case, name, hparams", SAVED, ids=[m[0] for m in SAVED])
def test_model_config_round_trip_and_saved_file_reload_without_custom_objects(case, name, hparams, tmp_path):
    _, model = build_pair(name, hparams)
    randomise_tf(model)
    rows = tf_inputs(batch(seed=3))
    expected = model(rows, training=False).numpy()
    clone = type(model).from_config(model.get_config())
    assert clone.get_config() == model.get_config()
    parity.torch_state_to_tf(clone, parity.tf_to_torch_state(model))
    np.testing.assert_allclose(clone(rows, training=False).numpy(), expected, rtol=1e-6)
    path = tmp_path / f"{case}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is type(model)
    np.testing.assert_allclose(loaded(rows, training=False).numpy(), expected, rtol=1e-6)


@pytest.mark.parametrize("hparams, message", [
    ({"model_structure": "serial"}, "model_structure must be one of parallel, stacked"),
    ({"use_low_rank_mixture": False, "low_rank": 0}, "low_rank"),
    ({"use_low_rank_mixture": True, "num_experts": -1}, "num_experts"),
    ({"low_rank_activation": "swish7"}, "low_rank_activation"),
])
def test_dcnv2_bad_hparams_are_config_errors_whatever_the_cross_network(hparams, message):
    with pytest.raises(ConfigError, match=message):
        build_tf_model("dcnv2", schema(), {**SMALL, **hparams})


def test_dcnv2_full_rank_reports_the_mixture_settings_unused():
    _, ignored = build_tf_model("dcnv2", schema(), {**SMALL, "use_low_rank_mixture": False, "low_rank": 4})
    assert "low_rank" in ignored
    model, ignored = build_tf_model("dcnv2", schema(), {**SMALL, "use_low_rank_mixture": True, "low_rank": 4})
    assert "low_rank" not in ignored and isinstance(model.cross, kl.CrossNetMix)


def test_onn_embedding_is_fields_times_wider():
    model, _ = build_tf_model("onn", schema(), {**SMALL, "embed_size": 2})
    num_fields = 5  # 3 sparse, 1 dense, 1 sequence
    assert model.embedding.dim == num_fields * 2
    assert model.interaction.output_dim == num_fields * 2 + 10  # copies + 10 inner products


@pytest.mark.parametrize("case, name, hparams", MODELS, ids=MODEL_IDS)
def test_model_under_mixed_bfloat16_gives_float32_logits_close_to_float32(case, name, hparams):
    _, full = build_pair(name, hparams)
    randomise_tf(full)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        mixed, _ = build_tf_model(name, schema(), {**SMALL, **hparams})
    finally:
        keras.config.set_dtype_policy(previous)
    parity.torch_state_to_tf(mixed, parity.tf_to_torch_state(full))
    assert all(v.dtype in ("float32", "int64") for v in mixed.weights)
    rows = tf_inputs(batch(seed=4))
    expected = full(rows, training=False).numpy()
    got = mixed(rows, training=False)
    assert got.dtype == tf.float32
    np.testing.assert_allclose(got.numpy(), expected, atol=0.05 * (np.abs(expected).max() + 1e-3), rtol=0.05)


def test_torch_default_initialise_draws_torchs_bounds_for_the_grouped_blocks():
    """``--init torch_default``: each weight (grouped Conv1d blocks included) U(+-1/sqrt(fan_in)) as torch draws it."""
    from ctrkit.pytorch.trainer import initialise_weights

    keras.utils.set_random_seed(0)
    torch.manual_seed(0)
    pairs = [(tl.CrossNetMix(64, 1, low_rank=16, num_experts=8), kl.CrossNetMix(64, 1, low_rank=16, num_experts=8)),
             (tl.BilinearInteraction(12, 16), kl.BilinearInteraction(12, 16)),
             (tl.CrossNetV2(32, 1), kl.CrossNetV2(32, 1)), (tl.SqueezeExcitation(40, 2), kl.SqueezeExcitation(40, 2))]
    for module, layer in pairs:
        initialise_weights(module, "torch_default")
        kl.torch_default_initialise(layer)
        expected, got = torch_state(module), parity.tf_to_torch_state(layer)
        assert set(got) == set(expected)
        for key, value in expected.items():
            weight = expected[key[: -len("bias")] + "weight"] if key.endswith("bias") else value
            bound = 1 / np.sqrt(weight.shape[1])  # fan_in: Linear [out, in]; grouped Conv1d [G*out, in/G, 1]
            for array in (value, got[key]):
                assert np.abs(array).max() <= bound, key
                assert array.size < 200 or np.abs(array).max() > 0.95 * bound, key  # uniform over the range
