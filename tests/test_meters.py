"""Bandwidth meters on a Clock: totals, calendar months, caps, the recent rate, persistence."""

from __future__ import annotations

import calendar
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from metadisk.db import open_database
from metadisk.meters import (
    INCOMING,
    OUTGOING,
    Meters,
    TransferLimitReached,
    month_of,
    seconds_to_next_month,
)

NOV_30_2026_2359 = calendar.timegm((2026, 11, 30, 23, 59, 0))


class MetersTests(TestCase):
    async def meters(self, clock: Clock, **limits: int):
        db = await open_database(f"sqlite:///{Path(self.mktemp()).resolve()}", reactor)
        self.addCleanup(db.close)
        return db, Meters(
            db=db,
            clock=clock,
            monthly_limits={
                INCOMING: limits.get("incoming", 0),
                OUTGOING: limits.get("outgoing", 0),
            },
            rate_limits={},
        )

    async def test_totals_and_months(self) -> None:
        clock = Clock()
        clock.advance(NOV_30_2026_2359)
        db, meters = await self.meters(clock)
        meters.record(INCOMING, 100)
        meters.record(OUTGOING, 7)
        self.assertEqual((meters.total(INCOMING), meters.current(INCOMING)), (100, 100))
        await meters.flush()
        self.assertEqual((meters.total(INCOMING), meters.current(INCOMING)), (100, 100))
        clock.advance(120)  # December
        meters.record(INCOMING, 50)
        await meters.flush()
        self.assertEqual(meters.total(INCOMING), 150)
        self.assertEqual(meters.current(INCOMING), 50)
        self.assertEqual(meters.total(OUTGOING), 7)
        self.assertEqual(meters.current(OUTGOING), 0)

        # Another node (or a restart) on the same database sees the same figures.
        again = Meters(db=db, clock=clock, monthly_limits={}, rate_limits={})
        await again.flush()
        self.assertEqual(again.snapshot()["total"], {INCOMING: 150, OUTGOING: 7})
        self.assertEqual(again.snapshot()["current"], {INCOMING: 50, OUTGOING: 0})

    async def test_cap(self) -> None:
        clock = Clock()
        clock.advance(NOV_30_2026_2359)
        _, meters = await self.meters(clock, outgoing=1000)
        meters.check(OUTGOING, 1000)
        meters.record(OUTGOING, 600)
        meters.check(OUTGOING, 400)
        with self.assertRaises(TransferLimitReached) as caught:
            meters.check(OUTGOING, 401)
        self.assertEqual(caught.exception.retry_after, 60)
        meters.check(INCOMING, 10**15)  # no cap that way
        clock.advance(60)  # the month rolls over; November's bytes stay November's
        await meters.flush()
        meters.check(OUTGOING, 1000)
        self.assertEqual(meters.total(OUTGOING), 600)

    async def test_rate(self) -> None:
        clock = Clock()
        clock.advance(1000)
        _, meters = await self.meters(clock)
        for _ in range(10):
            meters.record(OUTGOING, 5000)
            clock.advance(1)
        self.assertEqual(meters.rate(OUTGOING), 5000)
        clock.advance(10)
        self.assertEqual(meters.rate(OUTGOING), 0)


class MonthTests(SynchronousTestCase):
    def test_months(self) -> None:
        self.assertEqual(month_of(NOV_30_2026_2359), "2026-11")
        self.assertEqual(month_of(NOV_30_2026_2359 + 60), "2026-12")
        december = calendar.timegm((2026, 12, 31, 23, 0, 0))
        self.assertEqual(seconds_to_next_month(december), 3600)
