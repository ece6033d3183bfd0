"""ctrkit.tensorflow.optimizers: torch.optim's update rules, step for step, and torch's parameter groups.

The cost of densifying embedding gradients (quoted in the module docstring) was measured with::

    .venv/bin/python tests/tf/test_optimizers.py   # prints ms per step, sparse Keras vs dense ctrkit vs torch
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
torch = pytest.importorskip("torch")

from ctrkit.errors import ConfigError  # noqa: E402
from ctrkit.registry import MODELS, build_tf_model, build_torch_model  # noqa: E402
from ctrkit.tensorflow.optimizers import ParamGroup, make_optimizer, parameter_groups  # noqa: E402

TORCH = {"Adam": torch.optim.Adam, "AdamW": torch.optim.AdamW, "Adagrad": torch.optim.Adagrad, "SGD": torch.optim.SGD}
SHAPES = {"kernel": (3, 2), "bias": (2,), "table": (20, 3)}
GROUP_OF = {"kernel": "decay", "bias": "no_decay", "table": "embedding"}
STEPS = 25


def gradients(rng: np.random.Generator) -> dict[str, np.ndarray | tuple[np.ndarray, np.ndarray]]:
    """One step's gradients; the table's as (ids with duplicates, rows) like a tf.gather's IndexedSlices."""
    ids = rng.integers(0, SHAPES["table"][0], 12)
    ids[:3] = ids[0]  # a row looked up three times
    return {"kernel": rng.standard_normal(SHAPES["kernel"]).astype(np.float32),
            "bias": rng.standard_normal(SHAPES["bias"]).astype(np.float32),
            "table": (ids, rng.standard_normal((12, SHAPES["table"][1])).astype(np.float32))}


def dense_table_gradient(ids: np.ndarray, rows: np.ndarray) -> np.ndarray:
    out = np.zeros(SHAPES["table"], np.float32)
    np.add.at(out, ids, rows)
    return out


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("name", sorted(TORCH))
def test_same_weights_as_torch_optim_after_many_steps(name, weight_decay):
    start = {k: np.random.default_rng(7).standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
    torch_params = {k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in start.items()}
    torch_groups = [{"params": [torch_params[k]], "weight_decay": weight_decay if GROUP_OF[k] == "decay" else 0.0}
                    for k in SHAPES]
    torch_opt = TORCH[name](torch_groups, lr=0.01)
    tf_vars = {k: tf.Variable(v) for k, v in start.items()}
    groups = [ParamGroup(GROUP_OF[k], [tf_vars[k]], weight_decay if GROUP_OF[k] == "decay" else 0.0) for k in SHAPES]
    tf_opt = make_optimizer(name, groups, lr=0.01)
    step = tf.function(lambda grads: tf_opt.apply_gradients(zip(grads, tf_opt.variables)))
    rng = np.random.default_rng(0)
    for _ in range(STEPS):
        grads = gradients(rng)
        for k, p in torch_params.items():
            g = grads[k]
            p.grad = torch.from_numpy(dense_table_gradient(*g) if k == "table" else g.copy())
        torch_opt.step()
        ids, rows = grads["table"]
        tf_grads = [tf.constant(grads["kernel"]), tf.constant(grads["bias"]),
                    tf.IndexedSlices(tf.constant(rows), tf.constant(ids), tf.constant(SHAPES["table"]))]
        step(tf_grads)
    moved = max(np.abs(p.detach().numpy() - start[k]).max() for k, p in torch_params.items())
    assert moved > 0.02  # far beyond the tolerance: the comparison can fail
    for k, p in torch_params.items():
        np.testing.assert_allclose(tf_vars[k].numpy(), p.detach().numpy(), rtol=1e-6, atol=1e-6, err_msg=k)
    assert int(tf_opt.iterations.numpy()) == STEPS
    if name.startswith("Adam"):  # torch's state names, same values
        state = torch_opt.state[torch_params["table"]]
        np.testing.assert_allclose(tf_opt.slots["exp_avg_sq"][2].numpy(), state["exp_avg_sq"].numpy(), rtol=1e-6)


def test_keras_adam_is_not_torch_adam():
    """The reason this module exists: Keras' Adam (eps placement, sparse squares) drifts from torch's."""
    import keras

    start = np.full((4, 2), 0.5, np.float32)
    ours, theirs = tf.Variable(start), tf.Variable(start)
    opt = make_optimizer("Adam", [ParamGroup("embedding", [ours])], lr=0.1)
    keras_opt = keras.optimizers.Adam(learning_rate=0.1, epsilon=1e-8)
    grad = tf.IndexedSlices(tf.constant([[1e-4, 1.0]] * 2), tf.constant([1, 1]), tf.constant([4, 2]))
    for _ in range(3):
        opt.apply_gradients([(grad, ours)])
        keras_opt.apply_gradients([(grad, theirs)])
    assert np.abs(ours.numpy() - theirs.numpy()).max() > 1e-3


def test_set_lr_applies_to_the_next_compiled_step():
    v = tf.Variable([1.0])
    opt = make_optimizer("SGD", [ParamGroup("decay", [v])], lr=0.5)
    step = tf.function(lambda g: opt.apply_gradients([(g, v)]))
    step(tf.constant([1.0]))
    opt.set_lr(0.25)
    step(tf.constant([1.0]))
    np.testing.assert_allclose(v.numpy(), [1.0 - 0.5 - 0.25])


def test_unknown_optimizer_and_foreign_variable():
    v = tf.Variable([1.0])
    with pytest.raises(ConfigError, match="--optimizer must be one of Adam, AdamW, Adagrad, SGD"):
        make_optimizer("RMSprop", [ParamGroup("decay", [v])], lr=0.1)
    opt = make_optimizer("SGD", [ParamGroup("decay", [v])], lr=0.1)
    with pytest.raises(ValueError, match="not in this optimiser's groups"):
        opt.apply_gradients([(tf.constant([1.0]), tf.Variable([2.0]))])


SMALL = {"embed_size": 4, "hidden_units": (8,), "cin_layer_units": (4, 2), "attention_layers": 1,
         "attention_dim": 4, "attention_factor": 4, "batch_norm": True}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_parameter_groups_are_torchs(name):
    """Every variable lands in the group its torch counterpart is in (by torch state_dict name)."""
    from ctrkit.pytorch.trainer import parameter_groups as torch_parameter_groups
    from ctrkit.schema import Field, Schema

    schema = Schema((Field("C1", "sparse", vocab_size=5), Field("C2", "sparse", vocab_size=7), Field("I1", "dense"),
                     Field("H", "sequence", max_len=3, shares="C2")))  # DIN and DIEN need one
    torch_model, _ = build_torch_model(name, schema, SMALL)
    tf_model, _ = build_tf_model(name, schema, SMALL)
    names = {id(p): n for n, p in torch_model.named_parameters()}
    expected = {names[id(p)]: g["name"] for g in torch_parameter_groups(torch_model, 0.1) for p in g["params"]}
    torch_name = {id(variable): n for n, (variable, _) in tf_model.torch_parameters().items()}
    groups = parameter_groups(tf_model, 0.1)
    got = {torch_name[id(v)]: g.name for g in groups for v in g.variables}
    assert got == expected
    assert {g.name: g.weight_decay for g in groups} == {g["name"]: g["weight_decay"]
                                                      for g in torch_parameter_groups(torch_model, 0.1)}


# ---------------------------------------------------------------------------------------------
# The measurement quoted in the module docstring (not a test): python tests/tf/test_optimizers.py
# ---------------------------------------------------------------------------------------------
def _measure(rows: int = 1_000_000, dim: int = 16, lookups: tuple[int, int] = (4096, 39), repeats: int = 20) -> None:
    import keras

    ids = tf.constant(np.random.default_rng(0).integers(0, rows, lookups), tf.int32)

    def timed(make_step) -> float:
        table = tf.Variable(tf.random.normal((rows, dim), stddev=1e-4))
        step = make_step(table)
        step(ids)
        start = time.perf_counter()
        for _ in range(repeats):
            step(ids)
        _ = table.numpy()[0]
        return (time.perf_counter() - start) / repeats * 1e3

    def keras_sparse(table):
        opt = keras.optimizers.Adam(1e-3)
        opt.build([table])

        @tf.function
        def step(i):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(tf.gather(table, i))
            opt.apply_gradients([(tape.gradient(loss, table), table)])
        return step

    def ctrkit_dense(table):
        opt = make_optimizer("Adam", [ParamGroup("embedding", [table])], 1e-3)

        @tf.function
        def step(i):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(tf.gather(table, i))
            opt.apply_gradients([(tape.gradient(loss, table), table)])
        return step

    weight = torch.nn.Parameter(torch.randn(rows, dim) * 1e-4)
    torch_opt = torch.optim.Adam([weight], lr=1e-3, fused=True)
    torch_ids = torch.from_numpy(ids.numpy().astype(np.int64))

    def torch_step():
        torch_opt.zero_grad()
        torch.nn.functional.embedding(torch_ids, weight).sum().backward()
        torch_opt.step()

    torch_step()
    start = time.perf_counter()
    for _ in range(repeats):
        torch_step()
    torch_ms = (time.perf_counter() - start) / repeats * 1e3
    print(f"table {rows} x {dim}, lookups {lookups}: Keras sparse Adam {timed(keras_sparse):.1f} ms/step, "
          f"ctrkit dense Adam {timed(ctrkit_dense):.1f} ms/step, torch fused dense Adam {torch_ms:.1f} ms/step")


if __name__ == "__main__":
    torch.set_num_threads(2)
    _measure()
    sys.exit(0)
