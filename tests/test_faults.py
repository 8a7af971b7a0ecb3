"""
Faults: the node as a real process killed with SIGKILL while receiving an
upload, while replicating and while serving a download; after a restart no
accepted upload is lost and no token is charged twice or for a failed
transfer. And, in process: a host down, and the cache at capacity.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path
from typing import Any

from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from metadisk.crypto import DEFAULT_CONVERGENCE_SECRET, convergent_key, ctr_cipher
from metadisk.store.shards import sharded
from tests.fakes.florincoind import FakeFlorincoind
from tests.nodes import Client, NodeProcess, node_toml
from tests.support import (
    eventually,
    funded_token,
    json_of,
    multipart,
    start_node,
    test_config,
    upload,
)

CREDIT = 10**10
START_TIMEOUT = 60.0  # seconds for a node process to answer, on a busy machine


def node_process(case: TestCase, toml: str = "") -> NodeProcess:
    """
    A node process, not started yet: its data in C{data/}, three local hosts
    in C{hosts/}, C{toml} added to its config; stopped when the test ends.
    """
    base = Path(case.mktemp()).resolve()
    secret = secrets.token_urlsafe(24)
    hosts = [base / "hosts" / f"local{i}" for i in (1, 2, 3)]
    config = node_toml(base / "data", secret=secret, hosts=hosts) + toml
    pool = HTTPConnectionPool(reactor, persistent=False)  # no connection outlives a kill
    node = NodeProcess(base, config, secret, HTTPClient(Agent(reactor, pool=pool)), reactor)
    case.addCleanup(lambda: Deferred.fromCoroutine(node.stop()))
    return node


async def get_json(node: NodeProcess, path: str) -> Any:
    return await json_of(await node.http.get(node.url + path))


async def funded(node: NodeProcess, amount: int) -> str:
    client = Client(node)
    token = await client.new_token()
    assert await client.deposit(token, amount) == (200, {"status": "ok"})
    return token


async def uploaded(node: NodeProcess, data: bytes, token: str) -> dict[str, str]:
    response = await upload(node, data, token, name="f.bin")
    assert response.code == 201, response.code
    return await json_of(response)


class _Trickle(Protocol):
    """Sends some bytes and keeps the connection open, reading what comes back slowly."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.received = bytearray()

    def connectionMade(self) -> None:
        self.transport.write(self.payload)

    def dataReceived(self, data: bytes) -> None:
        self.received += data


async def open_connection(port: int, payload: bytes) -> _Trickle:
    protocol = _Trickle(payload)
    factory = Factory.forProtocol(lambda: protocol)
    await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(factory)
    return protocol


def filehash_of(data: bytes) -> str:
    """What the node will name C{data}: convergent encryption with the default secret."""
    key = convergent_key(DEFAULT_CONVERGENCE_SECRET, hashlib.sha256(data).hexdigest())
    return hashlib.sha256(ctr_cipher(key).encrypt(data)).hexdigest()


class KilledNodeTests(TestCase):
    timeout = 4 * START_TIMEOUT

    async def test_killed_while_receiving_an_upload(self) -> None:
        """The half-received upload is gone after a restart, and its reservation refunded."""
        node = node_process(self)
        await node.start(START_TIMEOUT)
        balance = Client(node).balance
        token = await funded(node, CREDIT)
        content_type, body = multipart(
            ("token", None, token.encode()), ("file", "big.bin", os.urandom(4 * 2**20))
        )
        head = (
            f"POST /api/upload HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type.decode()}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        sender = await open_connection(node.port, head + body[: 2**20])
        incoming = node.directory / "data" / "incoming"

        async def receiving() -> bool:
            reserved = await balance(token) == CREDIT - 4 * len(body)
            return reserved and any(p.stat().st_size > 0 for p in incoming.glob("*.part"))

        await eventually(receiving, 30, what="the upload to be half received")
        await node.kill()
        sender.transport.abortConnection()

        await node.start(START_TIMEOUT)
        self.assertEqual(await balance(token), CREDIT)
        self.assertEqual(os.listdir(incoming), [])
        status = await get_json(node, "/api/status")
        self.assertEqual(status["storage"]["used"], 0)
        self.assertEqual(status["sync"]["cloud_queue"], {"count": 0, "size": 0})

    async def test_killed_while_replicating(self) -> None:
        """An accepted upload survives: replication finishes after the restart, charged once."""
        node = node_process(self)
        hosts = node.directory / "hosts"
        balance = Client(node).balance
        data = os.urandom(300_000)
        filehash = filehash_of(data)
        # local3 hangs on this blob: its temporary file is a FIFO nobody reads.
        sharded(hosts / "local3", filehash).parent.mkdir(parents=True)
        stuck = sharded(hosts / "local3", filehash).with_suffix(".partial")
        os.mkfifo(stuck)
        await node.start(START_TIMEOUT)
        token = await funded(node, CREDIT)
        result = await uploaded(node, data, token)
        self.assertEqual(result["filehash"], filehash)

        async def replicating() -> bool:
            return sharded(hosts / "local1", filehash).is_file()

        await eventually(replicating, 30, what="replication to start")
        status = await get_json(node, "/api/status")
        self.assertEqual(status["sync"]["cloud_queue"], {"count": 1, "size": len(data)})
        await node.kill()

        stuck.unlink()  # the host is well again
        await node.start(START_TIMEOUT)

        async def replicated() -> bool:
            record = await get_json(node, f"/api/find/{filehash}")
            return len(record["uploads"]) == 3

        await eventually(replicated, 30, what="replication to finish")
        for i in (1, 2, 3):
            blob = sharded(hosts / f"local{i}", filehash).read_bytes()
            self.assertEqual(hashlib.sha256(blob).hexdigest(), filehash)
        response = await node.http.get(
            node.url + f"/api/download/{filehash}", params={"key": result["key"], "token": token}
        )
        self.assertEqual(await response.content(), data)
        self.assertEqual(await balance(token), CREDIT - 4 * len(data) - len(data))
        status = await get_json(node, "/api/status")
        self.assertEqual(status["sync"]["cloud_queue"], {"count": 0, "size": 0})

        async def counted() -> bool:
            # The blob's row may not have been written before the kill: the cache's check
            # finds it, in the background after the node listens.
            return (await get_json(node, "/api/status"))["storage"]["used"] == len(data)

        await eventually(counted, 30, what="the cache to count the blob")

    async def test_killed_while_serving_a_download(self) -> None:
        """The reservation of a download cut short by the kill is refunded at restart."""
        node = node_process(self, "[bandwidth]\nper_transfer_outgoing = 65536\n")
        await node.start(START_TIMEOUT)
        balance = Client(node).balance
        token = await funded(node, CREDIT)
        data = os.urandom(2**20)
        result = await uploaded(node, data, token)
        before = await balance(token)
        receiver = await open_connection(
            node.port,
            f"GET /api/download/{result['filehash']}?token={token} HTTP/1.1\r\n\r\n".encode(),
        )

        async def streaming() -> bool:
            return len(receiver.received) > 1000 and await balance(token) == before - len(data)

        await eventually(streaming, 30, what="the download to be under way")
        await node.kill()
        receiver.transport.abortConnection()
        self.assertLess(len(receiver.received), len(data))  # it really was cut short

        await node.start(START_TIMEOUT)
        self.assertEqual(await balance(token), before)

    async def test_killed_while_publishing(self) -> None:
        """A send in flight at the kill is found in the wallet after the restart, not repeated."""
        chain = FakeFlorincoind()
        port, url = chain.listen(reactor)
        self.addCleanup(port.stopListening)
        toml = (
            f'[chain]\nkind = "florincoin"\nurl = "{url}"\npoll_interval = 0.2\n'
            "timeout = 0.5\nmin_confirmations = 0\n"
        )
        node = node_process(self, toml)
        # The wallet sends the entry, but the node never hears back: then it is killed.
        chain.lose_answer.add("sendtoaddress")
        held = chain.held()
        await node.start(START_TIMEOUT)
        token = await funded(node, CREDIT)
        data = os.urandom(10_000)
        result = await uploaded(node, data, token)

        async def sending() -> bool:
            return held.called

        await eventually(sending, 30, what="the node to publish")
        self.assertEqual(chain.calls.count("sendtoaddress"), 1)  # the first entry, unanswered
        await node.kill()
        chain.mine()

        await node.start(START_TIMEOUT)

        async def published() -> bool:
            status = await get_json(node, "/api/status")
            return status["sync"]["blockchain_queue"]["count"] == 0

        await eventually(published, 30, what="the record to be published")
        chain.mine()
        # A few more rounds of the publisher and the reader: still one send.
        calls = len(chain.calls)

        async def more_rounds() -> bool:
            return len(chain.calls) > calls + 10

        await eventually(more_rounds, 30, what="more chain rounds")
        # Each entry of the batch (a record with long URLs takes several) went out exactly once,
        # the one in flight at the kill included: recovered from the wallet, not sent again.
        tags = sorted(tx["comment"] for tx in chain.wallet)
        batch = tags[0].split()[1]
        self.assertEqual(tags, [f"metadisk {batch} {i}" for i in range(len(tags))])
        self.assertEqual(chain.calls.count("sendtoaddress"), len(tags))
        record = await get_json(node, f"/api/find/{result['filehash']}")
        self.assertEqual(len(record["uploads"]), 3)
        self.assertEqual(await Client(node).balance(token), CREDIT - 4 * len(data))


class HostDownTests(TestCase):
    async def test_one_host_down(self) -> None:
        """Uploads go to the hosts that work; the queue keeps the missing copy until it is back."""
        base = Path(self.mktemp()).resolve()
        config = test_config(base)
        (base / "hosts").mkdir(parents=True)
        down = Path(config.effective_hosts[2].setting)
        down.write_bytes(b"a file where the directory should be")
        node = await start_node(self, config)
        token = await funded_token(node)
        data = os.urandom(30_000)
        result = await json_of(await upload(node, data, token))
        await node.node.sync.idle()
        record = await node.node.store.find(result["filehash"])
        self.assertEqual(sorted(h for h, _ in record.uploads), ["local1", "local2"])
        self.assertEqual(await node.node.sync.queue.pending(), (1, 30_000))
        # Served from a working host once it is out of the cache.
        node.node.store.cache.discard(result["filehash"])
        response = await node.http.get(
            node.url + f"/api/download/{result['filehash']}",
            params={"key": result["key"], "token": token},
        )
        self.assertEqual(await response.content(), data)
        # The host comes back: the next round completes the copies.
        down.unlink()
        await node.node.sync.queue.resume()
        await node.node.sync.kick()
        record = await node.node.store.find(result["filehash"])
        self.assertEqual(len(record.uploads), 3)
        self.assertEqual(await node.node.sync.queue.pending(), (0, 0))


class CacheAtCapacityTests(TestCase):
    async def test_full_cache(self) -> None:
        """
        A cache full of blobs the hosts do not hold yet refuses uploads and
        fetches (507, nothing charged, nothing left behind); once the hosts
        have them, the same upload gets room by eviction.
        """
        base = Path(self.mktemp()).resolve()
        config = test_config(base, storage={"capacity": 100_000, "max_file_size": 60_000})
        (base / "hosts").mkdir(parents=True)
        for host in config.effective_hosts:
            Path(host.setting).write_bytes(b"not yet")
        node = await start_node(self, config)
        token = await funded_token(node)
        balance = node.node.ledger.balance
        first = os.urandom(45_000)
        kept = await json_of(await upload(node, first, token))
        await node.node.sync.idle()
        second = os.urandom(45_000)
        self.assertEqual((await upload(node, second, token)).code, 201)
        await node.node.sync.idle()
        before = await balance(token)
        third = os.urandom(45_000)
        response = await upload(node, third, token)
        self.assertEqual((response.code, await json_of(response)), (507, {"error": "storage-full"}))
        self.assertEqual(await balance(token), before)
        self.assertEqual(os.listdir(node.node.store.incoming), [])
        self.assertEqual(node.node.store.cache.used, 90_000)
        self.assertEqual(await node.node.sync.queue.pending(), (2, 90_000))

        # The hosts come back and take both blobs; now the cache may evict.
        for host in config.effective_hosts:
            Path(host.setting).unlink()
        await node.node.sync.queue.resume()
        await node.node.sync.kick()
        self.assertEqual(await node.node.sync.queue.pending(), (0, 0))
        response = await upload(node, third, token)
        self.assertEqual(response.code, 201)
        self.assertLessEqual(node.node.store.cache.used, 100_000)
        self.assertNotIn(kept["filehash"], node.node.store.cache)  # the oldest went
        await node.node.sync.idle()
        self.assertEqual(await node.node.sync.queue.pending(), (0, 0))

        # A fetch that needs room the cache cannot give: 507, refunded.
        for host in config.effective_hosts:
            Path(host.setting).rename(Path(host.setting + ".away"))
            Path(host.setting).write_bytes(b"down again")
        # Two blobs the hosts cannot take evict the two they hold and fill the cache.
        for _ in range(2):
            self.assertEqual((await upload(node, os.urandom(45_000), token)).code, 201)
            await node.node.sync.idle()
        self.assertEqual(await node.node.sync.queue.pending(), (2, 90_000))
        before = await balance(token)
        response = await node.http.get(
            node.url + f"/api/download/{kept['filehash']}",
            params={"key": kept["key"], "token": token},
        )
        self.assertEqual((response.code, await json_of(response)), (507, {"error": "storage-full"}))
        self.assertEqual(await balance(token), before)
        self.assertEqual(os.listdir(node.node.store.incoming), [])
