"""
End to end (issue #6): one C{litecoind -regtest}, one C{rclone serve webdav}
remote that every node has as its host "shared", and nodes with their own
database and cache. A file uploaded to node A is, once a block is mined,
found by node B with the same JSON and downloaded by B with the key, byte for
byte; a node started later from block 0 finds and serves it too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from twisted.trial.unittest import TestCase

from metadisk.chain import codec
from metadisk.chain.bitcoinlike import op_return_data
from metadisk.config import Config
from tests.fakes import WebDAVServer
from tests.support import (
    RunningNode,
    eventually,
    json_of,
    local_host,
    start_node,
    test_config,
    upload,
)
from tests.test_chain_litecoin import litecoind

POLL = 0.2  # seconds between the nodes' chain rounds


class EndToEndTests(TestCase):
    timeout = 240

    async def setUp(self) -> None:
        self.work = Path(self.mktemp()).resolve()
        self.litecoind = await litecoind(self)
        self.webdav = WebDAVServer(self.work / "webdav")
        await self.webdav.start()
        self.addCleanup(self.webdav.stop)

    def config(self, name: str, copies: int = 1, **chain_keys: Any) -> Config:
        base = self.work / name
        hosts = [
            {"name": "shared", "kind": "rclone", "remote": self.webdav.remote()},
            local_host(f"{name}-disk", base / "disk"),  # only this node has it
        ]
        chain = {
            "kind": "litecoin",
            "url": self.litecoind.url,
            "poll_interval": POLL,
            "timeout": 20,
            "start_height": 0,
            # Due records go out at once: inline, as long as fewer than records_per_manifest are.
            "manifest_wait": 0.0,
            # The hosts are on loopback: their URLs are not public addresses.
            "fetch_allowed_networks": ["127.0.0.0/8"],
            **chain_keys,
        }
        return test_config(
            base,
            hosts=hosts,
            replication={"copies": copies},
            chain=chain,
            accounts={"enabled": False},
        )

    async def find(self, node: RunningNode, filehash: str) -> Any:
        response = await node.http.get(f"{node.url}/api/find/{filehash}")
        return await json_of(response) if response.code == 200 else None

    async def download(self, node: RunningNode, filehash: str, key: str) -> bytes:
        response = await node.http.get(f"{node.url}/api/download/{filehash}?key={key}")
        self.assertEqual(response.code, 200)
        return await response.content()

    async def status(self, node: RunningNode) -> Any:
        return await json_of(await node.http.get(f"{node.url}/api/status"))

    async def test_any_node_finds_and_serves_any_file(self) -> None:
        a = await start_node(self, self.config("a", copies=2))
        b = await start_node(self, self.config("b"))
        data = os.urandom(300_000)
        response = await upload(a, data, None, name="report.pdf")
        self.assertEqual(response.code, 201)
        uploaded = await json_of(response)
        filehash, key = uploaded["filehash"], uploaded["key"]

        # A copies it to both its hosts, then publishes its record: its transactions wait.
        async def published() -> bool:
            # Marked once every transaction of the batch is sent (a long record takes several).
            rows = await a.node.db.query(
                "SELECT state FROM chain_queue WHERE filehash = ?", (filehash,)
            )
            return rows == [("published",)]

        await eventually(published, 60)
        self.assertEqual((await self.status(a))["sync"]["blockchain_queue"]["count"], 0)
        self.assertGreater(len(await self.litecoind.rpc().call("getrawmempool")), 0)
        record = await self.find(a, filehash)
        self.assertEqual({u["host_name"] for u in record["uploads"]}, {"shared", "a-disk"})
        self.assertIsNone(await self.find(b, filehash))

        await self.litecoind.mine()
        found = await eventually(lambda: self.find(b, filehash), 30, what="node B to find the file")
        self.assertEqual(found, record)
        self.assertEqual(await self.download(b, filehash, key), data)

        status = await self.status(b)
        tip = await self.litecoind.rpc().call("getblockcount")
        self.assertEqual(status["datacoin"]["coin"], "litecoin")
        self.assertEqual(status["datacoin"]["block"], tip)
        self.assertIsNone(status["datacoin"]["error"])
        self.assertEqual(status["florincoin"], status["datacoin"])
        self.assertGreater((await self.status(a))["datacoin"]["balance"], 0)

        # A node started later reads the whole chain from block 0.
        await self.litecoind.mine(3)
        c = await start_node(self, self.config("c"))
        found = await eventually(lambda: self.find(c, filehash), 30, what="node C to find the file")
        self.assertEqual(found, record)
        self.assertEqual(await self.download(c, filehash, key), data)

    async def test_uploads_go_out_in_a_manifest_another_node_reads(self) -> None:
        """A's three uploads, one v0.3 manifest on its WebDAV host, one transaction; B reads it."""
        a = await start_node(self, self.config("a", records_per_manifest=3))
        b = await start_node(self, self.config("b"))
        uploaded = []
        for n in range(3):
            data = os.urandom(1000 + n)
            response = await upload(a, data, None, name=f"part{n}.bin")
            self.assertEqual(response.code, 201)
            uploaded.append((data, await json_of(response)))

        async def announced() -> bool:
            rows = await a.node.db.query("SELECT DISTINCT state FROM chain_queue")
            return rows == [("published",)]

        await eventually(announced, 60)
        mempool = await self.litecoind.rpc().call("getrawmempool")
        [entry] = [codec.decode_entry(data) for data in await self.op_returns(mempool)]
        [announcement] = codec.decode_batch(entry.region).announcements
        self.assertEqual(announcement.records, 3)
        self.assertEqual([name for name, _ in announcement.uploads], ["shared"])  # the disk: no URL
        # The manifest is not one of A's files, nor counted in its status.
        self.assertIsNone(await self.find(a, announcement.manifest))
        self.assertEqual((await self.status(a))["sync"]["cloud_queue"]["count"], 0)

        await self.litecoind.mine()
        for data, file in uploaded:
            record = await self.find(a, file["filehash"])
            found = await eventually(lambda f=file: self.find(b, f["filehash"]), 30)
            self.assertEqual(found, record)
            self.assertEqual(await self.download(b, file["filehash"], file["key"]), data)

    async def op_returns(self, txids: list[str]) -> list[bytes]:
        """The OP_RETURN data of transactions."""
        rpc = self.litecoind.rpc()
        found = []
        for txid in txids:
            tx = await rpc.call("getrawtransaction", txid, True)
            for out in tx["vout"]:
                script = out["scriptPubKey"]["hex"]
                if script.startswith("6a"):
                    found.append(op_return_data(bytes.fromhex(script)))
        return found

    async def test_the_chain_down_stops_nothing(self) -> None:
        a = await start_node(self, self.config("a"))
        await self.litecoind.stop()
        data = b"still works\n"
        uploaded = await json_of(await upload(a, data, None))
        self.assertEqual(await self.download(a, uploaded["filehash"], uploaded["key"]), data)

        async def waiting() -> Any:
            status = await self.status(a)
            queued = status["sync"]["blockchain_queue"]["count"] == 1
            # While it shuts down the daemon may still answer 503; then it refuses connections.
            refused = "refused" in (status["datacoin"]["error"] or "")
            return status if queued and refused else None

        status = await eventually(waiting, 30)
        self.assertEqual(status["sync"]["blockchain_queue"]["size"], len(data))
        self.assertIn("refused", status["datacoin"]["error"])
