"""
Nodes as real processes (C{twistd -n metadisk}, the repository on
PYTHONPATH) for the tests and the benchmarks, a JSON client for the
accounts API of any node, and L{free_port} for the programs that must be
told their port. Every wait on a process is bounded.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
from pathlib import Path
from typing import Any

from attrs import define, field
from treq.client import HTTPClient
from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

REPOSITORY = Path(__file__).resolve().parent.parent
TWISTD = Path(sys.executable).parent / "twistd"
_LISTENING = re.compile(rb"starting on (\d+)")


def free_port() -> int:
    """
    A TCP port of 127.0.0.1 that nothing listened on a moment ago.

    Racy: another process (a test running in parallel, a client given an
    ephemeral port) can take it between this check and its use, and the
    program then fails with "address in use". So wherever the program can
    listen on port 0 and say which port it got, let it: the nodes do
    (L{NodeProcess} reads "starting on N" from their output), rclone does
    (L{tests.fakes.WebDAVServer}), a test's own servers do
    (C{reactor.listenTCP(0, ...)}). The callers left cannot: PostgreSQL
    (L{tests.pg.ThrowawayCluster}, stopped and started again on the same
    port), litecoind's C{-rpcport} (tests/test_chain_litecoin.py), a port
    where nothing listens (tests/test_cli.py's unreachable node: a socket
    bound and never listening, held for the test as tests/test_db.py and
    tests/test_admin.py do, would have no race), and the ports Tahoe-LAFS
    writes into its configuration when it creates a node (bench/transfer.py).
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NodeFailed(Exception):
    """The node process ended, or never listened; its output says why."""


def node_toml(
    data_dir: Path,
    *,
    secret: str,
    hosts: list[Path],
    database_url: str | None = None,
    sync_interval: float = 0.2,
    node: dict[str, Any] | None = None,
) -> str:
    """
    A node's configuration file: loopback, port 0, the given hosts and
    database (by default SQLite in its data dir); C{node}: more keys of its
    C{[node]} table. More tables can follow it.
    """
    quote = json.dumps  # a JSON string is a TOML basic string, a JSON list of them a TOML array
    lines = [
        "[node]",
        'listen = "tcp:0:interface=127.0.0.1"',
        f"data_dir = {quote(str(data_dir))}",
        f"secret_key = {quote(secret)}",
        *(f"{key} = {quote(value)}" for key, value in (node or {}).items()),
        *(["[database]", f"url = {quote(database_url)}"] if database_url else []),
        "[storage]",
        'capacity = "256 MiB"',
        'max_file_size = "16 MiB"',
        "[replication]",
        f"copies = {len(hosts)}",
        f"interval = {sync_interval}",
    ]
    for i, path in enumerate(hosts, 1):
        lines += ["[[hosts]]", f'name = "local{i}"', 'kind = "local"', f"path = {quote(str(path))}"]
    return "\n".join(lines) + "\n"


class _NodeProtocol(ProcessProtocol):
    def __init__(self) -> None:
        self.output = bytearray()
        self.listening: Deferred[int] = Deferred()
        self.ended: Deferred[None] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data
        if not self.listening.called:
            match = _LISTENING.search(self.output)
            if match:
                self.listening.callback(int(match.group(1)))

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        if not self.listening.called:
            self.listening.errback(NodeFailed(self.output.decode("utf-8", "replace")))
        self.ended.callback(None)


@define
class NodeProcess:
    """
    A node run by C{twistd -n metadisk} in a child process, with C{config}
    (a C{metadisk.toml}) in C{directory}: started, stopped (SIGTERM), or
    killed (SIGKILL) and started again on the same data. It listens on the
    port its config names (port 0 in L{node_toml}: then a new one at each
    start, read from its output); its HTTP client is the caller's.
    """

    directory: Path
    config: str
    secret: str
    http: HTTPClient
    _reactor: Any = field(repr=False)
    open_files: int | None = None  # its limit on open files (soft and hard)
    port: int = field(default=0, init=False)
    _protocol: _NodeProtocol | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def output(self) -> str:
        """What it has written since it was last started."""
        return self._protocol.output.decode("utf-8", "replace") if self._protocol else ""

    @property
    def running(self) -> bool:
        return self._protocol is not None and not self._protocol.ended.called

    async def start(self, timeout: float = 60) -> None:
        """
        Start it (again, after a stop or a kill); return once it listens,
        which it does once its database is open and its recovery done.
        """
        if self.running:
            raise RuntimeError("the node is already running")
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "metadisk.toml").write_text(self.config)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPOSITORY), env.get("PYTHONPATH")]))
        protocol = self._protocol = _NodeProtocol()
        args = [str(TWISTD), "-n", "--pidfile=", "metadisk", "--config", "metadisk.toml"]
        if self.open_files is not None:
            args = [sys.executable, "-c", _WITH_OPEN_FILES, str(self.open_files), *args]
        self._reactor.spawnProcess(protocol, args[0], args, env=env, path=str(self.directory))
        try:
            await _bounded(protocol.listening, timeout, self._reactor)
            self.port = await protocol.listening
        except BaseException:
            await _terminate(protocol, self._reactor, 10)
            raise NodeFailed(protocol.output.decode("utf-8", "replace")[-3000:]) from None

    async def stop(self, timeout: float = 20) -> None:
        """SIGTERM, and SIGKILL if it has not ended within C{timeout} seconds."""
        if self._protocol is not None:
            await _terminate(self._protocol, self._reactor, timeout)

    async def kill(self, timeout: float = 20) -> None:
        """SIGKILL: no shutdown code runs, as in a power cut or the OOM killer."""
        if self._protocol is None or self._protocol.ended.called:
            return
        try:
            self._protocol.transport.signalProcess("KILL")
        except ProcessExitedAlready:
            pass
        await _bounded(self._protocol.ended, timeout, self._reactor)


async def _terminate(protocol: _NodeProtocol, reactor: Any, timeout: float) -> None:
    if protocol.ended.called:
        return
    for signal in ("TERM", "KILL"):
        try:
            protocol.transport.signalProcess(signal)
        except ProcessExitedAlready:
            pass
        try:
            await _bounded(protocol.ended, timeout, reactor)
            return
        except TimeoutError:
            continue


def _bounded(d: Deferred[Any], seconds: float, reactor: Any) -> Deferred[None]:
    """
    Fire when C{d} has fired, or fail with C{TimeoutError} after C{seconds};
    C{d} and its result are left as they are.
    """
    waiter: Deferred[None] = Deferred()

    def passthrough(result: Any) -> Any:
        if not waiter.called:
            waiter.callback(None)
        return result

    d.addBoth(passthrough)
    return waiter.addTimeout(seconds, reactor)


# python -c _WITH_OPEN_FILES N PROGRAM ARGS...: PROGRAM with at most N open files (soft and hard).
_WITH_OPEN_FILES = (
    "import os, resource, sys; n = int(sys.argv[1]);"
    " resource.setrlimit(resource.RLIMIT_NOFILE, (n, n)); os.execv(sys.argv[2], sys.argv[2:])"
)


async def start_node_process(
    reactor: Any,
    directory: Path,
    config: str,
    secret: str,
    http: HTTPClient,
    timeout: float = 60,
    open_files: int | None = None,
) -> NodeProcess:
    """
    Start C{twistd -n metadisk} with C{config} in C{directory}; return once
    it listens. C{open_files}: its limit on open files (soft and hard).
    """
    node = NodeProcess(directory, config, secret, http, reactor, open_files)
    await node.start(timeout)
    return node


@define
class Client:
    """Requests to one node (in this process or not); each answer as (status, JSON body)."""

    node: Any  # has .http, .url and .secret: a RunningNode or a NodeProcess

    async def call(
        self, method: str, path: str, *, secret: str | None = None, **kwargs: Any
    ) -> tuple[int, Any]:
        headers = kwargs.pop("headers", {})
        if secret is not None:
            headers[b"Authentication"] = [secret.encode()]
        response = await self.node.http.request(
            method, self.node.url + path, headers=headers, **kwargs
        )
        body = await response.content()
        content_type = response.headers.getRawHeaders("content-type")
        assert content_type == ["application/json"], (path, content_type, body)
        return response.code, json.loads(body)

    async def new_token(self) -> str:
        code, body = await self.call("POST", "/accounts/token/new")
        assert code == 200, (code, body)
        return body["token"]

    async def balance(self, token: str) -> int:
        code, body = await self.call("GET", f"/accounts/token/balance/{token}")
        assert code == 200, (code, body)
        return body["balance"]

    async def deposit(self, token: str, amount: Any) -> tuple[int, Any]:
        return await self.call(
            "POST",
            f"/accounts/token/deposit/{token}",
            secret=self.node.secret,
            json={"bytes": amount},
        )

    async def withdraw(self, token: str, amount: Any) -> tuple[int, Any]:
        return await self.call(
            "POST",
            f"/accounts/token/withdraw/{token}",
            secret=self.node.secret,
            json={"bytes": amount},
        )
