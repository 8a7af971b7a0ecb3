"""
What the tests share: a node on a real port, multipart bodies, raw HTTP, web
servers that count their connections, and L{eventually}, the one bounded wait
for what real sockets, processes and threads bring about.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from inspect import isawaitable
from pathlib import Path
from typing import Any

from attrs import define
from treq.client import HTTPClient
from twisted.internet import defer, reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import IResource
from twisted.web.server import Site

from metadisk.config import Config, config_from_dict
from metadisk.tap import NodeService


def test_config(base: Path, **sections: Any) -> Config:
    """
    A node's config for a test: everything under C{base}, a free port on
    loopback, small limits. C{sections} are TOML tables (C{storage={"capacity":
    100_000}}, C{hosts=[...]}), applied over those and validated as a file is.
    """
    document: dict[str, Any] = {
        "node": {"listen": "tcp:0:interface=127.0.0.1", "data_dir": str(base / "data")},
        "storage": {"capacity": 64 * 2**20, "max_file_size": 16 * 2**20},
        "replication": {"interval": 0.2},
        "hosts": [local_host(f"local{i}", base / "hosts" / f"local{i}") for i in (1, 2, 3)],
    }
    for section, table in sections.items():
        if isinstance(table, dict):
            table = {**document.get(section, {}), **table}
        document[section] = table
    return config_from_dict(document)


def local_host(name: str, path: Path) -> dict[str, str]:
    """A C{[[hosts]]} table of a local-directory host."""
    return {"name": name, "kind": "local", "path": str(path)}


@define
class RunningNode:
    service: NodeService
    http: HTTPClient

    @property
    def node(self) -> Any:
        return self.service.node

    @property
    def port(self) -> int:
        return self.service.port.getHost().port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def secret(self) -> str:
        return self.node.secret_key

    async def stop(self) -> None:
        if self.service.running:
            await self.service.stopService()


async def start_node(case: TestCase, config: Config | None = None) -> RunningNode:
    """Start a node in this process on a free port; stopped when the test ends."""
    if config is None:
        config = test_config(Path(case.mktemp()).resolve())
    service = NodeService(config, reactor)
    service.startService()
    await service.started
    pool = HTTPConnectionPool(reactor)
    running = RunningNode(service, HTTPClient(Agent(reactor, pool=pool)))
    # Cleanups run last-in first-out: the node stops, then the client's pool is emptied.
    case.addCleanup(pool.closeCachedConnections)
    case.addCleanup(lambda: Deferred.fromCoroutine(running.stop()))
    if service.port is None:
        raise RuntimeError("the node did not start")
    return running


async def json_of(response: Any) -> Any:
    return json.loads(await response.content())


def multipart(
    *parts: tuple[str, str | None, bytes], boundary: str | None = None
) -> tuple[bytes, bytes]:
    """(Content-Type, body) of a multipart/form-data body of (name, filename, data) parts."""
    boundary = boundary or uuid.uuid4().hex
    body = bytearray()
    for name, filename, data in parts:
        body += f"--{boundary}\r\n".encode()
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        body += f"Content-Disposition: {disposition}\r\n".encode()
        if filename is not None:
            body += b"Content-Type: application/octet-stream\r\n"
        body += b"\r\n" + data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return f"multipart/form-data; boundary={boundary}".encode(), bytes(body)


async def upload(node: RunningNode, data: bytes, token: str | None, name: str = "hello.txt") -> Any:
    parts: list[tuple[str, str | None, bytes]] = []
    if token is not None:
        parts.append(("token", None, token.encode()))
    parts.append(("file", name, data))
    content_type, body = multipart(*parts)
    return await node.http.post(
        node.url + "/api/upload", data=body, headers={b"Content-Type": [content_type]}
    )


async def funded_token(node: RunningNode, amount: int = 10**9) -> str:
    token = (await json_of(await node.http.post(node.url + "/accounts/token/new")))["token"]
    response = await node.http.post(
        node.url + f"/accounts/token/deposit/{token}",
        json={"bytes": amount},
        headers={b"Authentication": [node.secret.encode()]},
    )
    assert response.code == 200, response.code
    return token


class _Exchange(Protocol):
    """Sends raw bytes; collects the first complete response (after any 1xx)."""

    def __init__(self, payload: bytes, close_after_send: bool) -> None:
        self.head_only = payload.startswith(b"HEAD ")
        self.payload = payload
        self.close_after_send = close_after_send
        self.received = bytearray()
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.payload)
        if self.close_after_send:
            self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        response = _complete_response(bytes(self.received), self.head_only)
        if response is not None and not self.done.called:
            self.done.callback(response)
            self.transport.loseConnection()

    def connectionLost(self, reason: Any) -> None:
        if not self.done.called:
            self.done.callback(bytes(self.received))


def _complete_response(data: bytes, head_only: bool) -> bytes | None:
    while True:
        head, separator, rest = data.partition(b"\r\n\r\n")
        if not separator:
            return None
        if head.startswith(b"HTTP/1.1 1"):
            data = rest
            continue
        length = 0
        for line in head.split(b"\r\n")[1:] if not head_only else ():
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if len(rest) < length:
            return None
        return head + separator + rest[:length]


async def raw_http(
    port: int,
    payload: bytes,
    *,
    close_after_send: bool = False,
    timeout: float = 10,
    source: str = "127.0.0.1",
) -> bytes:
    """
    Send raw bytes to the node from the loopback address C{source}; return
    its first complete response, or all it sent before it closed (b"" if nothing).
    """
    protocol = _Exchange(payload, close_after_send)
    factory = Factory()
    factory.protocol = lambda: protocol
    await TCP4ClientEndpoint(reactor, "127.0.0.1", port, bindAddress=(source, 0)).connect(factory)
    # A real socket and a real node: bound the wait, never hang the suite.
    watchdog = reactor.callLater(timeout, protocol.transport.abortConnection)
    try:
        return await protocol.done
    finally:
        if watchdog.active():
            watchdog.cancel()


class _KeptAlive(Protocol):
    def __init__(self) -> None:
        self.received = bytearray()
        self.waiting: Deferred[bytes] | None = None

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        response = _complete_response(bytes(self.received), head_only=False)
        if response is not None and self.waiting is not None:
            del self.received[: len(response)]
            waiting, self.waiting = self.waiting, None
            waiting.callback(response)

    def connectionLost(self, reason: Any) -> None:
        if self.waiting is not None:
            self.waiting.errback(reason)


class Conversation:
    """One kept-alive connection to the node: requests one after another on it."""

    def __init__(self, protocol: _KeptAlive) -> None:
        self._protocol = protocol

    @classmethod
    async def open(cls, port: int) -> Conversation:
        protocol = _KeptAlive()
        factory = Factory()
        factory.protocol = lambda: protocol
        await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(factory)
        return cls(protocol)

    async def ask(self, payload: bytes, timeout: float = 10) -> bytes:
        """Send a request; its complete response, or a timeout after C{timeout} seconds."""
        self._protocol.waiting = Deferred()
        answer = self._protocol.waiting
        self._protocol.transport.write(payload)
        return await answer.addTimeout(timeout, reactor)

    def close(self) -> None:
        self._protocol.transport.loseConnection()


POLL = 0.01  # seconds between two tries of a condition L{eventually} waits for


async def eventually(
    condition: Callable[[], object], timeout: float = 5.0, *, what: str | None = None
) -> Any:
    """
    Wait for something that a real socket, process or thread brings about:
    try C{condition} (a function, sync or async) every L{POLL} seconds on
    the real reactor until it gives a true value, and return that value.

    Fail after C{timeout} seconds with an C{AssertionError} naming C{what}
    never happened (by default the condition's name, file and line), and its
    last answer; a try still running at the deadline is cancelled, so even a
    request to a node that hangs cannot stretch the wait. An exception from
    the condition ends the wait at once. Tests on a L{Clock} never wait: they
    advance the clock.
    """
    deadline = reactor.seconds() + timeout
    while True:
        answer = condition()
        if isawaitable(answer):
            # A try begun at the deadline still gets a poll's time.
            bound = max(deadline - reactor.seconds(), POLL)
            try:
                answer = await ensureDeferred(answer).addTimeout(bound, reactor)
            except defer.TimeoutError as e:
                if reactor.seconds() < deadline:
                    raise  # the condition's own
                raise AssertionError(
                    f"timed out after {timeout:g} s waiting for {what or _described(condition)};"
                    " its last try was still running"
                ) from e
        if answer:
            return answer
        if reactor.seconds() >= deadline:
            raise AssertionError(
                f"timed out after {timeout:g} s waiting for {what or _described(condition)};"
                f" its last answer: {_short(answer)}"
            )
        await deferLater(reactor, POLL, lambda: None)


def _described(condition: Any) -> str:
    """A condition, for a failure message: its name, file and line."""
    code = getattr(getattr(condition, "__func__", condition), "__code__", None)
    name = getattr(condition, "__name__", None) or repr(condition)
    if code is None:
        return f"{name} to hold"
    where = f"{Path(code.co_filename).name}:{code.co_firstlineno}"
    if name == "<lambda>":
        return f"the condition at {where} to hold"
    return f"{name}() ({where}) to hold"


def _short(answer: object) -> str:
    text = repr(answer)
    return text if len(text) <= 300 else text[:300] + "…"


def status_line(response: bytes) -> int:
    """The status code of a raw HTTP response."""
    return int(response.split(b" ", 2)[1])


def header_of(response: bytes, name: bytes) -> bytes | None:
    """A header of a raw HTTP response."""
    for line in response.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None


def body_of(response: bytes) -> Any:
    return json.loads(response.split(b"\r\n\r\n", 1)[1])


class _CountingSite(Site):
    connections = 0

    def buildProtocol(self, addr: Any) -> Any:
        self.connections += 1
        return super().buildProtocol(addr)


class CountingServer:
    """
    A web server on a free port of C{interface} that counts the connections
    it receives: a place no fetch should reach, or one that some must.
    """

    def __init__(self, case: TestCase, resource: IResource, interface: str = "127.0.0.1") -> None:
        self._site = _CountingSite(resource)
        self.port = reactor.listenTCP(0, self._site, interface=interface)
        case.addCleanup(self.port.stopListening)

    @property
    def connections(self) -> int:
        return self._site.connections

    def url(self, path: str = "", host: str | None = None) -> str:
        """An http URL of C{path} here, naming the server by C{host} (default: its address)."""
        address = self.port.getHost()
        host = host or (f"[{address.host}]" if ":" in address.host else address.host)
        return f"http://{host}:{address.port}/{path}"


class _Holder(Protocol):
    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.received = bytearray()
        self.closed: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.payload)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any) -> None:
        self.closed.callback(None)


async def hold_open(
    case: TestCase, port: int, payload: bytes, source: str = "127.0.0.1"
) -> _Holder:
    """
    A client on C{source} that sends C{payload} to the node and then keeps its
    connection open, saying nothing more (closed when the test ends).
    """
    holder = _Holder(payload)
    factory = Factory()
    factory.protocol = lambda: holder
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, bindAddress=(source, 0))
    await endpoint.connect(factory)

    async def close() -> None:
        if not holder.closed.called:
            holder.transport.abortConnection()
            await holder.closed

    case.addCleanup(lambda: Deferred.fromCoroutine(close()))
    return holder
