"""Parity of every registry model between PyTorch and TensorFlow: the same function, proven.

For every model, weights mapped by :mod:`ctrkit.parity` give the same logits (float32,
rtol=atol=1e-5) in both directions, on synthetic batches (sparse, dense and sequence fields,
padding) and on real Criteo rows; one SGD step from the same weights on the same batch gives the
same weights (1e-5), and 50 Adam steps stay within 1e-3. Dropout is 0; BatchNorm is checked on
the DNN, in eval mode for the logits and in training mode (batch statistics, running averages)
for the SGD step.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
torch = pytest.importorskip("torch")
import keras  # noqa: E402

from conftest import shared_file  # noqa: E402
from ctrkit import parity  # noqa: E402
from ctrkit.errors import ConfigError  # noqa: E402
from ctrkit.registry import MODELS, build_tf_model, build_torch_model, get_model_info  # noqa: E402
from ctrkit.schema import Field, Schema  # noqa: E402
from ctrkit.training.objective import split_output, training_objective  # noqa: E402

torch.set_num_threads(2)

TOL = dict(rtol=1e-5, atol=1e-5)
SMALL = {
    "embed_size": 4,
    "hidden_units": (16, 8),
    "cin_layer_units": (6, 4),
    "cross_layers": 2,
    "attention_layers": 2,
    "attention_dim": 4,
    "attention_factor": 4,
    "dropout": 0.0,
    "batch_norm": False,
}
#: (case id, registry name, hyper-parameter overrides)
CASES = [(name, name, {}) for name in sorted(MODELS)] + [("dnn-batchnorm", "dnn", {"batch_norm": True})]
IDS = [case[0] for case in CASES]


def synthetic_schema() -> Schema:
    return Schema(
        (
            Field("C1", "sparse", vocab_size=6),
            Field("C2", "sparse", vocab_size=9),
            Field("C3", "sparse", vocab_size=4),
            Field("I1", "dense"),
            Field("I2", "dense"),
            Field("hist", "sequence", max_len=5, shares="C2"),
        )
    )


def synthetic_batch(schema: Schema, rows: int = 64, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    batch = {
        "label": (rng.random(rows) < 0.4).astype(np.float32),
        "sparse": np.stack([rng.integers(0, f.vocab_size, rows) for f in schema.sparse], 1).astype(np.int32),
        "dense": rng.standard_normal((rows, len(schema.dense))).astype(np.float32),
    }
    for f in schema.sequence:
        seq = rng.integers(0, schema[f.shares].vocab_size, (rows, f.max_len)).astype(np.int32)
        seq[0] = 0  # an all-padding row
        batch[f"seq:{f.name}"] = seq
    return batch


@pytest.fixture(scope="module")
def criteo_rows(tmp_path_factory) -> tuple[Schema, dict[str, np.ndarray]]:
    """512 real rows (26 sparse + 13 dense fields) of a store built once from the Kaggle sample."""
    raw = shared_file("criteo/kaggle_train_head10k.tsv")
    from ctrkit.data.batches import BatchReader
    from ctrkit.data.criteo import CriteoOptions, preprocess_criteo

    out = tmp_path_factory.mktemp("criteo") / "store.lmdb"
    store = preprocess_criteo([raw], out, CriteoOptions(numeric="dense", min_count=5), progress=False).store
    batch = next(iter(BatchReader(store, "train", 512).iter_epoch(0)))
    return store.schema, {k: np.asarray(v) for k, v in batch.items()}


def data(source: str, request, name: str | None = None) -> tuple[Schema, dict[str, np.ndarray]] | None:
    """The schema and batch of ``source``; None (once the ConfigError is checked) for a sequence
    model (DIN, DIEN) on Criteo rows, which have no behaviour sequence."""
    if source == "criteo" and name and get_model_info(name).needs_sequence:
        schema, _ = request.getfixturevalue("criteo_rows")
        with pytest.raises(ConfigError, match="sequence field"):
            build_torch_model(name, schema, SMALL)
        return None
    if source == "criteo":
        return request.getfixturevalue("criteo_rows")
    schema = synthetic_schema()
    return schema, synthetic_batch(schema)


def build_pair(name: str, schema: Schema, overrides: dict):
    hparams = {**SMALL, **overrides}
    torch.manual_seed(0)
    torch_model, _ = build_torch_model(name, schema, hparams)
    keras.utils.set_random_seed(0)
    tf_model, _ = build_tf_model(name, schema, hparams)
    return torch_model, tf_model


#: BatchNorm running statistics on the scale of the hidden pre-activations of std-0.1 weights
#: (~0.05), so that eval-mode normalisation keeps the rows apart instead of flattening them
RUNNING_MEAN_STD, RUNNING_VAR_RANGE = 0.01, (0.001, 0.004)


#: DIN's and DIEN's logits pass through deeper stacks of std-0.1 weights: with std-0.1 embeddings
#: their rows differ by less than 1e-3
LOGITS_EMBEDDING_STD = {"din": 1.0, "dien": 1.0}

#: AFM's attention net sees products of two embeddings: at std 0.1 its scores are ~1e-2 apart, the
#: softmax is ~uniform and its gradients (~1e-7) fall below float32 resolution of a 0.1 weight
EMBEDDING_STD = {"afm": 1.0}


def random_value(name: str, shape: tuple, rng: np.random.Generator, embedding_std: float = 0.1) -> np.ndarray:
    """Parameters ~ N(0, 0.1^2) (embeddings too, so they are not ~0), plausible BatchNorm statistics."""
    if name.endswith("num_batches_tracked"):
        return np.array(5, np.int64)
    if name.endswith("running_var"):
        return rng.uniform(*RUNNING_VAR_RANGE, shape).astype(np.float32)
    std = RUNNING_MEAN_STD if name.endswith("running_mean") else 0.1
    if name == "embedding.table.weight":
        std = embedding_std
    return (rng.standard_normal(shape) * std).astype(np.float32)


def randomise_torch(model: torch.nn.Module, seed: int = 0, embedding_std: float = 0.1) -> None:
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for name, value in model.state_dict().items():
            value.copy_(torch.from_numpy(random_value(name, tuple(value.shape), rng, embedding_std)))


def randomise_tf(model, seed: int = 1, embedding_std: float = 0.1) -> None:
    """The same recipe on the Keras variables (drawn in TF's layouts)."""
    rng = np.random.default_rng(seed)
    for name, (variable, _) in model.torch_parameters().items():
        variable.assign(random_value(name, tuple(variable.shape), rng, embedding_std))


def torch_state(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def load_torch_state(model: torch.nn.Module, state: dict[str, np.ndarray]) -> None:
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})


def torch_inputs(batch: dict[str, np.ndarray]) -> dict:
    return {k: torch.from_numpy(v.copy()) for k, v in batch.items()}


def tf_inputs(batch: dict[str, np.ndarray]) -> dict:
    return {k: tf.constant(v) for k, v in batch.items()}


def torch_logits(model, batch) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(torch_inputs(batch)).numpy()


def assert_states_close(tf_model, torch_model, tol: float) -> None:
    expected = torch_state(torch_model)
    got = parity.tf_to_torch_state(tf_model)
    assert set(got) == set(expected)
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=tol, atol=tol, err_msg=name)


# -- the mapping itself ---------------------------------------------------------------------------


@pytest.mark.parametrize("case, name, overrides", CASES, ids=IDS)
def test_mapping_is_a_bijection_onto_the_torch_state_dict(case, name, overrides):
    torch_model, tf_model = build_pair(name, synthetic_schema(), overrides)
    params = tf_model.torch_parameters()
    state = torch_model.state_dict()
    assert set(params) == set(state)
    assert parity.unmapped_variables(tf_model) == []
    for key, (variable, layout) in params.items():
        converted = parity.LAYOUTS[layout].to_torch(np.zeros(variable.shape))
        assert converted.shape == tuple(state[key].shape), key


# -- (a, b) logits, torch -> tf and tf -> torch ------------------------------------------------------


@pytest.mark.parametrize("source", ["synthetic", "criteo"])
@pytest.mark.parametrize("case, name, overrides", CASES, ids=IDS)
def test_torch_weights_give_the_same_logits_in_tf(case, name, overrides, source, request):
    if (rows := data(source, request, name)) is None:
        return
    schema, batch = rows
    torch_model, tf_model = build_pair(name, schema, overrides)
    randomise_torch(torch_model, embedding_std=LOGITS_EMBEDDING_STD.get(name, 0.1))
    parity.torch_state_to_tf(tf_model, torch_model.state_dict())
    expected = torch_logits(torch_model, batch)
    assert expected.std() > 1e-3  # the logits differ between rows by far more than the tolerance
    got = tf_model(tf_inputs(batch), training=False).numpy()
    np.testing.assert_allclose(got, expected, **TOL)


@pytest.mark.parametrize("source", ["synthetic", "criteo"])
@pytest.mark.parametrize("case, name, overrides", CASES, ids=IDS)
def test_tf_weights_give_the_same_logits_in_torch(case, name, overrides, source, request):
    if (rows := data(source, request, name)) is None:
        return
    schema, batch = rows
    torch_model, tf_model = build_pair(name, schema, overrides)
    randomise_tf(tf_model, embedding_std=LOGITS_EMBEDDING_STD.get(name, 0.1))
    load_torch_state(torch_model, parity.tf_to_torch_state(tf_model))
    expected = tf_model(tf_inputs(batch), training=False).numpy()
    assert expected.std() > 1e-3
    np.testing.assert_allclose(torch_logits(torch_model, batch), expected, **TOL)


# -- (c, d) training steps from the same weights -----------------------------------------------------


def torch_steps(model, optimizer, batch, steps: int) -> None:
    model.train()
    inputs = torch_inputs(batch)
    for _ in range(steps):
        logits, aux_loss = split_output(model(inputs))
        bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, inputs["label"])
        loss = training_objective(bce, aux_loss=aux_loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def tf_optimizer_for(name: str, model, lr: float, **options):
    """ctrkit's TF optimiser with torch's update rule, over the model's parameter groups."""
    from ctrkit.tensorflow.optimizers import OPTIMIZERS, parameter_groups

    return OPTIMIZERS[name](parameter_groups(model), lr, **options)


def tf_steps(model, optimizer, batch, steps: int) -> None:
    inputs = tf_inputs(batch)
    for _ in range(steps):
        with tf.GradientTape() as tape:
            logits, aux_loss = split_output(model(inputs, training=True))
            bce = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=inputs["label"], logits=logits))
            loss = training_objective(bce, aux_loss=aux_loss)
        grads = tape.gradient(loss, optimizer.variables)
        optimizer.apply_gradients(zip(grads, optimizer.variables))  # densifies embedding gradients


def same_start(name: str, schema: Schema, overrides: dict, direction: str):
    torch_model, tf_model = build_pair(name, schema, overrides)
    embedding_std = EMBEDDING_STD.get(name, 0.1)
    if direction == "torch->tf":
        randomise_torch(torch_model, embedding_std=embedding_std)
        parity.torch_state_to_tf(tf_model, torch_model.state_dict())
    else:
        randomise_tf(tf_model, embedding_std=embedding_std)
        load_torch_state(torch_model, parity.tf_to_torch_state(tf_model))
    return torch_model, tf_model


@pytest.mark.parametrize("direction", ["torch->tf", "tf->torch"])
@pytest.mark.parametrize("case, name, overrides", CASES, ids=IDS)
def test_one_sgd_step_gives_the_same_weights(case, name, overrides, direction, request):
    sequence_model = get_model_info(name).needs_sequence  # no Criteo rows for them (see data)
    schema, batch = data("criteo" if direction == "torch->tf" and not sequence_model else "synthetic", request)
    torch_model, tf_model = same_start(name, schema, overrides, direction)
    before = torch_state(torch_model)
    torch_steps(torch_model, torch.optim.SGD(torch_model.parameters(), lr=0.1), batch, steps=1)
    tf_steps(tf_model, tf_optimizer_for("SGD", tf_model, lr=0.1), batch, steps=1)
    after = torch_state(torch_model)
    # every parameter with a gradient moved, so the comparison below can fail (a bias before a
    # BatchNorm has none but round-off: the normalisation removes it)
    moving = [k for k, p in torch_model.named_parameters() if p.grad is not None and p.grad.abs().max() > 1e-6]
    assert len(moving) >= len(before) // 2
    still = [k for k in moving if np.array_equal(after[k], before[k])]
    assert not still, still
    assert_states_close(tf_model, torch_model, 1e-5)


#: Adam's eps per case (torch's 1e-8 unless named). Before a BatchNorm a bias has a zero gradient up
#: to round-off (the normalisation removes it), and Adam's m / sqrt(v) turns that ~1e-9 noise into
#: full +-lr steps: in 50 steps float32 *torch* itself leaves the float64 torch trajectory by 2.7e-3
#: (TF float32 by 1.8e-3; measured on this case). eps = 1e-6 damps steps of gradients below ~1e-6,
#: and the two frameworks then agree within 1.2e-4 (torch float32 vs float64: 7e-5).
ADAM_EPS = {"dnn-batchnorm": 1e-6}


@pytest.mark.parametrize("case, name, overrides", CASES, ids=IDS)
def test_fifty_adam_steps_stay_within_1e_3(case, name, overrides, request):
    schema, batch = data("synthetic", request)
    torch_model, tf_model = same_start(name, schema, overrides, "torch->tf")
    eps = ADAM_EPS.get(case, 1e-8)
    torch_optimizer = torch.optim.Adam(torch_model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=eps)
    tf_optimizer = tf_optimizer_for("Adam", tf_model, lr=1e-3, eps=eps)  # torch's rule (Keras' Adam is not)
    start = torch_state(torch_model)
    torch_steps(torch_model, torch_optimizer, batch, steps=50)
    tf_steps(tf_model, tf_optimizer, batch, steps=50)
    travelled = max(np.abs(p.detach().numpy() - start[k]).max() for k, p in torch_model.named_parameters())
    assert travelled > 1e-2  # 50 steps of 1e-3 move the weights well beyond the tolerance
    assert_states_close(tf_model, torch_model, 1e-3)
    batch_logits = torch_logits(torch_model, batch)
    np.testing.assert_allclose(tf_model(tf_inputs(batch)).numpy(), batch_logits, rtol=1e-3, atol=1e-3)
