"""``ctrkit inspect STORE``: what a store holds, readably; ``--verify`` checks every chunk.

Exit status: 0 when the store opens (and, with ``--verify``, has no problem); 1 when
``--verify`` finds problems (each printed on its own line); 2 when the store cannot be opened at
all (missing, incomplete, unreadable metadata: one line, like every ctrkit error). A store built
before checksums existed (format version 1) is verified as far as it can be (ids, labels, counts)
with a warning on stderr that says to rebuild it; the missing checksums alone do not make it fail.
"""

from __future__ import annotations

import argparse
import sys

EXIT_PROBLEMS = 1


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "inspect",
        help="describe a store, or verify it",
        description=(
            "Print a store's metadata readably. With --verify, read every chunk and check its "
            "checksum, the row counts and the value ranges against the metadata. Exit status: 0 "
            "healthy, 1 problems found (one line each), 2 the store cannot be opened. A store "
            "built before checksums (format 1) passes with a warning to rebuild it."
        ),
    )
    parser.add_argument("store", help="store directory")
    parser.add_argument("--json", action="store_true", help="print the raw metadata as JSON")
    parser.add_argument(
        "--verify", action="store_true", help="check the whole store (checksums, ranges, counts); exit 1 on any problem"
    )
    parser.set_defaults(func=run)


def describe_store(store) -> str:
    """A human-readable summary of a store's metadata.

    Only ``schema`` and ``splits`` are required (the :class:`Store` checks them); every other key
    may be missing or of the wrong type in a damaged or older store and is shown as ``?``.
    """
    meta = store.meta
    lines = [
        f"store       {store.path}",
        f"format      {meta.get('format', '?')} v{meta.get('format_version', '?')} (ctrkit {meta.get('ctrkit_version', '?')}), "
        f"created {meta.get('created', '?')}, {meta.get('chunk_rows', '?')} rows per chunk",
        f"source      {meta.get('source_format', '?')}  options {_options(_mapping(meta.get('options')))}",
        "",
        "split        rows        CTR      chunks",
    ]
    total = 0
    order = {"train": 0, "valid": 1, "test": 2}
    for info in sorted(store.splits.values(), key=lambda i: (order.get(i.name, 3), i.name)):
        ctr = f"{info.ctr:.4f}" if info.labeled else "unlabeled"
        lines.append(f"{info.name:<8} {info.rows:>12,}  {ctr:>9}  {info.num_chunks:>6}")
        total += info.rows
    lines.append(f"{'total':<8} {total:>12,}")
    schema = store.schema
    lines += ["", f"fields      {len(schema.sparse)} sparse, {len(schema.dense)} dense, {len(schema.sequence)} sequence"]
    lines += _field_table(schema)
    lines += [_source_line(_mapping(source)) for source in _sequence(meta.get("sources"))]
    lines += _bad_rows_lines(_mapping(meta.get("bad_rows")))
    return "\n".join(lines)


def _mapping(value) -> dict:
    return value if isinstance(value, dict) else {}


def _sequence(value) -> list:
    return value if isinstance(value, list) else []


def _number(value) -> str:
    return f"{value:,}" if isinstance(value, int) else "?"


def _source_line(source: dict) -> str:
    digest = source.get("sha256_head_tail")
    digest = f"{digest[:16]}…" if isinstance(digest, str) else "?"
    return (
        f"source file {source.get('path', '?')} ({source.get('role', '?')}): {_number(source.get('lines'))} lines, "
        f"{_number(source.get('skipped'))} skipped, {_number(source.get('bytes'))} bytes, sha256(head+tail) {digest}"
    )


def _bad_rows_lines(bad: dict) -> list[str]:
    if not bad.get("count"):
        return []
    lines = [f"malformed   {_number(bad['count'])} rows skipped; first:"]
    for example in map(_mapping, _sequence(bad.get("examples"))):
        lines.append(
            f"            {example.get('file', '?')}:{example.get('line', '?')} "
            f"field {example.get('field', '?')}: {example.get('reason', '?')}"
        )
    return lines


def _options(options: dict) -> str:
    return " ".join(f"{key}={value}" for key, value in sorted(options.items()))


def _field_table(schema) -> list[str]:
    rows = []
    for f in schema.fields:
        if f.kind == "sparse":
            rows.append(f"  {f.name:<14} sparse    vocabulary {f.vocab_size:>10,} (incl. OOV id 0)")
        elif f.kind == "dense":
            rows.append(f"  {f.name:<14} dense")
        else:
            rows.append(f"  {f.name:<14} sequence  max_len {f.max_len}, ids of {f.shares}")
    return rows


def verify_store(store, progress: bool | None = None) -> list[str]:
    """``store.verify()`` with a bar on stderr (``progress=None``: only when it is a terminal)."""
    from tqdm import tqdm

    disable = None if progress is None else not progress
    with tqdm(total=None, unit="values", desc="verify", file=sys.stderr, disable=disable) as bar:

        def on_progress(done: int, total: int) -> None:  # total: chunks and arrays
            bar.total = total
            bar.update(done - bar.n)

        return store.verify(on_progress=on_progress)


def run(args: argparse.Namespace) -> int:
    import json

    from ctrkit.data.store import Store

    store = Store(args.store)
    if not args.verify:
        print(json.dumps(store.meta, indent=2, sort_keys=True) if args.json else describe_store(store))
        return 0
    problems = verify_store(store)
    chunks = sum(info.num_chunks for info in store.splits.values())
    rows = sum(info.rows for info in store.splits.values())
    if store.checksum_warning:  # an old store is not a damaged one: warn, and let the exit status judge the rest
        print(f"ctrkit inspect: warning: {store.checksum_warning}", file=sys.stderr)
    if not problems:
        unchecked = " (ids, labels and counts only: no checksums)" if store.checksum_warning else ""
        print(f"verified: {chunks:,} chunks, {rows:,} rows, no problems{unchecked}")
        return 0
    for problem in problems:
        print(problem)
    print(f"{store.path}: {len(problems)} problem{'s' if len(problems) != 1 else ''} found in {chunks:,} chunks, {rows:,} rows")
    return EXIT_PROBLEMS
