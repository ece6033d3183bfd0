"""Parity of every TensorFlow block with its PyTorch twin: weights mapped by ctrkit.parity give the
same outputs and gradients (float32, rtol=atol=1e-5), in both directions; the embedding
regulariser equals the torch trainer's rule; BatchNorm keeps torch's running statistics."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
torch = pytest.importorskip("torch")

from ctrkit import parity  # noqa: E402
from ctrkit.errors import InputError  # noqa: E402
from ctrkit.pytorch import layers as tl  # noqa: E402
from ctrkit.schema import Field, Schema  # noqa: E402
from ctrkit.tensorflow import layers as kl  # noqa: E402

TOL = dict(rtol=1e-5, atol=1e-5)


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


def mixed_batch() -> dict[str, np.ndarray]:
    """Repeated ids across fields and inside sequences, partial and full padding."""
    return {
        "label": np.array([1.0, 0.0, 1.0, 0.0], np.float32),
        "sparse": np.array([[1, 2], [0, 6], [4, 3], [1, 2]], np.int32),
        "dense": np.array([[0.5, -1.0], [2.0, 0.0], [1.0, 3.0], [-0.25, 1.5]], np.float32),
        "seq:history": np.array([[0, 0, 3, 5], [0, 0, 0, 0], [1, 2, 0, 6], [2, 2, 2, 0]], np.int32),
        "seq:recent": np.array([[2, 4], [0, 1], [0, 0], [1, 1]], np.int64),
    }


def torch_batch(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v.copy()) for k, v in batch.items()}


def tf_batch(batch: dict[str, np.ndarray]) -> dict:
    return {k: tf.constant(v) for k, v in batch.items() if k != "label"}


def randomise_torch(module: torch.nn.Module, seed: int = 0) -> None:
    """Every parameter ~ N(0, 0.1^2) (the embeddings too, so they are not ~0); BN statistics random."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, value in module.state_dict().items():
            if not value.is_floating_point():
                value.fill_(7)
            elif name.endswith("running_var"):
                value.copy_(torch.rand(value.shape, generator=gen) + 0.5)
            else:
                value.copy_(torch.randn(value.shape, generator=gen) * 0.1)


def randomise_tf(layer, seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    for variable in layer.weights:
        if "int" in str(variable.dtype):
            variable.assign(np.array(3, dtype=np.int64))
        elif "moving_variance" in variable.path:
            variable.assign(rng.uniform(0.5, 1.5, variable.shape).astype(np.float32))
        else:
            variable.assign((rng.standard_normal(variable.shape) * 0.1).astype(np.float32))


def state_of(module: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy() for k, v in module.state_dict().items()}


def float_input(*shape: int, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# (name, torch factory, tf factory, input factory); FieldEmbedding/Linear take the mixed batch
CASES = [
    ("embedding_table", lambda: tl.EmbeddingTable(12, 3), lambda: kl.EmbeddingTable(12, 3),
     lambda: np.array([[1, 11], [0, 1], [5, 5]], np.int64)),
    ("bias", lambda: tl.Bias((2, 3)), lambda: kl.Bias((2, 3)), lambda: float_input(4, 2, 3)),
    ("field_embedding", lambda: tl.FieldEmbedding(mixed_schema(), 4), lambda: kl.FieldEmbedding(mixed_schema(), 4),
     mixed_batch),
    ("linear", lambda: tl.Linear(mixed_schema()), lambda: kl.Linear(mixed_schema()), mixed_batch),
    ("mlp", lambda: tl.MLP(6, (5, 4), activation="tanh", output_dim=2),
     lambda: kl.MLP(6, (5, 4), activation="tanh", output_dim=2), lambda: float_input(7, 6)),
    ("mlp_bn_dropout", lambda: tl.MLP(6, (5, 4), dropout=0.3, batch_norm=True, output_dim=1),
     lambda: kl.MLP(6, (5, 4), dropout=0.3, batch_norm=True, output_dim=1), lambda: float_input(7, 6)),
    ("mlp_bn", lambda: tl.MLP(6, (5, 4), activation="relu", batch_norm=True, output_dim=1),
     lambda: kl.MLP(6, (5, 4), activation="relu", batch_norm=True, output_dim=1), lambda: float_input(7, 6)),
    ("mlp_no_output", lambda: tl.MLP(6, (5,), activation="gelu"), lambda: kl.MLP(6, (5,), activation="gelu"),
     lambda: float_input(7, 6)),
    ("fm", tl.FactorizationMachine, kl.FactorizationMachine, lambda: float_input(5, 6, 4)),
    ("ffm", lambda: tl.FieldAwareFactorizationMachine(4, 3), lambda: kl.FieldAwareFactorizationMachine(4, 3),
     lambda: float_input(5, 4, 12)),
    ("crossnet", lambda: tl.CrossNet(8, 3), lambda: kl.CrossNet(8, 3), lambda: float_input(5, 8)),
    ("cin_split", lambda: tl.CompressedInteractionNetwork(5, (6, 4, 3)),
     lambda: kl.CompressedInteractionNetwork(5, (6, 4, 3)), lambda: float_input(4, 5, 3)),
    ("cin_wide_relu", lambda: tl.CompressedInteractionNetwork(3, (7, 5), split_half=False, activation="relu"),
     lambda: kl.CompressedInteractionNetwork(3, (7, 5), split_half=False, activation="relu"),
     lambda: float_input(4, 3, 5)),
    ("mhsa", lambda: tl.MultiHeadSelfAttention(6, 4, 2), lambda: kl.MultiHeadSelfAttention(6, 4, 2),
     lambda: float_input(3, 5, 6)),
    ("mhsa_scaled_no_residual", lambda: tl.MultiHeadSelfAttention(6, 3, 3, use_residual=False, scaled=True),
     lambda: kl.MultiHeadSelfAttention(6, 3, 3, use_residual=False, scaled=True), lambda: float_input(3, 5, 6)),
    ("afm", lambda: tl.AttentionalPooling(5, 4, attention_factor=6, dropout=0.2),
     lambda: kl.AttentionalPooling(5, 4, attention_factor=6, dropout=0.2), lambda: float_input(3, 5, 4)),
]
IDS = [c[0] for c in CASES]


def run_torch(module, x, reference=False):
    module.eval()
    arg = torch_batch(x) if isinstance(x, dict) else torch.from_numpy(x.copy())
    fn = module.reference_forward if reference else module
    with torch.no_grad():
        return fn(arg).numpy()


def run_tf(layer, x, training=False):
    arg = tf_batch(x) if isinstance(x, dict) else tf.constant(x)
    return layer(arg, training=training).numpy() if _takes_training(layer) else layer(arg).numpy()


def _takes_training(layer) -> bool:
    return "training" in layer.call.__code__.co_varnames


@pytest.mark.parametrize("name, make_torch, make_tf, make_input", CASES, ids=IDS)
def test_torch_weights_give_the_same_outputs_in_tf(name, make_torch, make_tf, make_input):
    torch.manual_seed(0)
    module, layer, x = make_torch(), make_tf(), make_input()
    randomise_torch(module)
    parity.torch_state_to_tf(layer, state_of(module))
    assert parity.unmapped_variables(layer) == []
    expected = run_torch(module, x)
    np.testing.assert_allclose(run_tf(layer, x), expected, **TOL)
    if hasattr(module, "reference_forward"):
        np.testing.assert_allclose(run_tf(layer, x), run_torch(module, x, reference=True), **TOL)


@pytest.mark.parametrize("name, make_torch, make_tf, make_input", CASES, ids=IDS)
def test_tf_weights_give_the_same_outputs_in_torch(name, make_torch, make_tf, make_input):
    torch.manual_seed(0)
    module, layer, x = make_torch(), make_tf(), make_input()
    randomise_tf(layer)
    state = parity.tf_to_torch_state(layer)
    module.load_state_dict({k: torch.tensor(v) for k, v in state.items()}, strict=True)
    np.testing.assert_allclose(run_torch(module, x), run_tf(layer, x), **TOL)
    # and back: the round trip is exact
    again = make_tf()
    parity.torch_state_to_tf(again, state_of(module))
    for key, value in parity.tf_to_torch_state(again).items():
        np.testing.assert_array_equal(value, state[key])


# -- gradients ------------------------------------------------------------------------------------

GRAD_CASES = [c for c in CASES if c[0] in {
    "field_embedding", "linear", "mlp", "mlp_bn", "mlp_bn_dropout", "fm", "ffm", "crossnet", "cin_split", "cin_wide_relu",
    "mhsa", "mhsa_scaled_no_residual", "afm",
}]


def _dense(grad):
    return tf.convert_to_tensor(grad).numpy()


@pytest.mark.parametrize("name, make_torch, make_tf, make_input", GRAD_CASES, ids=[c[0] for c in GRAD_CASES])
def test_gradients_match(name, make_torch, make_tf, make_input):
    """Training-mode gradients of ``sum(out * r)`` w.r.t. every weight and the float inputs.

    Blocks with dropout run in eval mode on both sides (random masks differ between frameworks);
    the others, BatchNorm included, in training mode."""
    torch.manual_seed(0)
    module, layer, x = make_torch(), make_tf(), make_input()
    randomise_torch(module)
    parity.torch_state_to_tf(layer, state_of(module))
    training = name not in {"mlp_bn_dropout", "afm"}  # blocks with dropout: eval mode on both sides
    module.train(training)

    if isinstance(x, dict):
        t_in = torch_batch(x)
        t_in["dense"].requires_grad_(True)
        t_leaf = t_in["dense"]
        k_in = tf_batch(x)
        k_leaf = tf.Variable(x["dense"])
        k_in["dense"] = k_leaf
    else:
        t_in = t_leaf = torch.from_numpy(x.copy()).requires_grad_(True)
        k_leaf = tf.Variable(x)
        k_in = k_leaf
    t_out = module(t_in)
    r = np.random.default_rng(9).standard_normal(tuple(t_out.shape)).astype(np.float32)
    (t_out * torch.from_numpy(r)).sum().backward()

    params = parity.torch_parameters_of(layer)
    variables = [v for v, _ in params.values()]
    with tf.GradientTape() as tape:
        k_out = layer(k_in, training=training) if _takes_training(layer) else layer(k_in)
        loss = tf.reduce_sum(k_out * r)
    grads = tape.gradient(loss, [k_leaf, *variables])
    np.testing.assert_allclose(_dense(grads[0]), t_leaf.grad.numpy(), **TOL)
    named = dict(module.named_parameters())
    assert set(named) <= set(params)
    for (key, (_, layout)), grad in zip(params.items(), grads[1:]):
        if key not in named:  # buffers
            continue
        got = parity.LAYOUTS[layout].to_torch(_dense(grad))
        np.testing.assert_allclose(got, named[key].grad.numpy(), err_msg=key, **TOL)


def test_batch_norm_training_step_keeps_torch_running_statistics():
    torch.manual_seed(0)
    module, layer, x = tl.MLP(6, (5, 4), batch_norm=True, output_dim=1), kl.MLP(6, (5, 4), batch_norm=True,
                                                                                  output_dim=1), float_input(9, 6)
    randomise_torch(module)
    parity.torch_state_to_tf(layer, state_of(module))
    module.train()
    expected = module(torch.from_numpy(x)).detach().numpy()
    got = layer(tf.constant(x), training=True).numpy()
    np.testing.assert_allclose(got, expected, **TOL)
    after = parity.tf_to_torch_state(layer)
    for key, value in state_of(module).items():
        np.testing.assert_allclose(after[key], value, err_msg=key, **TOL)
    assert int(after["layers.1.num_batches_tracked"]) == 8  # 7 (randomised) + 1 step


# -- embedding regulariser ------------------------------------------------------------------------


def torch_regulariser(module: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The torch trainer's rule: ``sum(rows ** 2) / B`` over every EmbeddingTable output of the batch."""
    terms = []
    hooks = [m.register_forward_hook(lambda _m, _i, rows: terms.append(rows.float().pow(2).sum()))
             for m in module.modules() if isinstance(m, tl.EmbeddingTable)]
    try:
        module(batch)
    finally:
        for h in hooks:
            h.remove()
    return torch.stack(terms).sum() / batch["sparse"].shape[0]


@pytest.mark.parametrize("make_torch, make_tf", [
    (lambda: tl.FieldEmbedding(mixed_schema(), 4), lambda: kl.FieldEmbedding(mixed_schema(), 4)),
    (lambda: tl.Linear(mixed_schema()), lambda: kl.Linear(mixed_schema())),
], ids=["field_embedding", "linear"])
def test_embedding_regulariser_is_the_torch_trainers_rule(make_torch, make_tf):
    module, layer = make_torch(), make_tf()
    randomise_torch(module)
    parity.torch_state_to_tf(layer, state_of(module))
    batch = mixed_batch()
    l2 = 0.3
    tables = kl.embedding_tables(layer)
    assert len(tables) == 1
    kl.set_embedding_l2(layer, l2)

    t_batch = torch_batch(batch)
    expected = l2 * torch_regulariser(module, t_batch)
    with tf.GradientTape() as tape:
        layer(tf_batch(batch), training=True)
        (term,) = layer.losses
    np.testing.assert_allclose(term.numpy(), expected.item(), rtol=1e-6)

    # independently of torch: rows counted once per read, padding never
    weight = state_of(module)[next(k for k in state_of(module) if k.endswith("table.weight"))]
    schema = mixed_schema()
    off = schema.sparse_offsets
    ids = list((batch["sparse"] + off).ravel()) + list(schema.total_vocab + np.tile([0, 1], 4))
    ids += [i + off[1] for i in batch["seq:history"].ravel() if i] + [i + off[0] for i in batch["seq:recent"].ravel() if i]
    manual = l2 * float((weight[ids].astype(np.float64) ** 2).sum()) / 4
    np.testing.assert_allclose(term.numpy(), manual, rtol=1e-6)

    # its gradient w.r.t. the table is torch's too
    module.zero_grad()
    expected.backward()
    grad = _dense(tape.gradient(term, tables[0].weight))
    np.testing.assert_allclose(grad, next(p.grad for p in module.parameters()).numpy(), **TOL)

    # no term outside training or with l2 = 0
    layer(tf_batch(batch), training=False)
    assert layer.losses == []
    kl.set_embedding_l2(layer, 0.0)
    layer(tf_batch(batch), training=True)
    assert layer.losses == []


# -- conversion errors ----------------------------------------------------------------------------


def test_conversion_names_missing_extra_and_misshapen_weights():
    layer = kl.MLP(4, (3,), output_dim=1)
    state = state_of(tl.MLP(4, (3,), output_dim=1))
    with pytest.raises(InputError, match="missing layers.2.bias"):
        parity.torch_state_to_tf(layer, {k: v for k, v in state.items() if k != "layers.2.bias"})
    with pytest.raises(InputError, match="unexpected extra.weight"):
        parity.torch_state_to_tf(layer, {**state, "extra.weight": np.zeros(1)})
    before = parity.tf_to_torch_state(layer)
    wrong = {**state, "layers.0.weight": np.zeros((3, 5), np.float32), "layers.0.bias": np.ones(3, np.float32)}
    with pytest.raises(InputError, match=r"layers.0.weight has shape \(3, 5\)"):
        parity.torch_state_to_tf(layer, wrong)
    for key, value in parity.tf_to_torch_state(layer).items():  # nothing was assigned
        np.testing.assert_array_equal(value, before[key])
