"""A tiny DeepFM trained on synthetic Criteo rows, and raw rows to score with it (JSON-ready)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from ctrkit.serving.client import criteo_json_rows


@dataclass
class ServedRun:
    run_dir: Path
    raw: Path  # unlabeled Criteo TSV rows
    rows: list[dict]  # the same rows as JSON row objects (ints, strings, None for empty fields)
    model: object  # ctrkit.load(run_dir)


@pytest.fixture(scope="session")
def served_run(tmp_path_factory) -> ServedRun:
    import ctrkit
    from ctrkit.data.synthetic import write_synthetic_criteo

    root = tmp_path_factory.mktemp("serving")
    write_synthetic_criteo(root / "train.tsv", rows=2000, seed=5)
    write_synthetic_criteo(root / "score.tsv", rows=120, seed=6, unlabeled=True)
    store = ctrkit.preprocess("criteo", root / "train.tsv", out=root / "store.lmdb", min_count=2)
    run = ctrkit.train("deepfm", store, epochs=1, batch_size=256, embed_size=4, hidden_units=[16], threads=1,
                       model_save_dir=str(root / "deepfm"))
    model = ctrkit.load(run.directory, threads=1)
    return ServedRun(run.directory, root / "score.tsv", criteo_json_rows(root / "score.tsv"), model)
