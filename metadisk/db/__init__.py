"""The node's database: one interface, SQLite (embedded) and PostgreSQL."""

from __future__ import annotations

from twisted.internet.interfaces import IReactorCore

from metadisk.interfaces import IDatabase


class DatabaseUnavailable(Exception):
    """The database cannot be reached (as opposed to merely busy)."""


async def open_database(url: str, reactor: IReactorCore) -> IDatabase:
    """Connect to the database named by C{url} and bring its schema up to date."""
    from metadisk.db.migrate import migrate

    if url.startswith("sqlite:///"):
        from metadisk.db.sqlite import SQLiteDatabase

        database: IDatabase = SQLiteDatabase.open(url.removeprefix("sqlite:///"), reactor)
    elif url.startswith(("postgresql://", "postgres://")):
        from metadisk.db.postgres import PostgresDatabase

        database = await PostgresDatabase.open(url, reactor)
    else:
        raise ValueError(f"unsupported database URL: {url}")
    try:
        await migrate(database)
    except BaseException:
        await database.close()
        raise
    return database
