"""Versioned schema migrations: C{migrations/NNN-name.sql}, applied in order, once."""

from __future__ import annotations

import re
from importlib import resources

from metadisk.interfaces import IDatabase, ITransaction

_NAME = re.compile(r"(\d{3})-[a-z0-9-]+\.sql")


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


async def migrate(database: IDatabase) -> int:
    """Bring the schema up to the newest version; return that version."""
    await database.execute(
        "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY)"
    )
    newest = 0
    for version, sql in migrations():
        newest = version

        async def apply(txn: ITransaction, version: int = version, sql: str = sql) -> None:
            if await txn.query("SELECT 1 FROM schema_version WHERE version = ?", (version,)):
                return
            for statement in statements(sql):
                await txn.execute(statement)
            await txn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))

        await database.transaction(apply)
    return newest
