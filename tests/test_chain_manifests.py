"""
Publishing v0.3 manifests (docs/protocol.md 5.8, 5.9): the auto rule, the
manifest on its hosts before its announcement, and exactly once across
crashes, lost answers and nodes sharing a database. The chain is the fake
florincoind; the manifest's hosts are local directories with public URLs
behind L{FaultyHost}, replicated by the node's own L{CloudSync}; time is a
Clock. SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from metadisk.chain import codec
from metadisk.chain.manifests import ManifestStore, build, gives_public_urls
from metadisk.chain.publisher import Publisher, SendInDoubt
from metadisk.chain.queue import ChainQueue
from metadisk.config import MANIFEST_RECORDS, HostConfig
from metadisk.interfaces import IDatabase, ITransaction
from metadisk.node import manifest_store
from metadisk.store.blocking import in_caller
from metadisk.store.cache import BlobCache
from metadisk.store.catalog import Catalog
from metadisk.store.cloudsync import CloudSync
from metadisk.store.hosts.local import LocalDirectoryHost
from metadisk.store.repair import Repair
from metadisk.store.shards import sharded
from tests.fakes import FaultyHost
from tests.support import local_host, test_config
from tests.test_chain_sync import TIMEOUT, WAIT, ChainTestCase, filehash

PER_MANIFEST = 100
MANIFEST_WAIT = 600.0


class ManifestTestCase(ChainTestCase):
    async def node(self, copies: int = 3, hosts: int = 3) -> IDatabase:
        """A node's database, and the store its manifests go to (C{self.sync}, C{self.hosts})."""
        db = await self.database()
        self.base = Path(self.mktemp()).resolve()
        self.base.mkdir(parents=True)
        self.catalog = Catalog(db)
        self.cache = BlobCache(
            root=self.base / "cache",
            capacity=2**30,
            evictable=lambda fhs: self.catalog.replicated(fhs, copies),
            clock=Clock(),  # its own: the index's batches are no round of the sync's
            run_blocking=in_caller,
        )
        self.cache.load()
        self.hosts = [
            FaultyHost(
                LocalDirectoryHost(
                    name=f"p{i}",
                    root=self.base / f"p{i}",
                    run_blocking=in_caller,
                    public_url=f"http://p{i}.example/m",
                )
            )
            for i in range(hosts)
        ]
        self.sync = CloudSync(
            db=db,
            catalog=self.catalog,
            cache=self.cache,
            hosts=self.hosts,
            clock=self.clock,
            run_blocking=in_caller,
            node_id="node-a",
            copies=copies,
        )
        return db

    def manifest_publisher(self, db: IDatabase, node_id: str = "node-a", **kw: Any) -> Publisher:
        """A publisher in format auto; each call is a node (re)started on C{db}."""
        store = ManifestStore(
            catalog=self.catalog,
            cache=self.cache,
            sync=self.sync,
            clock=self.clock,
            run_blocking=in_caller,
            publish_wait=WAIT,
        )
        kw.setdefault("records_per_manifest", PER_MANIFEST)
        kw.setdefault("make_manifests", True)
        return Publisher(
            db=db,
            chain=self.chain,
            catalog=Catalog(db),
            queue=ChainQueue(db, WAIT),
            clock=self.clock,
            node_id=node_id,
            recover_after=60.0,
            manifests=store,
            manifest_wait=MANIFEST_WAIT,
            **kw,
        )

    async def add_files(self, db: IDatabase, count: int, first: int = 1) -> list[str]:
        """C{count} files as uploads leave them once on a host, in one transaction."""
        hashes = [filehash(n) for n in range(first, first + count)]

        async def record(txn: ITransaction, hashes: list[str]) -> None:
            for h in hashes:
                n = int(h, 16)
                await Catalog(db).add_file(txn, h, f"f{n}.txt", 1000 + n, 1_700_000_000)
                await ChainQueue.add(txn, h, self.clock.seconds())
                await Catalog.add_upload(txn, h, "host0", f"http://host0.example/{h}", 1.0)

        for start in range(0, count, 500):  # short transactions: PostgreSQL times them
            await db.transaction(lambda txn, start=start: record(txn, hashes[start : start + 500]))
        return hashes

    def published(self) -> tuple[list[codec.Announcement], list[str]]:
        """What the wallet sent: the announcements, and the filehashes of inline records."""
        announcements: list[codec.Announcement] = []
        inline: list[str] = []
        entries = [codec.decode_entry(comment) for comment in self.sent_comments()]
        self.assertTrue(all(entry.index == 0 for entry in entries))  # one entry a batch
        for entry in entries:
            decoded = codec.decode_batch(entry.region)
            announcements.extend(decoded.announcements)
            inline.extend(record.filehash for record in decoded.records)
        return announcements, inline

    def manifest_records(self, announcement: codec.Announcement) -> list[str]:
        """The filehashes of an announced manifest, as a reader gets them from its first URL."""
        name, url = announcement.uploads[0]
        shard = f"{announcement.manifest[:2]}/{announcement.manifest}"
        self.assertEqual(url, f"http://{name}.example/m/{shard}")
        data = (self.base / name / shard).read_bytes()
        records, problems = codec.decode_manifest(data, announcement)
        self.assertEqual(problems, [])
        return [record.filehash for record in records]


class AutoFormatTests(ManifestTestCase):
    async def test_enough_due_records_go_out_as_one_manifest(self) -> None:
        db = await self.node()
        hashes = await self.add_files(db, 250)
        publisher = self.manifest_publisher(db)
        # Claimed into a manifest, which is not on its hosts yet: nothing is announced.
        self.assertEqual(await publisher.publish_once(), 0)
        self.assertEqual(self.fake.wallet, [])
        self.assertEqual(set((await self.states(db)).values()), {"batched"})
        await self.sync.run_once()
        self.assertEqual(await publisher.publish_once(), 1)

        [announcement], inline = self.published()
        self.assertEqual(inline, [])
        self.assertEqual(announcement.records, 250)
        self.assertEqual([name for name, _ in announcement.uploads], ["p0", "p1", "p2"])
        self.assertEqual(self.manifest_records(announcement), hashes)
        self.assertEqual(set((await self.states(db)).values()), {"published"})
        # Each record is this node's published record, with the announcement's txid.
        txid = self.fake.wallet[0]["txid"]
        rows = await db.query("SELECT filehash, txid FROM chain_records")
        self.assertEqual(sorted(rows), [(h, txid) for h in hashes])
        record = await Catalog(db).find(hashes[0])
        self.assertEqual(record.uploads, (("host0", f"http://host0.example/{hashes[0]}"),))
        # The manifest is a blob of the node's, but no file: not found, not counted, not queued.
        self.assertIsNone(await Catalog(db).find(announcement.manifest))
        self.assertEqual(len(await Catalog(db).hosts_of(announcement.manifest)), 3)
        self.assertEqual(await self.sync.queue.pending(), (0, 0))
        self.assertEqual(await ChainQueue(db, WAIT).pending(self.clock.seconds()), (0, 0))
        self.assertEqual(await publisher.publish_once(), 0)

    async def test_a_manifest_takes_at_most_manifest_max_records(self) -> None:
        db = await self.node()
        hashes = await self.add_files(db, 250)
        publisher = self.manifest_publisher(db, manifest_max_records=120)
        for _ in range(2):
            await publisher.publish_once()
            await self.sync.run_once()
        await publisher.publish_once()
        announcements, inline = self.published()
        self.assertEqual([a.records for a in announcements], [120, 120])
        self.assertEqual(inline, [])
        # Ten are left: too few for a manifest, inline once they have waited.
        self.assertEqual(await publisher.publish_once(), 0)
        self.clock.advance(MANIFEST_WAIT)
        await publisher.publish_once()
        _, inline = self.published()
        self.assertEqual(sorted(inline), hashes[240:])

    async def test_few_due_records_go_inline_after_manifest_wait(self) -> None:
        db = await self.node()
        hashes = await self.add_files(db, 7)
        publisher = self.manifest_publisher(db)
        self.assertEqual(await publisher.publish_once(), 0)
        self.clock.advance(MANIFEST_WAIT - 1)
        self.assertEqual(await publisher.publish_once(), 0)
        self.assertEqual(self.fake.wallet, [])
        # Seven arrive late: they go with the first, all of them in this round.
        late = await self.add_files(db, 7, first=100)
        self.clock.advance(1)
        self.assertGreater(await publisher.publish_once(), 1)
        announcements, inline = self.published()
        self.assertEqual(announcements, [])
        self.assertEqual(sorted(inline), sorted(hashes + late))
        self.assertEqual(await db.query("SELECT COUNT(*) FROM chain_manifests"), [(0,)])

    async def test_format_0_2_never_makes_a_manifest(self) -> None:
        db = await self.node()
        hashes = await self.add_files(db, 250)
        self.assertGreater(await self.publisher(db).publish_once(), 100)
        announcements, inline = self.published()
        self.assertEqual(announcements, [])
        self.assertEqual(sorted(inline), hashes)
        self.assertEqual(await db.query("SELECT COUNT(*) FROM chain_manifests"), [(0,)])
        self.assertEqual(await db.query("SELECT COUNT(*) FROM files WHERE kind <> 'file'"), [(0,)])


class StoredBeforeAnnouncedTests(ManifestTestCase):
    async def test_a_failing_host_delays_the_announcement(self) -> None:
        db = await self.node(copies=2, hosts=2)
        self.hosts[1].broken = True
        await self.add_files(db, 100)
        publisher = self.manifest_publisher(db)
        await publisher.publish_once()
        await self.sync.run_once()
        # One copy of two: not announced until publish_wait has passed.
        self.assertEqual(await publisher.publish_once(), 0)
        self.clock.advance(WAIT - 1)
        self.assertEqual(await publisher.publish_once(), 0)
        self.assertEqual(self.fake.wallet, [])
        self.clock.advance(1)
        self.assertEqual(await publisher.publish_once(), 1)
        [announcement], _ = self.published()
        self.assertEqual([name for name, _ in announcement.uploads], ["p0"])

    async def test_hosts_without_public_urls_are_not_announced(self) -> None:
        db = await self.node()
        self.hosts[1].inner.public_url = ""
        await self.add_files(db, 100)
        publisher = self.manifest_publisher(db)
        await publisher.publish_once()
        await self.sync.run_once()
        await publisher.publish_once()
        [announcement], _ = self.published()
        self.assertEqual([name for name, _ in announcement.uploads], ["p0", "p2"])

    async def test_a_crash_between_storing_and_announcing(self) -> None:
        db = await self.node()
        hashes = await self.add_files(db, 150)
        await self.manifest_publisher(db).publish_once()
        await self.sync.run_once()
        # The node stops with the manifest on its hosts, unannounced; it starts again.
        self.assertEqual(await self.manifest_publisher(db).publish_once(), 1)
        self.assertEqual(await self.manifest_publisher(db).publish_once(), 0)
        [announcement], _ = self.published()
        self.assertEqual(self.manifest_records(announcement), hashes)
        self.assertEqual(set((await self.states(db)).values()), {"published"})

    async def test_a_crash_before_the_claim_leaves_the_records_waiting(self) -> None:
        """The manifest is in the cache, its claim never committed: nothing is lost."""
        db = await self.node()
        await self.add_files(db, 100)
        publisher = self.manifest_publisher(db)

        async def crash(*args: Any) -> int:
            raise RuntimeError("the node stops")

        self.patch(ChainQueue, "take_all", staticmethod(crash))
        with self.assertRaises(RuntimeError):
            await publisher.publish_once()
        self.assertEqual(set((await self.states(db)).values()), {"waiting"})
        self.assertEqual(await db.query("SELECT COUNT(*) FROM chain_batches"), [(0,)])
        self.assertEqual(await db.query("SELECT COUNT(*) FROM files WHERE kind <> 'file'"), [(0,)])

    async def test_a_manifest_made_before_a_switch_to_0_2_is_announced(self) -> None:
        db = await self.node()
        manifested = await self.add_files(db, 100)
        await self.manifest_publisher(db).publish_once()
        await self.sync.run_once()
        # The node restarts with format "0.2": the manifest still goes out, the rest inline.
        late = await self.add_files(db, 150, first=1000)
        self.assertGreater(
            await self.manifest_publisher(db, make_manifests=False).publish_once(), 100
        )
        announcements, inline = self.published()
        self.assertEqual([self.manifest_records(a) for a in announcements], [manifested])
        self.assertEqual(sorted(inline), late)

    async def test_a_lost_answer_to_the_announcement(self) -> None:
        db = await self.node()
        await self.add_files(db, 100)
        await self.manifest_publisher(db).publish_once()
        await self.sync.run_once()
        self.fake.lose_answer.add("sendtoaddress")
        held = self.fake.held()
        d = Deferred.fromCoroutine(self.manifest_publisher(db).publish_once())
        self.assertEqual(await held, "sendtoaddress")
        self.clock.advance(TIMEOUT)
        with self.assertRaises(SendInDoubt):
            await d
        self.assertEqual(set((await self.states(db)).values()), {"batched"})
        publisher = self.manifest_publisher(db)
        self.assertEqual(await publisher.publish_once(), 0)  # too early to tell
        self.clock.advance(60)
        self.assertEqual(await publisher.publish_once(), 1)
        self.assertEqual(len(self.fake.wallet), 1)
        self.assertEqual(set((await self.states(db)).values()), {"published"})
        [(txid,)] = await db.query("SELECT DISTINCT txid FROM chain_records")
        self.assertEqual(txid, self.fake.wallet[0]["txid"])

    async def test_nodes_sharing_a_database_put_a_record_in_one_manifest(self) -> None:
        db = await self.node()
        hashes = await self.add_files(db, 400)
        nodes = [
            self.manifest_publisher(db, f"node-{i}", manifest_max_records=100) for i in range(3)
        ]
        for _ in range(12):
            await gatherResults([Deferred.fromCoroutine(p.publish_once()) for p in nodes])
            await self.sync.run_once()
            if set((await self.states(db)).values()) == {"published"}:
                break
        announcements, inline = self.published()
        self.assertEqual(len(announcements), 4)
        self.assertEqual(inline, [])
        published = [h for a in announcements for h in self.manifest_records(a)]
        self.assertEqual(sorted(published), hashes)
        self.assertEqual(set((await self.states(db)).values()), {"published"})


class ManifestBlobTests(ManifestTestCase):
    async def test_a_lost_copy_of_a_manifest_is_repaired(self) -> None:
        db = await self.node()
        await self.add_files(db, 100)
        publisher = self.manifest_publisher(db)
        await publisher.publish_once()
        await self.sync.run_once()
        await publisher.publish_once()
        [announcement], _ = self.published()
        manifest = announcement.manifest
        self.cache.discard(manifest)  # evicted once on its hosts
        sharded(self.base / "p1", manifest).unlink()
        repair = Repair(
            db=db,
            sync=self.sync,
            cache=self.cache,
            hosts=self.hosts,
            clock=self.clock,
            run_blocking=in_caller,
            sample=100,
        )
        self.assertEqual((await repair.run_once()).missing, ((manifest, "p1"),))
        await self.sync.idle()
        self.assertEqual(len(await Catalog(db).hosts_of(manifest)), 3)
        copy = sharded(self.base / "p1", manifest).read_bytes()
        self.assertEqual(copy, sharded(self.base / "p0", manifest).read_bytes())


class Counting:
    """A transaction that counts its statements."""

    def __init__(self, txn: ITransaction) -> None:
        self.txn = txn
        self.statements = 0

    def query(self, sql: str, params: tuple = ()) -> Any:
        self.statements += 1
        return self.txn.query(sql, params)

    def execute(self, sql: str, params: tuple = ()) -> Any:
        self.statements += 1
        return self.txn.execute(sql, params)


class StatementTests(ManifestTestCase):
    """
    A manifest's records are claimed and marked published a statement per
    500: one a record, 50,000 of them outlast PostgreSQL's query_timeout
    (10 s for a whole transaction).
    """

    async def test_claiming_and_marking_take_a_statement_per_500_records(self) -> None:
        db = await self.node()
        hashes = await self.add_files(db, 1200)
        records = [r.to_json() for r in await Catalog(db).current_many(hashes)]
        self.assertEqual([r["filehash"] for r in records], hashes)
        self.assertEqual((await ChainQueue(db, 0).waiting())[0], 1200)

        async def claim_and_mark(txn: ITransaction) -> tuple[int, int, int]:
            counting = Counting(txn)
            taken = await ChainQueue.take_all(counting, hashes, "b")
            claimed = counting.statements
            await Catalog.published(counting, records, "t" * 64)
            return taken, claimed, counting.statements - claimed

        # Claiming: three UPDATEs of 500 at most, and the waiting counter's one.
        self.assertEqual(await db.transaction(claim_and_mark), (1200, 4, 3))
        self.assertEqual(await ChainQueue(db, 0).waiting(), (0, 0))
        self.assertEqual(await db.query("SELECT COUNT(*) FROM chain_records"), [(1200,)])
        self.assertEqual(await ChainQueue.take_all(db, hashes[:10], "c"), 0)  # taken already


class ManifestUnitTests(TestCase):
    def test_too_large_a_manifest_takes_fewer_records(self) -> None:
        records = [{"filehash": filehash(n), "version": "0.2"} for n in range(1000)]
        self.patch(codec, "MAX_MANIFEST_TEXT", 30_000)
        manifest, data = build(records)
        self.assertEqual(manifest.records, 250)
        self.assertEqual(json.loads(manifest.payload), records[:250])
        self.assertEqual(manifest.size, len(data))

    def test_which_hosts_give_public_urls(self) -> None:
        def host(kind: str, **kw: str) -> HostConfig:
            return HostConfig(name="h", kind=kind, **kw)

        self.assertTrue(gives_public_urls(host("local", path="/x", public_url="https://a/b")))
        self.assertFalse(gives_public_urls(host("local", path="/x")))
        self.assertTrue(gives_public_urls(host("rclone", remote=":webdav,url='http://d:1/':m")))
        self.assertFalse(gives_public_urls(host("rclone", remote="s3remote:bucket")))
        self.assertTrue(gives_public_urls(host("plowshare", site="1fichier")))

    def test_the_config_limit_is_the_codec_limit(self) -> None:
        self.assertEqual(MANIFEST_RECORDS, codec.MAX_MANIFEST_RECORDS)


class PostgresAutoFormatTests(AutoFormatTests):
    dialect = "postgresql"


class PostgresStoredBeforeAnnouncedTests(StoredBeforeAnnouncedTests):
    dialect = "postgresql"


class PostgresManifestBlobTests(ManifestBlobTests):
    dialect = "postgresql"


class PostgresStatementTests(StatementTests):
    dialect = "postgresql"


class WiringTests(TestCase):
    def test_manifests_only_where_a_host_can_serve_them(self) -> None:
        base = Path(self.mktemp())
        chain = {"kind": "florincoin", "url": "http://flo:secret@127.0.0.1:7313/"}
        public = [
            local_host("a", base / "a"),
            local_host("b", base / "b"),
            {**local_host("p", base / "p"), "public_url": "http://127.0.0.1:8080/m"},
        ]
        parts = (object(), object(), object(), object(), in_caller)
        auto = test_config(base, chain=chain, hosts=public)
        self.assertIsInstance(manifest_store(auto, *parts), ManifestStore)
        # Format 0.2 makes none, but announces those made before the change.
        inline = test_config(base, chain={**chain, "format": "0.2"}, hosts=public)
        self.assertIsInstance(manifest_store(inline, *parts), ManifestStore)
        self.assertIsNone(manifest_store(test_config(base, chain=chain), *parts))
        self.assertIsNone(manifest_store(test_config(base, hosts=public), *parts))
