"""``ctrkit models``: default hyper-parameters per model, one model in detail, ``--json``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from _train_helpers import run_in_process as cli
from ctrkit.registry import MODELS, model_hparams, resolved_hparams


@pytest.mark.parametrize("name", sorted(MODELS))
def test_defaults_read_from_the_source_are_the_constructors(name):
    """model_hparams reads the source without importing torch; the built classes must agree."""
    pytest.importorskip("torch")
    shown = {h.name: h.default for h in model_hparams(name)}
    assert shown == resolved_hparams(name, framework="torch")


def test_the_list_shows_each_models_defaults(capsys):
    code, out, _ = cli(capsys, "models")
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 2 * len(MODELS)
    by_name = {lines[i].split()[0]: lines[i + 1] for i in range(0, len(lines), 2)}
    assert set(by_name) == set(MODELS)
    assert by_name["deepfm"].strip() == ("embed_size=16 hidden_units=[400, 400, 400] dropout=0.0 batch_norm=False "
                                         "activation=relu")
    assert "embed_size=4" in by_name["ffm"] and "cross_layers=3" in by_name["dcn"]
    assert "use_dnn=True" in by_name["autoint+"] and "use_dnn=False" in by_name["autoint"]
    assert by_name["lr"].strip() == "(no hyper-parameters)"
    assert lines[0].startswith("lr ") and "[torch, tf]" in lines[0]


def test_one_model_in_detail(capsys):
    code, out, _ = cli(capsys, "models", "deepfm")
    assert code == 0
    assert out.startswith("DeepFM (deepfm): Guo et al., DeepFM, IJCAI 2017\n")
    assert "frameworks: torch, tf" in out and "aliases: deep_fm" in out and "a Criteo store" in out
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("    ")}
    assert "--embed_size" in rows["embed_size=16"] and "embedding size" in rows["embed_size=16"]
    assert "--model_args activation=VALUE" in rows["activation=relu"]
    assert "DNN hidden layer sizes" in rows["hidden_units=[400,"]
    # --model is the same; DIN says it needs a sequence field
    assert cli(capsys, "models", "--model", "DeepFM")[1] == out
    code, out, _ = cli(capsys, "models", "din")
    assert code == 0 and "at least one sequence field" in out and "attention_activation=dice" in out
    code, out, _ = cli(capsys, "models", "autoint+")
    assert "fixed by --model autoint+" in out


def test_json(capsys):
    code, out, _ = cli(capsys, "models", "--json")
    assert code == 0
    listed = json.loads(out)
    assert [m["name"] for m in listed] == list(MODELS)
    dcn = next(m for m in listed if m["name"] == "dcn")
    assert {h["name"]: h["default"] for h in dcn["hparams"]}["hidden_units"] == [400, 400, 400]
    assert dcn["frameworks"] == ["torch", "tf"] and dcn["year"] == 2017
    code, out, _ = cli(capsys, "models", "dien", "--json")
    dien = json.loads(out)
    assert dien["name"] == "dien" and "sequence field" in dien["inputs"]
    weight = next(h for h in dien["hparams"] if h["name"] == "aux_loss_weight")
    assert weight == {"name": "aux_loss_weight", "default": 1.0, "flag": "--aux_loss_weight",
                      "meaning": weight["meaning"]} and weight["meaning"]


def test_unknown_or_contradicting_models_are_one_line_errors(capsys):
    code, _, err = cli(capsys, "models", "nosuch")
    assert code == 2 and err.strip().splitlines() == [
        "ctrkit models: error: unknown model 'nosuch'; known models: " + ", ".join(MODELS)]
    code, _, err = cli(capsys, "models", "deepfm", "--model", "dcn")
    assert code == 2 and "MODEL deepfm and --model dcn name different models" in err


def test_the_list_imports_no_framework():
    code = ("import sys; from ctrkit.cli import main; main(['models', '--json']); "
            "assert 'torch' not in sys.modules and 'tensorflow' not in sys.modules, 'imported a framework'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
