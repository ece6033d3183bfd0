"""Dataset specs: which raw columns become which features of a store, as YAML or a dict.

A spec is checked as strictly as a training config: an unknown key, a wrong type, a missing or
duplicate column or a ``shares`` that names no categorical feature is a one-line
:class:`~ctrkit.errors.ConfigError` naming the spec file and the key. Example (every key shown;
most have defaults)::

    name: my_clicks
    label: click                      # a 0/1 column; or {column: rating, threshold: 4} (>= is a click)
    reader:
      delimiter: auto                 # auto (tab if the first line has one, else comma) or one character
      header: auto                    # true, false, or auto: the first line is a header if it holds the label
      columns: [id, click, hour, user, item, hist]   # column names of a file without a header
    defaults: {min_count: 2}          # for every categorical/numeric/derived feature without its own
    features:
      - {name: user}                                  # categorical (the default type), string tokens
      - {name: item, tokens: hex, min_count: 1}       # tokens: string | hex | int
      - {name: device_ip, hash_buckets: 1000000}      # ids 1 + splitmix64(token) % N, no vocabulary count
      - {name: I1, type: numeric, transform: bars}    # floor(ln(v)^2) for v > 2, else v: categorical
      - {name: price, type: numeric, transform: log1p}  # dense float log1p(max(v, 0)); also identity
      - {name: age, type: numeric, transform: bucketize, boundaries: [18, 25, 35, 50]}
      - {name: hour_of_day, type: derived, source: hour, derive: hour_of_day, time_format: yymmddhh}
      - {name: hist, type: sequence, delimiter: "|", max_len: 50, shares: item}
      - {name: genre, type: vocabulary}                 # a vocabulary of its own for sequences (tokens: as categorical)
      - {name: genres, type: sequence, source: genres, max_len: 6, shares: genre}
      - {name: hist_cate, type: sequence, columns: [c1, c2, c3], padding: "0", max_len: 3, shares: item}
    split: {by: random, ratios: [8, 1, 1], seed: 2018}
    group: user                       # optional: a categorical feature whose raw token is stored as
                                      # the per-row `group` column (gAUC by user)
    # or {by: time, column: hour, valid_from: 14102900, test_from: 14103000}
    # or {by: files}: the raw files are all train; valid/test come from --valid/--test

Sequences: items in file order, oldest first (``order: newest_first`` reverses a file that lists
the most recent first); the store keeps the last ``max_len`` (most recent last, left-padded with
0). Items count towards the vocabulary of the ``shares`` feature and are encoded with it. A
sequence spread over several columns (one item each, oldest first, as the Taobao DMR layout) names
them in ``columns``; a slot equal to ``padding`` (or empty) holds no item. A ``vocabulary`` feature
reads no column: it is the vocabulary of the sequences that share it (MovieLens genres, Taobao
behaviour types), stored as a sparse field whose id is 0 in every row.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from ctrkit.data.tokens import DERIVATIONS, TIME_FORMATS, TOKEN_KINDS
from ctrkit.errors import ConfigError

FEATURE_TYPES = ("categorical", "numeric", "derived", "sequence", "vocabulary")
NUMERIC_TRANSFORMS = ("bars", "bucketize", "log1p", "identity")
DENSE_TRANSFORMS = ("log1p", "identity")
SPLIT_METHODS = ("random", "time", "files")
SEQUENCE_ORDERS = ("oldest_first", "newest_first")
BUILTIN_DIR = Path(__file__).resolve().parent / "specs"

_COMMON_KEYS = {"name", "type", "source"}
_FEATURE_KEYS = {
    "categorical": _COMMON_KEYS | {"min_count", "hash_buckets", "tokens", "max_bytes"},
    "numeric": _COMMON_KEYS | {"min_count", "hash_buckets", "transform", "boundaries", "integer"},
    "derived": _COMMON_KEYS | {"min_count", "derive", "time_format"},
    "sequence": _COMMON_KEYS | {"delimiter", "max_len", "shares", "order", "columns", "padding"},
    "vocabulary": {"name", "type", "min_count", "hash_buckets", "tokens"},
}
_TOP_KEYS = {"name", "label", "reader", "defaults", "features", "split", "description", "group"}
_READER_KEYS = {"delimiter", "header", "columns", "quote"}
_DEFAULT_KEYS = {"min_count"}
_SPLIT_KEYS = {
    "random": {"by", "ratios", "seed"},
    "time": {"by", "column", "valid_from", "test_from"},
    "files": {"by"},
}


@dataclass(frozen=True)
class Feature:
    """One feature of the store, computed from the raw column ``source``."""

    name: str
    type: str = "categorical"
    source: str = ""
    min_count: int = 1
    hash_buckets: int = 0  # 0: a vocabulary counted on the train split
    tokens: str = "string"  # categorical: how a raw string becomes an int64 token
    max_bytes: int = 64  # categorical string tokens: bytes folded into the hash (longer ones: prefix)
    transform: str = "bars"  # numeric
    boundaries: tuple[float, ...] = ()
    integer: bool = False  # numeric: the raw value must be an integer ("260.0" counts as one)
    derive: str = "hour_of_day"  # derived
    time_format: str = "yymmddhh"
    delimiter: str = "|"  # sequence
    max_len: int = 0
    shares: str = ""
    order: str = "oldest_first"
    columns: tuple[str, ...] = ()  # sequence: one item per column instead of a delimited ``source``
    padding: str = ""  # sequence: a raw value that marks an empty slot

    @property
    def raw_columns(self) -> tuple[str, ...]:
        """The raw columns this feature reads."""
        if self.type == "vocabulary":
            return ()
        return self.columns if self.columns else (self.source,)

    @property
    def output(self) -> str:
        """The store field kind: ``sparse``, ``dense`` or ``sequence``."""
        if self.type == "sequence":
            return "sequence"
        if self.type == "numeric" and self.transform in DENSE_TRANSFORMS:
            return "dense"
        return "sparse"

    def to_dict(self) -> dict:
        keep = _FEATURE_KEYS[self.type]
        out = {k: v for k, v in self.__dict__.items() if k in keep}
        if not self.hash_buckets:
            out.pop("hash_buckets", None)
        if self.type == "numeric" and self.transform != "bucketize":
            out.pop("boundaries")
        else:
            out["boundaries"] = list(self.boundaries)
        if self.type != "numeric":
            out.pop("boundaries", None)
        if self.type == "sequence":
            if self.columns:
                out["columns"] = list(self.columns)
                out.pop("source", None)
                out.pop("delimiter", None)
            else:
                out.pop("columns", None)
        return out


@dataclass(frozen=True)
class Label:
    column: str
    threshold: float | None = None  # None: the column holds 0/1


@dataclass(frozen=True)
class Reader:
    delimiter: str = "auto"
    header: str = "auto"  # "true" / "false" / "auto"
    columns: tuple[str, ...] = ()
    quote: str | None = '"'  # None: no quoting (raw TSV)


@dataclass(frozen=True)
class Split:
    by: str = "random"
    ratios: tuple[float, float, float] = (8.0, 1.0, 1.0)
    seed: int = 2018
    column: str = ""
    valid_from: float = 0.0
    test_from: float = 0.0

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items() if k in _SPLIT_KEYS[self.by]}


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    label: Label
    features: tuple[Feature, ...]
    split: Split = Split()
    reader: Reader = Reader()
    origin: str = "<spec>"  # the file (or built-in name) it came from, for messages
    description: str = ""
    group: str = ""  # a sparse feature whose raw token is each row's group id (gAUC); "" for none

    @property
    def sparse(self) -> tuple[Feature, ...]:
        return tuple(f for f in self.features if f.output == "sparse")

    @property
    def dense(self) -> tuple[Feature, ...]:
        return tuple(f for f in self.features if f.output == "dense")

    @property
    def sequences(self) -> tuple[Feature, ...]:
        return tuple(f for f in self.features if f.output == "sequence")

    def feature(self, name: str) -> Feature:
        return next(f for f in self.features if f.name == name)

    def with_features(self, features) -> "DatasetSpec":
        return replace(self, features=tuple(features))

    def to_dict(self) -> dict:
        label: Any = self.label.column if self.label.threshold is None else {"column": self.label.column, "threshold": self.label.threshold}
        reader = {"delimiter": self.reader.delimiter, "header": _header_value(self.reader.header), "quote": self.reader.quote}
        if self.reader.columns:
            reader["columns"] = list(self.reader.columns)
        return {
            "name": self.name,
            "label": label,
            "reader": reader,
            "features": [f.to_dict() for f in self.features],
            "split": self.split.to_dict(),
            **({"group": self.group} if self.group else {}),
        }


def _header_value(header: str) -> Any:
    return {"true": True, "false": False}.get(header, header)


# ---------------------------------------------------------------------------------------------
# Loading and validation
# ---------------------------------------------------------------------------------------------
def builtin_specs() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml"))


def load_spec(name_or_path: str | Path) -> DatasetSpec:
    """A built-in spec by name (``criteo``, ``avazu``) or a YAML file."""
    path = Path(name_or_path)
    if not path.suffix and str(name_or_path) in builtin_specs():
        path = BUILTIN_DIR / f"{name_or_path}.yaml"
        origin = f"built-in spec {name_or_path!r} ({path})"
    else:
        origin = str(path)
    if not path.is_file():
        known = ", ".join(builtin_specs())
        raise ConfigError(f"spec {name_or_path}: no such file (built-in specs: {known})")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read ({exc})") from None
    return spec_from_dict(data, origin=origin)


def spec_from_dict(data: Any, origin: str = "<spec>") -> DatasetSpec:
    """Validate a parsed spec; every problem is a one-line ConfigError naming ``origin`` and the key."""
    check = _Checker(origin)
    top = check.mapping(data, "the spec")
    check.keys(top, _TOP_KEYS, "", required={"label", "features"})
    defaults = check.mapping(top.get("defaults", {}), "defaults")
    check.keys(defaults, _DEFAULT_KEYS, "defaults.")
    default_min_count = check.integer(defaults.get("min_count", 1), "defaults.min_count", low=1)
    label = _label(check, top["label"])
    reader = _reader(check, top.get("reader", {}))
    raw_features = top["features"]
    if not isinstance(raw_features, list) or not raw_features:
        check.fail("features", "must be a non-empty list of features")
    features = [_feature(check, item, i, default_min_count) for i, item in enumerate(raw_features)]
    split = _split(check, top.get("split", {"by": "random"}))
    spec = DatasetSpec(
        name=check.string(top.get("name", Path(origin).stem), "name"),
        label=label,
        features=tuple(features),
        split=split,
        reader=reader,
        origin=origin,
        description=check.string(top.get("description", ""), "description", empty=True),
        group=check.string(top.get("group", ""), "group", empty=True),
    )
    _check_references(check, spec)
    return spec


class _Checker:
    def __init__(self, origin: str):
        self.origin = origin

    def fail(self, key: str, message: str) -> None:
        raise ConfigError(f"{self.origin}: {key}: {message}")

    def mapping(self, value: Any, key: str) -> dict:
        if not isinstance(value, dict):
            self.fail(key, f"must be a mapping, got {_shown(value)}")
        return value

    def keys(self, value: dict, allowed: set[str], prefix: str, required: set[str] = frozenset()) -> None:
        for key in value:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(sorted(allowed))})"
                self.fail(f"{prefix}{key}", f"unknown key{hint}")
        for key in sorted(required - set(value)):
            self.fail(f"{prefix}{key}", "is required")

    def string(self, value: Any, key: str, *, empty: bool = False) -> str:
        if not isinstance(value, str) or (not empty and not value):
            self.fail(key, f"must be a {'' if empty else 'non-empty '}string, got {_shown(value)}")
        return value

    def integer(self, value: Any, key: str, *, low: int | None = None) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            self.fail(key, f"must be an integer, got {_shown(value)}")
        if low is not None and value < low:
            self.fail(key, f"must be >= {low}, got {value}")
        return value

    def number(self, value: Any, key: str) -> float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            self.fail(key, f"must be a number, got {_shown(value)}")
        return float(value)

    def choice(self, value: Any, key: str, choices: tuple[str, ...]) -> str:
        if value not in choices:
            close = difflib.get_close_matches(str(value), choices, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            self.fail(key, f"must be one of {', '.join(choices)}, got {_shown(value)}{hint}")
        return value

    def boolean(self, value: Any, key: str) -> bool:
        if not isinstance(value, bool):
            self.fail(key, f"must be true or false, got {_shown(value)}")
        return value


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _label(check: _Checker, value: Any) -> Label:
    if isinstance(value, str):
        return Label(check.string(value, "label"))
    item = check.mapping(value, "label")
    check.keys(item, {"column", "threshold"}, "label.", required={"column"})
    threshold = check.number(item["threshold"], "label.threshold") if "threshold" in item else None
    return Label(check.string(item["column"], "label.column"), threshold)


def _reader(check: _Checker, value: Any) -> Reader:
    item = check.mapping(value, "reader")
    check.keys(item, _READER_KEYS, "reader.")
    delimiter = check.string(item.get("delimiter", "auto"), "reader.delimiter")
    if delimiter != "auto" and len(delimiter) != 1:
        check.fail("reader.delimiter", f"must be 'auto' or one character, got {delimiter!r}")
    header = item.get("header", "auto")
    if header != "auto":
        header = "true" if check.boolean(header, "reader.header") else "false"
    columns = item.get("columns", [])
    if not isinstance(columns, list) or not all(isinstance(c, str) and c for c in columns):
        check.fail("reader.columns", f"must be a list of column names, got {_shown(columns)}")
    duplicated = sorted({c for c in columns if columns.count(c) > 1})
    if duplicated:
        check.fail("reader.columns", f"duplicate column {duplicated[0]!r}")
    quote = item.get("quote", '"')
    if quote is not None and (not isinstance(quote, str) or len(quote) != 1):
        check.fail("reader.quote", f"must be one character or null, got {_shown(quote)}")
    return Reader(delimiter, header, tuple(columns), quote)


def _feature(check: _Checker, item: Any, index: int, default_min_count: int) -> Feature:
    where = f"features[{index}]"
    item = check.mapping(item, where)
    if "name" in item and isinstance(item["name"], str):
        where = f"features[{index}] ({item['name']})"
    kind = check.choice(item.get("type", "categorical"), f"{where}.type", FEATURE_TYPES)
    check.keys(item, _FEATURE_KEYS[kind], f"{where}.", required={"name"})
    name = check.string(item["name"], f"{where}.name")
    values: dict[str, Any] = {"name": name, "type": kind}
    if kind != "vocabulary":
        values["source"] = check.string(item.get("source", name), f"{where}.source")
    if kind != "sequence":
        values["min_count"] = check.integer(item.get("min_count", default_min_count), f"{where}.min_count", low=1)
    if "hash_buckets" in item:
        values["hash_buckets"] = check.integer(item["hash_buckets"], f"{where}.hash_buckets", low=1)
    if kind == "vocabulary":
        values["tokens"] = check.choice(item.get("tokens", "string"), f"{where}.tokens", TOKEN_KINDS)
    if kind == "categorical":
        values["tokens"] = check.choice(item.get("tokens", "string"), f"{where}.tokens", TOKEN_KINDS)
        values["max_bytes"] = check.integer(item.get("max_bytes", 64), f"{where}.max_bytes", low=8)
    elif kind == "numeric":
        transform = check.choice(item.get("transform", "bars"), f"{where}.transform", NUMERIC_TRANSFORMS)
        values["transform"] = transform
        values["integer"] = check.boolean(item.get("integer", False), f"{where}.integer")
        if transform == "bucketize":
            bounds = item.get("boundaries")
            if not isinstance(bounds, list) or not bounds:
                check.fail(f"{where}.boundaries", "bucketize needs a non-empty list of boundaries")
            parsed = tuple(check.number(b, f"{where}.boundaries") for b in bounds)
            if list(parsed) != sorted(set(parsed)):
                check.fail(f"{where}.boundaries", f"must be strictly increasing, got {bounds}")
            values["boundaries"] = parsed
        elif "boundaries" in item:
            check.fail(f"{where}.boundaries", f"only applies to transform bucketize, not {transform}")
        if transform in DENSE_TRANSFORMS and "hash_buckets" in item:
            check.fail(f"{where}.hash_buckets", f"a dense ({transform}) feature has no ids to hash")
    elif kind == "derived":
        if "derive" not in item:
            check.fail(f"{where}.derive", f"is required (one of {', '.join(DERIVATIONS)})")
        values["derive"] = check.choice(item["derive"], f"{where}.derive", DERIVATIONS)
        values["time_format"] = check.choice(item.get("time_format", "yymmddhh"), f"{where}.time_format", TIME_FORMATS)
    elif kind == "sequence":
        for key in ("max_len", "shares"):
            if key not in item:
                check.fail(f"{where}.{key}", "is required for a sequence feature")
        values["max_len"] = check.integer(item["max_len"], f"{where}.max_len", low=1)
        values["shares"] = check.string(item["shares"], f"{where}.shares")
        delimiter = check.string(item.get("delimiter", "|"), f"{where}.delimiter")
        values["delimiter"] = delimiter
        values["order"] = check.choice(item.get("order", "oldest_first"), f"{where}.order", SEQUENCE_ORDERS)
        if "columns" in item:
            columns = item["columns"]
            if not isinstance(columns, list) or not columns or not all(isinstance(c, str) and c for c in columns):
                check.fail(f"{where}.columns", f"must be a non-empty list of column names, got {_shown(columns)}")
            if "source" in item or "delimiter" in item:
                check.fail(f"{where}.columns", "a sequence reads either columns (one item each) or a delimited source, not both")
            values["columns"] = tuple(columns)
            values["source"] = ""
        padding = item.get("padding", "")
        if not isinstance(padding, (str, int)) or isinstance(padding, bool):
            check.fail(f"{where}.padding", f"must be a string, got {_shown(padding)}")
        values["padding"] = str(padding)
    return Feature(**values)


def _split(check: _Checker, value: Any) -> Split:
    item = check.mapping(value, "split")
    by = check.choice(item.get("by", "random"), "split.by", SPLIT_METHODS)
    check.keys(item, _SPLIT_KEYS[by], "split.")
    if by == "random":
        ratios = item.get("ratios", [8, 1, 1])
        if not isinstance(ratios, list) or len(ratios) != 3:
            check.fail("split.ratios", f"must be three ratios [train, valid, test], got {_shown(ratios)}")
        parsed = tuple(check.number(r, "split.ratios") for r in ratios)
        if min(parsed) < 0 or parsed[0] <= 0:
            check.fail("split.ratios", f"must be >= 0 with train > 0, got {ratios}")
        return Split("random", parsed, check.integer(item.get("seed", 2018), "split.seed"))
    if by == "time":
        for key in ("column", "valid_from", "test_from"):
            if key not in item:
                check.fail(f"split.{key}", "is required for a split by time")
        valid_from = check.number(item["valid_from"], "split.valid_from")
        test_from = check.number(item["test_from"], "split.test_from")
        if test_from < valid_from:
            check.fail("split.test_from", f"must be >= valid_from ({valid_from:g}), got {test_from:g}")
        return Split("time", column=check.string(item["column"], "split.column"), valid_from=valid_from, test_from=test_from)
    return Split("files")


def _check_references(check: _Checker, spec: DatasetSpec) -> None:
    names = [f.name for f in spec.features]
    for name in names:
        if names.count(name) > 1:
            check.fail("features", f"duplicate feature name {name!r}")
    if spec.group and spec.group not in {f.name for f in spec.features if f.type == "categorical"}:
        check.fail("group", f"{spec.group!r} is not a categorical feature of this spec")
    if spec.label.column in names:
        check.fail("label", f"{spec.label.column!r} is also a feature name")
    sparse = {f.name: f for f in spec.sparse}
    for f in spec.sequences:
        target = sparse.get(f.shares)
        if target is None:
            close = difflib.get_close_matches(f.shares, sorted(sparse), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            check.fail(f"features ({f.name}).shares", f"{f.shares!r} is not a categorical feature of this spec{hint}")
        if f.name in sparse:
            check.fail(f"features ({f.name})", "a sequence needs its own name")
    columns = spec.reader.columns
    if columns:
        needed = [spec.label.column] + [c for f in spec.features for c in f.raw_columns]
        if spec.split.by == "time":
            needed.append(spec.split.column)
        for column in needed:
            if column not in columns:
                close = difflib.get_close_matches(column, columns, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                check.fail("reader.columns", f"has no column {column!r}, which the spec uses{hint}")


def with_overrides(spec: DatasetSpec, *, min_count: int | None = None, ratios=None, seed: int | None = None) -> DatasetSpec:
    """``spec`` with the command line's ``--min-count`` (every counted feature), ``--split`` and ``--seed``."""
    if min_count is not None:
        if min_count < 1:
            raise ConfigError(f"--min-count must be >= 1, got {min_count}")
        spec = spec.with_features(replace(f, min_count=min_count) if f.type != "sequence" else f for f in spec.features)
    if ratios is not None or seed is not None:
        if spec.split.by != "random":
            raise ConfigError(f"--split/--seed apply to a random split; spec {spec.origin} splits by {spec.split.by}")
        ratios = tuple(float(r) for r in (ratios or spec.split.ratios))
        if len(ratios) != 3 or min(ratios) < 0 or ratios[0] <= 0:
            raise ConfigError(f"--split needs three ratios train:valid:test with train > 0, got {ratios}")
        spec = replace(spec, split=Split("random", ratios, spec.split.seed if seed is None else seed))
    return spec
