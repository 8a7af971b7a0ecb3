"""
Records from the chain name hosts this node may not have: the blob is then
fetched from the record's http(s) URL, and verified by its SHA-256. The
blobs are served on loopback, which a node only fetches from when told to
(C{[chain] fetch_allowed_networks}).
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

from treq.testing import StubTreq
from twisted.internet import defer, reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from metadisk.chain.florincoin import Florincoin
from metadisk.chain.reader import Reader
from metadisk.chain.rpc import JSONRPCClient
from metadisk.config import networks
from metadisk.crypto import DEFAULT_CONVERGENCE_SECRET, convergent_key, ctr_cipher
from metadisk.store.hosts import SLOWEST_RATE, HostError
from metadisk.store.hosts.publicnet import AddressPolicy, PublicEndpoints, public_agent
from metadisk.store.hosts.url import PROGRESS_WINDOW, BlobReceiver, URLHost
from tests.fakes.florincoind import FakeFlorincoind
from tests.support import json_of, start_node, test_config

LOOPBACK = ["127.0.0.0/8"]  # where the test servers are: to be let through


def loopback_agent() -> Any:
    policy = AddressPolicy(networks(LOOPBACK))
    return public_agent(reactor, PublicEndpoints(reactor=reactor, policy=policy))


class BlobServer:
    """A plain web server with some blobs, on a free loopback port."""

    def __init__(self, case: TestCase, blobs: dict[str, bytes]) -> None:
        root = Resource()
        for name, data in blobs.items():
            root.putChild(name.encode(), Data(data, "application/octet-stream"))
        self.port = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
        case.addCleanup(self.port.stopListening)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port.getHost().port}/{name}"


class URLHostTests(TestCase):
    async def test_fetch(self) -> None:
        blob = os.urandom(100_000)
        filehash = hashlib.sha256(blob).hexdigest()
        server = BlobServer(self, {"blob": blob})
        target = Path(self.mktemp())
        host = URLHost(loopback_agent(), 200_000, reactor)
        await host.fetch(filehash, server.url("blob"), str(target), len(blob))
        self.assertEqual(target.read_bytes(), blob)
        self.assertTrue(await host.exists(filehash, server.url("blob")))

    async def test_refusals(self) -> None:
        server = BlobServer(self, {"blob": b"x" * 5000})
        host = URLHost(loopback_agent(), 1000, reactor)
        target = str(Path(self.mktemp()))
        for url in (server.url("blob"), server.url("missing"), "file:///etc/passwd", "ftp://x/y"):
            with self.assertRaises(HostError):
                await host.fetch("ab" * 32, url, target, 5000)
        with self.assertRaises(HostError):
            await host.store("ab" * 32, target)

    async def test_no_more_than_the_record_says(self) -> None:
        """A URL that serves more bytes than the record's size is refused, cache room or not."""
        server = BlobServer(self, {"blob": b"x" * 5000})
        host = URLHost(loopback_agent(), 1_000_000, reactor)
        target = Path(self.mktemp())
        with self.assertRaises(HostError) as caught:
            await host.fetch("ab" * 32, server.url("blob"), str(target), 4999)
        self.assertIn("larger than 4999 bytes", str(caught.exception))
        await host.fetch("ab" * 32, server.url("blob"), str(target), 5000)
        self.assertEqual(target.read_bytes(), b"x" * 5000)


class DownloadFromChainTests(TestCase):
    async def test_find_and_download_a_file_never_uploaded_here(self) -> None:
        plaintext = os.urandom(50_000)
        key = convergent_key(DEFAULT_CONVERGENCE_SECRET, hashlib.sha256(plaintext).hexdigest())
        blob = ctr_cipher(key).encrypt(plaintext)
        filehash = hashlib.sha256(blob).hexdigest()
        server = BlobServer(self, {"good": blob, "corrupt": blob[:-1] + b"!"})
        record = {
            "datetime": "1700000000",
            "filehash": filehash,
            "filename": f"{filehash[:7]}_from elsewhere.bin",
            "filesize": len(blob),
            # A host of another node's, a corrupt copy, then a good one.
            "uploads": [
                {"host_name": "their-disk", "url": "file:///srv/their/disk/" + filehash},
                {"host_name": "mirror", "url": server.url("corrupt")},
                {"host_name": "web", "url": server.url("good")},
            ],
            "version": "0.2",
        }
        fake = FakeFlorincoind()
        fake.publish([record])
        fake.mine()

        config = test_config(
            Path(self.mktemp()).resolve(),
            accounts={"enabled": False},
            chain={"fetch_allowed_networks": LOOPBACK},
        )
        node = await start_node(self, config)
        clock = Clock()
        rpc = JSONRPCClient.from_url("http://flo:secret@florincoind/", StubTreq(fake), clock)
        await Reader(db=node.node.db, chain=Florincoin(rpc), clock=clock).read_once()

        found = await json_of(await node.http.get(f"{node.url}/api/find/{filehash}"))
        self.assertEqual(found, record)
        response = await node.http.get(f"{node.url}/api/download/{filehash}?key={key.hex()}")
        self.assertEqual(response.code, 200)
        self.assertEqual(await response.content(), plaintext)
        self.assertEqual(
            response.headers.getRawHeaders("content-disposition"),
            [f'attachment; filename="{filehash[:7]}_from elsewhere.bin"'],
        )


class BlobReceiverTests(SynchronousTestCase):
    """
    A URL's bytes must keep coming: a server that stalls or trickles is cut
    off within a window, so it cannot hold the cache room set aside for it.
    """

    def receiver(self) -> tuple[BlobReceiver, io.BytesIO, StringTransport, Clock]:
        file, transport, clock = io.BytesIO(), StringTransport(), Clock()
        receiver = BlobReceiver(file, 10**9, "http://example.net/blob", clock)
        receiver.makeConnection(transport)
        return receiver, file, transport, clock

    def test_a_steady_body_is_written(self) -> None:
        receiver, file, _, clock = self.receiver()
        for _ in range(3):
            receiver.dataReceived(b"x" * int(SLOWEST_RATE * PROGRESS_WINDOW))
            clock.advance(PROGRESS_WINDOW)
        receiver.connectionLost(Failure(ResponseDone()))
        self.successResultOf(receiver.done)
        self.assertEqual(len(file.getvalue()), 3 * SLOWEST_RATE * PROGRESS_WINDOW)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_a_trickle_is_cut_off(self) -> None:
        receiver, _, transport, clock = self.receiver()
        receiver.dataReceived(b"x" * int(SLOWEST_RATE * PROGRESS_WINDOW))
        clock.advance(PROGRESS_WINDOW)
        self.assertNoResult(receiver.done)
        receiver.dataReceived(b"x" * 1000)
        clock.advance(PROGRESS_WINDOW)
        failure = self.failureResultOf(receiver.done, HostError)
        self.assertIn("slower than", failure.getErrorMessage())
        self.assertEqual(transport.producerState, "stopped")
        receiver.connectionLost(Failure(ConnectionLost()))  # what the dropped connection says
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_a_stall_is_cut_off(self) -> None:
        receiver, _, transport, clock = self.receiver()
        clock.advance(PROGRESS_WINDOW)
        self.failureResultOf(receiver.done, HostError)
        self.assertEqual(transport.producerState, "stopped")

    def test_a_body_ended_by_its_connection_is_taken(self) -> None:
        """No length given: the end of the connection ends the body (the hash check judges)."""
        receiver, file, _, clock = self.receiver()
        receiver.dataReceived(b"x" * 10)
        receiver.connectionLost(Failure(PotentialDataLoss()))
        self.successResultOf(receiver.done)
        self.assertEqual(file.getvalue(), b"x" * 10)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_cancel_hangs_up(self) -> None:
        receiver, _, transport, clock = self.receiver()
        receiver.done.cancel()
        self.failureResultOf(receiver.done, CancelledError)
        self.assertEqual(transport.producerState, "stopped")
        self.assertEqual(clock.getDelayedCalls(), [])
        receiver.dataReceived(b"late")  # ignored

    def test_headers_must_come_too(self) -> None:
        class Silent:
            def request(self, method: bytes, uri: bytes, *args: Any) -> Deferred[Any]:
                return Deferred()

        clock = Clock()
        host = URLHost(Silent(), 10**9, clock)
        fetched = host.fetch("ab" * 32, "http://example.net/blob", self.mktemp(), 100)
        clock.advance(PROGRESS_WINDOW)
        self.failureResultOf(fetched, defer.TimeoutError)

    def test_a_cut_body_is_an_error(self) -> None:
        receiver, _, _, _ = self.receiver()
        receiver.dataReceived(b"x" * 10)
        receiver.connectionLost(Failure(ConnectionLost()))
        self.failureResultOf(receiver.done, HostError)
