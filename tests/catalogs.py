"""
A node's catalog as it looks after a year, built fast in the node's own
schema: C{files} files, each with a copy on each of C{hosts}, published in
batches of L{BATCH} (chain_queue, chain_batches, chain_entries, chain_records)
and read back from the chain (chain_claims), and the reader's last blocks.

The rows are made by the database itself (INSERT … SELECT over a recursive
count on SQLite, over generate_series on PostgreSQL), one statement a table,
so that millions of files take minutes, not hours. Filehashes are 64 hex
digits, ascending with the file's number (the indexes are filled at their
end, as fast as they can be) and scattered after the first twelve. Used by
tests/test_query_plans.py and bench/scale.py.
"""

from __future__ import annotations

from metadisk.interfaces import IDatabase

BATCH = 50  # records a published batch carries (one block each)
FIRST_HEIGHT = 1000  # where the first batch was read
SIZE = 10_240  # bytes of each file
RESCAN_DEPTH = 10  # the reader's kept blocks
START = 1_700_000_000  # the catalog's first second


def filehash_sql(dialect: str, i: str = "i") -> str:
    """The SQL for the filehash of the C{i}-th file (see L{filehash})."""
    if dialect == "sqlite":
        return f"printf('%012x%052x', {i}, ({i} * 2654435761) % 4294967296)"
    return f"lpad(to_hex({i}), 12, '0') || lpad(to_hex(({i} * 2654435761) % 4294967296), 52, '0')"


def filehash(i: int) -> str:
    """The filehash of the C{i}-th file of a built catalog."""
    return f"{i:012x}{(i * 2654435761) % 4294967296:052x}"


def txid_sql(dialect: str, b: str) -> str:
    """The first txid of the C{b}-th batch: 64 hex digits."""
    if dialect == "sqlite":
        return f"printf('%064x', {b} + 4294967296)"
    return f"lpad(to_hex({b}::bigint + 4294967296), 64, '0')"


def _numbers(dialect: str, last: int) -> str:
    """A FROM clause of one column C{i}, 0 to C{last}."""
    if dialect == "sqlite":
        return (
            f"(WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {last})"
            " SELECT i FROM n) AS n"
        )
    return f"generate_series(0, {last}) AS n(i)"


async def build(
    db: IDatabase, files: int, hosts: tuple[str, ...] = ("local1", "local2", "local3")
) -> None:
    """Fill an empty, migrated database with a catalog of C{files} files."""
    d = db.dialect
    h = filehash_sql(d)
    b = f"(i / {BATCH})"  # the file's batch
    batches = (files + BATCH - 1) // BATCH
    uploads = ", ".join(f'{{"host_name": "{name}", "url": ""}}' for name in hosts)
    # The record as the publisher wrote it (FileRecord.to_json), built by the database.
    record = (
        f"""'{{"datetime": "' || ({START} + i) || '", "filehash": "' || {h} || '",'"""
        f""" || ' "filename": "' || substr({h}, 1, 7) || '_file' || i || '.bin",'"""
        f""" || ' "filesize": {SIZE}, "uploads": [{uploads}], "version": "0.2"}}'"""
    )
    numbers = _numbers(d, files - 1)
    statements = [
        "INSERT INTO files (filehash, filename, filesize, datetime, version)"
        f" SELECT {h}, substr({h}, 1, 7) || '_file' || i || '.bin', {SIZE}, {START} + i, '0.2'"
        f" FROM {numbers}",
        *(
            "INSERT INTO uploads (filehash, host_name, url, added, checked)"
            f" SELECT {h}, '{name}', '', {START} + i + {k}, NULL FROM {numbers}"
            for k, name in enumerate(hosts)
        ),
        "INSERT INTO chain_batches (id, node_id, payload, regions, created, attempts,"
        " next_attempt, first_txid, published)"
        f" SELECT {txid_sql(d, 'i')}, 'node', '[]', '[]', {START} + i * {BATCH}, 0,"
        f" {START} + i * {BATCH}, {txid_sql(d, 'i')}, {START} + i * {BATCH} + 60"
        f" FROM {_numbers(d, batches - 1)}",
        "INSERT INTO chain_entries (batch_id, idx, entry, tag, txid, raw, state, started)"
        f" SELECT {txid_sql(d, 'i')}, 0, '', 'metadisk', {txid_sql(d, 'i')}, NULL, 'sent',"
        f" {START} + i * {BATCH} FROM {_numbers(d, batches - 1)}",
        "INSERT INTO chain_queue (filehash, enqueued, state, batch_id, filesize)"
        f" SELECT {h}, {START} + i, 'published', {txid_sql(d, b)}, {SIZE} FROM {numbers}",
        "INSERT INTO chain_records (filehash, record, txid, height)"
        f" SELECT {h}, {record}, {txid_sql(d, b)}, {FIRST_HEIGHT} + {b} FROM {numbers}",
        "INSERT INTO chain_claims (txid, idx, filehash, height, position, filesize, record)"
        f" SELECT {txid_sql(d, b)}, i % {BATCH}, {h}, {FIRST_HEIGHT} + {b}, 1, {SIZE}, {record}"
        f" FROM {numbers}",
    ]
    tip = FIRST_HEIGHT + batches - 1
    for height in range(tip - RESCAN_DEPTH + 1, tip + 1):
        statements.append(
            f"INSERT INTO chain_blocks (height, hash) VALUES ({height}, '{height:064x}')"
        )
    if d == "sqlite":
        # This connection's own, for the load: a cache that holds the indexes being filled,
        # and no flush per statement (a crash in the middle leaves a catalog to build again).
        statements[:0] = ["PRAGMA cache_size = -1048576", "PRAGMA synchronous = OFF"]
    for statement in statements:
        await db.execute(statement)


def record_of(i: int, hosts: tuple[str, ...] = ("local1", "local2", "local3")) -> dict:
    """The record the C{i}-th file was published with."""
    h = filehash(i)
    return {
        "datetime": str(START + i),
        "filehash": h,
        "filename": f"{h[:7]}_file{i}.bin",
        "filesize": SIZE,
        "uploads": [{"host_name": name, "url": ""} for name in hosts],
        "version": "0.2",
    }
