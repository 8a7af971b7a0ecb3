"""
A proxy on loopback that cuts one exchange short, as a flaky network or a
laptop lid would: the body of the first request that starts with a given
prefix (an upload's PATCH), or the answer to it (a download).
"""

from __future__ import annotations

import re
from typing import Any

from attrs import define, field
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

_REQUEST_LINE = re.compile(rb"[A-Z]+ /")  # what starts a request, not a chunk of a body


@define(eq=False)
class CuttingProxy:
    """
    Forwards to the node at port C{target}; the first request starting with
    C{starts} is cut after C{cut_after} bytes: of what the client sends, or,
    with C{cut_answer}, of what the node answers.
    """

    target: int
    cut_after: int
    starts: bytes
    cut_answer: bool
    port: Any = None
    cuts: int = 0
    requests: list[bytes] = field(factory=list)  # the first chunk of each request seen

    @classmethod
    async def start(
        cls, case: TestCase, target: int, cut_after: int, starts: bytes, cut_answer: bool = False
    ) -> CuttingProxy:
        proxy = cls(target, cut_after, starts, cut_answer)
        factory = Factory.forProtocol(lambda: _Downstream(proxy))
        proxy.port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        case.addCleanup(proxy.port.stopListening)
        return proxy

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port.getHost().port}"


class _Downstream(Protocol):
    """The client's side of one proxied connection."""

    def __init__(self, proxy: CuttingProxy) -> None:
        self.proxy = proxy
        self.upstream: _Upstream | None = None
        self.pending = b""
        self.budget: int | None = None  # bytes still to pass, once the exchange to cut began

    def connectionMade(self) -> None:
        d: Deferred = connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", self.proxy.target), _Upstream(self)
        )
        d.addCallbacks(self._connected, lambda _: self.transport.abortConnection())

    def _connected(self, upstream: _Upstream) -> None:
        self.upstream = upstream
        if self.pending:
            upstream.transport.write(self.pending)
            self.pending = b""

    def dataReceived(self, data: bytes) -> None:
        if self.budget is None and _REQUEST_LINE.match(data):
            self.proxy.requests.append(data)
            if data.startswith(self.proxy.starts) and self.proxy.cuts == 0:
                self.budget = self.proxy.cut_after
        if self.budget is not None and not self.proxy.cut_answer:
            data, self.budget = data[: self.budget], self.budget - len(data)
        if self.upstream is None:
            self.pending += data
        else:
            self.upstream.transport.write(data)
        if self.budget is not None and self.budget <= 0 and not self.proxy.cut_answer:
            self._cut()

    def answer(self, data: bytes) -> None:
        if self.budget is None or not self.proxy.cut_answer:
            self.transport.write(data)
            return
        if self.budget <= 0:
            return  # cut already
        self.transport.write(data[: self.budget])
        self.budget -= len(data)
        if self.budget <= 0:
            self._cut()

    def _cut(self) -> None:
        self.proxy.cuts += 1
        self.budget = None
        self.transport.abortConnection()
        if self.upstream is not None:
            self.upstream.transport.abortConnection()

    def connectionLost(self, reason: Any) -> None:
        if self.upstream is not None:
            self.upstream.transport.loseConnection()


class _Upstream(Protocol):
    def __init__(self, downstream: _Downstream) -> None:
        self.downstream = downstream

    def dataReceived(self, data: bytes) -> None:
        self.downstream.answer(data)

    def connectionLost(self, reason: Any) -> None:
        self.downstream.transport.loseConnection()
