"""
Clients for the open-network tests: many raw connections from chosen
loopback addresses (Linux routes all of 127.0.0.0/8 to lo), one kept alive
across requests, and node processes limited in open files. Every wait is
bounded.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from tests.nodes import NodeProcess, node_toml, start_node_process
from tests.support import eventually, json_of
from tests.test_openapi import raw_parts

WAIT = 20.0  # seconds: the bound on any wait for a node process (a busy machine)


class ClientSocket(Protocol):
    """
    One client connection: sends C{first} once connected, keeps what comes
    back, and closes as soon as a whole response is in (as a client does)
    when C{close_on_answer}.
    """

    def __init__(self, first: bytes, close_on_answer: bool) -> None:
        self._first = first
        self._close_on_answer = close_on_answer
        self.received = bytearray()
        self.closed = False
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        if self._first:
            self.transport.write(self._first)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self._close_on_answer and self.answer() is not None:
            self.transport.loseConnection()

    def connectionLost(self, reason: Any) -> None:
        self.closed = True
        self.lost.callback(None)

    def answer(self) -> tuple[int, dict[str, str], bytes] | None:
        """The response received, once it is whole (it has a Content-Length)."""
        if b"\r\n\r\n" not in self.received:
            return None
        status, headers, body = raw_parts(bytes(self.received))
        if len(body) < int(headers.get("Content-Length", "0")):
            return None
        return status, headers, body


async def connect_from(
    port: int, source: str, count: int, first: bytes = b"", close_on_answer: bool = False
) -> list[ClientSocket]:
    """
    C{count} connections to a node on loopback from the address C{source}, a
    few at a time: more at once than the listen backlog (50) would have some
    dropped and retried a second later, out of order.
    """
    sockets = [ClientSocket(first, close_on_answer) for _ in range(count)]
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=WAIT, bindAddress=(source, 0))
    for i in range(0, count, 25):
        connecting = [
            endpoint.connect(Factory.forProtocol(lambda s=s: s)) for s in sockets[i : i + 25]
        ]
        try:
            await gatherResults(connecting).addTimeout(WAIT, reactor)
        except Exception as e:  # a timeout, a refusal: the node takes no more connections
            raise AssertionError(f"no connection from {source} within {WAIT} s: {e}") from e
    return sockets


class KeptAlive(Protocol):
    """A client connection kept open across requests, sent one at a time."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._waiting: Deferred[tuple[int, dict[str, str], bytes]] | None = None

    def request(self, payload: bytes) -> Deferred[tuple[int, dict[str, str], bytes]]:
        """Send C{payload} (a whole request); fire with (status, headers, body) of its answer."""
        self._waiting = Deferred()
        self.transport.write(payload)
        return self._waiting.addTimeout(WAIT, reactor)

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        head, separator, rest = bytes(self._buffer).partition(b"\r\n\r\n")
        if not separator:
            return
        status, headers, _ = raw_parts(head + separator)
        length = int(headers.get("Content-Length", "0"))
        if len(rest) >= length and self._waiting is not None:
            del self._buffer[: len(head) + len(separator) + length]
            waiting, self._waiting = self._waiting, None
            waiting.callback((status, headers, rest[:length]))


async def all_lost(sockets: list[ClientSocket], seconds: float = WAIT) -> None:
    """Wait until the node has closed all of C{sockets}; fail after C{seconds}."""
    try:
        await gatherResults([s.lost for s in sockets]).addTimeout(seconds, reactor)
    except Exception as e:
        still = sum(not s.closed for s in sockets)
        raise AssertionError(f"{still} connections still open after {seconds} s") from e


def client_from(source: str) -> HTTPClient:
    """An HTTP client whose connections come from C{source} (a loopback address)."""
    agent = Agent(
        reactor, bindAddress=(source, 0), pool=HTTPConnectionPool(reactor, persistent=False)
    )
    return HTTPClient(agent)


async def node_process(
    case: TestCase, *, open_files: int | None = None, **node: Any
) -> NodeProcess:
    """A node process on loopback with accounts disabled (these attacks are not about credit)."""
    base = Path(case.mktemp()).resolve()
    hosts = [base / "hosts" / f"local{i}" for i in (1, 2, 3)]
    secret = secrets.token_urlsafe(24)
    config = node_toml(
        base / "data",
        secret=secret,
        database_url=f"sqlite:///{base / 'data' / 'metadisk.sqlite'}",
        hosts=hosts,
        node=node,
    )
    process = await start_node_process(
        reactor,
        base,
        config + "[accounts]\nenabled = false\n",
        secret,
        client_from("127.0.0.1"),
        timeout=WAIT * 3,
        open_files=open_files,
    )
    case.addCleanup(lambda: Deferred.fromCoroutine(process.stop()))
    return process


async def replicated(node: Any, filehash: str, copies: int = 3) -> None:
    """Wait (bounded) until C{find} lists C{copies} hosts for the file."""

    async def listed() -> bool:
        record = await json_of(await node.http.get(f"{node.url}/api/find/{filehash}"))
        return len(record["uploads"]) >= copies

    await eventually(listed, WAIT, what=f"{filehash} on {copies} hosts")
