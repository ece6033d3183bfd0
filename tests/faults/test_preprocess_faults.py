"""Faults of ``ctrkit preprocess``: empty labels and other nulls, two runs on one ``--out``, debris
of killed runs, bad output paths and a full disk (issue 7, items 1, 4, 8 and 13)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ctrkit.cli import main
from ctrkit.data.criteo import CriteoOptions, CriteoParser, iter_raw_batches, preprocess_criteo
from ctrkit.data.rawtext import BadRows, Block
from ctrkit.data.store import Store
from ctrkit.data.synthetic import write_synthetic_criteo
from ctrkit.errors import InputError

REPO = Path(__file__).resolve().parents[2]
ALL_TRAIN = ["--split", "1:0:0", "--min-count", "1"]


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def damage(source: Path, target: Path, changes: dict[int, tuple[int, str]]) -> None:
    """Copy ``source`` to ``target`` with field ``column`` of 1-based line ``n`` set to ``value``."""
    lines = source.read_text().split("\n")
    for number, (column, value) in changes.items():
        fields = lines[number - 1].split("\t")
        fields[column] = value
        lines[number - 1] = "\t".join(fields)
    target.write_text("\n".join(lines))


def file_labels(path: Path, skip: set[int]) -> np.ndarray:
    lines = path.read_text().splitlines()
    return np.array([float(line.split("\t")[0]) for n, line in enumerate(lines, 1) if n not in skip], np.float32)


def cli(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ctrkit.cli", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=120, **kwargs)


def start_cli(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ctrkit.cli", *map(str, args)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition, process: subprocess.Popen, what: str, timeout: float = 60.0):
    """Poll ``condition`` every few ms while ``process`` runs; fail if it never holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if process.poll() is not None:
            pytest.fail(f"the process ended (rc {process.returncode}) before {what}: {process.stderr.read()}")
        time.sleep(0.005)
    process.kill()
    pytest.fail(f"timed out waiting for {what}")


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert lines[0].startswith("ctrkit preprocess: error: "), stderr
    return lines[0]


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def debris(directory: Path, name: str) -> list[str]:
    """Hidden siblings of target ``name`` other than its lock file (which stays by design)."""
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(f".{name}.") and p.name != f".{name}.lock")


@pytest.fixture(scope="module")
def big_raw(tmp_path_factory) -> Path:
    """200k synthetic rows (48 MB): a build long enough to be caught in the middle."""
    path = tmp_path_factory.mktemp("big") / "synth.tsv"
    write_synthetic_criteo(path, 200_000, seed=3)
    return path


@pytest.fixture(scope="module")
def small_raw(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("small") / "synth.tsv"
    write_synthetic_criteo(path, 3000, seed=1)
    return path


# ---------------------------------------------------------------------------------------------
# item 1: an empty label (or any null the strict reader makes of a bad field) is a malformed row
# ---------------------------------------------------------------------------------------------
BLANKED = (2, 4321, 10_000)


def test_empty_labels_in_real_rows_are_reported_and_skipped(kaggle_train, tmp_path, capsys):
    raw = tmp_path / "train.tsv"
    damage(kaggle_train, raw, {n: (0, "") for n in BLANKED})
    out = tmp_path / "s.lmdb"
    assert main(["preprocess", "criteo", str(raw), "--out", str(out), *ALL_TRAIN]) == 0
    assert "3 malformed rows skipped" in capsys.readouterr().out
    store = Store(out)
    labels = store.read_split("train")["label"]
    assert not np.isnan(labels).any()
    np.testing.assert_array_equal(labels, file_labels(raw, set(BLANKED)))
    examples = store.meta["bad_rows"]["examples"]
    assert [(e["line"], e["field"]) for e in examples] == [(n, "label") for n in BLANKED]
    assert all("empty field" in e["reason"] for e in examples)

    strict = tmp_path / "strict.lmdb"
    assert main(["preprocess", "criteo", str(raw), "--out", str(strict), "--strict"]) == 2
    message = one_error_line(capsys.readouterr().err)
    assert f"{raw}:2: field label: label is not 0 or 1: empty field" in message
    assert not strict.exists() and debris(tmp_path, "strict.lmdb") == []


SYNTH_DAMAGE = {  # line: (column, value, field, reason)
    10: (0, "", "label", "empty field"),
    700: (0, " ", "label", "label is not 0 or 1: ' '"),
    1500: (5, " ", "I5", "not an integer: ' '"),  # the strict reader makes a null of it, as of ""
    2200: (16, "  ", "C3", "not a hexadecimal hash"),
}


@pytest.mark.parametrize("block_bytes", [8 << 20, 3000], ids=["one-block", "small-blocks"])
def test_nulls_of_bad_fields_are_malformed_rows_on_every_path(small_raw, tmp_path, block_bytes):
    raw = tmp_path / "damaged.tsv"
    damage(small_raw, raw, {n: (c, v) for n, (c, v, _, _) in SYNTH_DAMAGE.items()})
    options = CriteoOptions(split=(1.0, 0.0, 0.0), min_count=1, block_bytes=block_bytes)
    result = preprocess_criteo([raw], tmp_path / "s.lmdb", options, progress=False)
    examples = result.bad_rows.examples
    assert [(e["line"], e["field"]) for e in examples] == [(n, f) for n, (_, _, f, _) in SYNTH_DAMAGE.items()]
    for example, (_, _, _, reason) in zip(examples, SYNTH_DAMAGE.values()):
        assert reason in example["reason"]
    np.testing.assert_array_equal(result.store.read_split("train")["label"], file_labels(raw, set(SYNTH_DAMAGE)))

    strict = CriteoOptions(split=(1.0, 0.0, 0.0), strict=True, block_bytes=block_bytes)
    with pytest.raises(InputError, match=f"{raw}:10: field label"):
        preprocess_criteo([raw], tmp_path / "strict.lmdb", strict, progress=False)
    with pytest.raises(InputError, match=f"{raw}:10: field label"):  # predict encodes raw rows too
        list(iter_raw_batches(raw, result.store))


@pytest.mark.parametrize("column, value", [
    (0, ""), (0, " "), (0, "\r"), (0, "1.0"), (0, "-1"), (0, "+1"), (0, "01"),
    (1, ""), (1, " "), (1, " 5"), (1, "\r"), (1, "+5"), (1, "5 "), (1, "1e3"), (1, "99999999999999999999"),
    (14, ""), (14, " "), (14, "\r"), (14, "0x1a"), (14, "ffffffffffffffffffff"), (14, "1A2b"),
])
def test_fast_path_accepts_a_block_only_when_the_careful_path_agrees(small_raw, column, value):
    """Whatever the fast path accepts, the careful path (which compares typed and raw text)
    accepts too, with the same labels and tokens: no null may slip through one path only."""
    lines = small_raw.read_text().splitlines()[:3]
    fields = lines[1].split("\t")
    fields[column] = value
    lines[1] = "\t".join(fields)
    block = Block(("\n".join(lines) + "\n").encode(), 1, 3)
    parser = CriteoParser(Path("x.tsv"), True, CriteoOptions(), BadRows())
    fast = parser.parse(block)
    careful = CriteoParser(Path("x.tsv"), True, CriteoOptions(), BadRows())._parse_carefully(block)
    np.testing.assert_array_equal(fast.line_index, careful.line_index)
    np.testing.assert_array_equal(fast.labels, careful.labels)
    assert fast.tokens.equals(careful.tokens)
    assert not np.isnan(fast.labels).any()


# ---------------------------------------------------------------------------------------------
# item 4: two runs on one --out
# ---------------------------------------------------------------------------------------------
def test_second_build_of_the_same_out_fails_at_once_and_the_first_completes(big_raw, tmp_path):
    out = tmp_path / "s.lmdb"
    lock = tmp_path / ".s.lmdb.lock"
    first = start_cli("preprocess", "criteo", big_raw, "--out", out)
    wait_for(lambda: lock.is_file() and f"pid {first.pid} " in lock.read_text(), first, "the first run locked --out")
    os.kill(first.pid, signal.SIGSTOP)  # holds the lock however fast the machine is
    try:
        started = time.monotonic()
        second = cli("preprocess", "criteo", big_raw, "--out", out, "--min-count", "3")
        seconds = time.monotonic() - started
    finally:
        os.kill(first.pid, signal.SIGCONT)
    message = one_error_line(second.stderr)
    assert second.returncode == 2 and second.stdout == ""
    assert str(out) in message and f"ctrkit pid {first.pid} (preprocessing)" in message
    assert seconds < 30, "the second run must fail at once, not wait"
    _, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stderr
    assert Store(out).meta["options"]["min_count"] == 10, "the store is the first run's"
    assert Store(out).splits["train"].rows + Store(out).splits["valid"].rows + Store(out).splits["test"].rows == 200_000


# ---------------------------------------------------------------------------------------------
# item 8: debris of killed runs
# ---------------------------------------------------------------------------------------------
def test_debris_of_a_run_killed_in_pass_1_is_removed_by_the_next_run(big_raw, tmp_path):
    out = tmp_path / "s.lmdb"
    victim = start_cli("preprocess", "criteo", big_raw, "--out", out)

    def spilling() -> Path | None:
        spill = next(tmp_path.glob(".s.lmdb.spill-*/blocks.bin"), None)
        return spill if spill is not None and spill.stat().st_size > 0 else None

    spill = wait_for(spilling, victim, "pass 1 spilled a block").parent
    victim.kill()
    victim.communicate()
    assert spill.name.startswith(f".s.lmdb.spill-{victim.pid}-"), "the spill names its writer's pid"
    assert spill.exists() and not out.exists()
    temporary_store = tmp_path / f".s.lmdb.tmp-{victim.pid}"  # what a kill in pass 2 leaves
    temporary_store.mkdir()
    (temporary_store / "data.mdb").write_bytes(b"\0" * 8192)

    again = cli("preprocess", "criteo", big_raw, "--out", out)
    assert again.returncode == 0, again.stderr
    assert f"removed {spill}" in again.stderr and f"removed {temporary_store}" in again.stderr
    assert debris(tmp_path, "s.lmdb") == []
    store = Store(out)
    assert sum(info.rows for info in store.splits.values()) == 200_000


def test_debris_of_a_live_run_is_left_alone(small_raw, tmp_path):
    out = tmp_path / "s.lmdb"
    live = tmp_path / f".s.lmdb.spill-{os.getpid()}-abc"  # this test process is alive
    live.mkdir()
    assert main(["preprocess", "criteo", str(small_raw), "--out", str(out)]) == 0
    assert live.is_dir()


def test_store_left_between_the_two_renames_of_overwrite_is_restored(small_raw, tmp_path, capsys):
    out = tmp_path / "s.lmdb"
    assert main(["preprocess", "criteo", str(small_raw), "--out", str(out), "--min-count", "2"]) == 0
    original = Store(out).read_split("train")["sparse"].copy()
    old = tmp_path / f".s.lmdb.old-{dead_pid()}"
    os.rename(out, old)  # killed after moving the old store away, before moving the new one in
    capsys.readouterr()

    assert main(["preprocess", "criteo", str(small_raw), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"restored {out} from {old.name}" in err and "already exists" in err.splitlines()[-1]
    np.testing.assert_array_equal(Store(out).read_split("train")["sparse"], original)
    assert Store(out).meta["options"]["min_count"] == 2 and debris(tmp_path, "s.lmdb") == []

    os.rename(out, old)
    assert main(["preprocess", "criteo", str(small_raw), "--out", str(out), "--overwrite"]) == 0
    assert Store(out).meta["options"]["min_count"] == 10 and debris(tmp_path, "s.lmdb") == []


# ---------------------------------------------------------------------------------------------
# item 13: bad paths and a full disk give one line and keep everything
# ---------------------------------------------------------------------------------------------
def _regular_file(tmp_path: Path) -> tuple[Path, str]:
    target = tmp_path / "notes.txt"
    target.write_text("keep me\n")
    return target, "is a file, not a store directory"


def _under_a_file(tmp_path: Path) -> tuple[Path, str]:
    (tmp_path / "notes.txt").write_text("keep me\n")
    return tmp_path / "notes.txt" / "sub", "is not a directory"


def _missing_parent(tmp_path: Path) -> tuple[Path, str]:
    return tmp_path / "no" / "s.lmdb", "does not exist"


def _plain_directory(tmp_path: Path) -> tuple[Path, str]:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.txt").write_text("keep me\n")
    return tmp_path / "docs", "not a ctrkit store"


def _proc(tmp_path: Path) -> tuple[Path, str]:
    return Path("/proc/ctrkit-no-such-dir"), "/proc/ctrkit-no-such-dir"


@pytest.mark.parametrize("make", [_regular_file, _under_a_file, _missing_parent, _plain_directory, _proc])
def test_bad_out_paths_give_one_line_and_touch_nothing(small_raw, tmp_path, capsys, make):
    work = tmp_path / "work"
    work.mkdir()
    out, reason = make(work)
    before = sorted(p.relative_to(work) for p in work.rglob("*"))
    assert main(["preprocess", "criteo", str(small_raw), "--out", str(out), "--overwrite"]) == 2
    message = one_error_line(capsys.readouterr().err)
    assert str(out) in message and reason in message
    assert sorted(p.relative_to(work) for p in work.rglob("*")) == before
    assert all(p.read_text() == "keep me\n" for p in work.rglob("notes.txt"))


def test_unwritable_directory_gives_one_line(small_raw, tmp_path, capsys):
    readonly = tmp_path / "ro"
    readonly.mkdir()
    if os.geteuid() == 0:  # root writes through permission bits: use a read-only file system
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(readonly)], capture_output=True)
        if mounted.returncode != 0:
            pytest.skip("cannot mount a read-only tmpfs")
    else:
        readonly.chmod(0o555)
    try:
        assert main(["preprocess", "criteo", str(small_raw), "--out", str(readonly / "s.lmdb")]) == 2
        message = one_error_line(capsys.readouterr().err)
        assert f"{readonly / 's.lmdb'}" in message and "not writable" in message
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", "-l", str(readonly)], capture_output=True)
        else:
            readonly.chmod(0o755)


def spill_bytes(rows: int) -> int:
    """Bytes the spill holds for ``rows`` labeled rows (split int8, 39 int64 tokens, float32 label)."""
    return rows * (1 + 39 * 8 + 4)


def fill_up(directory: Path) -> None:
    """Write a file until the file system is full."""
    with open(directory / "ballast", "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 4096)
        except OSError:
            pass


@pytest.mark.parametrize("stage, kib", [("before", 64), ("spill", 256), ("store", spill_bytes(3000) // 1024 + 96)])
def test_disk_full_gives_one_line_and_leaves_no_debris(small_raw, tmp_path, capsys, full_disk, stage, kib):
    """Full from the start (even the lock's holder line cannot be written), in pass 1, in pass 2."""
    disk = full_disk(kib)
    if stage == "before":
        fill_up(disk)
    out = disk / "s.lmdb"
    rc = main(["preprocess", "criteo", str(small_raw), "--out", str(out)])
    message = one_error_line(capsys.readouterr().err)
    assert rc == 2 and str(out) in message
    # LMDB reports a write that failed for lack of space as "Input/output error" (EIO)
    reasons = ("no space left on device",) if stage != "store" else ("no space left on device", "input/output error")
    assert any(reason in message.lower() for reason in reasons), message
    assert f"nothing was written at {out}" in message or f"nothing was created at {out}" in message
    assert not out.exists() and debris(disk, "s.lmdb") == []
