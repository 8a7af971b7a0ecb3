"""
The open network: attacks by anonymous clients on a running node, as they
were observed, reproduced one class per attack. Each asserts what a user of
the node sees (answers, balances, files on disk), and fails on a node
without the defence.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import stat
from pathlib import Path

from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from metadisk.logs import ACCESS_NAMESPACE
from tests.flood import (
    WAIT,
    ClientSocket,
    KeptAlive,
    all_lost,
    client_from,
    connect_from,
    node_process,
    replicated,
)
from tests.nodes import NodeProcess
from tests.support import (
    eventually,
    funded_token,
    json_of,
    multipart,
    start_node,
    test_config,
    upload,
)


class IdleConnectionFloodTests(TestCase):
    """
    Item 6: idle connections exhaust file descriptors. With the open-file
    limit at 256, 245 sockets that each sent one byte had new clients reset
    and the chain reader failing with "Too many open files"; a half-sent
    request line was still open 25 s later.
    """

    OPEN_FILES = 256
    PER_ADDRESS = 64  # the default of [node] max_connections_per_address

    def assert_refused(self, client: ClientSocket, status: int, code: str) -> None:
        answer = client.answer()
        self.assertIsNotNone(answer, bytes(client.received))
        got_status, headers, body = answer
        self.assertEqual((got_status, json.loads(body)), (status, {"error": code}))
        self.assertEqual(headers["Content-Type"], "application/json")
        self.assertGreater(int(headers["Retry-After"]), 0)

    def assert_no_descriptor_errors(self, node: NodeProcess) -> None:
        for symptom in ("Too many open files", "EMFILE", "Out of file descriptors"):
            self.assertNotIn(symptom, node.output)

    async def test_one_address(self) -> None:
        """Past its limit an address gets 429 at once; other clients and the node carry on."""
        node = await node_process(self, open_files=self.OPEN_FILES)
        idle = await connect_from(node.port, "127.0.0.1", self.PER_ADDRESS, b"G")
        self.addCleanup(lambda: [s.transport.abortConnection() for s in idle])
        refused: list[ClientSocket] = []
        for _ in range(0, 245 - self.PER_ADDRESS, 10):
            # In batches, as a flood arrives; each client reads its answer and closes.
            batch = await connect_from(node.port, "127.0.0.1", 10, b"G", close_on_answer=True)
            await all_lost(batch)
            refused += batch
        for client in refused:
            self.assert_refused(client, 429, "too-many-connections")
        # The idle ones are still open (until the header deadline); the node serves others.
        self.assertFalse(any(s.closed for s in idle))
        other = client_from("127.0.0.2")
        response = await other.get(node.url + "/api/status")
        self.assertEqual(response.code, 200)
        await response.content()
        # An upload and its replication need descriptors (a file, host copies, the database).
        node.http = other  # the client the helpers below use
        data = os.urandom(100_000)
        response = await upload(node, data, None)
        self.assertEqual(response.code, 201)
        await replicated(node, (await json_of(response))["filehash"])
        self.assert_no_descriptor_errors(node)

    async def test_header_deadline(self) -> None:
        """A request line and headers get header_timeout seconds, however they trickle in."""
        deadline = 2
        node = await node_process(self, open_files=self.OPEN_FILES, header_timeout=deadline)
        started = reactor.seconds()
        idle = await connect_from(node.port, "127.0.0.1", self.PER_ADDRESS, b"G")
        [half] = await connect_from(node.port, "127.0.0.2", 1, b"GET /api/sta")
        [silent] = await connect_from(node.port, "127.0.0.2", 1)
        [refused] = await connect_from(node.port, "127.0.0.1", 1, b"G", close_on_answer=True)
        await all_lost([refused])
        self.assert_refused(refused, 429, "too-many-connections")
        # A byte now and then does not keep a connection (it would keep Twisted's idle timeout).
        while not half.closed and reactor.seconds() - started < WAIT:
            half.transport.write(b"t")
            await deferLater(reactor, 0.25, lambda: None)
        await all_lost([*idle, half, silent])
        self.assertLess(reactor.seconds() - started, deadline + 3)
        for client in [*idle, half]:
            status, _, body = client.answer()
            self.assertEqual((status, json.loads(body)), (408, {"error": "request-timeout"}))
        self.assertEqual(silent.received, b"")  # nothing asked, nothing answered
        # The address may connect again.
        [served] = await connect_from(
            node.port, "127.0.0.1", 1, b"GET /api/status HTTP/1.1\r\nHost: x\r\n\r\n", True
        )
        await all_lost([served])
        self.assertEqual(served.answer()[0], 200)

    async def test_many_addresses(self) -> None:
        """Floods from many addresses take connections, never the descriptors the node needs."""
        node = await node_process(self, open_files=self.OPEN_FILES)
        kept = KeptAlive()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", node.port, bindAddress=("127.0.0.2", 0))
        await endpoint.connect(Factory.forProtocol(lambda: kept))
        self.addCleanup(kept.transport.loseConnection)
        status, _, _ = await kept.request(b"GET /api/status HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(status, 200)

        flood: list[ClientSocket] = []
        self.addCleanup(lambda: [s.transport.abortConnection() for s in flood if not s.closed])
        for i in range(3, 10):  # 280 connections, 40 from each address: each under its limit
            flood += await connect_from(node.port, f"127.0.0.{i}", 40, b"G")
        await deferLater(reactor, 0.5, lambda: None)
        open_ones = [s for s in flood if not s.closed and not s.received]
        busy = [s for s in flood if s.answer() is not None]
        for client in busy:
            self.assert_refused(client, 503, "node-busy")
        # The node stopped taking connections well before its limit…
        self.assertLess(len(open_ones), self.OPEN_FILES // 2)
        self.assertGreater(len(flood) - len(open_ones), 0)

        # …so that, the flood still there, an upload and its replication find descriptors.
        content_type, body = multipart(("file", "during-flood.bin", os.urandom(200_000)))
        status, _, answer = await kept.request(
            b"POST /api/upload HTTP/1.1\r\nHost: x\r\nContent-Type: %s\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (content_type, len(body), body)
        )
        self.assertEqual(status, 201, answer)
        filehash = json.loads(answer)["filehash"]
        for _ in range(int(WAIT / 0.1)):
            status, _, answer = await kept.request(
                b"GET /api/find/%s HTTP/1.1\r\nHost: x\r\n\r\n" % filehash.encode()
            )
            if len(json.loads(answer)["uploads"]) == 3:
                break
            await deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(len(json.loads(answer)["uploads"]), 3, answer)
        self.assert_no_descriptor_errors(node)

        # When the flood goes, new clients are served again.
        for client in flood:
            client.transport.abortConnection()
        await all_lost(flood)
        response = await client_from("127.0.0.3").get(node.url + "/api/status")
        self.assertEqual(response.code, 200)
        await response.content()


class ProxyTests(TestCase):
    """
    Item 7: behind a reverse proxy every client has the proxy's address, and
    the token-guessing limit, per address, locked out everyone.
    """

    async def guess(self, client: HTTPClient, url: str, forwarded: str | None) -> int:
        headers = {"X-Forwarded-For": [forwarded]} if forwarded is not None else {}
        response = await client.get(
            url + f"/accounts/token/balance/{secrets.token_hex(8)}", headers=headers
        )
        await response.content()
        return response.code

    async def test_clients_behind_a_trusted_proxy(self) -> None:
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        config = test_config(
            Path(self.mktemp()).resolve(),
            node={"trusted_proxies": ["127.0.0.1/32"]},
            accounts={"guess_limit": 3, "guess_window": 60},
        )
        node = await start_node(self, config)
        proxy = node.http  # its connections come from 127.0.0.1
        guesses = [await self.guess(proxy, node.url, "203.0.113.5") for _ in range(3)]
        self.assertEqual(guesses, [404] * 3)
        self.assertEqual(await self.guess(proxy, node.url, "203.0.113.5"), 429)
        # Through a chain of proxies the client is the rightmost address not a trusted proxy.
        self.assertEqual(await self.guess(proxy, node.url, "10.9.9.9, 203.0.113.5, 127.0.0.1"), 429)
        # Another client behind the same proxy is served.
        self.assertEqual(await self.guess(proxy, node.url, "203.0.113.6"), 404)
        response = await proxy.get(
            node.url + "/api/status", headers={"X-Forwarded-For": ["203.0.113.6"]}
        )
        self.assertEqual(response.code, 200)
        await response.content()
        clients = {e["client"] for e in observer if e.get("log_namespace") == ACCESS_NAMESPACE}
        self.assertEqual(clients, {"203.0.113.5", "203.0.113.6"})

        # A client that is not a trusted proxy cannot dodge the limit by naming others.
        direct = client_from("127.0.0.2")
        for i in range(3):
            self.assertEqual(await self.guess(direct, node.url, f"198.51.100.{i}"), 404)
        self.assertEqual(await self.guess(direct, node.url, "198.51.100.99"), 429)

    async def test_without_trusted_proxies_the_header_is_ignored(self) -> None:
        config = test_config(
            Path(self.mktemp()).resolve(), accounts={"guess_limit": 3, "guess_window": 60}
        )
        node = await start_node(self, config)
        for i in range(3):
            self.assertEqual(await self.guess(node.http, node.url, f"203.0.113.{i}"), 404)
        self.assertEqual(await self.guess(node.http, node.url, "203.0.113.99"), 429)
        self.assertEqual(await self.guess(node.http, node.url, None), 429)

    async def test_a_trusted_proxy_is_not_held_to_the_connection_limit(self) -> None:
        config = test_config(
            Path(self.mktemp()).resolve(),
            node={"trusted_proxies": ["127.0.0.1/32"], "max_connections_per_address": 2},
        )
        node = await start_node(self, config)
        request = b"GET /api/status HTTP/1.1\r\nHost: x\r\n\r\n"
        for source, status in (("127.0.0.1", 200), ("127.0.0.2", 429)):
            held = await connect_from(node.port, source, 2)
            [third] = await connect_from(node.port, source, 1, request, close_on_answer=True)
            await all_lost([third])
            self.assertEqual(third.answer()[0], status, source)
            for client in held:
                client.transport.loseConnection()
            await all_lost(held)


class DataDirectoryTests(TestCase):
    """
    Item 8: local users read tokens and uploads: the database was 0644 with
    every token in full, incoming/ 0755 with plaintext partial uploads.
    """

    def setUp(self) -> None:
        self.addCleanup(os.umask, os.umask(0o022))  # a login shell's, the usual one

    @staticmethod
    def open_to_others(folder: Path) -> list[str]:
        found = []
        for path in [folder, *folder.rglob("*")]:
            mode = path.lstat().st_mode
            if not stat.S_ISLNK(mode) and mode & 0o077:
                found.append(f"{path} {stat.filemode(mode)}")
        return found

    async def test_nothing_readable_by_others(self) -> None:
        node = await start_node(self)
        data_dir = node.node.config.node.data_dir
        self.assertEqual(self.open_to_others(data_dir), [])
        token = await funded_token(node)
        response = await upload(node, os.urandom(10_000), token)
        self.assertEqual(response.code, 201)
        await response.content()
        await node.node.sync.idle()
        self.assertEqual(self.open_to_others(data_dir), [])
        # A partial upload in flight: its plaintext is on disk.
        content_type, body = multipart(("file", "secret.txt", os.urandom(50_000)))
        [sender] = await connect_from(
            node.port,
            "127.0.0.1",
            1,
            b"POST /api/upload?token=%s HTTP/1.1\r\nHost: x\r\nContent-Type: %s\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (token.encode(), content_type, len(body) + 1, body),
        )
        self.addCleanup(sender.transport.abortConnection)
        incoming = node.node.store.incoming

        async def in_flight() -> bool:
            return any(path.suffix == ".part" for path in incoming.iterdir())

        await eventually(in_flight)
        self.assertEqual(self.open_to_others(data_dir), [])

    async def test_an_open_data_dir_is_tightened_and_reported(self) -> None:
        base = Path(self.mktemp()).resolve()
        node = await start_node(self, test_config(base))
        await node.stop()
        data_dir = base / "data"
        for path in [data_dir, *data_dir.rglob("*")]:  # as an older node (or an operator) left it
            path.chmod(0o755 if path.is_dir() else 0o644)
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        await start_node(self, test_config(base))
        self.assertEqual(self.open_to_others(data_dir), [])
        warnings = [
            formatEvent(e)
            for e in observer
            if e["log_level"] is LogLevel.warn and "open to others" in formatEvent(e)
        ]
        self.assertEqual(len(warnings), 1, warnings)
        self.assertIn(str(data_dir), warnings[0])


class DroppedDownloadTests(TestCase):
    """
    Item 10: a client that closed after 50 ms having read 0 bytes of a 3 MB
    download was charged 3,000,000: bytes handed to the socket counted as sent.
    """

    SIZE = 3_000_000

    async def node_with_file(self) -> None:
        self.node = await start_node(self)
        self.token = await funded_token(self.node)
        response = await upload(self.node, os.urandom(self.SIZE), self.token, name="big.bin")
        self.filehash = (await json_of(response))["filehash"]
        self.before = await self.node.node.ledger.balance(self.token)

    async def charged(self) -> int:
        """What the download cost, once its reservation is settled."""
        db = self.node.node.db

        async def settled() -> bool:
            return await db.query("SELECT COUNT(*) FROM reservations") == [(0,)]

        await eventually(settled)
        return self.before - await self.node.node.ledger.balance(self.token)

    def small_client(self) -> socket.socket:
        """A client socket with a 4 KiB receive buffer, its request for the file sent."""
        client = socket.socket()
        self.addCleanup(client.close)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.connect(("127.0.0.1", self.node.port))  # loopback: no wait for the reactor
        client.setblocking(False)
        client.send(
            b"GET /api/download/%s?token=%s HTTP/1.1\r\nHost: x\r\n\r\n"
            % (self.filehash.encode(), self.token.encode())
        )
        return client

    async def buffers_filled(self) -> None:
        """Wait until the node has handed the socket all it will take."""
        last = -1
        for _ in range(int(WAIT / 0.2)):
            handed = self.node.node.meters.snapshot()["total"]["outgoing"]
            if handed == last and handed > 0:
                return
            last = handed
            await deferLater(reactor, 0.2, lambda: None)
        raise AssertionError("the node never stopped sending")

    async def test_a_client_that_reads_nothing(self) -> None:
        await self.node_with_file()
        client = self.small_client()
        await self.buffers_filled()
        handed = self.node.node.meters.snapshot()["total"]["outgoing"]
        self.assertGreater(handed, 500_000)  # what the node used to charge
        receive_buffer = client.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        client.close()  # nothing read: the kernel resets the connection
        self.assertLessEqual(await self.charged(), receive_buffer)

    async def test_a_client_that_half_closes_gets_nothing_free(self) -> None:
        """Charged for what it acknowledged, it cannot then read what it did not."""
        await self.node_with_file()
        client = self.small_client()
        await self.buffers_filled()
        client.shutdown(socket.SHUT_WR)  # the node takes this for a client gone…
        charged = await self.charged()
        received = 0
        for _ in range(int(WAIT / 0.05)):  # …but it can still read what the node's kernel holds
            try:
                data = client.recv(1 << 20)
            except BlockingIOError:
                await deferLater(reactor, 0.05, lambda: None)
                continue
            except ConnectionResetError:
                break
            if not data:
                break
            received += len(data)
        self.assertLessEqual(received - 400, charged)  # 400: more than the response's headers

    async def test_a_complete_download_costs_its_size(self) -> None:
        await self.node_with_file()
        response = await self.node.http.get(
            f"{self.node.url}/api/download/{self.filehash}", params={"token": self.token}
        )
        self.assertEqual(len(await response.content()), self.SIZE)
        self.assertEqual(await self.charged(), self.SIZE)
