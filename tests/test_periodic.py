"""The one periodic service every loop of the node is, and the one backoff."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from metadisk.periodic import Periodic, backoff


class Expected(Exception):
    """An error the loop's owner expects now and then (a chain that is down)."""


class PeriodicTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.rounds: list[Deferred[None]] = []

    def work(self) -> Deferred[None]:
        self.rounds.append(Deferred())
        return self.rounds[-1]

    def test_survives_errors_and_keeps_the_last(self) -> None:
        loop = Periodic("test", self.work, 5, self.clock, expected=(Expected,))
        loop.startService()
        self.rounds[0].errback(Expected("down"))
        self.assertEqual(loop.error, "down")
        self.assertEqual(self.flushLoggedErrors(), [])  # a line, no traceback
        self.clock.advance(5)
        self.assertEqual(len(self.rounds), 2)
        self.rounds[1].errback(ValueError("a bug"))
        self.assertEqual(loop.error, "ValueError: a bug")
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.clock.advance(5)
        self.rounds[2].callback(None)
        self.assertIsNone(loop.error)

    def test_one_round_at_a_time_timed_from_its_end(self) -> None:
        loop = Periodic("test", self.work, 5, self.clock)
        loop.startService()
        self.clock.advance(30)
        self.assertEqual(len(self.rounds), 1)  # still in flight
        self.assertTrue(loop.busy)
        self.rounds[0].callback(None)
        self.assertFalse(loop.busy)
        self.clock.advance(4.9)
        self.assertEqual(len(self.rounds), 1)
        self.clock.advance(0.1)
        self.assertEqual(len(self.rounds), 2)

    def test_not_at_once_when_asked(self) -> None:
        loop = Periodic("test", self.work, 5, self.clock, now=False)
        loop.startService()
        self.assertEqual(self.rounds, [])
        self.clock.advance(5)
        self.assertEqual(len(self.rounds), 1)

    def test_stop_cancels_the_round_in_flight(self) -> None:
        loop = Periodic("test", self.work, 5, self.clock)
        loop.startService()
        self.successResultOf(loop.stopService())
        self.assertTrue(self.rounds[0].called)  # cancelled, not waited for
        self.assertFalse(loop.running)
        self.assertIsNone(loop.error)  # a cancelled round is no error
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_poke_starts_the_next_round_now(self) -> None:
        loop = Periodic("test", self.work, 5, self.clock)
        loop.poke()  # stopped: nothing
        self.assertEqual(self.rounds, [])
        loop.startService()
        loop.poke()  # a round in flight: another once it ends
        self.assertEqual(len(self.rounds), 1)
        self.rounds[0].callback(None)
        self.clock.advance(0)
        self.assertEqual(len(self.rounds), 2)
        self.rounds[1].callback(None)
        self.clock.advance(1)
        loop.poke()
        self.assertEqual(len(self.rounds), 3)
        self.rounds[2].callback(None)
        self.clock.advance(4.9)  # timed from the poked round's end, not the first's
        self.assertEqual(len(self.rounds), 3)
        self.clock.advance(0.1)
        self.assertEqual(len(self.rounds), 4)
        loop.poke()  # in flight when the loop stops: no round after
        self.successResultOf(loop.stopService())
        self.assertEqual(self.clock.getDelayedCalls(), [])


class BackoffTests(SynchronousTestCase):
    def test_doubles_from_the_first_to_a_cap(self) -> None:
        self.assertEqual([backoff(n) for n in range(1, 6)], [2, 4, 8, 16, 32])
        self.assertEqual(backoff(9), 300)
        self.assertEqual(backoff(10**6), 300)
        self.assertEqual([backoff(n, 10, 600) for n in (1, 2, 7)], [10, 20, 600])
