"""
Publisher, reader and the chain service against the fake florincoind (through
StubTreq: no sockets), on real SQLite databases, with time on a Clock.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, gatherResults
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from metadisk.chain import codec
from metadisk.chain.adapter import EntryTooLong
from metadisk.chain.bitcoinlike import BitcoinLike
from metadisk.chain.florincoin import Florincoin
from metadisk.chain.manifest_lane import Announcements, ManifestLane
from metadisk.chain.publisher import Publisher, SendInDoubt
from metadisk.chain.queue import ChainQueue
from metadisk.chain.reader import Reader
from metadisk.chain.rpc import JSONRPCClient, RPCError
from metadisk.chain.service import ChainService, disabled_status
from metadisk.db import open_database
from metadisk.interfaces import IChain, IDatabase, ITransaction
from metadisk.store.blocking import in_caller
from metadisk.store.catalog import Catalog, FileRecord
from metadisk.store.claims import Claims
from metadisk.store.hosts.url import URLHost
from tests.fakes.florincoind import MAX_TX_COMMENT_LEN, FakeFlorincoind, RPCFailure
from tests.pg import create_database
from tests.test_query_plans import RecordingDatabase

WAIT = 3600.0
TIMEOUT = 30.0


def filehash(n: int) -> str:
    return f"{n:064x}"


def _record(name: str) -> dict[str, Any]:
    """A stranger's record, with a filehash of its own."""
    return {
        "datetime": "1700000000",
        "filehash": hashlib.sha256(name.encode()).hexdigest(),
        "filename": f"{name}.bin",
        "filesize": 10_240,
        "uploads": [{"host_name": "elsewhere", "url": "https://example.com/x"}],
        "version": "0.2",
    }


class Switchable:
    """An HTTP client that refuses connections while C{down}, like a stopped node."""

    def __init__(self, http: Any) -> None:
        self.http = http
        self.down = False

    def post(self, *args: Any, **kw: Any) -> Deferred:
        if self.down:
            return fail(ConnectionRefusedError("Connection refused"))
        return self.http.post(*args, **kw)


class ChainTestCase(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.fake = FakeFlorincoind()
        self.chain = self.florincoin(self.fake)

    def florincoin(self, fake: FakeFlorincoind) -> Florincoin:
        self.http = Switchable(StubTreq(fake))
        rpc = JSONRPCClient.from_url(
            "http://flo:secret@florincoind:7313/", self.http, self.clock, TIMEOUT
        )
        return Florincoin(rpc)

    dialect = "sqlite"  # the Postgres* classes below run the same tests on PostgreSQL

    async def database(self) -> IDatabase:
        if self.dialect == "postgresql":
            url = create_database(self)
        else:
            base = Path(self.mktemp())
            base.mkdir(parents=True)
            url = f"sqlite:///{base.resolve() / 'node.sqlite'}"
        db = await open_database(url, reactor)
        self.addCleanup(db.close)
        return db

    async def add_file(
        self,
        db: IDatabase,
        n: int,
        hosts: int = 3,
        name: str = "hello.txt",
        replicating: bool = False,
    ) -> str:
        """A file as an upload leaves it: recorded, queued for the chain, on some hosts."""
        h = filehash(n)
        catalog = Catalog(db)

        async def record(txn: ITransaction) -> None:
            await catalog.add_file(txn, h, name, 1000 + n, int(self.clock.seconds()))
            await ChainQueue.add(txn, h, self.clock.seconds())
            if replicating:
                await txn.execute(
                    "INSERT INTO cloud_queue (filehash, node_id, next_attempt) VALUES (?, 'n', 0)",
                    (h,),
                )

        await db.transaction(record)
        for i in range(hosts):
            url = f"http://host{i}.example/{h}"
            await db.transaction(
                lambda txn, i=i, url=url: catalog.add_upload(txn, h, f"host{i}", url, float(i))
            )
        return h

    def publisher(self, db: IDatabase, node_id: str = "node-a", chain: Any = None) -> Publisher:
        return Publisher(
            db=db,
            chain=chain or self.chain,
            catalog=Catalog(db),
            queue=ChainQueue(db, WAIT),
            clock=self.clock,
            node_id=node_id,
            recover_after=60.0,
        )

    def reader(self, db: IDatabase, **kw: Any) -> Reader:
        return Reader(db=db, chain=self.chain, clock=self.clock, **kw)

    def service(self, db: IDatabase, lane: ManifestLane, poll: float = 5) -> ChainService:
        """The chain's service over this case's reader and publisher, polling every C{poll} s."""
        return ChainService(
            self.chain,
            self.reader(db),
            self.publisher(db),
            ChainQueue(db, WAIT),
            self.clock,
            poll,
            lane,
        )

    def sent_comments(self) -> list[str]:
        return [self.fake.transactions[e["txid"]]["tx-comment"] for e in self.fake.wallet]

    async def find(self, db: IDatabase, filehash: str) -> FileRecord | None:
        """What find answers: the node's own record, else the earliest claim standing."""
        return await Catalog(db).find(filehash) or await Claims(db).earliest(filehash)

    async def states(self, db: IDatabase) -> dict[str, str]:
        rows = await db.query("SELECT filehash, state FROM chain_queue")
        return dict(rows)


class InterfaceTests(ChainTestCase):
    def test_adapters_provide_ichain(self) -> None:
        rpc = JSONRPCClient.from_url("http://u:p@127.0.0.1:1/", self.http, self.clock)
        for chain in (self.chain, BitcoinLike(rpc)):
            self.assertTrue(verifyObject(IChain, chain))


class PublishAndReadTests(ChainTestCase):
    async def test_waiting_records_counted_as_they_come_and_go(self) -> None:
        """
        What the status says with the chain disabled: every waiting record,
        due or not, counted in the transactions that queue and batch them.
        """
        db = await self.database()
        queue = ChainQueue(db, WAIT)
        first = await self.add_file(db, 1)
        await self.add_file(db, 2, hosts=0, replicating=True)  # not due: it waits all the same
        await db.transaction(lambda txn: ChainQueue.add(txn, first, self.clock.seconds()))  # once
        self.assertEqual(await queue.waiting(), (2, 1001 + 1002))
        self.assertEqual(await queue.pending(self.clock.seconds()), (1, 1001))
        self.assertEqual(await self.publisher(db).publish_once(), 1)
        self.assertEqual(await queue.waiting(), (1, 1002))
        status = await disabled_status(queue, Announcements(db))()
        self.assertEqual(status["queue"], {"count": 1, "size": 1002})
        self.assertEqual(status["manifests"], {"pending": 0, "records": 0})

    async def test_any_node_finds_what_one_published(self) -> None:
        a, b = await self.database(), await self.database()
        h = await self.add_file(a, 1)
        live = (await Catalog(a).find(h)).to_json()
        self.assertEqual(await ChainQueue(a, WAIT).pending(self.clock.seconds()), (1, 1001))

        self.assertEqual(await self.publisher(a).publish_once(), 1)
        self.assertEqual(await self.states(a), {h: "published"})
        self.assertEqual(await ChainQueue(a, WAIT).pending(self.clock.seconds()), (0, 0))
        for comment in self.sent_comments():
            self.assertLessEqual(len(comment.encode()), MAX_TX_COMMENT_LEN)
        self.assertEqual((await Catalog(a).find(h)).to_json(), live)

        self.fake.mine()
        reader = self.reader(b)
        self.assertEqual(await reader.read_once(), 2)  # genesis and the new block
        self.assertEqual(await reader.height(), 1)
        self.assertEqual((await self.find(b, h)).to_json(), live)
        # A claim for B: the hosts it names are not B's, and B records no file of its own.
        self.assertEqual(await Catalog(b).find(h), None)
        self.assertEqual(await Catalog(b).hosts_of(h), ())
        # Reading again changes nothing; A reading its own record marks it confirmed.
        self.assertEqual(await reader.read_once(), 0)
        await self.reader(a).read_once()
        rows = await a.query("SELECT height FROM chain_records WHERE filehash = ?", (h,))
        self.assertEqual(rows, [(1,)])

    async def test_find_returns_the_published_record(self) -> None:
        db = await self.database()
        h = await self.add_file(db, 1, hosts=1)
        await self.publisher(db).publish_once()
        published = (await Catalog(db).find(h)).to_json()
        await db.transaction(
            lambda txn: Catalog.add_upload(txn, h, "late-host", "http://late.example/x", 99.0)
        )
        self.assertEqual((await Catalog(db).find(h)).to_json(), published)
        self.assertEqual(len((await Catalog(db).current(h)).uploads), 2)

    async def test_due_when_replicated_or_after_the_wait(self) -> None:
        db = await self.database()
        waiting = await self.add_file(db, 1, hosts=1, replicating=True)
        await self.add_file(db, 2, hosts=0, replicating=True)  # on no host yet: never
        self.assertEqual(await self.publisher(db).publish_once(), 0)
        self.clock.advance(WAIT)
        self.assertEqual(await self.publisher(db).publish_once(), 1)
        self.assertEqual((await self.states(db))[waiting], "published")
        self.assertEqual(len(self.fake.wallet), 1)

    async def test_many_records_many_batches(self) -> None:
        a, b = await self.database(), await self.database()
        hashes = [await self.add_file(a, n, hosts=1) for n in range(1, 8)]
        batches = await self.publisher(a).publish_once()
        self.assertGreater(batches, 1)
        self.assertEqual(set((await self.states(a)).values()), {"published"})
        self.fake.mine()
        await self.reader(b).read_once()
        for h in hashes:
            self.assertEqual((await self.find(b, h)).to_json(), (await self.find(a, h)).to_json())

    async def test_old_format_records_are_read(self) -> None:
        """A 0.1 record as metachains' reader accepts it: the name is the filehash's start."""
        db = await self.database()
        h = filehash(77)
        batch = json.dumps(
            [{"version": "0.1", "filehash": h, "filesize": 5, "datetime": "1398875062",
              "uploads": [{"host_name": "ge_tt", "url": "http://ge.tt/x"}]}]
        )  # fmt: skip
        self.fake.send_comment(codec.entry_text(batch.encode(), 0, None, None, len(batch)))
        self.fake.mine()
        await self.reader(db).read_once()
        record = await self.find(db, h)
        self.assertEqual(
            (record.filename, record.version, record.datetime), (h[:10], "0.1", 1398875062)
        )


class EntriesTests(ChainTestCase):
    async def test_a_long_record_spans_entries_and_blocks(self) -> None:
        a, b = await self.database(), await self.database()
        h = await self.add_file(a, 1, name="x" * 900)
        publisher = self.publisher(a)
        # The second entry is refused: the first is out, and stays out.
        original = self.fake.rpc_sendtoaddress
        calls = []

        def second_fails(*args: Any) -> str:
            calls.append(args)
            if len(calls) == 2:
                raise RPCFailure(-6, "Insufficient funds")
            return original(*args)

        self.fake.rpc_sendtoaddress = second_fails
        with self.assertRaises(RPCError):
            await publisher.publish_once()
        self.assertEqual(len(self.fake.wallet), 1)
        self.fake.mine()
        reader = self.reader(b)
        await reader.read_once()
        self.assertIsNone(await self.find(b, h))  # only the head so far
        rows = await a.query("SELECT attempts, last_error FROM chain_batches")
        self.assertEqual(rows[0][0], 1)
        self.assertIn("Insufficient funds", rows[0][1])

        # Not before its backoff; then from where it stopped.
        self.assertEqual(await publisher.publish_once(), 0)
        self.clock.advance(10)
        self.assertEqual(await publisher.publish_once(), 1)
        regions = len(codec.split_regions(codec.batch_text([(await Catalog(a).find(h)).to_json()])))
        self.assertGreater(regions, 2)
        self.assertEqual(len(self.fake.wallet), regions)
        entries = [codec.decode_entry(c) for c in self.sent_comments()]
        self.assertEqual([e.index for e in entries], list(range(regions)))
        self.fake.mine()
        await reader.read_once()
        self.assertEqual((await self.find(b, h)).to_json(), (await self.find(a, h)).to_json())
        self.assertEqual(await b.query("SELECT COUNT(*) FROM chain_fragments"), [(0,)])

    async def test_entries_never_exceed_the_comment_limit(self) -> None:
        """florincoind would cut a longer comment short without a word: never send one."""
        self.fake.rpc_sendtoaddress(
            "FLbVBLcaXGyQ3MXS9xNUFMnx3pkPPWYSg3", 0.01, "", "", "y" * (MAX_TX_COMMENT_LEN + 50)
        )
        self.assertEqual(len(self.sent_comments()[0]), MAX_TX_COMMENT_LEN)
        with self.assertRaises(EntryTooLong):
            await self.chain.prepare("z" * (MAX_TX_COMMENT_LEN + 1), "tag")


class ExactlyOnceTests(ChainTestCase):
    async def test_an_unanswered_send_is_recovered_not_repeated(self) -> None:
        """The node sent it but the answer was lost: found in the wallet by its tag."""
        db = await self.database()
        h = await self.add_file(db, 1, hosts=1)  # one entry
        publisher = self.publisher(db)
        self.fake.lose_answer.add("sendtoaddress")
        held = self.fake.held()
        d = Deferred.fromCoroutine(publisher.publish_once())
        self.assertEqual(await held, "sendtoaddress")
        self.clock.advance(TIMEOUT)
        with self.assertRaises(SendInDoubt):
            await d
        self.assertEqual(len(self.fake.wallet), 1)
        self.assertEqual(await self.states(db), {h: "batched"})
        # A restart: a new publisher, same database. Too early to decide: nothing sent.
        publisher = self.publisher(db)
        self.assertEqual(await publisher.publish_once(), 0)
        self.assertEqual(len(self.fake.wallet), 1)
        self.clock.advance(60)
        self.assertEqual(await publisher.publish_once(), 1)
        self.assertEqual(len(self.fake.wallet), 1)
        self.assertEqual(await self.states(db), {h: "published"})
        rows = await db.query("SELECT first_txid FROM chain_batches")
        self.assertEqual(rows, [(self.fake.wallet[0]["txid"],)])

    async def test_a_send_that_never_arrived_is_sent_again(self) -> None:
        db = await self.database()
        await self.add_file(db, 1, hosts=1)
        self.fake.hang = True
        held = self.fake.held()
        d = Deferred.fromCoroutine(self.publisher(db).publish_once())
        self.assertEqual(await held, "sendtoaddress")
        self.clock.advance(TIMEOUT)
        with self.assertRaises(SendInDoubt):
            await d
        self.fake.hang = False
        self.clock.advance(60)
        self.assertEqual(await self.publisher(db).publish_once(), 1)
        self.assertEqual(len(self.fake.wallet), 1)

    async def test_nodes_sharing_a_database_publish_each_record_once(self) -> None:
        db = await self.database()
        hashes = {await self.add_file(db, n, hosts=1) for n in range(1, 6)}
        nodes = [self.publisher(db, f"node-{i}") for i in range(3)]
        for _ in range(3):
            await gatherResults([Deferred.fromCoroutine(p.publish_once()) for p in nodes])
        published: list[str] = []
        for comment in self.sent_comments():
            entry = codec.decode_entry(comment)
            published.extend(r.filehash for r in codec.decode_batch(entry.region).records)
        self.assertEqual(sorted(published), sorted(hashes))
        self.assertEqual(set((await self.states(db)).values()), {"published"})

    async def test_a_record_another_node_published_does_not_stop_ours(self) -> None:
        """
        Anyone may publish a record for any filehash, first: a file this node
        holds is answered from its own record, which it publishes all the same.
        """
        a, b = await self.database(), await self.database()
        h = await self.add_file(a, 1, name="theirs.txt")
        await self.add_file(b, 1, name="ours.txt")
        await self.publisher(a).publish_once()
        sent = len(self.fake.wallet)
        self.fake.mine()
        await self.reader(b).read_once()
        self.assertEqual(await self.publisher(b, "node-b").publish_once(), 1)
        self.assertGreater(len(self.fake.wallet), sent)
        self.assertEqual(await self.states(b), {h: "published"})
        self.assertEqual((await self.find(b, h)).filename, f"{h[:7]}_ours.txt")
        self.fake.mine()
        await self.reader(b).read_once()
        rows = await b.query("SELECT height FROM chain_records WHERE filehash = ?", (h,))
        self.assertEqual(rows, [(2,)])  # its own record, read back
        self.assertEqual(len(await Claims(b).standing(h, 10)), 2)  # both are claims


class ReaderTests(ChainTestCase):
    async def test_garbage_on_the_chain_is_skipped(self) -> None:
        db = await self.database()
        bomb = codec.compress_region(b"[" * 10_000_000)
        for comment in (
            "hello, world",
            json.dumps({"prev_txid": None, "region": bomb, "total_length": 10, "index": 0}),
            codec.entry_text(b'{"not": "a list"}', 0, None, None, 17),
            codec.entry_text(b'[{"version": "0.2"}]', 0, None, None, 20),
            codec.entry_text(b"[1, 2", 0, None, None, 9),  # says 9 bytes, has 5: never complete
        ):
            self.fake.send_comment(comment)
        self.fake.mine()
        h = await self.add_file(db, 5)
        await self.publisher(db).publish_once()
        self.fake.mine()
        other = await self.database()
        self.assertEqual(await self.reader(other).read_once(), 3)
        self.assertIsNotNone(await self.find(other, h))
        self.assertEqual(await other.query("SELECT COUNT(*) FROM chain_claims"), [(1,)])

    async def test_min_confirmations(self) -> None:
        db, source = await self.database(), await self.database()
        h = await self.add_file(source, 1)
        await self.publisher(source).publish_once()
        self.fake.mine()
        reader = self.reader(db, min_confirmations=3)
        await reader.read_once()
        self.assertIsNone(await self.find(db, h))
        self.assertEqual(await reader.height(), None)
        self.fake.mine(2)
        await reader.read_once()
        self.assertIsNotNone(await self.find(db, h))
        self.assertEqual(await reader.height(), 1)

    async def test_reorganisation_reads_again(self) -> None:
        source, db = await self.database(), await self.database()
        h = await self.add_file(source, 1, name="r" * 700)  # two entries or more
        self.fake.mine(3)
        publisher = self.publisher(source)
        # Only the first entry makes it into the next block.
        original = self.fake.rpc_sendtoaddress

        def then_mine(*args: Any) -> str:
            txid = original(*args)
            if len(self.fake.wallet) == 1:
                self.fake.mine()
            return txid

        self.fake.rpc_sendtoaddress = then_mine
        await publisher.publish_once()
        reader = self.reader(db, rescan_depth=5)
        await reader.read_once()  # the block with the head only
        head_height = await reader.height()
        self.assertEqual(await db.query("SELECT COUNT(*) FROM chain_fragments"), [(1,)])
        # The head's block is replaced; the head comes back in the new block, with the rest.
        self.fake.reorganise(1)
        self.fake.mine()
        await reader.read_once()
        self.assertEqual((await self.find(db, h)).to_json(), (await self.find(source, h)).to_json())
        kept = dict(await db.query("SELECT height, hash FROM chain_blocks"))
        self.assertEqual(kept[head_height], self.fake.blocks[head_height]["hash"])
        self.assertEqual(len(kept), 5)
        self.assertEqual(await reader.height(), len(self.fake.blocks) - 1)

    async def test_claims_of_a_vanished_block_are_forgotten_and_reading_goes_on(self) -> None:
        source, db = await self.database(), await self.database()
        h = await self.add_file(source, 1)
        await self.publisher(source).publish_once()
        self.fake.mine()
        reader = self.reader(db)
        await reader.read_once()
        self.assertIsNotNone(await self.find(db, h))
        self.fake.reorganise(1, keep=False)
        await reader.read_once()
        self.assertIsNone(await self.find(db, h))  # the chain no longer says so
        self.assertEqual(await reader.height(), len(self.fake.blocks) - 1)
        self.assertEqual(
            dict(await db.query("SELECT height, hash FROM chain_blocks"))[1],
            self.fake.blocks[1]["hash"],
        )

    async def test_a_batch_costs_statements_per_batch_not_per_record(self) -> None:
        """
        Storing a batch's claims and confirming this node's records among them
        takes as many statements for 100 records as for one: on a catalog of
        millions a statement a record was a random page of a large index.
        """
        db = RecordingDatabase(await self.database())
        reader = self.reader(db, start_height=len(self.fake.blocks))  # the blocks to come
        touched = []
        for n, size in enumerate((1, 100)):
            self.fake.publish([_record(f"{n}-{i}") for i in range(size)])
            self.fake.mine()
            db.seen.clear()
            self.assertEqual(await reader.read_once(), 1)
            touched.append(
                [sql for sql, _ in db.seen if "chain_claims" in sql or "chain_records" in sql]
            )
        self.assertEqual(len(touched[0]), len(touched[1]))
        self.assertEqual(await db.query("SELECT COUNT(*) FROM chain_claims"), [(101,)])

    async def test_start_height(self) -> None:
        db = await self.database()
        self.fake.mine(5)
        reader = self.reader(db, start_height=4)
        self.assertEqual(await reader.read_once(), 2)
        self.assertEqual(await reader.height(), 5)


class ServiceTests(ChainTestCase):
    def idle_lane(self, db: IDatabase) -> ManifestLane:
        """A manifest lane that no announcement reaches."""
        return ManifestLane(
            announcements=Announcements(db),
            urls=URLHost(None, 0, self.clock),
            clock=self.clock,
            run_blocking=in_caller,
            directory=Path("unused"),
        )

    async def test_chain_down_then_back(self) -> None:
        """Nothing stops: the queue grows, the status says why; all goes out once it is back."""
        db = await self.database()
        service = self.service(db, self.idle_lane(db))
        self.http.down = True
        for n in range(1, 4):
            await self.add_file(db, n)
        await service.reading.run()
        await service.publishing.run()
        status = await service.status()
        self.assertEqual(status["queue"], {"count": 3, "size": 1001 + 1002 + 1003})
        self.assertIn("Connection refused", status["error"])
        self.assertEqual((status["coin"], status["block"]), ("florincoin", 0))
        self.assertEqual(self.fake.wallet, [])

        self.http.down = False
        self.clock.advance(600)  # past the batch's backoff
        await service.publishing.run()
        self.fake.mine()
        await service.reading.run()
        status = await service.status()
        self.assertIsNone(status["error"])
        self.assertEqual(status["queue"], {"count": 0, "size": 0})
        self.assertEqual(status["block"], 1)
        self.assertEqual(status["address"], "FLbVBLcaXGyQ3MXS9xNUFMnx3pkPPWYSg3")
        self.assertLess(status["balance"], 100)

    async def test_bad_credentials_are_reported(self) -> None:
        db = await self.database()
        self.chain = self.florincoin(FakeFlorincoind(password="other"))
        service = self.service(db, self.idle_lane(db))
        await service.reading.run()
        self.assertIn("rejected the credentials", (await service.status())["error"])


class PostgresPublishAndReadTests(PublishAndReadTests):
    dialect = "postgresql"


class PostgresEntriesTests(EntriesTests):
    dialect = "postgresql"


class PostgresExactlyOnceTests(ExactlyOnceTests):
    dialect = "postgresql"


class PostgresReaderTests(ReaderTests):
    dialect = "postgresql"
