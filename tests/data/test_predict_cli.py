"""``ctrkit predict`` as a batch scorer (issue 11): gzip, stdin, Parquet, ``--out -``, ``--id``,
malformed rows skipped and reported (or ``--strict``), and the out-of-vocabulary shift warning.

One small LR model is trained on the first 3000 of 4000 synthetic Criteo rows; the 1000 others
are the rows scored (same distribution, none seen in training). The shift warning is also tried
on real rows: Terabyte day 0 scored with a model trained on the Kaggle rows (../shared).
"""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from conftest import shared_file
from _train_helpers import run_in_process as ctrkit
from ctrkit.cli import main
from ctrkit.data.criteo import LABELED_COLUMNS
from ctrkit.data.encoder import ENCODER_FILE, OOV_RECORD_KEY, load_encoder
from ctrkit.data.store import Store

ROOT = Path(__file__).resolve().parents[2]
TRAIN_ROWS, NEW_ROWS = 3000, 1000


def train_lr(store: Path, save_dir: Path) -> None:
    from ctrkit.config import TrainConfig
    from ctrkit.pytorch.trainer import train_from_config

    train_from_config(TrainConfig(model="lr", data=str(store), epochs=1, batch_size=256, threads=1, model_save_dir=str(save_dir)))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """``train.tsv`` (3000 rows), its store and an LR run directory; ``new.tsv`` (1000 unseen rows) and its scores."""
    from ctrkit.data.synthetic import write_synthetic_criteo

    root = tmp_path_factory.mktemp("predict_cli")
    write_synthetic_criteo(root / "all.tsv", TRAIN_ROWS + NEW_ROWS, seed=1)
    lines = (root / "all.tsv").read_bytes().splitlines(keepends=True)
    (root / "train.tsv").write_bytes(b"".join(lines[:TRAIN_ROWS]))
    (root / "new.tsv").write_bytes(b"".join(lines[TRAIN_ROWS:]))
    assert main(["preprocess", "criteo", str(root / "train.tsv"), "--out", str(root / "store.lmdb"), "--min-count", "2"]) == 0
    train_lr(root / "store.lmdb", root / "run")
    assert main(["predict", str(root / "run"), str(root / "new.tsv"), "--out", str(root / "new.scores")]) == 0
    return root


@pytest.fixture
def scores(run) -> np.ndarray:
    values = np.loadtxt(run / "new.scores")
    assert values.shape == (NEW_ROWS,) and ((values > 0) & (values < 1)).all()
    return values


def damaged(run: Path, tmp_path: Path, name: str = "bad.tsv") -> Path:
    """``new.tsv`` with line 5's I1 not an integer and line 9 cut short."""
    lines = (run / "new.tsv").read_text().splitlines()
    fields = lines[4].split("\t")
    fields[1] = "x7"
    lines[4] = "\t".join(fields)
    lines[8] = "0\t1"
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


# ---------------------------------------------------------------------------------------------
# Inputs: gzip (by content), stdin, Parquet
# ---------------------------------------------------------------------------------------------
def test_gzip_is_read_by_its_magic_bytes(capsys, run, tmp_path, scores):
    data = (run / "new.tsv").read_bytes()
    half = data.index(b"\n", len(data) // 2) + 1
    inputs = {
        "new.tsv.gz": gzip.compress(data),
        "disguised.tsv": gzip.compress(data),  # no .gz suffix: recognised by its content
        "members.tsv.gz": gzip.compress(data[:half]) + gzip.compress(data[half:]),  # like `cat a.gz b.gz`
    }
    for name, content in inputs.items():
        (tmp_path / name).write_bytes(content)
        code, out, err = ctrkit(capsys, "predict", run / "run", tmp_path / name, "--out", tmp_path / f"{name}.scores")
        assert code == 0, err
        np.testing.assert_array_equal(np.loadtxt(tmp_path / f"{name}.scores"), scores)
    (tmp_path / "cut.gz").write_bytes(gzip.compress(data)[:-100])  # a truncated download
    code, _, err = ctrkit(capsys, "predict", run / "run", tmp_path / "cut.gz", "--out", tmp_path / "cut.scores")
    assert code == 2 and "cut.gz" in err and "gzip" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "cut.scores").exists()


def test_stdin_in_blocks_keeps_line_numbers(capsys, monkeypatch, run, tmp_path, scores):
    """Plain text on stdin, read in blocks much smaller than the input: same scores, bad rows named
    ``<stdin>:line``, nan where they were."""
    from ctrkit.commands.evaluate import load_trainer
    from ctrkit.commands.predict import score_file

    bad = damaged(run, tmp_path)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(bad.read_bytes())))
    trainer = load_trainer(str(run / "run"), {"gpu_ids": [], "eval_batch_size": 64, "num_workers": 0, "threads": 1})
    result = score_file(trainer, load_encoder(run / "run"), "-", str(tmp_path / "out.scores"), batch_rows=7,
                        progress=False, block_bytes=4096)
    got = np.loadtxt(tmp_path / "out.scores")
    assert result.rows == NEW_ROWS - 2 and result.lines == NEW_ROWS
    assert np.isnan(got[[4, 8]]).all()
    keep = np.ones(NEW_ROWS, bool)
    keep[[4, 8]] = False
    np.testing.assert_allclose(got[keep], scores[keep], rtol=0, atol=1e-6)  # float32 sums in other batch sizes
    assert [(e["file"], e["line"], e["field"]) for e in result.bad_rows.examples] == [("<stdin>", 5, "I1"), ("<stdin>", 9, "*")]


def test_gzip_on_stdin_to_stdout(run, scores):
    """``zcat``-free piping: ``... | ctrkit predict RUN - --out -``, the scores on stdout, the summary on stderr."""
    command = [sys.executable, "-m", "ctrkit.cli", "predict", str(run / "run"), "-", "--out", "-"]
    proc = subprocess.run(command, input=gzip.compress((run / "new.tsv").read_bytes()), capture_output=True,
                          cwd=str(ROOT), timeout=300)
    err = proc.stderr.decode()
    assert proc.returncode == 0, err
    np.testing.assert_array_equal(np.loadtxt(io.BytesIO(proc.stdout)), scores)
    assert "wrote 1,000 probabilities to stdout" in err and "rows/s" in err


def test_parquet_rows_score_like_their_text(capsys, run, tmp_path, scores):
    frame = pl.read_csv(run / "new.tsv", separator="\t", has_header=False, new_columns=list(LABELED_COLUMNS),
                        infer_schema=False)
    frame.with_columns(pl.col("I1").cast(pl.Float64)).write_parquet(tmp_path / "new.parquet")  # numbers typed, too
    code, _, err = ctrkit(capsys, "predict", run / "run", tmp_path / "new.parquet", "--out", tmp_path / "p.scores")
    assert code == 0, err
    np.testing.assert_allclose(np.loadtxt(tmp_path / "p.scores"), scores, rtol=0, atol=1e-6)  # float32 sums in other batch sizes


# ---------------------------------------------------------------------------------------------
# Outputs: stdout, an id column
# ---------------------------------------------------------------------------------------------
def test_out_dash_writes_the_scores_to_stdout_and_the_summary_to_stderr(capsys, run, scores):
    code, out, err = ctrkit(capsys, "predict", run / "run", run / "new.tsv", "--out", "-", "--quiet")
    assert code == 0, err
    assert out == (run / "new.scores").read_text()
    assert err.startswith("wrote 1,000 probabilities to stdout in ") and err.rstrip().endswith("rows/s)")


def test_an_id_column_passes_through(capsys, run, tmp_path, scores):
    lines = (run / "new.tsv").read_text().splitlines()
    ids = [f"row-{i}" for i in range(NEW_ROWS)]
    ids[2] = 'with,comma "quoted"'
    fields = lines[6].split("\t")
    lines[6] = "\t".join([fields[0], "z", *fields[2:]])  # I1 = 'z': skipped
    header = "\t".join(["request_id", *LABELED_COLUMNS])
    raw = tmp_path / "with_ids.tsv"
    raw.write_text("\n".join([header] + [f"{i}\t{line}" for i, line in zip(ids, lines)]) + "\n")
    code, _, err = ctrkit(capsys, "predict", run / "run", raw, "--out", tmp_path / "ids.csv", "--id", "request_id")
    assert code == 0, err
    table = pl.read_csv(tmp_path / "ids.csv", schema={"request_id": pl.String, "probability": pl.Float64})
    keep = [i for i in range(NEW_ROWS) if i != 6]
    assert table.get_column("request_id").to_list() == [ids[i] for i in keep]  # the bad row is left out
    np.testing.assert_allclose(table.get_column("probability").to_numpy(), scores[keep], rtol=0, atol=1e-6)  # float32 sums in other batch sizes
    assert (tmp_path / "ids.csv").read_text().startswith("request_id,probability\n")
    assert "1 malformed rows skipped" in err and "with_ids.tsv:8 I1" in err and "left out of the output" in err

    code, _, err = ctrkit(capsys, "predict", run / "run", raw, "--out", tmp_path / "no.csv", "--id", "nope")
    assert code == 2 and "'nope'" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "no.csv").exists()


# ---------------------------------------------------------------------------------------------
# Malformed rows
# ---------------------------------------------------------------------------------------------
def test_bad_rows_are_skipped_and_reported_or_stop_the_job_with_strict(capsys, run, tmp_path, scores):
    bad = damaged(run, tmp_path)
    code, out, err = ctrkit(capsys, "predict", run / "run", bad, "--out", tmp_path / "s.txt", "--batch_size", "3")
    assert code == 0, err
    got = np.loadtxt(tmp_path / "s.txt")
    assert got.shape == (NEW_ROWS,) and np.isnan(got[[4, 8]]).all() and np.isfinite(np.delete(got, [4, 8])).all()
    np.testing.assert_allclose(np.delete(got, [4, 8]), np.delete(scores, [4, 8]), rtol=0, atol=1e-6)  # float32 sums in other batch sizes
    assert "2 malformed rows skipped (first: bad.tsv:5 I1: not an integer: 'x7'; bad.tsv:9 *: expected" in err
    assert "scored nan" in err and "wrote 998 probabilities" in out

    code, out, err = ctrkit(capsys, "predict", run / "run", bad, "--out", tmp_path / "strict.txt", "--strict")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"{bad}:5: field I1: not an integer" in err and "--strict" in err
    assert not (tmp_path / "strict.txt").exists()


# ---------------------------------------------------------------------------------------------
# Out-of-vocabulary shift
# ---------------------------------------------------------------------------------------------
def test_train_oov_shares_are_kept_and_rows_like_training_give_no_warning(capsys, run, tmp_path):
    kept = Store(run / "store.lmdb").meta["encoder"][OOV_RECORD_KEY]
    encoder = load_encoder(run / "run" / ENCODER_FILE)
    assert encoder.train_oov == kept and kept["rows"] == Store(run / "store.lmdb").splits["train"].rows
    shares = kept["features"]
    assert set(shares) == {f"I{i}" for i in range(1, 14)} | {f"C{i}" for i in range(1, 27)}
    assert 0 < sum(shares.values()) / len(shares) < 0.5  # min-count 2 on 3000 rows: rare values are OOV in train too

    code, _, err = ctrkit(capsys, "predict", run / "run", run / "new.tsv", "--out", tmp_path / "s.txt")
    assert code == 0 and "warning" not in err, err

    # rows of another distribution (another seed draws other category values): a warning naming features
    from ctrkit.data.synthetic import write_synthetic_criteo

    write_synthetic_criteo(tmp_path / "other.tsv", 500, seed=7)
    code, _, err = ctrkit(capsys, "predict", run / "run", tmp_path / "other.tsv", "--out", tmp_path / "o.txt")
    assert code == 0 and "warning:" in err and "out of vocabulary" in err and "most changed: C" in err, err


def test_an_encoder_without_oov_shares_gives_no_warning(capsys, run, tmp_path):
    """Encoders written before the shares were kept: no warning, no crash."""
    old = tmp_path / "old_run"
    old.mkdir()
    (old / "best.pt").write_bytes((run / "run" / "best.pt").read_bytes())
    with np.load(run / "run" / ENCODER_FILE, allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    record = json.loads(arrays["__record__"].tobytes().decode())
    del record[OOV_RECORD_KEY]
    arrays["__record__"] = np.frombuffer(json.dumps(record).encode(), dtype=np.uint8)
    np.savez(old / ENCODER_FILE, **arrays)
    assert load_encoder(old / ENCODER_FILE).train_oov is None

    from ctrkit.data.synthetic import write_synthetic_criteo

    write_synthetic_criteo(tmp_path / "other.tsv", 500, seed=7)
    code, _, err = ctrkit(capsys, "predict", old / "best.pt", tmp_path / "other.tsv", "--out", tmp_path / "o.txt")
    assert code == 0 and "warning" not in err, err
    assert np.loadtxt(tmp_path / "o.txt").shape == (500,)


def test_terabyte_rows_scored_by_a_kaggle_model_warn_of_the_shift(capsys, tmp_path):
    kaggle, terabyte = shared_file("criteo/kaggle_train_head10k.tsv"), shared_file("criteo/hillview_criteo1tb_day0_head1000.tsv")
    kaggle_test = shared_file("criteo/kaggle_test_head10k_unlabeled.tsv")
    assert main(["preprocess", "criteo", str(kaggle), "--out", str(tmp_path / "k.lmdb")]) == 0
    train_lr(tmp_path / "k.lmdb", tmp_path / "run")
    capsys.readouterr()

    code, _, err = ctrkit(capsys, "predict", tmp_path / "run", terabyte, "--out", tmp_path / "tb.txt")
    assert code == 0, err
    warning = [line for line in err.splitlines() if "warning:" in line]
    assert len(warning) == 1 and "out of vocabulary" in warning[0] and "most changed: C" in warning[0], err
    assert np.loadtxt(tmp_path / "tb.txt").shape == (1000,)

    code, _, err = ctrkit(capsys, "predict", tmp_path / "run", kaggle_test, "--out", tmp_path / "kt.txt")
    assert code == 0 and "warning" not in err, err  # the Kaggle test days: same hashing, no shift


@pytest.mark.parametrize("content, message", [
    (b"", "<stdin>: no input (empty)"),
    (b"PAR1\x00\x00binary", "<stdin>: is Parquet; give it as a file path"),
    (gzip.compress(b""), "<stdin>: no data"),
])
def test_unusable_stdin_is_one_line(capsys, monkeypatch, run, tmp_path, content, message):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(content)))
    code, _, err = ctrkit(capsys, "predict", run / "run", "-", "--out", tmp_path / "s.txt")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "s.txt").exists()


def test_a_number_column_passes_through_as_written(capsys, run, tmp_path, scores):
    """``--id I2``: a column the model reads as a number comes out as the integer it was."""
    code, _, err = ctrkit(capsys, "predict", run / "run", run / "new.tsv", "--out", tmp_path / "i.csv", "--id", "I2")
    assert code == 0, err
    table = pl.read_csv(tmp_path / "i.csv", schema={"I2": pl.String, "probability": pl.Float64})
    raw = [line.split("\t")[2] for line in (run / "new.tsv").read_text().splitlines()]
    assert table.get_column("I2").fill_null("").to_list() == raw
    np.testing.assert_allclose(table.get_column("probability").to_numpy(), scores, rtol=0, atol=1e-6)


def test_the_progress_bar_goes_to_stderr_only_when_asked_or_on_a_terminal(capsys, run, tmp_path):
    from ctrkit.commands.evaluate import load_trainer
    from ctrkit.commands.predict import score_file

    trainer = load_trainer(str(run / "run"), {"gpu_ids": [], "eval_batch_size": 512, "num_workers": 0, "threads": 1})
    encoder = load_encoder(run / "run")
    score_file(trainer, encoder, str(run / "new.tsv"), "-", progress=True)
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == NEW_ROWS and "predict" in err and "1,000 rows" in err
    score_file(trainer, encoder, str(run / "new.tsv"), "-", progress=None)  # stderr is no terminal here
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == NEW_ROWS and err == ""


@pytest.mark.slow
def test_an_export_bundle_scores_as_its_checkpoint(capsys, run, scores, tmp_path):
    pytest.importorskip("onnxruntime")
    bundle = tmp_path / "bundle"
    assert ctrkit(capsys, "export", run / "run", "--format", "onnx", "--out", bundle)[0] == 0
    out = tmp_path / "bundle.scores"
    code, _, err = ctrkit(capsys, "predict", bundle, run / "new.tsv", "--out", out)
    assert code == 0, err
    np.testing.assert_allclose(np.loadtxt(out), scores, rtol=0, atol=1e-6)
    code, _, err = ctrkit(capsys, "predict", bundle, run / "new.tsv", "--out", out, "--data", run / "store.lmdb")
    assert code == 2 and "is an export bundle" in err and "--data" in err
