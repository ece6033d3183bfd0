"""TrainConfig: YAML + CLI precedence and a ConfigError naming the flag for every bad value."""

from __future__ import annotations

import argparse

import pytest

from ctrkit.config import MODEL_HPARAMS, TrainConfig, add_train_arguments
from ctrkit.errors import ConfigError
from ctrkit.registry import MODELS

BASE = ["--model", "deepfm", "--data", "store.lmdb"]


def parse(*argv: str) -> TrainConfig:
    parser = add_train_arguments(argparse.ArgumentParser())
    return TrainConfig.from_args(parser.parse_args(list(argv)))


def test_defaults_and_original_flags():
    cfg = parse(*BASE)
    assert (cfg.model, cfg.data, cfg.framework) == ("deepfm", "store.lmdb", "torch")
    assert (cfg.epochs, cfg.batch_size, cfg.optimizer, cfg.loss, cfg.lr) == (100, 4096, "Adam", "BCE", 1e-3)
    assert cfg.gpu_ids == [] and cfg.world_size == 1
    assert cfg.model_save_dir.endswith("deepfm")
    assert cfg.hparams() == {}  # model defaults apply

    cfg = parse(
        "--model", "DeepFM", "--framework", "torch", "--data", "s", "--epochs", "3", "--batch_size", "2048",
        "--optimizer", "adamw", "--loss", "bce", "--gpu_ids", "", "--lr", "0.01", "--embed_size", "8",
        "--model_save_dir", "./checkpoints/DeepFM/",
    )
    assert (cfg.model, cfg.optimizer, cfg.loss, cfg.epochs, cfg.batch_size) == ("deepfm", "AdamW", "BCE", 3, 2048)
    assert cfg.lr == 0.01 and cfg.embed_size == 8 and cfg.model_save_dir == "./checkpoints/DeepFM/"


def test_model_hparams_and_model_args():
    cfg = parse(*BASE, "--hidden_units", "400,400,400", "--dropout", "0.2", "--batch_norm", "--cross_layers", "2",
                "--cin_layer_units", "16,16", "--num_heads", "2", "--attention_dim", "8", "--attention_layers", "3",
                "--attention_factor", "4", "--model_args", "use_residual=false,activation=gelu,scale=0.5")
    assert cfg.hparams() == {
        "hidden_units": [400, 400, 400], "dropout": 0.2, "batch_norm": True, "cross_layers": 2,
        "cin_layer_units": [16, 16], "num_heads": 2, "attention_dim": 8, "attention_layers": 3,
        "attention_factor": 4, "use_residual": False, "activation": "gelu", "scale": 0.5,
    }
    assert parse(*BASE, "--hidden_units", "").hidden_units == []


def test_gpu_ids_parsing_and_world_size():
    assert parse(*BASE, "--gpu_ids", "1,2,3,4").gpu_ids == [1, 2, 3, 4]
    assert parse(*BASE, "--gpu_ids", "1,2,3,4").world_size == 4
    assert parse(*BASE, "--gpu_ids", "0").world_size == 1
    assert parse(*BASE, "--cpu_processes", "2", "--batch_size", "64").world_size == 2


def test_yaml_then_cli_precedence(tmp_path):
    run = tmp_path / "run.yaml"
    run.write_text(
        "model: dcn\ndata: from_yaml.lmdb\nepochs: 7\nlr: 0.05\nbatch-size: 512\nhidden_units: [64, 32]\n"
        "gpu_ids: ''\nbatch_norm: true\nmodel_args: {use_bn_in_cross: false}\n"
    )
    cfg = parse("--config", str(run))
    assert (cfg.model, cfg.data, cfg.epochs, cfg.lr, cfg.batch_size) == ("dcn", "from_yaml.lmdb", 7, 0.05, 512)
    assert cfg.hidden_units == [64, 32] and cfg.batch_norm is True
    assert cfg.model_args == {"use_bn_in_cross": False}
    # flags given on the command line win; flags not given leave the YAML values alone
    cfg = parse("--config", str(run), "--lr", "0.2", "--no-batch_norm", "--model", "deepfm")
    assert (cfg.lr, cfg.batch_norm, cfg.model, cfg.epochs, cfg.batch_size) == (0.2, False, "deepfm", 7, 512)


def test_yaml_unknown_keys_name_the_keys_and_file(tmp_path):
    run = tmp_path / "run.yaml"
    run.write_text("model: deepfm\nlearning_speed: 0.1\nepoch: 3\n")
    with pytest.raises(ConfigError) as info:
        parse("--config", str(run))
    message = str(info.value)
    assert "learning_speed" in message and "epoch (did you mean epochs?)" in message and str(run) in message


@pytest.mark.parametrize("text", ["- a\n- b\n", "model: [unclosed\n"])
def test_yaml_bad_file(tmp_path, text):
    run = tmp_path / "run.yaml"
    run.write_text(text)
    with pytest.raises(ConfigError, match="--config"):
        parse("--config", str(run))


def test_missing_yaml_file(tmp_path):
    with pytest.raises(ConfigError, match="--config .*no such file"):
        parse("--config", str(tmp_path / "absent.yaml"))


@pytest.mark.parametrize("content, message", [
    (b"model: deepfm\x00\x01\x02", "is a binary file (a NUL byte at offset 13)"),
    (b"model: deepfm\nlr: \xff\n", "is not UTF-8 text (byte 0xff on line 2)"),
])
def test_binary_or_non_utf8_yaml_file(tmp_path, content, message):
    run = tmp_path / "run.yaml"
    run.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        parse("--config", str(run))
    assert str(info.value).startswith(f"--config {run}: ") and message in str(info.value)


def test_overwrite_flag_and_yaml_key(tmp_path):
    assert parse(*BASE).overwrite is False
    assert parse(*BASE, "--overwrite").overwrite is True
    run = tmp_path / "run.yaml"
    run.write_text("overwrite: yes\n")
    assert parse(*BASE, "--config", str(run)).overwrite is True
    assert parse(*BASE, "--config", str(run), "--no-overwrite").overwrite is False
    with pytest.raises(ConfigError, match="--resume and --overwrite exclude each other"):
        parse(*BASE, "--resume", "--overwrite")


BAD_FLAGS = [
    (["--lr", "-1"], "--lr must be > 0, got -1"),
    (["--lr", "0"], "--lr must be > 0"),
    (["--lr", "fast"], "--lr must be a finite number"),
    (["--dropout", "1"], r"--dropout must be in \[0, 1\)"),
    (["--dropout", "-0.1"], r"--dropout must be in \[0, 1\)"),
    (["--hidden_units", "400,x"], "--hidden_units must be comma-separated positive integers"),
    (["--hidden_units", "400,0"], "--hidden_units must be comma-separated positive integers"),
    (["--cin_layer_units", "a"], "--cin_layer_units"),
    (["--optimizer", "rmsprop"], "--optimizer must be one of Adam, AdamW, Adagrad, SGD"),
    (["--loss", "mse"], "--loss must be one of BCE"),
    (["--framework", "jax"], "--framework must be one of torch, tf"),
    (["--precision", "fp16"], "--precision must be one of fp32, bf16"),
    (["--init", "he"], "--init must be one of xavier_normal, torch_default"),
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--epochs", "2.5"], "--epochs must be an integer"),
    (["--batch_size", "0"], "--batch_size must be >= 1"),
    (["--embed_size", "0"], "--embed_size must be > 0, got 0"),
    (["--weight_decay=-1e-5"], "--weight_decay must be >= 0"),
    (["--embedding_l2", "-1"], "--embedding_l2 must be >= 0"),
    (["--patience", "-1"], "--patience must be >= 0"),
    (["--seed", "-3"], "--seed must be >= 0"),
    (["--num_workers", "-1"], "--num_workers must be >= 0"),
    (["--eval_batch_size", "-5"], "--eval_batch_size must be >= 0"),
    (["--checkpoint_every", "-1"], "--checkpoint_every must be >= 0"),
    (["--max_steps", "x"], "--max_steps must be an integer"),
    (["--log_every", "0"], "--log_every must be >= 1"),
    (["--cpu_processes", "-2"], "--cpu_processes must be >= 0"),
    (["--threads", "-1"], "--threads must be >= 0"),
    (["--cross_layers", "0"], "--cross_layers must be > 0, got 0"),
    (["--cross_layers", "-1"], "--cross_layers must be > 0, got -1"),
    (["--num_heads", "0"], "--num_heads must be > 0, got 0"),
    (["--attention_dim", "0"], "--attention_dim must be > 0, got 0"),
    (["--attention_layers", "0"], "--attention_layers must be > 0, got 0"),
    (["--attention_factor", "0"], "--attention_factor must be > 0, got 0"),
    (["--model", "dnn", "--hidden_units", ""], "--hidden_units must list at least one layer size for --model dnn"),
    (["--cin_layer_units", ""], "--cin_layer_units must list at least one layer size"),
    (["--cin_layer_units", "3,2"], "--cin_layer_units must be even except the last .*split_half.*, got 3,2"),
    (["--lr_factor", "1.5"], r"--lr_factor must be in \(0, 1\)"),
    (["--gpu_ids", "a,b"], "--gpu_ids must be comma-separated GPU numbers"),
    (["--gpu_ids", "1,1"], "--gpu_ids lists a GPU twice"),
    (["--gpu_ids", "0,1", "--cpu_processes", "2"], "--cpu_processes cannot be combined with --gpu_ids"),
    (["--gpu_ids", "0,1,2", "--batch_size", "100"], "--batch_size 100 must be divisible"),
    (["--cpu_processes", "3", "--batch_size", "100"], "--batch_size 100 must be divisible"),
    (["--model_args", "oops"], "--model_args must be key=value"),
    (["--model_args", "hidden_units=3"], "--model_args: hidden_units has its own flag"),
    (["--batch_norm", "--model", "nosuchmodel"], "--model: unknown model 'nosuchmodel'; known models: lr, dnn"),
]


@pytest.mark.parametrize("extra, message", BAD_FLAGS, ids=[" ".join(a) for a, _ in BAD_FLAGS])
def test_bad_flag_gives_config_error_naming_it(extra, message):
    with pytest.raises(ConfigError, match=message):
        parse(*BASE, *extra)


def test_framework_tf_is_accepted():
    """TensorFlow training exists (ctrkit/tensorflow/trainer.py): --framework tf (or its alias) validates."""
    pytest.importorskip("tensorflow")
    assert parse(*BASE, "--framework", "tf").framework == "tf"
    assert parse(*BASE, "--framework", "tensorflow").framework == "tf"


def test_model_is_required():
    with pytest.raises(ConfigError, match="--model is required"):
        parse("--data", "s")


def test_bad_yaml_value_names_the_flag(tmp_path):
    run = tmp_path / "run.yaml"
    run.write_text("model: deepfm\ndropout: 2\n")
    with pytest.raises(ConfigError, match=r"--dropout must be in \[0, 1\)"):
        parse("--config", str(run))


def test_to_dict_from_dict_round_trip():
    cfg = parse(*BASE, "--hidden_units", "8,4", "--gpu_ids", "", "--model_args", "use_residual=true")
    data = cfg.to_dict()
    for value in data.values():
        assert value is None or isinstance(value, (str, int, float, bool, list, dict))
    assert TrainConfig.from_dict(data) == cfg
    with pytest.raises(ConfigError, match="unknown training options: bogus"):
        TrainConfig.from_dict({**data, "bogus": 1})
    assert TrainConfig.from_dict({**data, "bogus": 1}, strict=False) == cfg


def test_python_construction_coerces():
    cfg = TrainConfig(model="autoint+", data="s", hidden_units="32,16", lr="0.5", gpu_ids=None).validate()
    assert cfg.model == "autoint+" and cfg.hidden_units == [32, 16] and cfg.lr == 0.5 and cfg.gpu_ids == []


# ---------------------------------------------------------------------------------------------
# The config's ranges are the models': the last value it accepts builds every model, the first
# value it refuses is refused by every model that takes the parameter.
# ---------------------------------------------------------------------------------------------
ALL = tuple(sorted(MODELS))
NOT_DNN = tuple(name for name in ALL if name != "dnn")

#: (flag, models, boundary value the config accepts, first value it refuses, the config's message)
BOUNDS = [
    ("embed_size", ALL, 1, 0, "--embed_size must be > 0, got 0"),
    ("cross_layers", ALL, 1, 0, "--cross_layers must be > 0, got 0"),
    ("attention_layers", ALL, 1, 0, "--attention_layers must be > 0, got 0"),
    ("num_heads", ALL, 1, 0, "--num_heads must be > 0, got 0"),
    ("attention_dim", ALL, 1, 0, "--attention_dim must be > 0, got 0"),
    ("attention_factor", ALL, 1, 0, "--attention_factor must be > 0, got 0"),
    ("dropout", ALL, 0.0, -0.01, r"--dropout must be in \[0, 1\), got -0.01"),
    ("dropout", ALL, 0.99, 1.0, r"--dropout must be in \[0, 1\), got 1.0"),
    ("batch_norm", ALL, True, "maybe", "--batch_norm must be true or false, got 'maybe'"),
    ("hidden_units", NOT_DNN, [], [0], "--hidden_units must be comma-separated positive integers"),
    ("hidden_units", ("dnn",), [1], [], r"--hidden_units must list at least one layer size for --model dnn, got \[\]"),
    ("cin_layer_units", ALL, [1], [], r"--cin_layer_units must list at least one layer size, got \[\]"),
    ("cin_layer_units", ALL, [2, 1], [1, 1], r"--cin_layer_units must be even except the last .*, got \[1, 1\]"),
    ("aux_loss_weight", ALL, 0.0, -0.01, "--aux_loss_weight must be >= 0, got -0.01"),
]
BOUND_IDS = [f"{flag}={accepted!r}|{rejected!r}-{'dnn' if models == ('dnn',) else 'all'}"
             for flag, models, accepted, rejected, _ in BOUNDS]


def tiny_schema():
    from ctrkit.schema import Field, Schema

    return Schema((Field("C1", "sparse", vocab_size=5), Field("C2", "sparse", vocab_size=7), Field("I1", "dense"),
                   Field("H", "sequence", max_len=3, shares="C2")))  # DIN and DIEN need a sequence


def test_bounds_cover_every_model_hparam():
    assert {flag for flag, *_ in BOUNDS} == set(MODEL_HPARAMS)


@pytest.mark.parametrize("flag, models, accepted, rejected, message", BOUNDS, ids=BOUND_IDS)
def test_hparam_boundary_accepted_by_config_builds_the_model(flag, models, accepted, rejected, message):
    from ctrkit.registry import build_torch_model

    schema = tiny_schema()
    for name in models:
        cfg = TrainConfig(model=name, data="s", **{flag: accepted}).validate()
        try:
            build_torch_model(name, schema, cfg.hparams())
        except ConfigError as exc:
            pytest.fail(f"the config accepts --{flag} {accepted!r} but model {name} refuses it: {exc}")


@pytest.mark.parametrize("flag, models, accepted, rejected, message", BOUNDS, ids=BOUND_IDS)
def test_hparam_first_rejected_value_is_refused_by_config_and_model(flag, models, accepted, rejected, message):
    from ctrkit.registry import build_torch_model

    schema = tiny_schema()
    for name in models:
        with pytest.raises(ConfigError, match=message):
            TrainConfig(model=name, data="s", **{flag: rejected}).validate()
        # ... and the config is not stricter than the model: a model that takes it refuses it too.
        try:
            _, ignored = build_torch_model(name, schema, {flag: rejected})
        except ConfigError:
            continue
        assert flag in ignored, f"model {name} builds with {flag}={rejected!r}, which the config refuses"


def test_odd_cin_layer_units_with_split_half_off():
    from ctrkit.registry import build_torch_model

    cfg = parse("--model", "xdeepfm", "--data", "s", "--cin_layer_units", "3,5", "--model_args", "split_half=false")
    assert cfg.cin_layer_units == [3, 5]
    model, ignored = build_torch_model("xdeepfm", tiny_schema(), cfg.hparams())
    assert ignored == [] and model.cin.layer_units == (3, 5)


def test_empty_hidden_units_builds_models_with_a_deep_term():
    from ctrkit.registry import build_torch_model

    for name in ("deepfm", "dcn", "xdeepfm", "autoint+"):
        cfg = parse("--model", name, "--data", "s", "--hidden_units", "")
        model, _ = build_torch_model(name, tiny_schema(), cfg.hparams())
        assert model.dnn.hidden_units == ()
