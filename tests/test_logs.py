"""Structured logs: one event per request, JSON lines for operators, no secrets."""

from __future__ import annotations

import io
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from attrs import define, field
from twisted.application import service
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import ProcessProtocol, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import (
    ILogObserver,
    LogLevel,
    formatEvent,
    globalLogPublisher,
)
from twisted.python.failure import Failure
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.http_headers import Headers

from metadisk.logs import (
    ACCESS_NAMESPACE,
    JSONLinesObserver,
    RequestLog,
    Started,
    event_as_json,
)
from metadisk.tap import Options, makeService
from tests.fakes.florincoind import FakeFlorincoind
from tests.support import eventually, funded_token, json_of, start_node, test_config, upload

REPO = Path(__file__).resolve().parent.parent


class JSONLinesTests(SynchronousTestCase):
    def test_an_event_is_one_line_of_json(self) -> None:
        event = {
            "log_format": "{who} sent {n} bytes",
            "log_level": LogLevel.warn,
            "log_namespace": "metadisk.test",
            "log_time": 1_700_000_000.25,
            "who": "alice",
            "n": 3,
            "raw": b"\xffbytes",
            "thing": object(),
        }
        out = io.StringIO()
        JSONLinesObserver(out)(event)
        lines = out.getvalue().splitlines()
        self.assertEqual(len(lines), 1)
        line = json.loads(lines[0])
        self.assertEqual(line["time"], "2023-11-14T22:13:20.250Z")
        self.assertEqual(line["level"], "warn")
        self.assertEqual(line["namespace"], "metadisk.test")
        self.assertEqual(line["message"], "alice sent 3 bytes")
        self.assertEqual((line["who"], line["n"]), ("alice", 3))
        self.assertEqual(line["raw"], "\ufffdbytes")
        self.assertIn("object object", line["thing"])

    def test_a_failure_carries_its_traceback_in_the_line(self) -> None:
        failure = Failure(ZeroDivisionError("division by zero"))
        event = {"log_format": "boom", "log_failure": failure, "log_time": 0.0}
        line = json.loads(event_as_json(event))
        self.assertIn("ZeroDivisionError", line["traceback"])
        self.assertEqual(line["message"], "boom")


class OptionTests(SynchronousTestCase):
    def service_for(self, *argv: str) -> Any:
        options = Options()
        options.parseOptions(["--data-dir", self.mktemp(), *argv])
        return makeService(options)

    def test_json_logs_are_offered_to_twistd(self) -> None:
        node_service = self.service_for("--log-format", "json")
        application = service.Application("metadisk")
        node_service.setServiceParent(application)
        self.assertIsInstance(application.getComponent(ILogObserver), JSONLinesObserver)

    def test_text_logs_are_twistds_own(self) -> None:
        application = service.Application("metadisk")
        self.service_for().setServiceParent(application)
        self.assertIsNone(application.getComponent(ILogObserver, None))

    def test_unknown_format(self) -> None:
        with self.assertRaises(UsageError):
            Options().parseOptions(["--log-format", "xml"])


def access_events(observer: EventLoggingObserver) -> list[dict[str, Any]]:
    return [e for e in observer if e.get("log_namespace") == ACCESS_NAMESPACE]


@define
class _AnsweredRequest:
    """What L{RequestLog.done} reads of a request that was answered."""

    started: Started | None
    code: int = 404
    sentLength: int = 23
    bytes_received: int = 0
    startedWriting: bool = True
    responseHeaders: Headers = field(factory=lambda: Headers({b"content-length": [b"23"]}))

    def getClientAddress(self) -> IPv4Address:
        return IPv4Address("TCP", "192.0.2.7", 4321)


class AccessLineTests(SynchronousTestCase):
    def test_braces_in_a_path_are_text(self) -> None:
        # The line is rendered before it is logged: a client's braces must not be read as
        # fields of a format (a KeyError, or another field's value, in the log).
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        clock = Clock()
        log = RequestLog(clock, lambda uri: uri)
        request = _AnsweredRequest(log.started(b"GET", b"/{client}/{0}/{{x}}"))
        clock.advance(0.25)
        log.done(request, complete=True)
        [event] = access_events(observer)
        self.assertEqual(
            formatEvent(event), "192.0.2.7 GET /{client}/{0}/{{x}} 404 in=0 out=23 0.250s"
        )
        self.assertEqual((event["path"], event["route"]), ("/{client}/{0}/{{x}}", "other"))


class RequestLogTests(TestCase):
    async def test_one_redacted_line_per_request(self) -> None:
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        node = await start_node(self)
        token = await funded_token(node)  # two requests: new, deposit
        data = os.urandom(50_000)
        answer = await json_of(await upload(node, data, token))
        filehash, key = answer["filehash"], answer["key"]
        response = await node.http.get(
            node.url + f"/api/download/{filehash}", params={"key": key, "token": token}
        )
        self.assertEqual(await response.content(), data)
        # A download is logged once its last byte is handed to the socket, a moment after
        # the client may have read it: then comes the next request.
        await eventually(lambda: len(access_events(observer)) >= 4, what="the download's line")
        await (await node.http.get(node.url + f"/accounts/token/balance/{token}")).content()
        await (await node.http.get(node.url + "/nowhere")).content()
        await eventually(lambda: len(access_events(observer)) >= 6, what="six lines")
        events = access_events(observer)
        self.assertEqual(
            [(e["method"], e["route"], e["status"]) for e in events],
            [
                ("POST", "/accounts/token/new", "200"),
                ("POST", "/accounts/token/deposit/{token}", "200"),
                ("POST", "/api/upload", "201"),
                ("GET", "/api/download/{filehash}", "200"),
                ("GET", "/accounts/token/balance/{token}", "200"),
                ("GET", "other", "404"),
            ],
        )
        upload_event, download = events[2], events[3]
        self.assertGreater(upload_event["bytes_in"], len(data))
        self.assertEqual(download["bytes_out"], len(data))
        self.assertEqual(download["client"], "127.0.0.1")
        self.assertTrue(download["complete"])
        self.assertGreaterEqual(download["duration"], 0)
        self.assertIn(f"key={key[:4]}...", download["path"])
        self.assertIn(f"token={token[:4]}...", download["path"])
        self.assertEqual(events[4]["path"], f"/accounts/token/balance/{token[:4]}...")
        for event in events:
            for rendered in (formatEvent(event), event_as_json(event)):
                self.assertNotIn(token, rendered)
                self.assertNotIn(key, rendered)
                self.assertNotIn(node.secret, rendered)
        text = formatEvent(download)
        self.assertRegex(
            text, rf"^127\.0\.0\.1 GET /api/download/{filehash}\?\S+ 200 in=0 out=50000 \S+s$"
        )

    async def test_a_download_cut_short_is_logged_as_aborted(self) -> None:
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        # A slow node (200 kB/s out): the client is gone long before the end.
        base = Path(self.mktemp()).resolve()
        node = await start_node(self, test_config(base, bandwidth={"rate_outgoing": 200_000}))
        token = await funded_token(node)
        data = os.urandom(1_000_000)
        answer = await json_of(await upload(node, data, token))
        path = f"/api/download/{answer['filehash']}?key={answer['key']}&token={token}"
        await connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", node.port),
            _HangUpOnFirstByte(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()),
        )

        async def logged() -> bool:
            return any(e["route"] == "/api/download/{filehash}" for e in access_events(observer))

        await eventually(logged)
        [event] = [e for e in access_events(observer) if e["route"].startswith("/api/download")]
        self.assertEqual(event["status"], "aborted")
        self.assertFalse(event["complete"])
        self.assertLess(event["bytes_out"], len(data))
        metrics = node.node.metrics.registry
        labels = {"route": "/api/download/{filehash}", "method": "GET", "status": "aborted"}
        self.assertEqual(metrics.get_sample_value("metadisk_http_requests_total", labels), 1)
        running = {"direction": "outgoing"}
        self.assertEqual(metrics.get_sample_value("metadisk_transfers_running", running), 0)


class ChainLogTests(TestCase):
    async def test_an_idle_node_with_a_chain_logs_nothing_per_poll(self) -> None:
        """The chain's JSON-RPC calls used to log two "factory" lines each: 460 in 30 s."""
        chain = FakeFlorincoind()
        port, url = chain.listen(reactor)
        self.addCleanup(port.stopListening)
        config = test_config(
            Path(self.mktemp()).resolve(),
            chain={"kind": "florincoin", "url": url, "poll_interval": 0.1},
        )
        await start_node(self, config)

        async def polled(times: int) -> bool:
            return chain.calls.count("getblockcount") >= times

        await eventually(lambda: polled(2))  # started, and settled into polling
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        await eventually(lambda: polled(6))
        self.assertEqual([formatEvent(event) for event in events], [])

        chain.publish(
            [
                {
                    "datetime": "1700000000",
                    "filehash": "ab" * 32,
                    "filename": "abababa_x",
                    "filesize": 1,
                    "uploads": [],
                    "version": "0.2",
                }
            ]
        )
        chain.mine()
        await eventually(lambda: polled(12))
        self.assertEqual([formatEvent(event) for event in events], ["block 1: 1 records read"])


class _HangUpOnFirstByte(Protocol):
    def __init__(self, request: bytes) -> None:
        self.request = request

    def connectionMade(self) -> None:
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.transport.abortConnection()


class _Collect(ProcessProtocol):
    def __init__(self) -> None:
        self.out = bytearray()
        self.err = bytearray()
        self.ended: Deferred[None] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(None)

    def lines(self) -> list[dict[str, Any]]:
        complete = bytes(self.out).rpartition(b"\n")[0]
        return [json.loads(line) for line in complete.splitlines() if line.strip()]


class TwistdTests(TestCase):
    async def test_twistd_writes_json_lines(self) -> None:
        data_dir = Path(self.mktemp()).resolve()
        protocol = _Collect()
        args = [
            sys.executable,
            "-c",
            "from twisted.scripts.twistd import run; run()",
            "-n",
            "--pidfile=",
            "metadisk",
            "--listen",
            "tcp:0:interface=127.0.0.1",  # the port it gets is in its log
            "--data-dir",
            str(data_dir),
            "--log-format",
            "json",
        ]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        process = reactor.spawnProcess(protocol, sys.executable, args, env=env, path="/")

        def stop() -> Deferred[None]:
            if process.pid is not None:
                process.signalProcess("KILL")
            return protocol.ended

        self.addCleanup(stop)

        async def listening() -> bool:
            return any("listening on" in line["message"] for line in protocol.lines())

        await eventually(listening, 30)  # a real process
        [port] = [
            match.group(1)
            for line in protocol.lines()
            if (match := re.search(r"starting on (\d+)", line["message"]))
        ]
        token = "SECRETTOKEN12345"
        node_url = f"http://127.0.0.1:{port}"
        response = await _client(self).get(f"{node_url}/api/find/{'0' * 64}?token={token}")
        self.assertEqual(response.code, 404)
        await response.content()

        async def logged() -> bool:
            return any(line["namespace"] == ACCESS_NAMESPACE for line in protocol.lines())

        await eventually(logged, 30)
        [line] = [line for line in protocol.lines() if line["namespace"] == ACCESS_NAMESPACE]
        self.assertEqual(line["path"], f"/api/find/{'0' * 64}?token=SECR...")
        self.assertEqual((line["method"], line["status"], line["level"]), ("GET", "404", "info"))
        self.assertNotIn(token, bytes(protocol.out).decode())
        process.signalProcess("TERM")
        await protocol.ended
        for raw in bytes(protocol.out).splitlines():
            json.loads(raw)  # every line, to the last, is JSON


def _client(case: TestCase) -> Any:
    from treq.client import HTTPClient
    from twisted.web.client import Agent, HTTPConnectionPool

    pool = HTTPConnectionPool(reactor, persistent=False)
    case.addCleanup(pool.closeCachedConnections)
    return HTTPClient(Agent(reactor, pool=pool))
