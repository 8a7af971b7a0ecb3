"""
Bandwidth meters: bytes in and out, in total and per calendar month (UTC),
kept in the database; the recent rate; and the monthly caps.
"""

from __future__ import annotations

import collections
import datetime

from attrs import define, field
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from metadisk.interfaces import IDatabase, ITransaction

INCOMING = "incoming"
OUTGOING = "outgoing"
DIRECTIONS = (INCOMING, OUTGOING)
RATE_WINDOW = 5  # seconds over which status.bandwidth.rate is measured


class TransferLimitReached(Exception):
    """The transfer would take this month past its cap."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(retry_after)
        self.retry_after = retry_after


def month_of(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m")


def seconds_to_next_month(seconds: float) -> int:
    now = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    first = datetime.datetime(
        now.year + now.month // 12, now.month % 12 + 1, 1, tzinfo=datetime.UTC
    )
    return max(1, int((first - now).total_seconds()))


@define
class _RateWindow:
    """Bytes per whole second for the last few seconds."""

    _buckets: collections.deque[list[int]] = field(factory=collections.deque)

    def add(self, second: int, n: int) -> None:
        if self._buckets and self._buckets[-1][0] == second:
            self._buckets[-1][1] += n
        else:
            self._buckets.append([second, n])
        while self._buckets and self._buckets[0][0] <= second - RATE_WINDOW - 1:
            self._buckets.popleft()

    def rate(self, now: float) -> int:
        current = int(now)
        recent = sum(n for s, n in self._buckets if current - RATE_WINDOW <= s < current)
        return recent // RATE_WINDOW


@define(kw_only=True)
class Meters:
    """
    Counts bytes as they flow, by direction and by the month they flowed in;
    L{flush} adds what was counted to the database (every second or so, and
    at shutdown), so the figures survive restarts and several nodes sharing
    a database add up.
    """

    _db: IDatabase
    _clock: IReactorTime
    monthly_limits: dict[str, int]
    rate_limits: dict[str, int]
    # (direction, month) -> bytes counted here, not yet in the database
    _pending: collections.Counter[tuple[str, str]] = field(factory=collections.Counter)
    _flushing: collections.Counter[tuple[str, str]] = field(factory=collections.Counter)
    # (direction, period) -> bytes as last read from the database
    _stored: dict[tuple[str, str], int] = field(factory=dict)
    _windows: dict[str, _RateWindow] = field(factory=lambda: {d: _RateWindow() for d in DIRECTIONS})

    log = Logger()

    def record(self, direction: str, n: int) -> None:
        if n <= 0:
            return
        now = self._clock.seconds()
        self._pending[direction, month_of(now)] += n
        self._windows[direction].add(int(now), n)

    def check(self, direction: str, n: int) -> None:
        """Raise L{TransferLimitReached} if C{n} more bytes would pass this month's cap."""
        limit = self.monthly_limits.get(direction, 0)
        if limit and self.current(direction) + n > limit:
            raise TransferLimitReached(seconds_to_next_month(self._clock.seconds()))

    def current(self, direction: str) -> int:
        month = month_of(self._clock.seconds())
        return self._stored.get((direction, month), 0) + self._unstored(direction, month)

    def total(self, direction: str) -> int:
        return self._stored.get((direction, "total"), 0) + self._unstored(direction, None)

    def _unstored(self, direction: str, month: str | None) -> int:
        return sum(
            n
            for counter in (self._pending, self._flushing)
            for (d, m), n in counter.items()
            if d == direction and (month is None or m == month)
        )

    def rate(self, direction: str) -> int:
        return self._windows[direction].rate(self._clock.seconds())

    async def flush(self) -> None:
        month = month_of(self._clock.seconds())
        pending, self._pending = self._pending, collections.Counter()
        self._flushing = pending

        async def add(txn: ITransaction) -> None:
            for (direction, when), n in pending.items():
                for period in ("total", when):
                    await txn.execute(
                        "INSERT INTO meters (direction, period, bytes) VALUES (?, ?, ?)"
                        " ON CONFLICT (direction, period)"
                        " DO UPDATE SET bytes = meters.bytes + excluded.bytes",
                        (direction, period, n),
                    )

        if pending:
            try:
                await self._db.transaction(add, brief=True)
            except BaseException:
                # Not written: count it again next time.
                self._pending.update(pending)
                self._flushing = collections.Counter()
                raise
        rows = await self._db.query(
            "SELECT direction, period, bytes FROM meters WHERE period IN ('total', ?)", (month,)
        )
        # Swap both at once: the flushed bytes are now in what was read.
        self._stored = {(direction, period): n for direction, period, n in rows}
        self._flushing = collections.Counter()

    def snapshot(self) -> dict[str, dict[str, int]]:
        """The C{bandwidth} object of C{/api/status}."""
        return {
            "total": {d: self.total(d) for d in DIRECTIONS},
            "current": {d: self.current(d) for d in DIRECTIONS},
            "limits": {d: self.monthly_limits.get(d, 0) for d in DIRECTIONS},
            "rate": {d: self.rate(d) for d in DIRECTIONS},
            "rate_limits": {d: self.rate_limits.get(d, 0) for d in DIRECTIONS},
        }
