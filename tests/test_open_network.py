"""
The open network: the chain is public, so anyone may publish a record and
every node acts on what it reads. This module reproduces the attacks this
opens, through a running node, as a stranger would mount them: one class per
attack.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.static import Data
from twisted.web.util import Redirect

from metadisk.chain import codec
from metadisk.chain.florincoin import Florincoin
from metadisk.chain.reader import Reader
from metadisk.chain.rpc import JSONRPCClient
from tests.fake_florincoind import FakeFlorincoind
from tests.support import CountingServer, RunningNode, json_of, start_node, test_config

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
        batch = codec.batch_text([record])
        txids: list[str] = []
        for i, region in enumerate(codec.split_regions(batch)):
            prev, first = (txids[-1], txids[0]) if txids else (None, None)
            entry = codec.entry_text(region, i, prev, first, len(batch))
            txids.append(self.chain.send_comment(entry))
        self.chain.mine()
        clock = Clock()
        rpc = JSONRPCClient.from_url("http://flo:secret@florincoind/", StubTreq(self.chain), clock)
        await Reader(node.node.db, Florincoin(rpc), clock).read_once()

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
