"""
PostgreSQL through txpostgres: the production database, one truth for every
node that shares it.

A fixed pool of asynchronous connections (no threads). Each connection has a
L{DeadConnectionDetector}: when it is lost (the server restarted, an
administrator terminated it, it stopped answering) it is marked dead and
reconnected in the background with a capped backoff. A call waits for a live
connection while there is one, however busy (busy is not unavailable); when
none is alive, or its connection is lost under it, or PostgreSQL does not
answer in time, it fails with L{DatabaseUnavailable}, which the API answers
with 503.
"""

from __future__ import annotations

import functools
import re
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg2
from attrs import define, evolve, field, frozen
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredLock,
    ensureDeferred,
    maybeDeferred,
    succeed,
)
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from txpostgres import reconnection, retrying, txpostgres
from zope.interface import implementer

from metadisk.db import DatabaseUnavailable
from metadisk.interfaces import IDatabase, ITransaction

T = TypeVar("T")

POOL_SIZE = 8
CONNECT_TIMEOUT = 5.0  # libpq ignores connect_timeout on asynchronous connections
QUERY_TIMEOUT = 10.0  # from the moment a call has a connection, not while it waits for one
# A migration's transaction may build an index over every copy: 24 s at ten million files here
# (README, "A catalog of millions of files"), not the seconds of a request's statement.
MIGRATION_TIMEOUT = 3600.0
RECONNECT_MAX_DELAY = 2.0
# Options of ours in the URL's query string; libpq would reject them.
_OUR_OPTIONS = {"pool_size", "connect_timeout", "query_timeout"}

# A quoted literal or identifier, a comment, a placeholder or a percent sign.
_TOKENS = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|--[^\n]*|/\*.*?\*/|\?|%", re.S)


@functools.lru_cache(maxsize=512)
def translate(sql: str) -> str:
    """
    The shared SQL in psycopg2's parameter style: C{?} becomes C{%s}, outside
    literals and comments only; every C{%} is doubled, since psycopg2 formats
    the whole text (literals included) whenever parameters are given.
    """

    def replace(match: re.Match[str]) -> str:
        token = match.group(0)
        if token == "?":
            return "%s"
        return token.replace("%", "%%")

    return _TOKENS.sub(replace, sql)


class QueryTimeout(Exception):
    """PostgreSQL did not answer a statement in time."""


class ConnectTimeout(Exception):
    """PostgreSQL did not complete a connection in time."""


def _reconnection_delays() -> Iterator[float]:
    # Never 0: a reconnection must not run inside the close() that found the connection dead.
    return retrying.simpleBackoffIterator(
        initialDelay=0.05, maxDelay=RECONNECT_MAX_DELAY, factor=2.0, maxRetries=0, now=False
    )


class _Detector(reconnection.DeadConnectionDetector):
    """
    txpostgres' detector, made stoppable (a closed pool must not reconnect,
    nor leave a timer behind) and quiet (its reconnection never fails, and a
    cancelled one is not an error to log).
    """

    def __init__(
        self,
        death_checker: Callable[[Failure], bool],
        clock: IReactorTime,
        changed: Callable[[], None],
    ) -> None:
        super().__init__(death_checker, _reconnection_delays, clock)
        self._changed = changed  # told when the connection dies or comes back
        self._retrying: Deferred[Any] | None = None
        self._stopped = False

    def startReconnecting(self, f: Failure) -> None:
        if self._stopped:
            return
        call = retrying.RetryingCall(self.reconnect)
        call.reactor = self.reactor
        self._retrying = call.start(self.reconnectionIterator())
        self._retrying.addCallbacks(self._recovered, lambda f: f.trap(CancelledError))
        self._changed()

    def _recovered(self, _: object) -> None:
        self._retrying = None
        self.connectionRecovered()
        self._changed()

    def stop(self) -> None:
        self._stopped = True
        if self._retrying is not None:
            self._retrying.cancel()


class _Connection(txpostgres.Connection):
    """A txpostgres connection with a connect timeout and its own detector."""

    def __init__(
        self,
        reactor: Any,
        clock: IReactorTime,
        connect_timeout: float,
        changed: Callable[[], None],
    ) -> None:
        super().__init__(reactor=reactor, detector=_Detector(self._is_dead, clock, changed))
        self._clock = clock
        self._connect_timeout = connect_timeout

    @property
    def broken(self) -> bool:
        return (
            self.detector.connectionIsDead
            or self._connection is None
            or bool(self._connection.closed)
        )

    def _is_dead(self, failure: Failure) -> bool:
        if failure.check(psycopg2.InterfaceError, txpostgres.RollbackFailed, QueryTimeout):
            return True
        # A deadlock or a cancelled statement is an OperationalError too, on a live connection.
        return bool(failure.check(psycopg2.OperationalError)) and self.broken

    def connect(self, *args: Any, **kwargs: Any) -> Deferred[Any]:
        """
        txpostgres' connect, bounded in time, and cancellable (its own Deferred
        refuses cancellation until PostgreSQL answers, which may be never).
        """
        connecting = super().connect(*args, **kwargs)
        if connecting.called:
            return connecting
        cancelled = False

        def cancel(_: Deferred[Any]) -> None:
            nonlocal cancelled
            cancelled = True
            self.close()  # the connection attempt fails at once

        connected: Deferred[Any] = Deferred(cancel)
        timer = self._clock.callLater(self._connect_timeout, self.close)

        def done(result: Any) -> None:
            if connected.called:
                return  # cancelled, and answered so, before the attempt ended
            if timer.active():
                timer.cancel()
            elif isinstance(result, Failure):
                result = Failure(ConnectTimeout(f"no connection within {self._connect_timeout} s"))
            if cancelled:
                result = Failure(CancelledError())
            if isinstance(result, Failure):
                connected.errback(result)
            else:
                connected.callback(result)

        connecting.addBoth(done)
        return connected

    def close(self) -> None:
        if self._connection is not None:
            super().close()

    def doRead(self) -> Any:
        # An error on an idle connection (the server went away) is its end, not a bug to
        # log: returned, the reactor disconnects it and the detector reconnects it.
        try:
            return super().doRead()
        except psycopg2.Error as e:
            return e

    def abandon(self, reason: Failure) -> None:
        """Mark it dead (a new connection will be made) and close it now."""
        self.detector.checkForDeadConnection(reason)
        self.close()

    def shut(self) -> None:
        self.detector.stop()
        self.close()

    def runStatement(self, sql: str, params: tuple, extract: Callable[[Any], T]) -> Deferred[T]:
        """One statement on its own (the connection is in autocommit)."""
        return self._doit(self._runStatement, sql, params, extract)

    def _runStatement(self, sql: str, params: tuple, extract: Callable[[Any], T]) -> Deferred[T]:
        return self.cursor().execute(sql, params).addCallback(extract)


def _rows(cursor: Any) -> list[tuple]:
    return cursor.fetchall() if cursor.description is not None else []


def _rowcount(cursor: Any) -> int:
    return cursor.rowcount


@implementer(ITransaction)
@define
class _CursorTransaction:
    """The statements of one txpostgres interaction, one at a time on its cursor."""

    _cursor: Any
    # A transaction's statements may be started together; the connection runs one at once,
    # and a result must be read before the next statement replaces it.
    _lock: DeferredLock = field(factory=DeferredLock)

    def query(self, sql: str, params: tuple = ()) -> Deferred[list[tuple]]:
        return self._lock.run(self._run, sql, params, _rows)

    def execute(self, sql: str, params: tuple = ()) -> Deferred[int]:
        return self._lock.run(self._run, sql, params, _rowcount)

    def _run(self, sql: str, params: tuple, extract: Callable[[Any], T]) -> Deferred[T]:
        return self._cursor.execute(translate(sql), tuple(params)).addCallback(extract)


_UNAVAILABLE = (
    reconnection.ConnectionDead,
    QueryTimeout,
    ConnectTimeout,
    txpostgres.RollbackFailed,
    psycopg2.InterfaceError,
    ConnectionDone,
    ConnectionLost,
)


class _Pool(txpostgres.ConnectionPool):
    """
    txpostgres' pool of connections, with its own queue of calls: a call
    takes a live connection, or waits for one while any connection is alive
    (busy is not unavailable); when every connection is dead it fails at
    once. Every call has a timeout, and closing reaches the connections in
    use too.
    """

    def __init__(
        self,
        dsn: str,
        reactor: Any,
        clock: IReactorTime,
        size: int,
        connect_timeout: float,
        query_timeout: float,
    ) -> None:
        self.reactor = reactor
        self.min = size
        self.connectionFactory = lambda reactor, _cooperator: _Connection(
            reactor, clock, connect_timeout, self._dispatch
        )
        super().__init__(None, dsn)
        self._all: list[_Connection] = list(self.connections)
        self._clock = clock
        self._query_timeout = query_timeout
        self._waiting: deque[tuple[Callable[[_Connection], Deferred[Any]], Deferred[Any]]] = deque()
        self._dispatching = False
        self._closed = False

    def run(self, operation: Callable[[_Connection], Deferred[T]]) -> Deferred[T]:
        """
        Run C{operation} on a connection, waiting for one if need be. The
        result fires when the operation ends or its time is up; the
        connection is given back when the operation has really ended.
        """
        outcome: Deferred[T] = Deferred()
        if self._closed:
            outcome.errback(DatabaseUnavailable("the database is closed"))
        else:
            self._waiting.append((operation, outcome))
            self._dispatch()
        if not outcome.called:
            return outcome
        # It failed before any I/O (a dead connection). Answer on the next turn all the
        # same: adbapi never answers within the call, and callers may rely on it.
        later: Deferred[T] = Deferred()
        self.reactor.callLater(0, outcome.chainDeferred, later)
        return later

    def _dispatch(self) -> None:
        """Start the waiting calls that can start; called whenever a connection changes."""
        if self._dispatching:
            return  # the loop below sees the change
        self._dispatching = True
        try:
            while self._waiting and (connection := self._choose()) is not None:
                self._start(connection, *self._waiting.popleft())
        finally:
            self._dispatching = False

    def _choose(self) -> _Connection | None:
        free = sorted(self.connections, key=lambda c: c.broken)
        if not free:
            return None
        if not free[0].broken:
            return free[0]
        if any(not c.broken for c in self._all):
            return None  # the live ones are busy: wait for one of them
        return free[0]  # all dead: fail now, not after a timeout

    def _start(
        self,
        connection: _Connection,
        operation: Callable[[_Connection], Deferred[Any]],
        outcome: Deferred[Any],
    ) -> None:
        # Run even when the caller has stopped waiting (cancelled): like adbapi, a statement
        # once asked for is carried out. A transfer settles in a `finally` that a client
        # going away cancels; skipping it would leave the reservation open.
        self.connections.remove(connection)
        timer = self._clock.callLater(self._query_timeout, self._expire, connection, outcome)

        def finished(result: Any) -> None:
            if timer.active():
                timer.cancel()
            self.connections.add(connection)
            if not outcome.called:  # else reported already: timed out or cancelled
                if isinstance(result, Failure):
                    outcome.errback(_unavailable(result, connection))
                else:
                    outcome.callback(result)
            self._dispatch()

        maybeDeferred(operation, connection).addBoth(finished)

    def _expire(self, connection: _Connection, outcome: Deferred[Any]) -> None:
        seconds = self._query_timeout
        if not outcome.called:
            outcome.errback(DatabaseUnavailable(f"PostgreSQL did not answer within {seconds} s"))
        # Closing ends the statement in flight; the connection is made again.
        connection.abandon(Failure(QueryTimeout(seconds)))

    def close(self) -> None:
        self._closed = True
        while self._waiting:
            _, outcome = self._waiting.popleft()
            if not outcome.called:
                outcome.errback(DatabaseUnavailable("the database is closed"))
        for connection in self._all:
            connection.shut()


def _unavailable(failure: Failure, connection: _Connection) -> Failure:
    """Lost connections become L{DatabaseUnavailable}; every other error is left as it is."""
    if failure.check(*_UNAVAILABLE) or (
        failure.check(psycopg2.OperationalError) and connection.broken
    ):
        reason = " ".join(failure.getErrorMessage().split()) or failure.type.__name__
        return Failure(DatabaseUnavailable(f"PostgreSQL unavailable: {reason}"))
    return failure


@frozen
class PostgresSettings:
    """Where to connect and how, from a C{postgresql://} URL."""

    dsn: str
    pool_size: int = POOL_SIZE
    connect_timeout: float = CONNECT_TIMEOUT
    query_timeout: float = QUERY_TIMEOUT

    @classmethod
    def from_url(cls, url: str) -> PostgresSettings:
        """
        Our options (C{pool_size}, C{connect_timeout}, C{query_timeout}) are
        taken out of the query string; the rest is libpq's. Connections are
        named C{metadisk} in C{pg_stat_activity} unless the URL names them.
        """
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        ours = {k: v for k, v in query if k in _OUR_OPTIONS}
        theirs = [(k, v) for k, v in query if k not in _OUR_OPTIONS]
        if not any(k == "application_name" for k, _ in theirs):
            theirs.append(("application_name", "metadisk"))
        try:
            settings = cls(
                dsn=urlunsplit(parts._replace(query=urlencode(theirs))),
                pool_size=int(ours.get("pool_size", POOL_SIZE)),
                connect_timeout=float(ours.get("connect_timeout", CONNECT_TIMEOUT)),
                query_timeout=float(ours.get("query_timeout", QUERY_TIMEOUT)),
            )
        except ValueError as e:
            raise ValueError(f"bad option in the database URL: {e}") from None
        if settings.pool_size < 1 or settings.connect_timeout <= 0 or settings.query_timeout <= 0:
            raise ValueError("pool_size, connect_timeout and query_timeout must be positive")
        return settings


@implementer(IDatabase)
@define
class PostgresDatabase:
    dialect = "postgresql"
    _pool: _Pool

    @classmethod
    async def open(
        cls,
        url: str,
        reactor: Any,
        clock: IReactorTime | None = None,
        query_timeout: float | None = None,
    ) -> PostgresDatabase:
        """
        Connect the whole pool, or fail with L{DatabaseUnavailable}. C{clock}
        times the timeouts and reconnections (the reactor by default);
        C{query_timeout}, if given, is instead of the URL's.
        """
        settings = PostgresSettings.from_url(url)
        if query_timeout is not None:
            settings = evolve(settings, query_timeout=query_timeout)
        pool = _Pool(
            settings.dsn,
            reactor,
            clock or reactor,
            settings.pool_size,
            settings.connect_timeout,
            settings.query_timeout,
        )
        try:
            await pool.start()
        except Exception as e:
            pool.close()
            reason = e.subFailure.getErrorMessage() if hasattr(e, "subFailure") else str(e)
            reason = " ".join(reason.split())  # libpq's messages span lines; a log line does not
            raise DatabaseUnavailable(f"cannot connect to PostgreSQL: {reason}") from None
        return cls(pool)

    def query(self, sql: str, params: tuple = ()) -> Deferred[list[tuple]]:
        return self._pool.run(
            lambda connection: connection.runStatement(translate(sql), tuple(params), _rows)
        )

    def execute(self, sql: str, params: tuple = ()) -> Deferred[int]:
        return self._pool.run(
            lambda connection: connection.runStatement(translate(sql), tuple(params), _rowcount)
        )

    def transaction(
        self, work: Callable[[ITransaction], Awaitable[T]], *, brief: bool = False
    ) -> Deferred[T]:
        # brief changes nothing: txpostgres waits for the server without a thread.
        return self._pool.run(
            lambda connection: connection.runInteraction(
                lambda cursor: ensureDeferred(work(_CursorTransaction(cursor)))
            )
        )

    def read(
        self, work: Callable[[ITransaction], Awaitable[T]], *, brief: bool = False
    ) -> Deferred[T]:
        # A transaction like any other: PostgreSQL's readers wait for no writer.
        return self.transaction(work)

    def optimize(self) -> Deferred[None]:
        """Nothing to do: autovacuum analyzes each table as it changes (README, operators)."""
        return succeed(None)

    def close(self) -> Deferred[None]:
        self._pool.close()
        return succeed(None)
