"""
The embedded database: SQLite, in a thread of its own through
twisted.enterprise.adbapi, and, for brief transactions, in the reactor's
thread (docs/architecture.md, "Threads and the GIL").
"""

from __future__ import annotations

import sqlite3
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from attrs import define, field
from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred, ensureDeferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from metadisk.db import DatabaseUnavailable
from metadisk.interfaces import IDatabase, ITransaction

T = TypeVar("T")


WAL_ATTEMPTS = 100  # …a tenth of a second apart
# Rows ANALYZE reads from each index: its statistics are estimates, and its cost stays within
# tens of milliseconds however large the catalog (18 ms at a million files).
ANALYSIS_LIMIT = 1000
# Brief transactions committed in the reactor's thread between two checkpoints in the pool's.
CHECKPOINT_EVERY = 256


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
    _configure(connection)
    connection.execute(f"PRAGMA analysis_limit={ANALYSIS_LIMIT}")


def _configure(connection: sqlite3.Connection) -> None:
    """What every connection to the file sets: the thread's, and the reactor's (L{_open_here})."""
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute("PRAGMA foreign_keys=ON")


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
    """On the pool thread: L{_run} C{work} in a transaction taken for writing at once."""
    cursor.execute("BEGIN IMMEDIATE")
    return _run(cursor, work)


def _read(cursor: Any, work: Callable[[ITransaction], Awaitable[T]]) -> T:
    """On the pool thread: L{_run} C{work} in a transaction that reads one snapshot."""
    cursor.execute("BEGIN")
    return _run(cursor, work)


def _run(cursor: Any, work: Callable[[ITransaction], Awaitable[T]]) -> T:
    """
    Run the async C{work} to completion on C{cursor}. Its statements return
    fired Deferreds, so the coroutine never suspends; the caller commits when
    it returns and rolls back when it raises.
    """
    outcome: list[Any] = []
    ensureDeferred(work(_CursorTransaction(cursor))).addBoth(outcome.append)
    if not outcome:
        raise RuntimeError("a transaction may only wait for its own statements")
    result = outcome[0]
    if isinstance(result, Failure):
        result.raiseException()
    return result


def _open_here(path: str) -> sqlite3.Connection | None:
    """
    The connection for brief transactions in the reactor's thread; None
    until the pool's connection has made the file a WAL one (L{_prepare}).
    """
    # timeout=0: never wait for the lock in the reactor's thread; a busy database is the pool's.
    connection = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        if connection.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            connection.close()
            return None
        _configure(connection)
        # A checkpoint syncs the files: never here (the pool's thread runs them).
        connection.execute("PRAGMA wal_autocheckpoint=0")
    except BaseException:
        connection.close()
        raise
    return connection


def _deliver_to(result: Any, waiting: Deferred[Any]) -> None:
    """A write's result to its caller, unless the caller stopped waiting (cancelled)."""
    if waiting.called:
        if isinstance(result, Failure):
            result.trap(Exception)  # carried out, or not, with nobody waiting: nothing to tell
    elif isinstance(result, Failure):
        waiting.errback(result)
    else:
        waiting.callback(result)


def _checkpoint(cursor: Any) -> None:
    cursor.execute("PRAGMA wal_checkpoint(PASSIVE)")


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
    """
    One connection on one thread (SQLite has a single writer anyway), and one
    in the reactor's thread for brief transactions: when SQLite's lock is
    free they run there and then, and spare the request two hops between
    threads. Writes keep the order they were asked in: while one is in the
    thread, the next ones wait for it, brief or not.
    """

    dialect = "sqlite"
    _pool: adbapi.ConnectionPool
    _path: str
    _here: sqlite3.Connection | None = None
    _writing: bool = False  # a write is in the thread
    # Writes asked for meanwhile, in order: (interaction, its arguments, brief, its answer).
    _waiting: deque[tuple[Callable[..., Any], tuple, bool, Deferred[Any]]] = field(factory=deque)
    _since_checkpoint: int = 0
    _checkpointing: Deferred[None] | None = None
    _optimized: bool = False

    log = Logger()

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
        return cls(pool, path)

    def query(self, sql: str, params: tuple = ()) -> Deferred[list[tuple]]:
        return self._pool.runInteraction(_query, sql, params).addErrback(_unavailable)

    def execute(self, sql: str, params: tuple = ()) -> Deferred[int]:
        return self._write(_execute, sql, params)

    def transaction(
        self, work: Callable[[ITransaction], Awaitable[T]], *, brief: bool = False
    ) -> Deferred[T]:
        return self._write(_interact, work, brief=brief)

    def read(
        self, work: Callable[[ITransaction], Awaitable[T]], *, brief: bool = False
    ) -> Deferred[T]:
        # In WAL mode a read waits for no write, here or in another process: nor does it
        # wait behind the writes queued for the thread.
        if brief:
            done = self._here_run("BEGIN", work)
            if done is not None:
                return done
        return self._pool.runInteraction(_read, work).addErrback(_unavailable)

    def _write(self, interaction: Callable[..., T], *args: Any, brief: bool = False) -> Deferred[T]:
        """
        A write, in the order asked: now if none is before it, else once
        those before it are done (L{_next}).
        """
        if self._writing or self._waiting:
            waiting: Deferred[T] = Deferred()
            self._waiting.append((interaction, args, brief, waiting))
            return waiting
        return self._start(interaction, args, brief)

    def _start(self, interaction: Callable[..., T], args: tuple, brief: bool) -> Deferred[T]:
        if brief:
            done = self._here_run("BEGIN IMMEDIATE", *args, committed=self._committed_here)
            if done is not None:
                return done
        self._writing = True
        d = self._pool.runInteraction(interaction, *args)
        d.addBoth(self._written)
        return d.addErrback(_unavailable)

    def _written(self, result: Any) -> Any:
        self._writing = False
        self._next()
        return result

    def _next(self) -> None:
        """The writes that waited, in order, until one goes to the thread."""
        while self._waiting and not self._writing:
            interaction, args, brief, waiting = self._waiting.popleft()
            self._start(interaction, args, brief).addBoth(_deliver_to, waiting)

    def _here_run(
        self,
        begin: str,
        work: Callable[[ITransaction], Awaitable[T]],
        committed: Callable[[], None] | None = None,
    ) -> Deferred[T] | None:
        """
        C{work} in a transaction begun by C{begin}, in the reactor's thread,
        fired (and C{committed} called once it has); None if it cannot begin
        there (the write lock is taken).
        """
        try:
            if self._here is None:
                self._here = _open_here(self._path)
            if self._here is None:
                return None
            self._here.execute(begin)
        except sqlite3.Error:
            # BEGIN IMMEDIATE found the write lock taken (this node's thread, another node),
            # or the file would not open: the thread waits with its busy timeout.
            return None
        try:
            result = _run(self._here.cursor(), work)
            self._here.execute("COMMIT")
        except BaseException:
            failed = fail()
            try:
                self._here.rollback()
            except sqlite3.Error:
                # Closing rolls back too; the next brief transaction opens a new connection.
                self._here.close()
                self._here = None
            return failed
        if committed is not None:
            committed()
        return succeed(result)

    def _committed_here(self) -> None:
        self._since_checkpoint += 1
        if self._since_checkpoint < CHECKPOINT_EVERY or self._checkpointing is not None:
            return
        self._since_checkpoint = 0

        def done(result: object) -> None:
            self._checkpointing = None
            if isinstance(result, Failure):
                self.log.failure("checkpoint failed", result)

        self._checkpointing = self._pool.runInteraction(_checkpoint)
        self._checkpointing.addBoth(done)

    def optimize(self) -> Deferred[None]:
        """
        SQLite keeps no statistics by itself: ANALYZE at the first call (the
        database as it is at start), PRAGMA optimize (the tables whose size
        changed much since) at the next ones; both bounded by analysis_limit.
        """
        first, self._optimized = not self._optimized, True
        return self._pool.runInteraction(_optimize, first).addErrback(_unavailable)

    def close(self) -> Deferred[None]:
        waiting, self._waiting = self._waiting, deque()
        for *_, answer in waiting:
            answer.errback(DatabaseUnavailable("the database was closed first"))
        if self._here is not None:
            self._here.close()
            self._here = None
        self._pool.close()
        return succeed(None)
