"""
A limit on guessing tokens: an address that keeps presenting unknown tokens
is refused at once (429 with Retry-After), never answered slowly.
"""

from __future__ import annotations

import collections
import math

from attrs import define, field
from twisted.internet.interfaces import IAddress, IReactorTime

MAX_ADDRESSES = 100_000  # bound on the memory an attack with many addresses can take


def _host(address: IAddress | None) -> str:
    return getattr(address, "host", None) or "unknown"


@define
class TokenGuard:
    _clock: IReactorTime
    limit: int
    window: float
    _failures: collections.OrderedDict[str, collections.deque[float]] = field(
        factory=collections.OrderedDict
    )

    def unknown_token(self, address: IAddress | None) -> None:
        """Count one unknown token presented from C{address}."""
        host = _host(address)
        now = self._clock.seconds()
        times = self._failures.pop(host, None) or collections.deque(maxlen=self.limit)
        times.append(now)
        self._failures[host] = times
        while len(self._failures) > MAX_ADDRESSES:
            self._failures.popitem(last=False)

    def retry_after(self, address: IAddress | None) -> int | None:
        """Seconds until C{address} may try again, or None if it may now."""
        times = self._failures.get(_host(address))
        if times is None or len(times) < self.limit:
            return None
        wait = times[0] + self.window - self._clock.seconds()
        if wait <= 0:
            return None
        return max(1, math.ceil(wait))
