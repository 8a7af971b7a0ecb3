"""
The open network: the chain is public, so anyone may publish any record, and
anyone may open connections to the node. This module reproduces the attacks
this opens, against a running node, as a stranger or an anonymous client
would mount them: one class per attack. Each asserts what a user of the node
sees (answers, balances, the records and bytes served, files on disk) and
fails on a node without the defence.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import socket
import stat
from pathlib import Path
from typing import Any

from treq.client import HTTPClient
from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from twisted.web.static import Data
from twisted.web.util import Redirect

from metadisk.chain import codec
from metadisk.chain.florincoin import Florincoin
from metadisk.chain.reader import MAX_BLOCK_IN, Reader
from metadisk.chain.rpc import JSONRPCClient
from metadisk.crypto import DEFAULT_CONVERGENCE_SECRET, convergent_key, ctr_cipher
from metadisk.db import open_database
from metadisk.logs import ACCESS_NAMESPACE
from metadisk.store.shards import sharded
from tests.fakes.florincoind import FakeFlorincoind
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
    CountingServer,
    RunningNode,
    body_of,
    eventually,
    funded_token,
    hold_open,
    json_of,
    multipart,
    raw_http,
    start_node,
    status_line,
    test_config,
    upload,
)

PAYMENT = {"error": "balance-insufficient"}
CREDENTIALS = b'{"AccessKeyId": "ASIA-internal", "SecretAccessKey": "never-to-leave"}'
METADATA = "latest/meta-data"


class RecordURLsInsideTests(TestCase):
    """
    Server-side request forgery: a record names URLs inside the node's
    network (a metadata service on loopback, by address, by name, by another
    spelling, behind a redirect; the node itself), and a download of its file
    makes the node fetch them. The node must answer 502 without connecting
    there, and never serve what an internal service answers: a record whose
    filehash is the SHA-256 of that answer would make the node an oracle.
    """

    def setUp(self) -> None:
        self.chain = FakeFlorincoind()
        # Stands in for the cloud's metadata service: only this machine can reach it.
        latest, root = Resource(), Resource()
        latest.putChild(b"meta-data", Data(CREDENTIALS, "application/json"))
        root.putChild(b"latest", latest)
        self.internal = CountingServer(self, root)
        # The stranger's own server, let through by the node's allow list: it redirects inside.
        redirector = Resource()
        redirector.putChild(b"blob", Redirect(self.internal.url(METADATA).encode()))
        self.redirector = CountingServer(self, redirector, interface="127.0.0.2")

    async def node(self, allowed: list[str]) -> RunningNode:
        config = test_config(
            Path(self.mktemp()).resolve(),
            accounts={"enabled": False},
            chain={"fetch_allowed_networks": allowed},
        )
        return await start_node(self, config)

    async def publish(self, node: RunningNode, filehash: str, size: int, urls: list[str]) -> None:
        """A stranger's record for C{filehash}, mined, and read by the node."""
        record = {
            "datetime": "1700000000",
            "filehash": filehash,
            "filename": f"{filehash[:7]}_report.pdf",
            "filesize": size,
            "uploads": [{"host_name": f"mirror{i}", "url": url} for i, url in enumerate(urls)],
            "version": "0.2",
        }
        self.chain.publish([record])
        self.chain.mine()
        clock = Clock()
        rpc = JSONRPCClient.from_url("http://flo:secret@florincoind/", StubTreq(self.chain), clock)
        await Reader(db=node.node.db, chain=Florincoin(rpc), clock=clock).read_once()

    async def download(self, node: RunningNode, filehash: str) -> tuple[int, Any]:
        """The ciphertext, as anyone may ask for it: (status, body)."""
        response = await node.http.get(f"{node.url}/api/download/{filehash}")
        return response.code, await response.content()

    def status_requests(self, node: RunningNode) -> Any:
        labels = {"route": "/api/status", "method": "GET", "status": "200"}
        return node.node.metrics.registry.get_sample_value("metadisk_http_requests_total", labels)

    def internal_urls(self) -> list[str]:
        return [
            self.internal.url(METADATA),
            self.internal.url(METADATA, host="localhost"),
            self.internal.url(METADATA, host="0x7f000001"),
            self.redirector.url("blob"),
        ]

    async def test_a_record_naming_internal_urls(self) -> None:
        node = await self.node(["127.0.0.2/32"])
        filehash = os.urandom(32).hex()
        urls = [*self.internal_urls(), f"{node.url}/api/status"]
        await self.publish(node, filehash, 4096, urls)
        code, body = await self.download(node, filehash)
        self.assertEqual((code, body), (502, b'{"error": "error-downloading-file"}'))
        self.assertEqual(self.internal.connections, 0)
        self.assertEqual(self.redirector.connections, 1)  # let through, but not where it points
        self.assertIsNone(self.status_requests(node))

    async def test_an_oracle(self) -> None:
        """Were the internal answer fetched, its hash would match, and it would be served."""
        node = await self.node(["127.0.0.2/32"])
        filehash = hashlib.sha256(CREDENTIALS).hexdigest()
        await self.publish(node, filehash, len(CREDENTIALS), self.internal_urls())
        code, body = await self.download(node, filehash)
        self.assertEqual(code, 502)
        self.assertNotIn(b"never-to-leave", body)
        self.assertEqual(self.internal.connections, 0)
        found = await json_of(await node.http.get(f"{node.url}/api/find/{filehash}"))
        self.assertEqual(len(found["uploads"]), 4)  # the claim is known; its URLs were not used

    async def test_the_node_itself_with_loopback_allowed(self) -> None:
        """Tests let loopback through; the node's own port stays refused all the same."""
        node = await self.node(["127.0.0.0/8"])
        filehash = os.urandom(32).hex()
        urls = [f"{node.url}/api/status", f"http://localhost:{node.port}/api/status"]
        await self.publish(node, filehash, 4096, urls)
        code, _ = await self.download(node, filehash)
        self.assertEqual(code, 502)
        self.assertIsNone(self.status_requests(node))


class Stranger:
    """Publishes records on the fake florincoind the node follows, and waits for it to read them."""

    def __init__(self, case: TestCase) -> None:
        self.chain = FakeFlorincoind()
        port, self.url = self.chain.listen(reactor)
        case.addCleanup(port.stopListening)

    def chain_config(self, **keys: Any) -> dict[str, Any]:
        return {"kind": "florincoin", "url": self.url, "poll_interval": 0.1, **keys}

    async def publish(self, node: RunningNode, *records: dict[str, Any]) -> None:
        """Each record in its own batch, all in the next block; once the node has read it."""
        for record in records:
            self.chain.publish([record])
        self.chain.mine()
        await self.read(node)

    async def read(self, node: RunningNode) -> None:
        tip = len(self.chain.blocks) - 1

        async def read() -> bool:
            return await node.node.chain.reader.height() == tip

        await eventually(read)


def record_of(filehash: str, size: int, name: str, urls: dict[str, str]) -> dict[str, Any]:
    return {
        "datetime": "1700000000",
        "filehash": filehash,
        "filename": f"{filehash[:7]}_{name}",
        "filesize": size,
        "uploads": [{"host_name": host, "url": url} for host, url in urls.items()],
        "version": "0.2",
    }


def encrypted(plaintext: bytes) -> tuple[str, str, bytes]:
    """(filehash, key, ciphertext) of a file, as any node with the default secret makes them."""
    key = convergent_key(DEFAULT_CONVERGENCE_SECRET, hashlib.sha256(plaintext).hexdigest())
    blob = ctr_cipher(key).encrypt(plaintext)
    return hashlib.sha256(blob).hexdigest(), key.hex(), blob


class RecordPublishedFirstTests(TestCase):
    """
    Item 1: a stranger who has a file's content computes its filehash and
    publishes a record for it first: a tiny size, another name, this node's
    own host names with bogus URLs, a date far in the future. A real upload
    of the file must still be this node's: answered by its own record,
    served whole under its name, copied to its hosts (the stranger's host
    names count for nothing), safe from eviction until then, and published.
    """

    async def test_an_upload_is_answered_and_published_by_its_own_record(self) -> None:
        stranger = Stranger(self)
        data = os.urandom(940_000)
        filehash, key, _ = encrypted(data)
        bogus = {f"local{i}": f"http://203.0.113.{i}/{filehash}" for i in (1, 2, 3)}
        claim = record_of(filehash, 10, "invoice.pdf.exe", bogus)
        claim["datetime"] = str(2**53)
        config = test_config(Path(self.mktemp()).resolve(), chain=stranger.chain_config())
        node = await start_node(self, config)
        await stranger.publish(node, claim)

        token = await funded_token(node)
        response = await upload(node, data, token, name="report.pdf")
        self.assertEqual((response.code, (await json_of(response))["filehash"]), (201, filehash))
        self.assertEqual(await node.node.ledger.balance(token), 10**9 - 4 * len(data))
        await node.node.sync.idle()
        found = await json_of(await node.http.get(f"{node.url}/api/find/{filehash}"))
        self.assertEqual(
            (found["filename"], found["filesize"]), (f"{filehash[:7]}_report.pdf", len(data))
        )
        # On this node's three hosts, each copy written by this node.
        self.assertEqual(len(found["uploads"]), 3)
        for host in config.effective_hosts:
            self.assertTrue(sharded(Path(host.setting), filehash).is_file())
        rows = await node.node.db.query("SELECT added FROM uploads WHERE filehash = ?", (filehash,))
        self.assertTrue(all(added < 2**40 for (added,) in rows))

        # Evicted now that the hosts hold it, and fetched back from them: whole, by its name.
        node.node.store.cache.discard(filehash)
        response = await node.http.get(
            f"{node.url}/api/download/{filehash}", params={"key": key, "token": token}
        )
        self.assertEqual(await response.content(), data)
        self.assertEqual(
            response.headers.getRawHeaders("content-disposition"),
            [f'attachment; filename="{filehash[:7]}_report.pdf"'],
        )

        # Its own record goes on the chain, whatever the stranger claimed.
        async def published() -> bool:
            rows = await node.node.db.query(
                "SELECT state FROM chain_queue WHERE filehash = ?", (filehash,)
            )
            return rows == [("published",)]

        await eventually(published)
        stranger.chain.mine()
        await stranger.read(node)
        rows = await node.node.db.query(
            "SELECT record, height FROM chain_records WHERE filehash = ?", (filehash,)
        )
        self.assertEqual(json.loads(rows[0][0])["filename"], f"{filehash[:7]}_report.pdf")
        self.assertIsNotNone(rows[0][1])

    async def test_the_earliest_claim_is_the_first_in_its_block(self) -> None:
        """Two claims in one block: the earlier in the block is answered, whatever the txids."""
        stranger = Stranger(self)
        config = test_config(Path(self.mktemp()).resolve(), chain=stranger.chain_config())
        node = await start_node(self, config)
        filehash = os.urandom(32).hex()
        honest = record_of(filehash, 1000, "honest.txt", {"web": "https://a.example/x"})
        first = stranger.chain.publish([honest])[0]
        # A stranger's claim in the same block, whose txid sorts before the honest one's.
        for attempt in range(1000):
            claim = record_of(filehash, 10, f"claim{attempt}.exe", {"web": "https://b.example/"})
            if stranger.chain.publish([claim])[0] < first:
                break
        stranger.chain.mine()
        await stranger.read(node)
        found = await json_of(await node.http.get(f"{node.url}/api/find/{filehash}"))
        self.assertEqual(found, honest)


class ClaimDisprovedTests(TestCase):
    """
    A file known only from the chain, whose earliest claim lies about its
    size and names URLs that serve nothing: a download tries the next
    claim's URLs, the verified blob disproves the lie, and from then on the
    claim that told the truth is answered.
    """

    async def test_the_verified_blob_decides(self) -> None:
        stranger = Stranger(self)
        data = os.urandom(50_000)
        filehash, key, blob = encrypted(data)
        root = Resource()
        root.putChild(b"blob", Data(blob, "application/octet-stream"))
        web = CountingServer(self, root, interface="127.0.0.2")
        lie = record_of(filehash, 10, "invoice.pdf.exe", {"web": web.url("nothing-here")})
        truth = record_of(filehash, len(blob), "report.pdf", {"mirror": web.url("blob")})
        chain = stranger.chain_config(fetch_allowed_networks=["127.0.0.2/32"])
        node = await start_node(self, test_config(Path(self.mktemp()).resolve(), chain=chain))
        await stranger.publish(node, lie)
        await stranger.publish(node, truth)
        self.assertEqual(await json_of(await node.http.get(f"{node.url}/api/find/{filehash}")), lie)

        token = await funded_token(node, 10 * len(blob))
        response = await node.http.get(
            f"{node.url}/api/download/{filehash}", params={"key": key, "token": token}
        )
        self.assertEqual((response.code, await response.content()), (200, data))
        self.assertEqual(
            response.headers.getRawHeaders("content-disposition"),
            [f'attachment; filename="{filehash[:7]}_report.pdf"'],
        )
        # The fetch (its size) and the bytes sent.
        self.assertEqual(await node.node.ledger.balance(token), 10 * len(blob) - 2 * len(blob))
        found = await json_of(await node.http.get(f"{node.url}/api/find/{filehash}"))
        self.assertEqual(found, truth)


class Silent(Resource):
    """A web server that takes requests and never answers them."""

    isLeaf = True

    def render(self, request: Any) -> Any:
        return NOT_DONE_YET


class RecordNamingOurHostsTests(TestCase):
    """
    Item 2: a record names this node's host names ("local1") beside URLs: of
    the stranger's own blob, and of servers that never answer. Nothing is
    fetched, stored or checked on this node's hosts on the record's behalf
    (no free storage), and the replication of an unrelated upload is not
    held up behind the stranger's URLs.
    """

    async def test_no_free_storage_and_no_stall(self) -> None:
        stranger = Stranger(self)
        theirs = os.urandom(100_000)
        filehash = hashlib.sha256(theirs).hexdigest()
        root = Resource()
        root.putChild(b"blob", Data(theirs, "application/octet-stream"))
        web = CountingServer(self, root, interface="127.0.0.2")
        silent = CountingServer(self, Silent(), interface="127.0.0.3")
        free = record_of(filehash, len(theirs), "free.bin", {"local1": "x", "web": web.url("blob")})
        slow = {"local1": "x", **{f"slow{i}": silent.url(str(i)) for i in range(3)}}
        stalling = record_of(os.urandom(32).hex(), 5000, "stall.bin", slow)
        chain = stranger.chain_config(fetch_allowed_networks=["127.0.0.2/32", "127.0.0.3/32"])
        config = test_config(Path(self.mktemp()).resolve(), chain=chain)
        node = await start_node(self, config)
        await stranger.publish(node, free, stalling)

        await node.node.repair.run_once()  # a round of checks of what this node stored
        token = await funded_token(node)
        mine = (await json_of(await upload(node, b"mine" * 1000, token)))["filehash"]
        hosts = [Path(host.setting) for host in config.effective_hosts]

        async def replicated() -> bool:
            return all(sharded(host, mine).is_file() for host in hosts)

        await eventually(replicated)
        await node.node.sync.idle()
        self.assertFalse(any(sharded(host, filehash).exists() for host in hosts))
        self.assertEqual((web.connections, silent.connections), (0, 0))
        for table in ("uploads", "cloud_queue"):
            rows = await node.node.db.query(f"SELECT filehash FROM {table}")
            self.assertEqual(rows, [] if table == "cloud_queue" else [(mine,)] * 3)


class AnonymousUploadTests(TestCase):
    """
    Item 3: anonymous sockets send the headers of an upload (the largest a
    node takes, no token) and nothing more; others send a file before any
    token. No cache room is taken, nothing is evicted, and the unpaid bytes
    are bounded per address and node-wide; a paying client is still served.
    """

    async def node(self) -> RunningNode:
        config = test_config(
            Path(self.mktemp()).resolve(),
            storage={"capacity": 1_100_000, "max_file_size": 1_000_000},
            node={"unpaid_upload_bytes": 400_000},  # a quarter of it per address
        )
        return await start_node(self, config)

    def running(self, node: RunningNode) -> float:
        sample = node.node.metrics.registry.get_sample_value(
            "metadisk_transfers_running", {"direction": "incoming"}
        )
        return sample or 0

    async def test_headers_alone_evict_nothing(self) -> None:
        node = await self.node()
        token = await funded_token(node)
        for _ in range(11):
            self.assertEqual((await upload(node, os.urandom(95_000), token)).code, 201)
        await node.node.sync.idle()
        cached = sorted(node.node.store.cache.filehashes())
        self.assertEqual(len(cached), 11)  # all on the hosts: any of them may be evicted
        headers = (
            b"POST /api/upload HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 1000000\r\n\r\n"
        )
        for _ in range(4):
            await hold_open(self, node.port, headers)

        async def all_in() -> bool:
            return self.running(node) == 4

        await eventually(all_in)
        self.assertEqual(sorted(node.node.store.cache.filehashes()), cached)
        # A paying upload gets its room: what it needs is evicted, no more.
        self.assertEqual((await upload(node, os.urandom(95_000), token)).code, 201)
        self.assertEqual(len(node.node.store.cache.filehashes()), 11)

    async def test_unpaid_bytes_are_bounded(self) -> None:
        node = await self.node()
        token = await funded_token(node)
        content_type, body = multipart(("file", "f.bin", b"u" * 300_000), ("token", None, b"x"))
        head = b"POST /api/upload HTTP/1.1\r\nHost: x\r\nContent-Type: %s\r\n" % content_type
        head += b"Content-Length: %d\r\n\r\n" % len(body)
        # Within an address's share (100,000 bytes): held, waiting for its token.
        holder = await hold_open(self, node.port, head + body[:90_000], source="127.0.0.4")

        async def held() -> bool:
            return node.node.site.upload_policy.unpaid.held >= 90_000 - 4096

        await eventually(held)
        # Past it: refused at once.
        refused = await raw_http(node.port, head + body[:150_000], source="127.0.0.4")
        self.assertEqual(status_line(refused), 503)
        self.assertEqual(body_of(refused), {"error": "unpaid-upload-limit"})
        # Whoever names the payer first is not held back by others' unpaid bytes.
        self.assertEqual((await upload(node, b"paid", token)).code, 201)
        holder.transport.loseConnection()
        await holder.closed

        async def given_back() -> bool:
            return node.node.site.upload_policy.unpaid.held == 0

        await eventually(given_back)
        self.assertEqual(os.listdir(node.node.store.incoming), [])


class FetchChargedUpFrontTests(TestCase):
    """
    Item 5: one byte of a blob no longer in the cache made the node fetch the
    whole blob, for 2 bytes of credit; opening and dropping such a download
    cost nothing. The fetch is charged up front, whatever the range, and
    refused with 402 before it begins when the token cannot pay it.
    """

    async def evicted(self, node: RunningNode, size: int) -> str:
        token = await funded_token(node)
        filehash = (await json_of(await upload(node, os.urandom(size), token)))["filehash"]
        await node.node.sync.idle()
        node.node.store.cache.discard(filehash)
        return filehash

    async def test_a_byte_of_an_evicted_blob(self) -> None:
        node = await start_node(self)
        size = 1_500_000
        filehash = await self.evicted(node, size)
        url = f"{node.url}/api/download/{filehash}"
        poor = await funded_token(node, 10)
        response = await node.http.get(url, params={"token": poor}, headers={"Range": "bytes=0-0"})
        self.assertEqual((response.code, await json_of(response)), (402, PAYMENT))
        self.assertNotIn(filehash, node.node.store.cache)
        self.assertEqual(await node.node.ledger.balance(poor), 10)

        rich = await funded_token(node, 10 * size)
        response = await node.http.get(url, params={"token": rich}, headers={"Range": "bytes=0-0"})
        self.assertEqual((response.code, len(await response.content())), (206, 1))
        self.assertEqual(await node.node.ledger.balance(rich), 10 * size - size - 1)

    async def test_a_download_dropped_during_its_fetch_pays_the_fetch(self) -> None:
        stranger = Stranger(self)
        data = os.urandom(200_000)
        filehash, _, blob = encrypted(data)
        server = Held(blob)
        web = CountingServer(self, server, interface="127.0.0.2")
        claim = record_of(filehash, len(blob), "slow.bin", {"web": web.url("blob")})
        chain = stranger.chain_config(fetch_allowed_networks=["127.0.0.2/32"])
        node = await start_node(self, test_config(Path(self.mktemp()).resolve(), chain=chain))
        await stranger.publish(node, claim)
        token = await funded_token(node, 10 * len(blob))
        request = f"GET /api/download/{filehash}?token={token} HTTP/1.1\r\nHost: x\r\n\r\n"
        client = await hold_open(self, node.port, request.encode())

        async def fetching() -> bool:
            return bool(server.waiting)

        await eventually(fetching)
        client.transport.loseConnection()  # the client leaves; the node's fetch goes on
        await client.closed
        server.release()

        async def settled() -> bool:
            rows = await node.node.db.query("SELECT 1 FROM reservations")
            return filehash in node.node.store.cache and not rows

        await eventually(settled)
        self.assertEqual(await node.node.ledger.balance(token), 10 * len(blob) - len(blob))


class Held(Resource):
    """Serves a blob, but only once the test releases the requests that wait for it."""

    isLeaf = True

    def __init__(self, blob: bytes) -> None:
        super().__init__()
        self.blob = blob
        self.waiting: list[Any] = []

    def render_GET(self, request: Any) -> Any:
        self.waiting.append(request)
        return NOT_DONE_YET

    def release(self) -> None:
        for request in self.waiting:
            request.write(self.blob)
            request.finish()
        self.waiting = []


class ChainInputBoundsTests(TestCase):
    """
    Item 9: a 130-byte entry (a bz2 bomb within its total_length) became an
    87 KB database row, kept for 10,000 blocks. What one entry and one block
    can make the node store is bounded.
    """

    async def reader(self) -> tuple[Any, Reader]:
        base = Path(self.mktemp())
        base.mkdir()
        db = await open_database(f"sqlite:///{base.resolve() / 'node.sqlite'}", reactor)
        self.addCleanup(db.close)
        self.chain = FakeFlorincoind()
        clock = Clock()
        rpc = JSONRPCClient.from_url("http://flo:secret@florincoind/", StubTreq(self.chain), clock)
        return db, Reader(db=db, chain=Florincoin(rpc), clock=clock)

    async def stored(self, db: Any) -> int:
        """Bytes of entries the node keeps (decoded regions of incomplete batches)."""
        rows = await db.query("SELECT region FROM chain_fragments")
        return sum(len(base64.b64decode(region)) for (region,) in rows)

    async def test_a_bomb_in_an_entry(self) -> None:
        db, reader = await self.reader()
        bomb = b'[{"filename": "' + b"x" * 65_000 + b'"'  # a batch that never completes
        entry = {"prev_txid": None, "region": codec.compress_region(bomb), "total_length": 65_536}
        comment = json.dumps({**entry, "index": 0})
        self.assertLess(len(comment), 200)
        self.chain.send_comment(comment)
        self.chain.mine()
        await reader.read_once()
        self.assertEqual(await self.stored(db), 0)

    async def test_a_block_full_of_entries(self) -> None:
        db, reader = await self.reader()
        for i in range(400):
            region = f"[{i:04d}".encode() + b"y" * 995  # heads of batches that never complete
            self.chain.send_comment(codec.entry_text(region, 0, None, None, 2000))
        self.chain.mine()
        await reader.read_once()
        self.assertLessEqual(await self.stored(db), MAX_BLOCK_IN)
        self.assertGreater(await self.stored(db), MAX_BLOCK_IN - 1000)  # the first entries, kept


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

        async def on_three_hosts() -> bytes | None:
            _, _, answer = await kept.request(
                b"GET /api/find/%s HTTP/1.1\r\nHost: x\r\n\r\n" % filehash.encode()
            )
            return answer if len(json.loads(answer)["uploads"]) == 3 else None

        answer = await eventually(on_three_hosts, WAIT)
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
        # The cache's folder is closed at once; what it holds is tightened once the node
        # listens (a million blobs are not looked at before), and reported on its own.
        self.assertFalse((data_dir / "blobs").stat().st_mode & 0o077)
        await eventually(lambda: self.open_to_others(data_dir) == [])

        def warnings() -> list[str]:
            return [
                formatEvent(e)
                for e in observer
                if e["log_level"] is LogLevel.warn and "open to others" in formatEvent(e)
            ]

        await eventually(lambda: len(warnings()) == 2)
        self.assertIn(str(data_dir), warnings()[0])
        self.assertIn(str(data_dir / "blobs"), warnings()[1])


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
