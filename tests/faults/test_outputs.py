"""Outputs outside the project's own files, disk full and bad paths (issue 7, items 7 and 13).

``predict``/``evaluate --out`` and ``synth`` used to write a temporary file and rename it over the
target, whatever the target was: as root, ``--out /dev/null`` replaced the device with a regular
file, ``--out -`` wrote a file named ``-`` and ``--out RAW.tsv`` destroyed the input. A full disk or
a bad path gave a traceback. Now a stream (``-``, a device, a FIFO) is written in place, an output
that is an input is refused before anything is read, and every failure is one line saying what
was kept.

The device tests use a fresh node for ``/dev/null`` made with ``mknod`` in a temporary directory,
never the real one, so a regression cannot damage the machine that runs them.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from _train_helpers import run_in_process as ctrkit
from ctrkit.cli import main
from ctrkit.errors import CtrkitError

ROOT = Path(__file__).resolve().parents[2]
ROWS = 3000


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, err


def debris(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".") and ".tmp-" in p.name)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Raw Criteo rows, the store built from them and a checkpoint trained on it (LR, one epoch)."""
    from ctrkit.data.synthetic import write_synthetic_criteo

    root = tmp_path_factory.mktemp("outputs")
    write_synthetic_criteo(root / "raw.tsv", ROWS, seed=1)
    assert main(["preprocess", "criteo", str(root / "raw.tsv"), "--out", str(root / "store.lmdb"),
                 "--min-count", "2", "--chunk-rows", "1000"]) in (0, None)
    # in a process of its own: training sets process-wide torch options (threads, determinism)
    trained = subprocess.run([sys.executable, "-m", "ctrkit.cli", "train", "--model", "lr", "--data",
                              str(root / "store.lmdb"), "--epochs", "1", "--batch_size", "512", "--threads", "1",
                              "--model_save_dir", str(root / "run")], capture_output=True, text=True, cwd=str(ROOT))
    assert trained.returncode == 0, trained.stderr
    return root


@pytest.fixture
def own_run(run, tmp_path):
    """A private copy of the raw rows, store and checkpoint, for tests that could destroy them."""
    copy = tmp_path / "own"
    copy.mkdir()
    shutil.copy(run / "raw.tsv", copy / "raw.tsv")
    shutil.copytree(run / "store.lmdb", copy / "store.lmdb")
    (copy / "run").mkdir()
    shutil.copy(run / "run" / "best.pt", copy / "run" / "best.pt")
    return copy


def predict_args(run: Path, out) -> list:
    return ["predict", run / "run", run / "raw.tsv", "--data", run / "store.lmdb", "--out", out]


def evaluate_args(run: Path, out) -> list:
    return ["evaluate", run / "run", "--data", run / "store.lmdb", "--out", out]


def synth_args(run: Path, out) -> list:
    return ["synth", "criteo", out, "--rows", "500", "--seed", "4"]


COMMANDS = {"predict": predict_args, "evaluate": evaluate_args, "synth": synth_args}


@pytest.fixture(scope="module")
def expected(run, tmp_path_factory):
    """What each command writes to a regular file (what a stream must receive, byte for byte)."""
    directory = tmp_path_factory.mktemp("expected")
    outputs = {}
    for name, args in COMMANDS.items():
        out = directory / f"{name}.out"
        assert main([str(a) for a in args(run, out)]) in (0, None)
        outputs[name] = out.read_bytes()
    return outputs


def null_device(directory: Path) -> Path:
    """A new character device equal to /dev/null (1, 3): a regression replaces this one, not /dev/null."""
    node = directory / "null"
    try:
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("creating a device node needs CAP_MKNOD (the test must not touch the real /dev/null)")
    return node


# ---------------------------------------------------------------------------------------------
# item 7: streams are written in place; an input is never an output
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_device_stays_a_device(capsys, run, tmp_path, command):
    device = null_device(tmp_path)
    code, _, err = ctrkit(capsys, *COMMANDS[command](run, device))
    assert code == 0, err
    assert stat.S_ISCHR(os.stat(device).st_mode), f"{command} replaced the device {device}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["null"]  # no temporary, no null.probs.npy


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_fifo_is_streamed_to_its_reader(capsys, run, tmp_path, expected, command):
    fifo = tmp_path / "scores.fifo"
    os.mkfifo(fifo)
    os.link(fifo, tmp_path / "same-fifo")  # to release the reader if the FIFO is renamed over
    received = []

    def read() -> None:
        with open(fifo, "rb") as handle:
            received.append(handle.read())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        code, _, err = ctrkit(capsys, *COMMANDS[command](run, fifo))
        assert code == 0, err
        reader.join(timeout=30)
        assert stat.S_ISFIFO(os.stat(fifo).st_mode), f"{command} replaced the FIFO"
        assert received == [expected[command]]
    finally:
        if reader.is_alive():
            os.close(os.open(tmp_path / "same-fifo", os.O_WRONLY | os.O_NONBLOCK))
            reader.join(timeout=5)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_dash_is_stdout_and_the_summary_goes_to_stderr(capsys, run, tmp_path, expected, monkeypatch, command):
    monkeypatch.chdir(tmp_path)  # where a file named "-" would appear
    code, out, err = ctrkit(capsys, *COMMANDS[command](run, "-"))
    assert code == 0, err
    assert out.encode() == expected[command]  # stdout holds the output and nothing else
    assert ("wrote" in err) if command != "evaluate" else ("auc" in err)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("which", ["raw", "checkpoint", "store"])
def test_predict_refuses_to_write_over_an_input(capsys, own_run, which):
    run = own_run
    target = {"raw": run / "raw.tsv", "checkpoint": run / "run" / "best.pt",
              "store": run / "store.lmdb" / "data.mdb"}[which]
    before = target.read_bytes()
    code, out, err = ctrkit(capsys, *predict_args(run, target))
    assert_one_line_error(code, err, "is also an input", str(target))
    assert target.read_bytes() == before and not out
    assert debris(target.parent) == []


def test_predict_refuses_an_input_reached_by_another_name(capsys, own_run, tmp_path):
    run = own_run
    alias = tmp_path / "alias.tsv"
    alias.symlink_to(run / "raw.tsv")
    before = (run / "raw.tsv").read_bytes()
    code, _, err = ctrkit(capsys, *predict_args(run, alias))
    assert_one_line_error(code, err, "is also an input")
    assert (run / "raw.tsv").read_bytes() == before and alias.is_symlink()


@pytest.mark.parametrize("which", ["checkpoint", "store"])
def test_evaluate_refuses_to_write_over_an_input(capsys, own_run, which):
    run = own_run
    target = {"checkpoint": run / "run" / "best.pt", "store": run / "store.lmdb" / "data.mdb"}[which]
    before = target.read_bytes()
    code, out, err = ctrkit(capsys, *evaluate_args(run, target))
    assert_one_line_error(code, err, "is also an input")
    assert target.read_bytes() == before and "auc" not in out  # refused before evaluating


def test_synth_refuses_probabilities_over_its_rows(capsys, tmp_path):
    out = tmp_path / "rows.tsv"
    out.write_text("keep me\n")
    code, _, err = ctrkit(capsys, "synth", "criteo", out, "--rows", "50", "--probs", out)
    assert_one_line_error(code, err, str(out))
    assert out.read_text() == "keep me\n" and debris(tmp_path) == []


def test_synth_to_a_stream_writes_probabilities_only_where_told(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = ctrkit(capsys, "synth", "criteo", "-", "--rows", "50", "--probs", tmp_path / "p.npy")
    assert code == 0, err
    assert len(out.splitlines()) == 50 and "p.npy" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.npy"]


# ---------------------------------------------------------------------------------------------
# item 13: bad paths and a full disk are one line that says what was kept
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_out_a_directory_or_under_a_missing_one(capsys, run, tmp_path, command):
    code, _, err = ctrkit(capsys, *COMMANDS[command](run, tmp_path))
    assert_one_line_error(code, err, "directory")
    code, _, err = ctrkit(capsys, *COMMANDS[command](run, tmp_path / "absent" / "out"))
    assert_one_line_error(code, err, "does not exist")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_out_under_a_file_or_in_proc(capsys, run, tmp_path, command):
    (tmp_path / "file").write_text("a file\n")
    code, _, err = ctrkit(capsys, *COMMANDS[command](run, tmp_path / "file" / "out"))
    assert_one_line_error(code, err, "not a directory")
    code, _, err = ctrkit(capsys, *COMMANDS[command](run, "/proc/ctrkit-out"))
    assert_one_line_error(code, err, "/proc/ctrkit-out")
    assert [p.name for p in tmp_path.iterdir()] == ["file"] and not os.path.exists("/proc/ctrkit-out")


def fill(directory: Path) -> None:
    """Fill ``directory``'s file system to the last byte."""
    free = os.statvfs(directory).f_bavail * os.statvfs(directory).f_frsize
    with open(directory / ".ballast", "wb") as handle:
        try:
            handle.write(b"\0" * free)
            handle.flush()
        except OSError:
            pass


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_disk_full_keeps_the_previous_output(capsys, run, full_disk, command):
    disk = full_disk(64)
    out = disk / "result"
    out.write_bytes(b"previous result\n")
    fill(disk)
    code, _, err = ctrkit(capsys, *COMMANDS[command](run, out))
    assert_one_line_error(code, err, "no space left on device", "unchanged", str(out))
    assert out.read_bytes() == b"previous result\n"
    assert debris(disk) == [] and not (disk / "result.probs.npy").exists()


def test_synth_disk_full_writes_neither_file(capsys, full_disk):
    disk = full_disk(64)  # the 3000 rows need ~700 KB
    out = disk / "rows.tsv"
    code, _, err = ctrkit(capsys, "synth", "criteo", out, "--rows", ROWS)
    assert_one_line_error(code, err, "no space left on device", "nothing was written")
    assert sorted(p.name for p in disk.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# cli: the last resort for file-system errors, exit codes, a closed pipe
# ---------------------------------------------------------------------------------------------
def test_an_unhandled_os_error_is_one_line(capsys, monkeypatch):
    from ctrkit.commands import models

    def disk_full(args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/x.bin")

    monkeypatch.setattr(models, "run", disk_full)
    code, _, err = ctrkit(capsys, "models")
    assert_one_line_error(code, err, "ctrkit models: error: no space left on device (/data/x.bin)")


def test_a_disk_full_error_of_another_layer_is_one_line(capsys, monkeypatch):
    from ctrkit.commands import models

    def torch_save_on_full_disk(args):
        raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing "
                           "file data/0: file write failed\nerrno 28")

    monkeypatch.setattr(models, "run", torch_save_on_full_disk)
    code, _, err = ctrkit(capsys, "models")
    assert_one_line_error(code, err, "no space left on device")


def test_other_exceptions_still_raise(capsys, monkeypatch):
    from ctrkit.commands import models

    def bug(args):
        raise ZeroDivisionError("a bug, not the user's fault")

    monkeypatch.setattr(models, "run", bug)
    with pytest.raises(ZeroDivisionError):
        main(["models"])


def test_an_error_chooses_its_exit_code(capsys, monkeypatch):
    from ctrkit.commands import models

    class Preempted(CtrkitError):
        exit_code = 143

    def preempted(args):
        raise Preempted("stopped by SIGTERM; last.pt written")

    monkeypatch.setattr(models, "run", preempted)
    code, _, err = ctrkit(capsys, "models")
    assert code == 143 and err.strip() == "ctrkit models: error: stopped by SIGTERM; last.pt written"


def test_a_closed_pipe_ends_quietly(run, tmp_path):
    """``ctrkit predict ... --out - | head -1``: no traceback when the reader goes away."""
    raw = tmp_path / "raw.tsv"
    raw.write_bytes((run / "raw.tsv").read_bytes() * 10)  # ~330 KB of scores: more than a pipe holds
    command = [sys.executable, "-m", "ctrkit.cli", "predict", str(run / "run"), str(raw),
               "--data", str(run / "store.lmdb"), "--out", "-", "--batch_size", "1000"]
    # cwd: where a regression would write a file named "-"
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(tmp_path))
    first = proc.stdout.readline()
    proc.stdout.close()  # the reader is gone: every later write gets EPIPE
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert 0 < float(first) < 1 and err == ""
    assert [p.name for p in tmp_path.iterdir()] == ["raw.tsv"]
