"""Versioned schema migrations: C{migrations/NNN-name.sql}, applied in order, once."""

from __future__ import annotations

import re
from importlib import resources

from metadisk.interfaces import IDatabase, ITransaction

_NAME = re.compile(r"(\d{3})-[a-z0-9-]+\.sql")
# pg_advisory_xact_lock key: nodes sharing a PostgreSQL database migrate one at a time.
_MIGRATION_LOCK = 0x6D657461  # "meta"


def migrations() -> list[tuple[int, str]]:
    """(version, SQL text) of every migration, oldest first."""
    found = []
    for entry in resources.files("metadisk.db.migrations").iterdir():
        match = _NAME.fullmatch(entry.name)
        if match:
            found.append((int(match.group(1)), entry.read_text("utf-8")))
    return sorted(found)


def statements(sql: str) -> list[str]:
    """The statements of a migration; they hold no semicolons inside literals."""
    lines = [line for line in sql.splitlines() if not line.lstrip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


async def migrate(database: IDatabase, version: int | None = None) -> int:
    """Bring the schema up to C{version}, the newest by default; return that version."""

    async def create(txn: ITransaction) -> None:
        await _serialize(database, txn)
        await txn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY)")

    await database.transaction(create)
    newest = 0
    for number, sql in migrations():
        if version is not None and number > version:
            break
        newest = number

        async def apply(txn: ITransaction, number: int = number, sql: str = sql) -> None:
            await _serialize(database, txn)
            if await txn.query("SELECT 1 FROM schema_version WHERE version = ?", (number,)):
                return
            for statement in statements(sql):
                await txn.execute(statement)
            await txn.execute("INSERT INTO schema_version (version) VALUES (?)", (number,))

        await database.transaction(apply)
    return newest


async def _serialize(database: IDatabase, txn: ITransaction) -> None:
    """
    On PostgreSQL, hold the migration lock until this transaction ends: nodes
    starting together would otherwise race to create the same tables. (SQLite's
    transactions are serialized already.)
    """
    if database.dialect == "postgresql":
        await txn.query("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))
