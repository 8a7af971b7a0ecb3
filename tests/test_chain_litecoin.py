"""
The Bitcoin-family adapter against a real C{litecoind -regtest}: OP_RETURN
entries out and back, the coinbase's witness commitment, the mempool's
25-ancestor limit, recovering sends, and publisher + reader on it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from attrs import define
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from metadisk.chain import codec
from metadisk.chain.adapter import ChainBusy
from metadisk.chain.bitcoinlike import BitcoinLike, op_return_data
from metadisk.chain.publisher import Publisher
from metadisk.chain.queue import ChainQueue
from metadisk.chain.reader import Reader
from metadisk.chain.rpc import ChainUnavailable, JSONRPCClient, RPCError
from metadisk.store.catalog import Catalog
from metadisk.store.claims import Claims
from tests.fakes import require_tool
from tests.nodes import free_port
from tests.support import eventually
from tests.test_chain_sync import ChainTestCase

USER, PASSWORD = "metadisk", "regtest-password"


def http_client() -> HTTPClient:
    # No idle connections kept: a test leaves no socket behind.
    return HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))


class _Child(ProcessProtocol):
    def __init__(self) -> None:
        self.output = bytearray()
        self.ended: Deferred[None] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output = (self.output + data)[-4000:]

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(None)


@define
class Litecoind:
    """A C{litecoind -regtest} child process with a funded wallet, stopped when the test ends."""

    datadir: Path
    port: int = 0
    _child: _Child | None = None
    _process: Any = None
    address: str = ""

    @property
    def url(self) -> str:
        return f"http://{USER}:{PASSWORD}@127.0.0.1:{self.port}/"

    def rpc(self, timeout: float = 30.0) -> JSONRPCClient:
        return JSONRPCClient.from_url(self.url, http_client(), reactor, timeout)

    async def start(self) -> None:
        litecoind = require_tool("litecoind")
        self.datadir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self._child = _Child()
        self._process = reactor.spawnProcess(
            self._child,
            litecoind,
            [
                litecoind,
                "-regtest",
                f"-datadir={self.datadir}",
                f"-rpcport={self.port}",
                f"-rpcuser={USER}",
                f"-rpcpassword={PASSWORD}",
                "-fallbackfee=0.001",
                "-datacarriersize=100000",
                "-listen=0",  # no peers: no P2P port to collide on
                "-rpcthreads=8",
                "-printtoconsole=0",
            ],
            env={**os.environ},
        )
        rpc = self.rpc(timeout=2)

        async def answers() -> bool:
            if self._child.ended.called:
                raise AssertionError(f"litecoind ended: {bytes(self._child.output)!r}")
            try:
                await rpc.call("getblockcount")
                return True
            except (ChainUnavailable, RPCError):  # not listening yet / -28 warming up
                return False

        # A daemon that starts in well under a second.
        await eventually(answers, 30, what="litecoind to answer")
        rpc = self.rpc()
        await rpc.call("createwallet", "w")
        self.address = await rpc.call("getnewaddress")
        await self.mine(101)

    async def mine(self, n: int = 1) -> list[str]:
        return await self.rpc(120).call("generatetoaddress", n, self.address)

    async def stop(self) -> None:
        if self._child is None or self._child.ended.called:
            return
        try:
            await self.rpc(timeout=5).call("stop")
        except Exception:
            pass
        timer = reactor.callLater(15, self._kill)
        try:
            await self._child.ended
        finally:
            if timer.active():
                timer.cancel()

    def _kill(self) -> None:
        try:
            self._process.signalProcess("KILL")
        except ProcessExitedAlready:
            pass


async def litecoind(case: TestCase) -> Litecoind:
    node = Litecoind(Path(case.mktemp()).resolve())
    case.addCleanup(lambda: Deferred.fromCoroutine(node.stop()))
    await node.start()
    return node


class ScriptTests(SynchronousTestCase):
    def test_pushes(self) -> None:
        for data in (b"x", b"y" * 75, b"z" * 76, b"w" * 255, b"v" * 256, b"u" * 40_000):
            if len(data) < 0x4C:
                script = bytes([0x6A, len(data)]) + data
            elif len(data) <= 0xFF:
                script = bytes([0x6A, 0x4C, len(data)]) + data
            else:
                script = bytes([0x6A, 0x4D]) + len(data).to_bytes(2, "little") + data
            self.assertEqual(op_return_data(script), data)
        self.assertEqual(op_return_data(b"\x6a\x4e" + (3).to_bytes(4, "little") + b"abc"), b"abc")

    def test_not_data(self) -> None:
        for script in (
            b"",
            b"\x6a",
            b"\x6a\x00",  # OP_0
            b"\x6a\x05abc",  # truncated
            b"\x6a\x02abc",  # trailing bytes
            b"\x6a\x4c",
            b"\x6a\x4d\x05",
            b"\x6a\x51",  # OP_1
            b"\x00\x14" + b"\x11" * 20,  # a witness program
            b"\x6a\x01a\x01b",  # two pushes
        ):
            self.assertIsNone(op_return_data(script), script)


class LitecoinTests(TestCase):
    timeout = 120

    async def setUp(self) -> None:
        self.node = await litecoind(self)
        self.chain = BitcoinLike(self.node.rpc())

    async def test_entry_out_and_back(self) -> None:
        entry = codec.entry_text(b'[{"a": 1}]', 0, None, None, 10)
        ticket = await self.chain.prepare(entry, "tag")
        self.assertEqual(await self.chain.send(ticket), ticket.txid)
        [block_hash] = await self.node.mine()
        self.assertEqual(await self.chain.block_hash(await self.chain.block_count()), block_hash)
        block = await self.chain.block(block_hash)
        # The coinbase also has an OP_RETURN (the witness commitment): not an entry.
        self.assertEqual(block.entries, ((ticket.txid, entry.encode()),))
        raw = await self.node.rpc().call("getblock", block_hash, 2)
        self.assertTrue(raw["tx"][0]["vout"][-1]["scriptPubKey"]["hex"].startswith("6a24aa21a9ed"))

    async def test_wallet(self) -> None:
        balance, address = await self.chain.wallet()
        self.assertGreater(balance, 0)
        # Labelled: the same address for a new adapter (a restarted node).
        self.assertEqual((await BitcoinLike(self.node.rpc()).wallet())[1], address)

    async def test_too_many_unconfirmed_ancestors(self) -> None:
        """One spendable coin: each entry spends the last one's change, 25 at most."""
        sent = 0
        with self.assertRaises(ChainBusy):
            for i in range(30):
                entry = codec.entry_text(b"[]", 0, None, None, 2) + " " * i
                await self.chain.send(await self.chain.prepare(entry, f"t{i}"))
                sent += 1
        self.assertEqual(sent, 25)
        await self.node.mine()
        # The coins of the refused transaction were given back: the next one goes out.
        entry = codec.entry_text(b"[]", 0, None, None, 2)
        await self.chain.send(await self.chain.prepare(entry, "after"))

    async def test_recover(self) -> None:
        rpc = self.node.rpc()
        entry = codec.entry_text(b"[]", 0, None, None, 2)
        # Prepared, written down, never sent (a crash): recovering sends it, same txid.
        never_sent = await self.chain.prepare(entry, "a")
        self.assertEqual(await self.chain.recover(never_sent), never_sent.txid)
        self.assertIn(never_sent.txid, await rpc.call("getrawmempool"))
        # Sent, answer lost: in the mempool, found again.
        self.assertEqual(await self.chain.recover(never_sent), never_sent.txid)
        # Sent and mined, its change spent since: the wallet knows it.
        await self.node.mine()
        later = await self.chain.prepare(entry + " ", "b")
        await self.chain.send(later)
        self.assertEqual(await self.chain.recover(never_sent), never_sent.txid)
        # Prepared, then its coin went to another transaction: it never went out.
        doomed = await self.chain.prepare(entry + "  ", "c")
        await rpc.call("lockunspent", True)  # as after a restart: locks are not kept
        rival = await self.chain.prepare(entry + "   ", "d")
        await self.chain.send(rival)
        self.assertIsNone(await self.chain.recover(doomed))


class LitecoinSyncTests(ChainTestCase):
    """Publisher and reader of two nodes on one real chain."""

    timeout = 120

    async def setUp(self) -> None:
        super().setUp()
        self.node = await litecoind(self)
        self.chain = BitcoinLike(self.node.rpc())

    async def test_many_entries_past_the_ancestor_limit(self) -> None:
        a, b = await self.database(), await self.database()
        hashes = [await self.add_file(a, n, hosts=1) for n in range(1, 41)]  # some 40 entries
        publisher = self.publisher(a)
        with self.assertRaises(ChainBusy):
            await publisher.publish_once()
        self.assertEqual(len(await self.node.rpc().call("getrawmempool")), 25)
        await self.node.mine()
        self.clock.advance(60)
        self.assertGreater(await publisher.publish_once(), 0)
        await self.node.mine()
        self.assertEqual(await ChainQueue(a, 3600).pending(self.clock.seconds()), (0, 0))
        reader = Reader(db=b, chain=self.chain, clock=self.clock, start_height=100)
        self.assertEqual(await reader.read_once(), 4)  # blocks 100 to 103
        for h in hashes:
            self.assertEqual(
                (await Claims(b).earliest(h)).to_json(), (await Catalog(a).find(h)).to_json()
            )

    def publisher(self, db: Any, node_id: str = "node-a", chain: Any = None) -> Publisher:
        return Publisher(
            db=db,
            chain=chain or self.chain,
            catalog=Catalog(db),
            queue=ChainQueue(db, 3600),
            clock=self.clock,
            node_id=node_id,
        )
