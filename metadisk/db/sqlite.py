"""The embedded database: SQLite through twisted.enterprise.adbapi."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from attrs import define
from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.python.failure import Failure
from zope.interface import implementer

from metadisk.db import DatabaseUnavailable
from metadisk.interfaces import IDatabase, ITransaction

T = TypeVar("T")


WAL_ATTEMPTS = 100  # …a tenth of a second apart
# Rows ANALYZE reads from each index: its statistics are estimates, and its cost stays within
# tens of milliseconds however large the catalog (18 ms at a million files).
ANALYSIS_LIMIT = 1000


def _prepare(connection: sqlite3.Connection) -> None:
    """On the pool thread, for each new connection."""
    # Turning a new file to WAL takes a lock that SQLite refuses at once, without its
    # busy timeout, when another process is doing the same: try again for a while.
    for attempt in range(WAL_ATTEMPTS):
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or attempt == WAL_ATTEMPTS - 1:
                raise
            time.sleep(0.1)
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute("PRAGMA foreign_keys=ON")
    connection.execute(f"PRAGMA analysis_limit={ANALYSIS_LIMIT}")


@implementer(ITransaction)
@define
class _CursorTransaction:
    """Runs statements on the pool thread's cursor; each returns a fired Deferred."""

    _cursor: Any

    def query(self, sql: str, params: tuple = ()) -> Deferred[list[tuple]]:
        self._cursor.execute(sql, params)
        return succeed(self._cursor.fetchall())

    def execute(self, sql: str, params: tuple = ()) -> Deferred[int]:
        self._cursor.execute(sql, params)
        return succeed(self._cursor.rowcount)


def _interact(cursor: Any, work: Callable[[ITransaction], Awaitable[T]]) -> T:
    """
    Run the async C{work} to completion on the pool thread, in a transaction
    taken for writing at once. Its statements return fired Deferreds, so the
    coroutine never suspends; adbapi commits when it returns and rolls back
    when it raises.
    """
    cursor.execute("BEGIN IMMEDIATE")
    outcome: list[Any] = []
    ensureDeferred(work(_CursorTransaction(cursor))).addBoth(outcome.append)
    if not outcome:
        raise RuntimeError("a transaction may only wait for its own statements")
    result = outcome[0]
    if isinstance(result, Failure):
        result.raiseException()
    return result


def _query(cursor: Any, sql: str, params: tuple) -> list[tuple]:
    cursor.execute(sql, params)
    return cursor.fetchall()


def _execute(cursor: Any, sql: str, params: tuple) -> int:
    cursor.execute(sql, params)
    return cursor.rowcount


def _optimize(cursor: Any, first: bool) -> None:
    if first:
        # Before SQLite 3.46 (Debian 12 has 3.40) PRAGMA optimize looks only at the tables
        # this connection has queried, none at start: a catalog grown since the last
        # statistics would be planned from them (a scan of files for the status) until the
        # first periodic run. ANALYZE, bounded by analysis_limit, looks at every table.
        cursor.execute("ANALYZE")
    cursor.execute("PRAGMA optimize")


def _unavailable(failure: Failure) -> Failure:
    if failure.check(sqlite3.OperationalError) and "unable to open" in str(failure.value):
        raise DatabaseUnavailable(str(failure.value))
    return failure


@implementer(IDatabase)
@define
class SQLiteDatabase:
    """One connection on one thread: SQLite has a single writer anyway."""

    dialect = "sqlite"
    _pool: adbapi.ConnectionPool
    _optimized: bool = False

    @classmethod
    def open(cls, path: str, reactor: Any) -> SQLiteDatabase:
        pool = adbapi.ConnectionPool(
            "sqlite3",
            path,
            timeout=30,  # busy timeout: wait for another process's write, don't fail
            isolation_level=None,  # autocommit; transactions are explicit
            check_same_thread=False,
            cp_min=1,
            cp_max=1,
            cp_openfun=_prepare,
            cp_reactor=reactor,
        )
        return cls(pool)

    def query(self, sql: str, params: tuple = ()) -> Deferred[list[tuple]]:
        return self._pool.runInteraction(_query, sql, params).addErrback(_unavailable)

    def execute(self, sql: str, params: tuple = ()) -> Deferred[int]:
        return self._pool.runInteraction(_execute, sql, params).addErrback(_unavailable)

    def transaction(self, work: Callable[[ITransaction], Awaitable[T]]) -> Deferred[T]:
        return self._pool.runInteraction(_interact, work).addErrback(_unavailable)

    def optimize(self) -> Deferred[None]:
        """
        SQLite keeps no statistics by itself: ANALYZE at the first call (the
        database as it is at start), PRAGMA optimize (the tables whose size
        changed much since) at the next ones; both bounded by analysis_limit.
        """
        first, self._optimized = not self._optimized, True
        return self._pool.runInteraction(_optimize, first).addErrback(_unavailable)

    def close(self) -> Deferred[None]:
        self._pool.close()
        return succeed(None)
