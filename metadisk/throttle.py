"""
Bandwidth limits, enforced on every transfer while it runs.

Each direction has a L{Throttle}: a token bucket filled at the node's rate
and shared out, a round every few tens of milliseconds, among the transfers
that want bytes at that moment. The split is max-min fair: equal parts, and
what one transfer cannot use (a slow reader, a per-transfer cap) goes to
the others, so one fast client never starves the rest. Each transfer holds
a L{Share}, its credit:

  - a download asks its share before it reads, and writes exactly what it
    was given (L{Share.take}); with nothing left it waits for the next round;
  - an upload has already received its bytes when it counts them: it spends
    them (L{Share.spend}), and in debt its socket is paused until the share
    is paid back, so TCP back-pressure slows the client (L{ThrottledReader}).

With no limit in a direction there is no share at all, hence no cost.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from attrs import define, field
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from metadisk.config import BandwidthConfig

INTERVAL = 0.05  # seconds between two rounds of sharing out
BURST = 0.2  # seconds of tokens a bucket keeps: a round that runs late loses nothing
MIN_CREDIT = 4096  # at very low rates, still hand out useful amounts


@define
class TokenBucket:
    """Tokens (bytes) accrue at C{rate} per second, up to C{capacity}."""

    rate: float
    capacity: float
    _clock: IReactorTime
    _tokens: float = 0.0
    _stamp: float = field(init=False)

    def __attrs_post_init__(self) -> None:
        self._stamp = self._clock.seconds()

    @classmethod
    def for_rate(cls, rate: float, clock: IReactorTime) -> TokenBucket:
        return cls(rate, max(MIN_CREDIT, rate * BURST), clock)

    def available(self) -> float:
        now = self._clock.seconds()
        if now > self._stamp:
            self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        return self._tokens

    def spend(self, n: float) -> None:
        """Take C{n} tokens; below zero is a debt, paid before anything else is granted."""
        self.available()
        self._tokens -= n

    def give_back(self, n: float) -> None:
        self.available()
        self._tokens = min(self.capacity, self._tokens + n)


def share_out(available: int, demands: Sequence[int]) -> list[int]:
    """
    Split C{available} among C{demands} max-min fairly: every demand gets an
    equal part, and what a smaller demand leaves goes to the larger ones.
    """
    grants = [0] * len(demands)
    left = max(0, available)
    order = sorted(range(len(demands)), key=demands.__getitem__)
    for position, i in enumerate(order):
        grants[i] = min(demands[i], left // (len(order) - position))
        left -= grants[i]
    return grants


@define(eq=False)
class Share:
    """
    One transfer's part of a L{Throttle}: the credit it was granted and has
    not used yet (negative: bytes it moved before they were granted).
    """

    _throttle: Throttle
    _own: TokenBucket | None  # the per-transfer cap, if any
    max_credit: int
    balance: int = 0
    wanting: bool = True  # False while the transfer's consumer has paused it
    closed: bool = False
    _waiter: Deferred[None] | None = None

    def demand(self) -> int:
        """How much this share would take in a round."""
        if not self.wanting or self.closed:
            return 0
        want = self.max_credit - self.balance
        if self._own is not None:
            want = min(want, int(self._own.available()))
        return max(0, want)

    def hungry(self) -> bool:
        return self.wanting and not self.closed and self.balance < self.max_credit

    def grant(self, n: int) -> None:
        self.balance += n
        if self._own is not None:
            self._own.spend(n)

    def wake_waiter(self) -> None:
        if self._waiter is not None and self.balance > 0:
            waiter, self._waiter = self._waiter, None
            waiter.callback(None)

    def take(self, n: int) -> int:
        """Up to C{n} bytes the transfer may send now; 0: L{wait} for the next round."""
        given = max(0, min(n, self.balance))
        self.balance -= given
        self._throttle.wake()  # below full credit: the next round tops it up
        return given

    def spend(self, n: int) -> None:
        """C{n} bytes have moved already (an upload): pay for them, into debt if need be."""
        self.balance -= n
        self._throttle.wake()

    def wait(self) -> Deferred[None]:
        """Fire when there is credit again."""
        if self.balance > 0:
            return succeed(None)
        if self._waiter is None:
            self._waiter = Deferred()
            self._throttle.wake()
        return self._waiter

    def pause(self) -> None:
        """The consumer paused the transfer: it takes no part in the rounds until resumed."""
        self.wanting = False

    def resume(self) -> None:
        self.wanting = True
        self._throttle.wake()

    def close(self) -> None:
        """The transfer is over: its credit (or debt) goes back to the node's bucket."""
        if not self.closed:
            self.closed = True
            self._waiter = None
            self._throttle.leave(self)


@define(eq=False)
class Throttle:
    """
    One direction's limits: C{rate} bytes/s for the whole node and
    C{per_transfer} bytes/s for each transfer (0: no limit).
    """

    _clock: IReactorTime
    rate: int = 0
    per_transfer: int = 0
    interval: float = INTERVAL
    _bucket: TokenBucket | None = field(init=False, default=None)
    _shares: dict[Share, None] = field(init=False, factory=dict)  # ordered: rounds are repeatable
    _round: IDelayedCall | None = field(init=False, default=None)
    _last_round: float = field(init=False, default=-math.inf)

    def __attrs_post_init__(self) -> None:
        if self.rate:
            self._bucket = TokenBucket.for_rate(self.rate, self._clock)

    @property
    def limited(self) -> bool:
        return bool(self.rate or self.per_transfer)

    @property
    def one_transfer(self) -> int:
        """The most one transfer may use, bytes/s; 0: no limit."""
        return min((rate for rate in (self.rate, self.per_transfer) if rate), default=0)

    @property
    def transfers(self) -> int:
        return len(self._shares)

    def share(self) -> Share | None:
        """A new transfer's share, or None when nothing is limited (then nothing is counted)."""
        if not self.limited:
            return None
        own = TokenBucket.for_rate(self.per_transfer, self._clock) if self.per_transfer else None
        # Credit for a whole burst: a round that runs late still finds room for all it brings.
        share = Share(self, own, max(MIN_CREDIT, int(self.one_transfer * BURST)))
        self._shares[share] = None
        self.wake()
        return share

    def leave(self, share: Share) -> None:
        self._shares.pop(share, None)
        if self._bucket is not None and share.balance:
            # Credit not used is the node's again; a debt is paid by everyone's next rounds.
            if share.balance > 0:
                self._bucket.give_back(share.balance)
            else:
                self._bucket.spend(-share.balance)
        share.balance = 0
        if not self._shares and self._round is not None:
            self._round.cancel()  # nobody left to share out to: no timer keeps running
            self._round = None

    def wake(self) -> None:
        """Someone wants bytes: hold a round now, or when the interval since the last is up."""
        if self._round is not None or not self._shares:
            return
        delay = max(0.0, self._last_round + self.interval - self._clock.seconds())
        self._round = self._clock.callLater(delay, self._share_out)

    def _share_out(self) -> None:
        self._round = None
        self._last_round = self._clock.seconds()
        shares = list(self._shares)
        demands = [share.demand() for share in shares]
        if self._bucket is None:
            grants = demands  # only per-transfer caps: each has its own bucket
        else:
            grants = share_out(int(self._bucket.available()), demands)
            self._bucket.spend(sum(grants))
        for share, granted in zip(shares, grants, strict=True):
            if granted:
                share.grant(granted)
        # Waiters run last: what they do (write, resume a socket) sees the whole round done.
        for share in shares:
            share.wake_waiter()
        if any(share.hungry() for share in self._shares):
            self.wake()


@define
class ThrottledReader:
    """
    The incoming side of a transfer whose bytes arrive unasked (an upload):
    counts them against its share, and holds the socket paused while the
    share is in debt. C{pause}/C{resume} must compose with other holds.
    """

    _share: Share
    _pause: Callable[[], None]
    _resume: Callable[[], None]
    _paused: bool = False

    def received(self, n: int) -> None:
        self._share.spend(n)
        if self._share.balance < 0 and not self._paused:
            self._paused = True
            self._pause()
            self._share.wait().addCallback(self._paid)

    def _paid(self, _: object) -> None:
        if self._paused:
            self._paused = False
            self._resume()

    def close(self) -> None:
        """No more bytes will come: let go of the socket and of the share."""
        self._share.close()
        self._paid(None)


def throttled_reader(
    throttle: Throttle | None, pause: Callable[[], None], resume: Callable[[], None]
) -> ThrottledReader | None:
    """A reader for one incoming transfer, or None when incoming bytes are not limited."""
    share = throttle.share() if throttle is not None else None
    return ThrottledReader(share, pause, resume) if share is not None else None


@define
class Bandwidth:
    """The node's two throttles."""

    incoming: Throttle
    outgoing: Throttle

    @classmethod
    def from_config(cls, config: BandwidthConfig, clock: IReactorTime) -> Bandwidth:
        return cls(
            incoming=Throttle(clock, config.rate_incoming, config.per_transfer_incoming),
            outgoing=Throttle(clock, config.rate_outgoing, config.per_transfer_outgoing),
        )

    def one_transfer(self) -> tuple[int, int]:
        """What one transfer may use at most, (outgoing, incoming) in bytes/s; 0: no limit."""
        return self.outgoing.one_transfer, self.incoming.one_transfer
