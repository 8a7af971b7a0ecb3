"""The test helpers' own tests: L{eventually}, the one bounded wait."""

from __future__ import annotations

from twisted.internet import defer, reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from tests.support import eventually


class EventuallyTests(TestCase):
    async def test_returns_the_first_true_answer(self) -> None:
        answers = iter([None, 0, [], "there", "later"])
        self.assertEqual(await eventually(lambda: next(answers)), "there")
        self.assertEqual(next(answers), "later")  # not asked again once it held

    async def test_async_condition(self) -> None:
        tries: list[int] = []

        async def third_time() -> int | None:
            tries.append(1)
            await deferLater(reactor, 0, lambda: None)
            return len(tries) if len(tries) == 3 else None

        self.assertEqual(await eventually(third_time), 3)

    async def test_names_what_never_happened(self) -> None:
        started = reactor.seconds()
        with self.assertRaises(AssertionError) as raised:
            await eventually(lambda: [], 0.2, what="the moon to rise")
        self.assertEqual(
            str(raised.exception),
            "timed out after 0.2 s waiting for the moon to rise; its last answer: []",
        )
        self.assertGreaterEqual(reactor.seconds() - started, 0.2)

    async def test_names_the_condition_by_default(self) -> None:
        async def never() -> bool:
            return False

        with self.assertRaises(AssertionError) as raised:
            await eventually(never, 0.05)
        line = never.__code__.co_firstlineno
        self.assertEqual(
            str(raised.exception),
            f"timed out after 0.05 s waiting for never() (test_support.py:{line}) to hold;"
            " its last answer: False",
        )
        with self.assertRaises(AssertionError) as raised:
            await eventually(lambda: False, 0.05)
        self.assertIn("waiting for the condition at test_support.py:", str(raised.exception))

    async def test_a_try_that_hangs_is_cut_short(self) -> None:
        """A condition that never answers (a hung node) does not stretch the wait."""
        tries: list[int] = []
        cancelled: list[int] = []

        def hangs() -> Deferred[bool]:
            tries.append(1)
            return Deferred(lambda d: cancelled.append(1))

        started = reactor.seconds()
        with self.assertRaises(AssertionError) as raised:
            await eventually(hangs, 0.2, what="an answer")
        self.assertLess(reactor.seconds() - started, 2)
        self.assertEqual(
            str(raised.exception),
            "timed out after 0.2 s waiting for an answer; its last try was still running",
        )
        self.assertEqual((len(tries), len(cancelled)), (1, 1))

    async def test_an_error_ends_the_wait_at_once(self) -> None:
        tries: list[int] = []

        def broken() -> bool:
            tries.append(1)
            raise ValueError("no such thing")

        with self.assertRaises(ValueError):
            await eventually(broken, 5)
        self.assertEqual(len(tries), 1)
        # The condition's own timeout, before the deadline, is its error too.
        with self.assertRaises(defer.TimeoutError):
            await eventually(lambda: defer.fail(defer.TimeoutError()), 5)
