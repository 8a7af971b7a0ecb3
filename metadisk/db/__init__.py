"""The node's database: one interface, SQLite (embedded) and PostgreSQL."""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet.interfaces import IReactorCore

from metadisk.interfaces import IDatabase, ITransaction


class DatabaseUnavailable(Exception):
    """The database cannot be reached (as opposed to merely busy)."""


async def open_database(url: str, reactor: IReactorCore, version: int | None = None) -> IDatabase:
    """
    Connect to the database named by C{url}, bring its schema up to date
    (up to C{version}: an older schema, for tests of the migrations) and its
    planner's statistics.
    """
    from metadisk.db.migrate import migrate

    if url.startswith("sqlite:///"):
        from metadisk.db.sqlite import SQLiteDatabase

        database: IDatabase = SQLiteDatabase.open(url.removeprefix("sqlite:///"), reactor)
        migrating = database
    elif url.startswith(("postgresql://", "postgres://")):
        from metadisk.db.postgres import MIGRATION_TIMEOUT, PostgresDatabase

        # The migrations on connections of their own, which wait as long as one takes.
        migrating = await PostgresDatabase.open(url, reactor, query_timeout=MIGRATION_TIMEOUT)
        try:
            await migrate(migrating, version)
        finally:
            await migrating.close()
        database = await PostgresDatabase.open(url, reactor)
    else:
        raise ValueError(f"unsupported database URL: {url}")
    try:
        if migrating is database:
            await migrate(database, version)
        await database.optimize()
    except BaseException:
        await database.close()
        raise
    return database


IN_BATCH = 500  # values bound in one IN (...): well below SQLite's limit of 32766


async def matching(
    database: IDatabase, values: Sequence[str], sql: str, extra: tuple = ()
) -> set[str]:
    """
    The first column of C{sql} run over C{values}, a batch at a time: C{sql}
    has one C{IN ({marks})}, C{{marks}} standing for the batch's placeholders,
    and then the parameters C{extra}.
    """
    found: set[str] = set()
    for start in range(0, len(values), IN_BATCH):
        batch = tuple(values[start : start + IN_BATCH])
        marks = ", ".join("?" * len(batch))
        rows = await database.query(sql.format(marks=marks), (*batch, *extra))
        found.update(row[0] for row in rows)
    return found


async def insert_rows(
    txn: ITransaction, sql: str, rows: Sequence[tuple], per_statement: int
) -> None:
    """
    C{sql} ("INSERT INTO t (a, b) VALUES {rows} ON CONFLICT ...") run over
    C{rows}, C{per_statement} of them a statement, C{{rows}} standing for a
    statement's tuples of placeholders: many rows in few round trips, none
    binding more values than SQLite allows.
    """
    for start in range(0, len(rows), per_statement):
        batch = rows[start : start + per_statement]
        row = "(" + ", ".join("?" * len(batch[0])) + ")"
        values = tuple(value for each in batch for value in each)
        await txn.execute(sql.format(rows=", ".join([row] * len(batch))), values)
