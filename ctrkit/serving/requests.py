"""Request validation for ``POST /predict``: bytes of a JSON body → a dict of columns, or a
:class:`RequestError` (an HTTP status and one clear line) naming what is wrong.

Two body forms, both with exactly the model's input columns (``Model.input_columns``), ``null``
for a missing value:

* ``{"rows": [{"I1": 3, "C1": "68fd1e64", ...}, ...]}``: one object per row;
* ``{"columns": {"I1": [3, null, ...], "C1": ["68fd1e64", ...], ...}}``: one list per column.

A value is a number, a string or ``null``; anything else (an object, a list, ``true``) is refused
here, naming the row and column. Whether a string reads as a number in a numeric column is the
encoder's business (:func:`ctrkit.data.frames.encode_rows`), as for a raw file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

BODY_FORMS = ("rows", "columns")
INT64 = 2 ** 63


@dataclass
class ParsedBody:
    """A valid body: ``columns`` (the model's input columns, in its order → one value per row),
    the number of ``rows`` and the ``form`` it came in (``rows`` or ``columns``)."""

    columns: dict[str, list]
    rows: int
    form: str


class RequestError(Exception):
    """A refused request: ``status`` (4xx), a one-line ``message`` and JSON-ready ``details``."""

    def __init__(self, status: int, message: str, **details: Any):
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details

    def body(self) -> dict[str, Any]:
        return {"error": self.message, **self.details}


def check_content_type(content_type: str | None) -> None:
    """415 unless the body is declared JSON (``application/json``, any parameters)."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
        shown = f"'{content_type}'" if content_type else "none"
        raise RequestError(415, f"the body must be JSON: send the header Content-Type: application/json (got {shown})")


def parse_json(body: bytes) -> Any:
    """The JSON value of ``body`` (400 when it is not JSON; ``NaN`` reads as a missing value)."""
    if not body.strip():
        raise RequestError(400, 'empty body: expected a JSON object {"rows": [...]} or {"columns": {...}}')
    try:
        return json.loads(body, parse_constant=_constant)
    except RequestError:
        raise
    except UnicodeDecodeError as exc:
        raise RequestError(400, f"the body is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise RequestError(400, f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except (ValueError, RecursionError) as exc:
        raise RequestError(400, f"invalid JSON: {type(exc).__name__}: {exc}") from None


def _constant(name: str) -> float:
    if name == "NaN":
        return float("nan")
    raise RequestError(422, f"{name} is not a value a column can hold (give a number, a string or null)")


def read_columns(body: Any, columns: list[str], max_rows: int) -> ParsedBody:
    """The columns of a parsed JSON body, in the model's column order.

    Raises :class:`RequestError`: 422 for a body of the wrong shape, missing or unknown columns,
    no rows or a value of the wrong JSON type; 413 for more than ``max_rows`` rows.
    """
    if not isinstance(body, dict):
        raise RequestError(422, f'expected a JSON object {{"rows": [...]}} or {{"columns": {{...}}}}, got {_json_type(body)}')
    forms = [key for key in BODY_FORMS if key in body]
    unknown = [key for key in body if key not in BODY_FORMS]
    if unknown or len(forms) != 1:
        what = f"unknown key(s) {', '.join(map(repr, unknown))}" if unknown else \
            "both 'rows' and 'columns'" if forms else "no 'rows' or 'columns'"
        raise RequestError(422, f"{what}: the body holds exactly one of 'rows' (a list of row objects) "
                                f"or 'columns' (an object of column lists)")
    read = _from_rows if forms[0] == "rows" else _from_columns
    values, rows = read(body[forms[0]], columns, max_rows)
    return ParsedBody(values, rows, forms[0])


def _from_rows(rows: Any, columns: list[str], max_rows: int) -> tuple[dict[str, list], int]:
    if not isinstance(rows, list):
        raise RequestError(422, f"'rows' must be a list of row objects, got {_json_type(rows)}")
    _check_count(len(rows), max_rows)
    allowed = set(columns)
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise RequestError(422, f"rows[{i}] must be an object of column -> value, got {_json_type(row)}", row=i)
        if row.keys() != allowed:
            _check_keys(row.keys(), columns, f"rows[{i}]", row=i)
        for name, value in row.items():
            _check_value(value, f"rows[{i}].{name}", i, name)
    return {name: [row[name] for row in rows] for name in columns}, len(rows)


def _from_columns(data: Any, columns: list[str], max_rows: int) -> tuple[dict[str, list], int]:
    if not isinstance(data, dict):
        raise RequestError(422, f"'columns' must be an object of column -> list of values, got {_json_type(data)}")
    _check_keys(data.keys(), columns, "columns")
    lengths = {}
    for name in columns:
        values = data[name]
        if not isinstance(values, list):
            raise RequestError(422, f"columns.{name} must be a list of values, got {_json_type(values)}", column=name)
        lengths[name] = len(values)
    if len(set(lengths.values())) > 1:
        counts = sorted(set(lengths.values()))
        raise RequestError(422, f"the column lists differ in length ({', '.join(map(str, counts))} values); "
                                f"every column holds one value per row", lengths=lengths)
    rows = lengths[columns[0]] if columns else 0
    _check_count(rows, max_rows)
    for name in columns:
        for i, value in enumerate(data[name]):
            _check_value(value, f"columns.{name}[{i}]", i, name)
    return {name: data[name] for name in columns}, rows


def _check_count(rows: int, max_rows: int) -> None:
    if rows == 0:
        raise RequestError(422, "no rows to score")
    if rows > max_rows:
        raise RequestError(413, f"{rows:,} rows in one request; at most {max_rows:,} are accepted "
                                f"(split the rows over several requests)", max_rows_per_request=max_rows)


def _check_keys(keys, columns: list[str], where: str, **details: Any) -> None:
    allowed = set(columns)
    unknown = [k for k in keys if k not in allowed]
    missing = [c for c in columns if c not in keys]
    if unknown:
        raise RequestError(422, f"{where}: unknown column{'s' if len(unknown) > 1 else ''} "
                                f"{', '.join(map(repr, unknown))}; the model reads: {', '.join(columns)}",
                           unknown=unknown, allowed=columns, **details)
    if missing:
        raise RequestError(422, f"{where}: missing column{'s' if len(missing) > 1 else ''} "
                                f"{', '.join(map(repr, missing))} (give null for a missing value); "
                                f"the model reads: {', '.join(columns)}",
                           missing=missing, allowed=columns, **details)


def _check_value(value: Any, where: str, row: int, column: str) -> None:
    kind = type(value)
    if kind is str or kind is float or value is None:
        return
    if kind is int:
        if -INT64 <= value < INT64:
            return
        raise RequestError(422, f"{where}: the integer {value} is out of range (64-bit)", row=row, column=column)
    raise RequestError(422, f"{where}: expected a number, a string or null, got {_json_type(value)}",
                       row=row, column=column)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def encoding_problems(problems: list[dict], form: str) -> RequestError:
    """422 for the rows :func:`~ctrkit.data.frames.encode_rows` could not read (0-based row indices)."""
    first = problems[0]
    where = f"rows[{first['row']}].{first['column']}" if form == "rows" else f"columns.{first['column']}[{first['row']}]"
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return RequestError(422, f"{where}: {first['reason']}{more}", problems=problems[:20])
