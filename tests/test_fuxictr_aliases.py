"""FuxiCTR's option names in ``--config`` files and ``ctrkit.train`` keywords (ctrkit/fuxictr.py)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _train_helpers import build_store  # noqa: E402

from ctrkit.cli import main  # noqa: E402
from ctrkit.config import TrainConfig, add_train_arguments  # noqa: E402
from ctrkit.errors import ConfigError  # noqa: E402

#: a FuxiCTR model_config.yaml as its model zoo writes them: a Base section and one experiment
BASE = """\
Base:
    model_root: './checkpoints/'
    num_workers: 0
    verbose: 1
    early_stop_patience: 3
    pickle_feature_encoder: True
    save_best_only: True
    eval_steps: null
    debug_mode: False
    group_id: null
    use_features: null
    feature_specs: null
    feature_config: null
"""
DEEPFM = BASE + """
DeepFM_test:
    model: DeepFM
    dataset_id: tiny_h5
    loss: 'binary_crossentropy'
    metrics: ['logloss', 'AUC']
    task: binary_classification
    optimizer: adam
    hidden_units: [64, 32]
    hidden_activations: relu
    net_regularizer: 0
    embedding_regularizer: 1.e-8
    learning_rate: 1.e-3
    batch_norm: False
    net_dropout: 0.2
    batch_size: 128
    embedding_dim: 4
    epochs: 1
    shuffle: True
    seed: 2019
    monitor: 'AUC'
    monitor_mode: 'max'
"""
DCN = BASE + """
DCN_test:
    model: DCN
    dataset_id: tiny_parquet
    loss: 'binary_crossentropy'
    metrics: ['logloss', 'AUC']
    task: binary_classification
    optimizer: adam
    learning_rate: 3.0e-3
    embedding_regularizer: 1.e-8
    net_regularizer: 0
    batch_size: 250
    embedding_dim: 4
    dnn_hidden_units: [16, 8]
    dnn_activations: relu
    num_cross_layers: 2
    net_dropout: 0
    batch_norm: False
    epochs: 1
    shuffle: True
    seed: 2019
    monitor: {'AUC': 1}
    monitor_mode: 'max'
"""


def parse(*argv: str, note=None) -> TrainConfig:
    parser = add_train_arguments(argparse.ArgumentParser())
    return TrainConfig.from_args(parser.parse_args(list(argv)), note=note)


def write(tmp_path: Path, text: str, name: str = "model_config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_fuxictr_deepfm_experiment_reads_as_ctrkit_options(tmp_path):
    path = write(tmp_path, DEEPFM)
    notes: list[str] = []
    cfg = parse("--config", str(path), "--data", "s", note=notes.append)
    assert (cfg.model, cfg.embed_size, cfg.hidden_units, cfg.dropout, cfg.batch_norm) == ("deepfm", 4, [64, 32], 0.2,
                                                                                          False)
    assert (cfg.lr, cfg.embedding_l2, cfg.weight_decay, cfg.optimizer, cfg.loss) == (1e-3, 1e-8, 0.0, "Adam", "BCE")
    assert (cfg.batch_size, cfg.epochs, cfg.seed, cfg.monitor, cfg.patience) == (128, 1, 2019, "auc", 3)
    assert cfg.model_args == {"activation": "relu"}
    assert cfg.model_save_dir == "./checkpoints/DeepFM_test"  # model_root / the experiment id
    # two note lines: what was renamed (naming ctrkit's option) and what needs nothing
    assert len(notes) == 2 and all(line.startswith(f"--config {path}: ") for line in notes)
    assert "embedding_dim → embed_size" in notes[0] and "net_dropout → dropout" in notes[0]
    assert "embedding_regularizer → embedding_l2" in notes[0] and "learning_rate → lr" in notes[0]
    assert "hidden_activations → --model_args activation=relu" in notes[0]
    assert "verbose" in notes[1] and "shuffle" in notes[1] and "dataset_id" in notes[1]
    # flags still win over the file
    assert parse("--config", str(path), "--data", "s", "--embed_size", "8", note=notes.append).embed_size == 8


def test_notes_go_to_stderr_and_a_fuxictr_dcn_file_trains(tmp_path, capsys):
    store = build_store(tmp_path / "store.lmdb")
    path = write(tmp_path, DCN)
    save_dir = tmp_path / "dcn"
    code = main(["train", "--config", str(path), "--data", str(store.path), "--model_save_dir", str(save_dir),
                 "--threads", "1"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "note: " in err and "num_cross_layers → cross_layers" in err and "dnn_hidden_units → hidden_units" in err
    metrics = json.loads((save_dir / "metrics.json").read_text())
    assert metrics["model"] == "dcn"
    hparams = metrics["hparams"]
    assert (hparams["embed_size"], hparams["cross_layers"], hparams["hidden_units"]) == (4, 2, [16, 8])
    assert "test auc" in out


def test_a_conflicting_pair_names_both_keys(tmp_path):
    path = write(tmp_path, "model: deepfm\nembedding_dim: 4\nembed_size: 8\n", "run.yaml")
    with pytest.raises(ConfigError) as info:
        parse("--config", str(path), "--data", "s")
    message = str(info.value)
    assert message.startswith(f"--config {path}: ") and "embed_size: 8" in message and "embedding_dim: 4" in message
    # the same value twice is no conflict
    path = write(tmp_path, "model: deepfm\nembedding_dim: 4\nembed_size: 4\nnet_dropout: 0.1\n", "same.yaml")
    assert parse("--config", str(path), "--data", "s", note=lambda _: None).embed_size == 4


@pytest.mark.parametrize("line, message", [
    ("embedding_initializer: 'partial(nn.init.xavier_normal_)'",
     "unknown option 'embedding_initializer' (FuxiCTR's) with 'partial(nn.init.xavier_normal_)'; ctrkit: --init"),
    ("din_sequence_field: click_sequence", "unknown option 'din_sequence_field' (FuxiCTR's); ctrkit: the store's"),
    ("reduce_lr_on_plateau: True", "ctrkit: --lr_patience N and --lr_factor F"),
    ("monitor: {'AUC': 1, 'logloss': -1}", "weighted sum of metrics) has no ctrkit equivalent; ctrkit: --monitor"),
    ("monitor_mode: min", "monitor_mode 'min' contradicts monitor 'auc'"),
    ("shuffle: False", "shuffle: False (FuxiCTR's) has no ctrkit equivalent; ctrkit: ctrkit always shuffles"),
    ("task: regression", "ctrkit trains binary click models only"),
    ("net_regularizer: 'l1(1.e-5)'", "(FuxiCTR's L1) has no ctrkit equivalent; ctrkit: an L2"),
    ("epoch: 3", "unknown option(s) epoch (did you mean epochs?)"),
    ("enable_sum_pooling: False", "unknown option 'enable_sum_pooling' (FuxiCTR's); ctrkit: --model_args behaviour_sum"),
])
def test_a_key_without_ctrkit_equivalent_names_the_ctrkit_option(tmp_path, line, message):
    path = write(tmp_path, f"model: deepfm\n{line}\n", "run.yaml")
    with pytest.raises(ConfigError) as info:
        parse("--config", str(path), "--data", "s")
    assert str(info.value).startswith(f"--config {path}: ") and message in str(info.value), str(info.value)


def test_values_in_fuxictrs_form(tmp_path):
    path = write(tmp_path, "model: fm\nregularizer: 'l2(1.e-5)'\ngpu: -1\nmonitor: {'logloss': -1}\n"
                           "monitor_mode: min\nembedding_initializer: 'partial(nn.init.normal_, std=1e-4)'\n",
                 "run.yaml")
    cfg = parse("--config", str(path), "--data", "s", note=lambda _: None)
    assert (cfg.embedding_l2, cfg.weight_decay, cfg.gpu_ids, cfg.monitor) == (1e-5, 1e-5, [], "logloss")


def test_model_dependent_keys(tmp_path):
    autoint = write(tmp_path, BASE + "\nAutoInt_test:\n    model: AutoInt\n    embedding_dim: 8\n"
                                     "    dnn_hidden_units: [32]\n    attention_dim: 40\n    num_heads: 2\n"
                                     "    use_residual: True\n    use_scale: False\n    use_wide: False\n"
                                     "    layer_norm: False\n", "autoint.yaml")
    cfg = parse("--config", str(autoint), "--data", "s", note=lambda _: None)
    # FuxiCTR's AutoInt with a DNN is AutoInt+; its attention_dim is all heads together, ctrkit's one head
    assert (cfg.model, cfg.attention_dim, cfg.num_heads, cfg.hidden_units) == ("autoint+", 20, 2, [32])
    assert cfg.model_args == {"use_residual": True, "scaled_attention": False}
    afm = write(tmp_path, "AFM_test:\n    model: AFM\n    attention_dim: 8\n    attention_dropout: [0, 0]\n"
                          "    use_attention: True\n", "afm.yaml")
    cfg = parse("--config", str(afm), "--data", "s", note=lambda _: None)
    assert (cfg.model, cfg.attention_factor, cfg.attention_dim) == ("afm", 8, None)
    # a ctrkit file keeps ctrkit's meaning
    plain = write(tmp_path, "model: autoint\nattention_dim: 40\nnum_heads: 2\n", "plain.yaml")
    assert parse("--config", str(plain), "--data", "s").attention_dim == 40


def test_a_file_with_several_experiments_names_them(tmp_path):
    path = write(tmp_path, DEEPFM + DCN.replace(BASE, ""))
    with pytest.raises(ConfigError, match=r"2 experiments \(DeepFM_test, DCN_test\); ctrkit runs one"):
        parse("--config", str(path), "--data", "s")


def test_python_api_takes_fuxictr_keywords(tmp_path, capsys):
    import ctrkit

    store = build_store(tmp_path / "store.lmdb")
    run = ctrkit.train("lr", store, learning_rate=0.01, early_stop_patience=1, epochs=1, batch_size=500,
                       threads=1, model_save_dir=str(tmp_path / "lr"))
    assert (run.config.lr, run.config.patience) == (0.01, 1)
    assert "ctrkit.train: FuxiCTR's names read as ctrkit's: learning_rate → lr" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"ctrkit.train: unknown option\(s\) dataset_root"):
        ctrkit.train("lr", store, dataset_root="x", model_save_dir=str(tmp_path / "x"))
    with pytest.raises(ConfigError, match="ctrkit.train: embed_size: 4 and embedding_dim: 8 set the same option"):
        ctrkit.train("fm", store, embed_size=4, embedding_dim=8, model_save_dir=str(tmp_path / "x"))
    assert not (tmp_path / "x").exists()


def test_fuxictr_names_as_flags():
    notes: list[str] = []
    cfg = parse("--model", "autoint", "--data", "s", "--embedding_dim", "8", "--learning_rate", "0.01",
                "--attention_dim", "32", "--net_regularizer", "1e-5", note=notes.append)
    # on the command line attention_dim keeps ctrkit's meaning (per head), even beside FuxiCTR's names
    assert (cfg.embed_size, cfg.lr, cfg.attention_dim, cfg.weight_decay) == (8, 0.01, 32, 1e-5)
    assert notes == ["the command line: FuxiCTR's names read as ctrkit's: embedding_dim → embed_size, "
                     "learning_rate → lr, net_regularizer → weight_decay"]
    with pytest.raises(ConfigError, match="the command line: embed_size: '8' and embedding_dim: '4' set the same "
                                          r"option \(embed_size\); keep one"):
        parse("--model", "deepfm", "--data", "s", "--embedding_dim", "4", "--embed_size", "8")


def test_fuxictr_flags_stay_out_of_the_help(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "--embed_size" in out and "--embedding_dim" not in out and "--learning_rate" not in out
