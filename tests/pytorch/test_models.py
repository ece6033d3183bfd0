"""Model tests over the whole registry: contract, gradients, bf16, determinism, learning, registry."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import nn

from ctrkit.errors import ConfigError
from ctrkit.pytorch.layers import Bias, CrossNet, EmbeddingTable
from ctrkit.pytorch.models import AutoInt
from ctrkit.registry import MODELS, ModelInfo, build_torch_model, get_model_info
from ctrkit.schema import Field, Schema
from ctrkit.training.objective import split_output, training_objective

torch.set_num_threads(2)

SMALL = {
    "embed_size": 4,
    "hidden_units": (16, 8),
    "cin_layer_units": (6, 4),
    "cross_layers": 2,
    "attention_layers": 2,
    "attention_dim": 4,
    "attention_factor": 4,
}
NAMES = sorted(MODELS)


def mixed_schema() -> Schema:
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


def sparse_schema() -> Schema:
    return Schema(tuple(Field(f"C{i}", "sparse", vocab_size=5 + i) for i in range(4)))


def make_batch(schema: Schema, batch_size: int = 16, seed: int = 0, id_dtype=torch.int64) -> dict:
    g = torch.Generator().manual_seed(seed)
    batch = {"label": torch.randint(0, 2, (batch_size,), generator=g).float()}
    cols = [torch.randint(0, f.vocab_size, (batch_size,), generator=g) for f in schema.sparse]
    batch["sparse"] = torch.stack(cols, 1).to(id_dtype)
    if schema.dense:
        batch["dense"] = torch.randn(batch_size, len(schema.dense), generator=g)
    for f in schema.sequence:
        vocab = schema[f.shares].vocab_size
        seq = torch.randint(0, vocab, (batch_size, f.max_len), generator=g)
        seq[0] = 0  # one all-padding row
        batch[f"seq:{f.name}"] = seq.to(id_dtype)
    return batch


def build(name: str, schema: Schema, seed: int = 0, **overrides) -> nn.Module:
    torch.manual_seed(seed)
    model, _ = build_torch_model(name, schema, {**SMALL, **overrides})
    return model


def refused_without_sequences(name: str, schema: Schema) -> bool:
    """True, once the ConfigError is checked, for a sequence model (DIN, DIEN) on a schema without sequences."""
    if get_model_info(name).needs_sequence and not schema.sequence:
        with pytest.raises(ConfigError, match="sequence field"):
            build(name, schema)
        return True
    return False


def objective(model: nn.Module, batch: dict) -> torch.Tensor:
    """BCE plus the model's auxiliary loss (DIEN) in training mode, as the trainer computes it."""
    logits, aux_loss = split_output(model(batch))
    return training_objective(F.binary_cross_entropy_with_logits(logits, batch["label"]), aux_loss=aux_loss)


# -- the batch -> logits contract ----------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("schema_fn", [mixed_schema, sparse_schema])
@pytest.mark.parametrize("id_dtype", [torch.int32, torch.int64])
def test_output_shape_and_dtype(name, schema_fn, id_dtype):
    schema = schema_fn()
    if refused_without_sequences(name, schema):
        return
    model = build(name, schema)
    batch = make_batch(schema, id_dtype=id_dtype)
    out = split_output(model(batch)).logits
    assert out.shape == (16,)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    del batch["label"]  # prediction batches have no label
    assert split_output(model(batch)).logits.shape == (16,)


def _scale_embeddings(model: nn.Module, std: float) -> None:
    """Give embeddings a realistic (trained-like) scale so deep terms are not vanishingly small."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, EmbeddingTable):
                module.weight.normal_(0.0, std)


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_every_parameter(name):
    schema = mixed_schema()
    model = build(name, schema)
    batch = make_batch(schema, batch_size=32)
    objective(model, batch).backward()
    for pname, param in model.named_parameters():
        assert param.grad is not None, pname
        assert torch.count_nonzero(param.grad) > 0, pname


@pytest.mark.parametrize("name", ["dnn", "deepfm", "dcn", "xdeepfm", "autoint+"])
def test_batch_norm_and_dropout_train_and_eval(name):
    schema = mixed_schema()
    model = build(name, schema, batch_norm=True, dropout=0.3)
    assert any(isinstance(m, nn.BatchNorm1d) for m in model.modules())
    assert any(isinstance(m, nn.Dropout) for m in model.modules())
    batch = make_batch(schema, batch_size=32)
    F.binary_cross_entropy_with_logits(model(batch), batch["label"]).backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    torch.testing.assert_close(model(batch), model(batch))


@pytest.mark.parametrize("name", NAMES)
def test_runs_under_bf16_autocast(name):
    schema = mixed_schema()
    model = build(name, schema)
    _scale_embeddings(model, 0.1)
    batch = make_batch(schema, batch_size=32, id_dtype=torch.int32)
    reference = split_output(model(batch)).logits
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = split_output(model(batch)).logits
        loss = objective(model, batch)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, reference, atol=0.15, rtol=0.05)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_forward_is_deterministic_given_seed(name):
    schema = mixed_schema()
    batch = make_batch(schema)
    a = build(name, schema, seed=7)
    b = build(name, schema, seed=7)
    c = build(name, schema, seed=8)
    for m in (a, b, c):
        _ = m.eval()
    for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert na == nb and torch.equal(pa, pb), na
    torch.testing.assert_close(a(batch), b(batch), rtol=0, atol=0)
    torch.testing.assert_close(a(batch), a(batch), rtol=0, atol=0)
    assert not torch.equal(a(batch), c(batch))


@pytest.mark.parametrize("name", ["deepfm", "dcn", "xdeepfm", "autoint+"])
def test_empty_hidden_units_is_a_linear_deep_term(name):
    schema = mixed_schema()
    model = build(name, schema, hidden_units=())
    batch = make_batch(schema)
    out = model(batch)
    assert out.shape == (16,)
    F.binary_cross_entropy_with_logits(out, batch["label"]).backward()
    assert all(p.grad is not None for p in model.parameters())


# -- conventions the trainer relies on ---------------------------------------------------------------


ALLOWED_DIRECT_PARAMS = {
    EmbeddingTable: {"weight"},
    Bias: {"bias"},
    nn.Linear: {"weight", "bias"},
    nn.Conv1d: {"weight", "bias"},
    nn.BatchNorm1d: {"weight", "bias"},
    nn.LayerNorm: {"weight", "bias"},
    CrossNet: {"weight"},
}


@pytest.mark.parametrize("name", NAMES)
def test_parameters_live_in_known_module_types(name):
    model = build(name, mixed_schema(), batch_norm=True)
    for mod_name, module in model.named_modules():
        direct = {n for n, _ in module.named_parameters(recurse=False)}
        if not direct:
            continue
        allowed = ALLOWED_DIRECT_PARAMS.get(type(module))
        assert allowed is not None, f"{mod_name} ({type(module).__name__}) holds parameters {direct}"
        assert direct <= allowed, f"{mod_name}: {direct}"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("schema_fn", [mixed_schema, sparse_schema])
def test_every_embedding_read_goes_through_embedding_table(name, schema_fn):
    """Zeroing every EmbeddingTable output through a hook must erase all input information."""
    schema = schema_fn()
    if refused_without_sequences(name, schema):
        return
    model = build(name, schema).eval()
    _scale_embeddings(model, 0.1)
    b1, b2 = make_batch(schema, seed=1), make_batch(schema, seed=2)
    assert not torch.allclose(model(b1), model(b2))
    tables = [m for m in model.modules() if isinstance(m, EmbeddingTable)]
    assert tables
    regulariser = []
    handles = [t.register_forward_hook(lambda m, a, out: regulariser.append((out**2).sum())) for t in tables]
    model(b1)
    assert len(regulariser) == len(tables) and all(r > 0 for r in regulariser)
    for h in handles:
        h.remove()
    for t in tables:
        t.register_forward_hook(lambda m, a, out: out * 0)
    torch.testing.assert_close(model(b1), model(b2))


# -- learning: interaction models beat LR on pure pairwise structure ----------------------------------


def _pairwise_dataset(n_fields=8, vocab=50, n_train=16384, n_test=4096, seed=0):
    """Labels from hidden +-1 codes of each value, interacting in the pairs (0,1), (2,3), (4,5), (6,7).

    Each field's codes are balanced, so every single field carries no first-order signal: a
    linear model cannot beat chance, any model that learns pairwise interactions can.
    """
    rng = np.random.default_rng(seed)
    codes = np.zeros((n_fields, vocab))
    for f in range(n_fields):
        half = np.array([1.0, -1.0]).repeat((vocab - 2) // 2)
        rng.shuffle(half)
        codes[f, 1 : vocab - 1] = half

    def draw(n):
        ids = rng.integers(1, vocab - 1, size=(n, n_fields))
        c = codes[np.arange(n_fields), ids]
        logit = 1.5 * (c[:, 0::2] * c[:, 1::2]).sum(1)
        y = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.float32)
        return torch.from_numpy(ids).to(torch.int32), torch.from_numpy(y)

    schema = Schema(tuple(Field(f"C{i}", "sparse", vocab_size=vocab) for i in range(n_fields)))
    return schema, draw(n_train), draw(n_test)


LEARN_HPARAMS = {
    "embed_size": 8,
    "hidden_units": (64, 64),
    "cin_layer_units": (16, 16),
    "cross_layers": 2,
    "attention_layers": 2,
    "attention_dim": 8,
    "attention_factor": 8,
}


def _train_auc(name, schema, train, test, steps=300, batch_size=256):
    torch.manual_seed(0)
    model, _ = build_torch_model(name, schema, LEARN_HPARAMS)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(1)
    (x, y), (x_test, y_test) = train, test
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(y), (batch_size,), generator=g)
        loss = F.binary_cross_entropy_with_logits(model({"sparse": x[idx]}), y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        scores = model({"sparse": x_test}).numpy()
    return roc_auc_score(y_test.numpy(), scores)


def test_interaction_models_beat_lr():
    schema, train, test = _pairwise_dataset()
    lr_auc = _train_auc("lr", schema, train, test)
    assert lr_auc < 0.6  # no first-order signal
    aucs = {name: _train_auc(name, schema, train, test) for name in
            ["fm", "ffm", "deepfm", "dcn", "afm", "xdeepfm", "autoint+", "dnn"]}
    failed = {name: round(auc, 3) for name, auc in aucs.items() if auc < lr_auc + 0.15}
    assert not failed, f"LR AUC {lr_auc:.3f}; models without a clear margin: {failed}"


# -- registry --------------------------------------------------------------------------------------------


def test_afm_starts_as_fm():
    """``fm_start``: p = P * 1 and a uniform attention make AFM's pair term FM's sum of <v_i, v_j>."""
    schema = sparse_schema()
    model = build("afm", schema)
    batch = make_batch(schema)
    with torch.no_grad():
        model.attention.score.weight.zero_()  # h = 0: the attention is exactly uniform
        e = model.embedding(batch)  # (B, F, D)
        fm = 0.5 * (e.sum(1).pow(2) - e.pow(2).sum(1)).sum(1, keepdim=True)  # (B, 1)
        torch.testing.assert_close(model.attention(e), fm, rtol=1e-4, atol=1e-7)
        plain = build("afm", schema, fm_start=False)
        assert not torch.allclose(plain.attention.projection.weight, model.attention.projection.weight)


def test_registry_names_and_classes():
    assert set(MODELS) == {"lr", "dnn", "fm", "ffm", "deepfm", "dcn", "afm", "xdeepfm", "autoint", "autoint+",
                           "onn", "fibinet", "dcnv2", "din", "dien"}
    for key, info in MODELS.items():
        assert isinstance(info, ModelInfo) and info.name == key
        assert 2000 < info.year < 2030 and info.paper and info.title
        module, _, cls = info.torch_class.partition(":")
        assert module.startswith("ctrkit.pytorch.models.") and cls
        # the two frameworks mirror each other file for file and class for class
        assert info.tf_class == info.torch_class.replace("ctrkit.pytorch.", "ctrkit.tensorflow.")


def test_get_model_info_case_and_aliases():
    assert get_model_info("DeepFM").name == "deepfm"
    assert get_model_info(" xDeepFM ").title == "xDeepFM"
    assert get_model_info("AutoInt_Plus").name == "autoint+"
    assert get_model_info("AUTOINT+").defaults == {"use_dnn": True}


def test_unknown_model_lists_known_models():
    with pytest.raises(ConfigError) as info:
        get_model_info("widedeep")
    message = str(info.value)
    assert "'widedeep'" in message
    for name in MODELS:
        assert name in message
    with pytest.raises(ConfigError, match="known models"):
        build_torch_model("nope", sparse_schema(), {})


def test_registry_defaults_and_ignored_keys():
    schema = sparse_schema()
    model, ignored = build_torch_model("autoint+", schema, {"embed_size": 4, "hidden_units": (8,)})
    assert isinstance(model, AutoInt) and model.dnn is not None and ignored == []
    model, ignored = build_torch_model("autoint", schema, {"embed_size": 4, "hidden_units": (8,), "lr": 0.1})
    assert model.dnn is None and ignored == ["hidden_units", "lr"]
    model, ignored = build_torch_model("lr", schema, {"embed_size": 4, "dropout": 0.1})
    assert ignored == ["dropout", "embed_size"]
    model, ignored = build_torch_model("fm", schema, {"embed_size": 3, "cross_layers": 2})
    assert ignored == ["cross_layers"] and model.embedding.dim == 3
    model, _ = build_torch_model("deepfm", schema, {"hidden_units": [8, 4], "embed_size": 2})
    assert model.dnn.hidden_units == (8, 4)
    model, ignored = build_torch_model("dcn", schema, {"hidden_units": "16,8", "dropout": None, "embed_size": 2})
    assert model.dnn.hidden_units == (16, 8) and ignored == []
    model, _ = build_torch_model("autoint", schema, {"use_dnn": True, "embed_size": 2})  # explicit values win
    assert model.dnn is not None


@pytest.mark.parametrize(
    "name, hparams, param",
    [
        ("deepfm", {"dropout": -0.1}, "dropout"),
        ("dcn", {"cross_layers": 0}, "cross_layers"),
        ("dnn", {"hidden_units": ()}, "hidden_units"),
        ("fm", {"embed_size": 0}, "embed_size"),
        ("ffm", {"embed_size": 2.5}, "embed_size"),
        ("xdeepfm", {"cin_layer_units": ()}, "cin_layer_units"),
        ("xdeepfm", {"cin_layer_units": (5, 4)}, "cin_layer_units"),
        ("autoint", {"num_heads": 0}, "num_heads"),
        ("autoint", {"dropout": 2.0}, "dropout"),
        ("afm", {"attention_factor": -1}, "attention_factor"),
        ("afm", {"embed_init_std": 0.0}, "embed_init_std"),
        ("afm", {"fm_start": "yes"}, "fm_start"),
        ("dnn", {"activation": "nonsense"}, "activation"),
        ("dnn", {"batch_norm": "maybe"}, "batch_norm"),
    ],
)
def test_invalid_hparams_raise_config_error(name, hparams, param):
    with pytest.raises(ConfigError, match=param):
        build_torch_model(name, sparse_schema(), hparams)


def test_registry_does_not_import_torch():
    code = "import sys, ctrkit.registry as r; r.get_model_info('deepfm'); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
