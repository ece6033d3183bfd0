"""``ctrkit inspect STORE``: what a store holds, readably."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("inspect", help="describe a store", description="Print a store's metadata readably.")
    parser.add_argument("store", help="store directory")
    parser.add_argument("--json", action="store_true", help="print the raw metadata as JSON")
    parser.set_defaults(func=run)


def describe_store(store) -> str:
    """A human-readable summary of a store's metadata."""
    meta = store.meta
    lines = [
        f"store       {store.path}",
        f"format      {meta['format']} v{meta['format_version']} (ctrkit {meta.get('ctrkit_version', '?')}), "
        f"created {meta.get('created', '?')}, {meta.get('chunk_rows', '?')} rows per chunk",
        f"source      {meta.get('source_format', '?')}  options {_options(meta.get('options', {}))}",
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
    for source in meta.get("sources", []):
        lines.append(
            f"source file {source['path']} ({source.get('role', '?')}): {source.get('lines', 0):,} lines, "
            f"{source.get('skipped', 0):,} skipped, {source['bytes']:,} bytes, sha256(head+tail) {source['sha256_head_tail'][:16]}…"
        )
    bad = meta.get("bad_rows", {})
    if bad.get("count"):
        lines.append(f"malformed   {bad['count']:,} rows skipped; first:")
        lines += [f"            {e['file']}:{e['line']} field {e['field']}: {e['reason']}" for e in bad["examples"]]
    return "\n".join(lines)


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


def run(args: argparse.Namespace) -> int:
    import json

    from ctrkit.data.store import Store

    store = Store(args.store)
    print(json.dumps(store.meta, indent=2, sort_keys=True) if args.json else describe_store(store))
    return 0
