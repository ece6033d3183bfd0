"""MovieLens: the GroupLens tables joined into the rows of the built-in ``movielens`` spec.

``ratings`` (ML-1M ``ratings.dat``: ``UserID::MovieID::Rating::Timestamp``, or ml-latest
``ratings.csv``: ``userId,movieId,rating,timestamp``) is joined with ``movies`` (``movies.dat`` or
``movies.csv``: id, title, ``|``-separated genres) and optionally ``users`` (ML-1M ``users.dat``:
``UserID::Gender::Age::Occupation::Zip-code``) into the joined layout DeepCTR and torch-rechub
distribute (``user_id,movie_id,rating,timestamp,title,genres,gender,age,occupation,zip``), written
as a temporary Parquet file beside the store. A rating whose movie is not in ``movies`` is an
error naming the file and line (its genres would silently be empty otherwise).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import polars as pl

from ctrkit.data.rawtext import check_text_file
from ctrkit.errors import InputError

JOINED_COLUMNS = ("user_id", "movie_id", "rating", "timestamp", "title", "genres", "gender", "age", "occupation", "zip")
_TABLES = {
    "ratings": ("user_id", "movie_id", "rating", "timestamp"),
    "movies": ("movie_id", "title", "genres"),
    "users": ("user_id", "gender", "age", "occupation", "zip"),
}


def read_table(path: str | os.PathLike, kind: str) -> pl.DataFrame:
    """One GroupLens table as strings with the joined layout's column names."""
    path = check_text_file(path)
    names = _TABLES[kind]
    if path.suffix == ".dat":  # '::'-separated, ISO-8859-1, no header
        lines = path.read_bytes().decode("latin-1").splitlines()
        frame = pl.DataFrame({"line": lines}).with_columns(pl.col("line").str.split("::").alias("parts"))
        counts = frame.get_column("parts").list.len()
        bad = (counts != len(names)).arg_true()
        if len(bad):
            line = int(bad[0]) + 1
            raise InputError(f"{path}:{line}: expected {len(names)} '::'-separated fields ({', '.join(names)}), found {counts[line - 1]}")
        return frame.select(pl.col("parts").list.get(i).alias(name) for i, name in enumerate(names))
    frame = pl.read_csv(path, infer_schema=False)
    if frame.width != len(names):
        raise InputError(f"{path}:1: expected {len(names)} columns ({', '.join(names)}), found {frame.width} ({', '.join(frame.columns)})")
    return frame.rename(dict(zip(frame.columns, names)))


def join_ratings(ratings: str | os.PathLike, movies: str | os.PathLike, users: str | os.PathLike | None = None) -> pl.DataFrame:
    """The joined rows, in the order of ``ratings``."""
    rated = read_table(ratings, "ratings").with_row_index("line", offset=1)
    films = read_table(movies, "movies").unique("movie_id", keep="first")
    joined = rated.join(films, on="movie_id", how="left", coalesce=True)
    unknown = joined.filter(pl.col("title").is_null())
    if unknown.height:
        row = unknown.row(0, named=True)
        raise InputError(f"{ratings}:{row['line']}: movie_id {row['movie_id']!r} is not in {movies}")
    if users is not None:
        people = read_table(users, "users").unique("user_id", keep="first")
        joined = joined.join(people, on="user_id", how="left", coalesce=True)
    for column in JOINED_COLUMNS:
        if column not in joined.columns:
            joined = joined.with_columns(pl.lit(None, pl.String).alias(column))
    return joined.sort("line").select(JOINED_COLUMNS)


@contextlib.contextmanager
def joined_ratings(ratings, movies, users, out: str | os.PathLike) -> Iterator[Path]:
    """The joined rows as a temporary Parquet file beside ``out``, removed afterwards."""
    out = Path(out)
    directory = Path(tempfile.mkdtemp(prefix=f".{out.name}.spill-{os.getpid()}-", dir=out.parent if out.parent.is_dir() else None))
    try:
        path = directory / "movielens_joined.parquet"
        join_ratings(ratings, movies, users).write_parquet(path)
        yield path
    finally:
        shutil.rmtree(directory, ignore_errors=True)
