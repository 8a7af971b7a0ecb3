"""The token-guessing limit, on a Clock."""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from metadisk.web.guard import TokenGuard


def address(host: str) -> IPv4Address:
    return IPv4Address("TCP", host, 1234)


class GuardTests(SynchronousTestCase):
    def test_blocks_after_limit_within_window(self) -> None:
        clock = Clock()
        guard = TokenGuard(clock, limit=3, window=60)
        for _ in range(2):
            guard.unknown_token(address("10.0.0.1"))
            clock.advance(1)
        self.assertIsNone(guard.retry_after(address("10.0.0.1")))
        guard.unknown_token(address("10.0.0.1"))
        self.assertEqual(guard.retry_after(address("10.0.0.1")), 58)
        self.assertIsNone(guard.retry_after(address("10.0.0.2")))
        clock.advance(58)
        self.assertIsNone(guard.retry_after(address("10.0.0.1")))

    def test_slow_guesses_are_not_blocked(self) -> None:
        clock = Clock()
        guard = TokenGuard(clock, limit=3, window=60)
        for _ in range(10):
            guard.unknown_token(address("10.0.0.1"))
            clock.advance(30)
        self.assertIsNone(guard.retry_after(address("10.0.0.1")))
