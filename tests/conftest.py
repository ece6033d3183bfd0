"""Shared fixtures: the real sample data in ../shared/data (skipped cleanly when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CTRKIT_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_file(relative: str) -> Path:
    """A file of ../shared/data, or a clean skip when the shared folder is not beside the repo."""
    path = SHARED_DATA / relative
    if not path.is_file():
        pytest.skip(f"shared sample data not available: {path}")
    return path


@pytest.fixture
def kaggle_train() -> Path:
    return shared_file("criteo/kaggle_train_head10k.tsv")


@pytest.fixture
def kaggle_test_unlabeled() -> Path:
    return shared_file("criteo/kaggle_test_head10k_unlabeled.tsv")


@pytest.fixture
def criteo_1tb_day0() -> Path:
    return shared_file("criteo/hillview_criteo1tb_day0_head1000.tsv")
