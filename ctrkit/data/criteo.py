"""Criteo: the built-in spec (``ctrkit/data/specs/criteo.yaml``) and ``ctrkit preprocess criteo``.

Format: tab-separated, no header, 40 fields ``label, I1..I13, C1..C26`` (Kaggle train and the
Terabyte day files), or 39 fields without the label (Kaggle test); an empty field is missing. The
header-CSV variants (DeepCTR's and torch-rechub's samples: comma-separated, integers written as
``260.0``) go through the same spec and give the same tokens.

Defaults follow the BARS Criteo_x4_001 protocol:

* ``I1..I13`` become categorical tokens ``floor(ln(v)^2)`` for ``v > 2`` and ``v`` otherwise; a
  missing value is a token of its own. ``numeric="dense"`` keeps them as float features
  ``log1p(max(v, 0))`` instead (missing → 0).
* ``C1..C26`` are 32-bit hex hashes, kept as the integers they spell; missing is its own token.
* Tokens seen fewer than ``min_count`` times in the *train* split map to the field's OOV id 0;
  the others get ids ``1..V`` by decreasing train frequency (ties by token).
* Rows go to train/valid/test at random with ratios ``8:1:1`` and ``seed`` 2018 (one uniform
  draw per input line, in file order), unless explicit valid/test files are given.

Everything else (reading, validation, vocabularies, the two passes) is the generic pipeline's
(:mod:`ctrkit.data.pipeline`); this module only fixes the spec and keeps the Criteo API.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from ctrkit.data import pipeline
from ctrkit.data.encoder import Encoder, load_encoder  # noqa: F401  (the Criteo API before the pipeline)
from ctrkit.data.pipeline import PipelineOptions, PreprocessResult, split_assignment  # noqa: F401
from ctrkit.data.rawtext import BadRows, check_text_file
from ctrkit.data.readers import DelimitedParser, ParsedBlock, TextLayout, detect_layout  # noqa: F401
from ctrkit.data.spec import DatasetSpec, Split, load_spec
from ctrkit.data.store import DEFAULT_CHUNK_ROWS, Store
from ctrkit.data.tokens import MISSING  # noqa: F401
from ctrkit.errors import ConfigError

LABEL = "label"
INT_FIELDS = tuple(f"I{i}" for i in range(1, 14))
CAT_FIELDS = tuple(f"C{i}" for i in range(1, 27))
LABELED_COLUMNS = (LABEL, *INT_FIELDS, *CAT_FIELDS)
UNLABELED_COLUMNS = (*INT_FIELDS, *CAT_FIELDS)
SPLITS = pipeline.SPLITS
NUMERIC_MODES = ("categorical", "dense")


@dataclass(frozen=True)
class CriteoOptions:
    """How raw Criteo rows are turned into a store."""

    numeric: str = "categorical"
    min_count: int = 10
    split: tuple[float, float, float] = (8.0, 1.0, 1.0)
    seed: int = 2018
    strict: bool = False
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    block_bytes: int = 8 << 20

    def __post_init__(self) -> None:
        if self.numeric not in NUMERIC_MODES:
            raise ConfigError(f"--numeric must be one of {NUMERIC_MODES}, got {self.numeric!r}")
        if self.min_count < 1:
            raise ConfigError(f"--min-count must be >= 1, got {self.min_count}")
        if len(self.split) != 3 or min(self.split) < 0 or self.split[0] <= 0:
            raise ConfigError(f"--split needs three ratios train:valid:test with train > 0, got {self.split}")
        if self.chunk_rows < 1:
            raise ConfigError(f"--chunk-rows must be >= 1, got {self.chunk_rows}")

    @property
    def token_fields(self) -> tuple[str, ...]:
        """Fields that become sparse (categorical) columns, in store order."""
        return CAT_FIELDS if self.numeric == "dense" else (*INT_FIELDS, *CAT_FIELDS)

    @property
    def dense_fields(self) -> tuple[str, ...]:
        return INT_FIELDS if self.numeric == "dense" else ()

    @property
    def spec(self) -> DatasetSpec:
        return criteo_spec(self.numeric, self.min_count, tuple(self.split), self.seed)

    def record(self) -> dict:
        return {
            "numeric": self.numeric,
            "min_count": self.min_count,
            "split": list(self.split),
            "seed": self.seed,
            "strict": self.strict,
            "chunk_rows": self.chunk_rows,
        }


def parse_split(text: str) -> tuple[float, float, float]:
    """``"8:1:1"`` → ``(8.0, 1.0, 1.0)``."""
    try:
        parts = tuple(float(p) for p in text.split(":"))
    except ValueError:
        parts = ()
    if len(parts) != 3:
        raise ConfigError(f"--split must look like 8:1:1 (train:valid:test), got {text!r}")
    return parts  # type: ignore[return-value]


@lru_cache(maxsize=None)
def criteo_spec(
    numeric: str = "categorical",
    min_count: int = 10,
    split: tuple[float, float, float] = (8.0, 1.0, 1.0),
    seed: int = 2018,
) -> DatasetSpec:
    """The built-in Criteo spec with the command line's choices applied."""
    spec = load_spec("criteo")
    ints = [replace(f, min_count=min_count, transform="log1p" if numeric == "dense" else "bars") for f in spec.features if f.name in INT_FIELDS]
    cats = [replace(f, min_count=min_count) for f in spec.features if f.name in CAT_FIELDS]
    # dense features come after the sparse ones in the store: order the hashes first then
    features = cats + ints if numeric == "dense" else ints + cats
    return replace(spec, features=tuple(features), split=Split("random", tuple(float(r) for r in split), seed))


def preprocess_criteo(
    raw: Sequence[str | Path],
    out: str | Path,
    options: CriteoOptions = CriteoOptions(),
    *,
    valid: str | Path | None = None,
    test: str | Path | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
    notify: Callable[[str], None] | None = None,
) -> PreprocessResult:
    """Build a store at ``out`` from raw Criteo files (see the module docstring for the rules).

    ``raw`` rows are split at random by ``options.split``; a split given as its own file
    (``valid``/``test``) is not drawn from ``raw``. See :func:`ctrkit.data.pipeline.preprocess`
    for the locking, cleaning and failure rules.
    """
    return pipeline.preprocess(
        options.spec,
        raw,
        out,
        PipelineOptions(strict=options.strict, chunk_rows=options.chunk_rows, block_bytes=options.block_bytes),
        valid=valid,
        test=test,
        overwrite=overwrite,
        progress=progress,
        notify=notify,
        extra_meta={"source_format": "criteo", "options": options.record()},
    )


class CriteoParser(DelimitedParser):
    """Validates and tokenises blocks of raw Criteo TSV lines of one file (no header)."""

    def __init__(self, path: Path, labeled: bool, options: CriteoOptions, bad_rows: BadRows):
        layout = TextLayout("\t", None, LABELED_COLUMNS if labeled else UNLABELED_COLUMNS, False, labeled)
        super().__init__(path, options.spec, layout, bad_rows, options.strict)
        self.labeled = labeled
        self.options = options


def detect_labeled(path: Path) -> bool:
    """40 fields → labeled (train format); 39 → unlabeled (Kaggle test format)."""
    return detect_layout(check_text_file(path), criteo_spec()).labeled


def store_options(store: Store) -> CriteoOptions:
    """The preprocessing options a Criteo store was built with."""
    saved = store.meta.get("options", {})
    if store.meta.get("source_format") != "criteo" or not isinstance(saved, dict):
        from ctrkit.errors import InputError

        raise InputError(f"{store.path} was not built from Criteo rows (source format {store.meta.get('source_format')!r})")
    return CriteoOptions(numeric=saved["numeric"], min_count=saved["min_count"], split=tuple(saved["split"]), seed=saved["seed"])


def iter_raw_batches(path: str | Path, store: Store, batch_rows: int = 65_536) -> Iterator[dict[str, np.ndarray]]:
    """Encode a raw Criteo file (labeled or not) with ``store``'s vocabularies, in file order.

    Unseen values map to the OOV id 0. A malformed row raises :class:`InputError` naming the
    file, line and field, since a score file must stay aligned with its input lines.
    """
    return pipeline.iter_raw_batches(path, load_encoder(store), batch_rows=batch_rows)
