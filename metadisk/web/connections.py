"""
In front of the HTTP site: how many connections one address may hold, and
whether the process has descriptors to spare for one more. A connection that
will not be served is answered in JSON, like every other refusal, and closed.
The connections that are served are wrapped to measure what their peer
received (L{metadisk.web.delivery}).
"""

from __future__ import annotations

import collections
from typing import Any

from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

from metadisk.web.addresses import TrustedProxies, host_of
from metadisk.web.delivery import ClosingProducer, Delivery, delivery_for
from metadisk.web.descriptors import Admission, DescriptorBudget
from metadisk.web.errors import error, raw_response
from metadisk.web.site import IDLE_TIMEOUT

RETRY_AFTER = "2"  # seconds: connections free up as soon as requests end
# Seconds a refused connection is read past before it is cut: closing it with the client's
# request unread would send a reset, which can destroy the answer on its way.
LINGER = 2.0
REPORT_INTERVAL = 60.0  # seconds between two log lines of refusals for want of descriptors

TOO_MANY_CONNECTIONS = raw_response(error(429, "too-many-connections", Retry_After=RETRY_AFTER))
NODE_BUSY = raw_response(error(503, "node-busy", Retry_After=RETRY_AFTER))


class GuardedConnection(ProtocolWrapper):
    """A connection that is served: counted for its address, its output measured."""

    def __init__(self, factory: ConnectionGuard, wrapped: Any, host: str | None) -> None:
        super().__init__(factory, wrapped)
        self.host = host  # None: not counted per address (a trusted proxy, a unix socket)
        self.delivery = Delivery()

    def makeConnection(self, transport: Any) -> None:
        guard: ConnectionGuard = self.factory
        # A reader may acknowledge nothing for as long as a client may send nothing.
        self.delivery = delivery_for(transport, guard.clock, IDLE_TIMEOUT)
        super().makeConnection(transport)

    def write(self, data: bytes) -> None:
        self.delivery.wrote(len(data))
        super().write(data)

    def writeSequence(self, data: list[bytes]) -> None:
        self.delivery.wrote(sum(map(len, data)))
        super().writeSequence(data)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        super().registerProducer(ClosingProducer(producer, self.delivery), streaming)

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        self.delivery.check()  # a client that sends again has read what came before

    def connectionLost(self, reason: Any) -> None:
        self.delivery.closed()
        super().connectionLost(reason)


class _Refusal(Protocol):
    """
    Answers a connection that will not be served, reads past what the client
    sends, and closes when the client does or after L{LINGER} seconds.
    """

    host = None

    def __init__(self, factory: ConnectionGuard, answer: bytes) -> None:
        self.factory = factory
        self._answer = answer
        self._cut: IDelayedCall | None = None

    def connectionMade(self) -> None:
        self.factory.registerProtocol(self)  # so that a stop closes it too
        self.transport.write(self._answer)
        self._cut = self.factory.clock.callLater(LINGER, self.transport.abortConnection)

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Any) -> None:
        if self._cut is not None and self._cut.active():
            self._cut.cancel()
        self.factory.unregisterProtocol(self)


class ConnectionGuard(WrappingFactory):
    """
    Wraps a site. A connection from an address that already holds
    C{max_per_address} gets 429 too-many-connections (a trusted proxy's own
    connections are not counted: it carries many clients); one the
    process's descriptors cannot afford gets 503 node-busy, or is closed at
    once when even the reserve is in use. Like L{WrappingFactory}, it knows
    every open connection (C{protocols}), so that a stop can close them all.
    """

    log = Logger()

    def __init__(
        self,
        site: Any,
        *,
        clock: IReactorTime,
        budget: DescriptorBudget,
        max_per_address: int,
        proxies: TrustedProxies,
    ) -> None:
        super().__init__(site)
        self.clock = clock
        self._budget = budget
        self._max_per_address = max_per_address
        self._proxies = proxies
        self._per_address: collections.Counter[str] = collections.Counter()
        self._refused = 0  # for want of descriptors, since the last report
        self._reported_at = -REPORT_INTERVAL

    def buildProtocol(self, addr: IAddress | None) -> Any:
        admission = self._budget.admission()
        self._report(admission)
        if admission is Admission.DROP:
            return None  # Twisted closes the socket at once
        if admission is Admission.BUSY:
            return _Refusal(self, NODE_BUSY)
        host = host_of(addr)
        if self._proxies.trusts(host):
            host = None
        elif host is not None and self._per_address[host] >= self._max_per_address:
            return _Refusal(self, TOO_MANY_CONNECTIONS)
        return GuardedConnection(self, self.wrappedFactory.buildProtocol(addr), host)

    def registerProtocol(self, p: Any) -> None:
        super().registerProtocol(p)
        self._budget.opened()
        if p.host is not None:
            self._per_address[p.host] += 1

    def unregisterProtocol(self, p: Any) -> None:
        super().unregisterProtocol(p)
        self._budget.closed()
        if p.host is not None:
            self._per_address[p.host] -= 1
            if not self._per_address[p.host]:
                del self._per_address[p.host]

    def _report(self, admission: Admission) -> None:
        # At most a line a minute, however many connections a flood brings.
        if admission is Admission.ADMIT:
            return
        self._refused += 1
        now = self.clock.seconds()
        if now - self._reported_at >= REPORT_INTERVAL:
            self.log.warn(
                "file descriptors running low ({connections} connections open, limit {limit}):"
                " {refused} new connections refused",
                connections=self._budget.connections,
                limit=self._budget.limit,
                refused=self._refused,
            )
            self._refused, self._reported_at = 0, now
