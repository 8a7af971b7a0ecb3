"""
Reading v0.3 manifests (docs/protocol.md, section 5.8): announcements read
from the fake florincoind become pending rows, and the manifest lane fetches
their manifests from a web server on loopback (let through as
C{[chain] fetch_allowed_networks} would), on SQLite and PostgreSQL, with the
lane's time on a Clock.
"""

from __future__ import annotations

import bz2
import hashlib
import json
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from metadisk.chain import codec
from metadisk.chain.bitcoinlike import BitcoinLike
from metadisk.chain.manifest_lane import FIRST_RETRY, Announced, Announcements, ManifestLane
from metadisk.chain.reader import Reader
from metadisk.config import networks
from metadisk.interfaces import IDatabase, ITransaction
from metadisk.metrics import Metrics
from metadisk.store.blocking import in_caller
from metadisk.store.catalog import Catalog, FileRecord
from metadisk.store.hosts.publicnet import AddressPolicy, PublicEndpoints, public_agent
from metadisk.store.hosts.url import URLHost
from tests.fakes.florincoind import FakeFlorincoind
from tests.fakes.manifest_server import ManifestServer
from tests.support import eventually, json_of, start_node, test_config
from tests.test_chain_litecoin import litecoind
from tests.test_chain_sync import ChainTestCase, filehash


def record(n: int, name: str = "hello.txt", size: int = 0) -> dict[str, Any]:
    h = filehash(n)
    return {
        "datetime": "1700000000",
        "filehash": h,
        "filename": f"{h[:7]}_{name}",
        "filesize": size or 1000 + n,
        "uploads": [{"host_name": "dav", "url": f"http://dav.example/{h}"}],
        "version": "0.2",
    }


class ManifestTestCase(ChainTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.server = ManifestServer(self)
        self.metrics = Metrics()

    def lane(self, db: IDatabase, allowed: tuple[str, ...] = ("127.0.0.0/8",)) -> ManifestLane:
        policy = AddressPolicy(networks(list(allowed)))
        agent = public_agent(reactor, PublicEndpoints(reactor=reactor, policy=policy))
        return ManifestLane(
            announcements=Announcements(db),
            urls=URLHost(agent, codec.MAX_MANIFEST_SIZE, self.clock),
            clock=self.clock,
            run_blocking=in_caller,
            directory=Path(self.mktemp()),
            metrics=self.metrics,
        )

    def publish_manifest(
        self, records: list[Any], name: str = "m", data: bytes | None = None, count: int = 0
    ) -> codec.Announcement:
        """Serve a manifest of C{records} (or C{data}) as C{name}, and announce it."""
        if data is None:
            data = codec.manifest_bytes(records)
        self.server.files[name] = data
        announced = codec.Announcement(
            hashlib.sha256(data).hexdigest(),
            count or len(records),
            len(data),
            (("web", self.server.url(name)),),
        )
        self.fake.announce(announced)
        return announced

    async def status(self, db: IDatabase) -> tuple[int, int]:
        return await Announcements(db).counts()

    async def states(self, db: IDatabase) -> list[str]:  # type: ignore[override]
        rows = await db.query("SELECT state FROM chain_announcements ORDER BY height, position")
        return [state for (state,) in rows]

    def counted(self, outcome: str) -> float:
        return self.metrics.manifests.labels(outcome)._value.get()

    async def names(self, db: IDatabase, n: int) -> str | None:
        found = await self.find(db, filehash(n))
        return None if found is None else found.filename


class FetchTests(ManifestTestCase):
    async def test_an_announced_manifest_becomes_claims(self) -> None:
        db = await self.database()
        records = [record(n) for n in range(1, 4)]
        self.publish_manifest(records)
        self.fake.mine()
        await self.reader(db).read_once()
        self.assertEqual(await self.status(db), (1, 0))  # read, not fetched yet
        self.assertIsNone(await self.find(db, filehash(1)))

        lane = self.lane(db)
        self.assertEqual(await lane.fetch_due(), 1)
        self.assertEqual(await self.status(db), (0, 3))
        for r in records:
            self.assertEqual((await self.find(db, r["filehash"])).to_json(), r)
        self.assertEqual(self.counted("fetched"), 1)
        self.assertEqual(self.metrics.manifests_pending._value.get(), 0)
        # Fetched once: the node keeps the records, and never asks again.
        self.clock.advance(10 * FIRST_RETRY)
        self.assertEqual(await lane.fetch_due(), 0)
        self.assertEqual(self.server.requests, {"m": 1})

    async def test_unavailable_then_available(self) -> None:
        db = await self.database()
        self.publish_manifest([record(1)])
        data = self.server.files.pop("m")  # announced, not on its host (yet)
        self.fake.mine()
        await self.reader(db).read_once()
        lane = self.lane(db)
        self.assertEqual(await lane.fetch_due(), 0)
        self.assertEqual((await self.status(db), await self.states(db)), ((1, 0), ["pending"]))
        self.assertEqual(self.metrics.manifests_pending._value.get(), 1)
        # Not before its backoff…
        self.server.files["m"] = data
        self.assertEqual(await lane.fetch_due(), 0)
        self.assertEqual(self.server.requests, {"m": 1})
        # …then it is there.
        self.clock.advance(FIRST_RETRY)
        self.assertEqual(await lane.fetch_due(), 1)
        self.assertEqual(await self.status(db), (0, 1))
        self.assertIsNotNone(await self.find(db, filehash(1)))

    async def test_a_tampered_manifest_fails_and_is_not_fetched_again(self) -> None:
        db = await self.database()
        data = codec.manifest_bytes([record(1), record(2)])
        self.publish_manifest([record(1), record(2)], data=data)
        self.server.files["m"] = data[:-1] + bytes([data[-1] ^ 1])  # the hash fails
        self.fake.mine()
        await self.reader(db).read_once()
        lane = self.lane(db)
        self.assertEqual(await lane.fetch_due(), 0)
        self.assertEqual((await self.status(db), await self.states(db)), ((0, 0), ["failed"]))
        self.assertEqual(self.counted("failed"), 1)
        self.clock.advance(100 * FIRST_RETRY)
        self.server.files["m"] = data
        await lane.fetch_due()
        self.assertEqual(self.server.requests, {"m": 1})
        self.assertIsNone(await self.find(db, filehash(1)))

    async def test_a_url_with_other_bytes_is_dropped_the_others_tried(self) -> None:
        db = await self.database()
        good = codec.manifest_bytes([record(1)])
        self.server.files["bad"] = b"x" * len(good)
        announced = codec.Announcement(
            hashlib.sha256(good).hexdigest(),
            1,
            len(good),
            (("bad", self.server.url("bad")), ("late", self.server.url("late"))),
        )
        self.fake.announce(announced)
        self.fake.mine()
        await self.reader(db).read_once()
        lane = self.lane(db)
        await lane.fetch_due()  # one URL serves other bytes, the other nothing yet
        self.assertEqual(await self.states(db), ["pending"])
        self.server.files["late"] = good
        self.clock.advance(FIRST_RETRY)
        self.assertEqual(await lane.fetch_due(), 1)
        self.assertEqual(self.server.requests, {"bad": 1, "late": 2})

    async def test_a_body_cut_short_is_tried_again(self) -> None:
        """
        Fewer bytes than announced (a connection lost mid-body, read as a
        whole body where no Content-Length was sent): the URL is kept and the
        manifest fetched from it later, not failed for good.
        """
        db = await self.database()
        data = codec.manifest_bytes([record(1), record(2)])
        self.publish_manifest([record(1), record(2)], data=data)
        self.server.files["m"] = data[: len(data) // 2]
        self.fake.mine()
        await self.reader(db).read_once()
        lane = self.lane(db)
        self.assertEqual(await lane.fetch_due(), 0)
        self.assertEqual(await self.states(db), ["pending"])
        self.server.files["m"] = data
        self.clock.advance(FIRST_RETRY)
        self.assertEqual(await lane.fetch_due(), 1)
        self.assertEqual(await self.status(db), (0, 2))

    async def test_a_bz2_bomb(self) -> None:
        db = await self.database()
        bomb = bz2.compress(b"[" + b" " * (codec.MAX_MANIFEST_TEXT + 10) + b"]", 9)
        self.publish_manifest([], data=bomb, count=1)
        self.fake.mine()
        await self.reader(db).read_once()
        self.assertEqual(await self.lane(db).fetch_due(), 0)
        self.assertEqual(await self.states(db), ["failed"])
        rows = await db.query("SELECT last_error FROM chain_announcements")
        self.assertIn("too large", rows[0][0])

    async def test_more_records_than_announced(self) -> None:
        db = await self.database()
        self.publish_manifest([record(n) for n in range(1, 5)], count=3)
        self.fake.mine()
        await self.reader(db).read_once()
        self.assertEqual(await self.lane(db).fetch_due(), 0)
        self.assertEqual(await self.states(db), ["failed"])
        self.assertIsNone(await self.find(db, filehash(1)))  # none of its records is kept

    async def test_garbage_records_are_skipped_the_rest_kept(self) -> None:
        db = await self.database()
        items = [record(1), {"version": "0.2"}, "text", [1, 2], record(2)]
        data = bz2.compress(json.dumps(items).encode())
        self.publish_manifest([], data=data, count=len(items))
        self.fake.mine()
        await self.reader(db).read_once()
        self.assertEqual(await self.lane(db).fetch_due(), 1)
        self.assertEqual(await self.status(db), (0, 2))
        self.assertEqual(await self.names(db, 1), "0000000_hello.txt")
        self.assertIsNotNone(await self.find(db, filehash(2)))

    async def test_redirects_are_not_followed(self) -> None:
        db = await self.database()
        self.publish_manifest([record(1)], name="m")
        self.server.redirects["moved"] = self.server.url("m")
        announced = self.publish_manifest([record(1)], name="m")
        self.fake.announce(
            codec.Announcement(
                announced.manifest, 1, announced.size, (("web", self.server.url("moved")),)
            ),
        )
        self.fake.mine()
        await self.reader(db).read_once()
        # The first two are fetched; the redirect's is not followed, and stays pending.
        self.assertEqual(await self.lane(db).fetch_due(), 2)
        self.assertEqual(await self.states(db), ["fetched", "fetched", "pending"])
        self.assertEqual(self.server.requests, {"m": 2, "moved": 1})

    async def test_loopback_is_refused_unless_allowed(self) -> None:
        db = await self.database()
        self.publish_manifest([record(1)])
        self.fake.mine()
        await self.reader(db).read_once()
        self.assertEqual(await self.lane(db, allowed=()).fetch_due(), 0)
        self.assertEqual(self.server.requests, {})  # never connected
        rows = await db.query("SELECT state, last_error FROM chain_announcements")
        self.assertEqual(rows[0][0], "pending")
        self.assertIn("loopback", rows[0][1])

    async def test_a_round_is_bounded(self) -> None:
        db = await self.database()
        for n in range(1, 5):
            self.publish_manifest([record(n)], name=f"m{n}")
        self.fake.mine()
        await self.reader(db).read_once()
        lane = self.lane(db)
        lane.per_round = 3
        self.assertEqual(await lane.fetch_due(), 3)
        self.assertEqual(await self.status(db), (1, 3))
        self.assertEqual(await lane.fetch_due(), 1)

    async def test_a_large_manifest_is_kept_a_part_at_a_time(self) -> None:
        db = await self.database()
        self.publish_manifest([record(n) for n in range(1, 6)])
        self.fake.mine()
        await self.reader(db).read_once()
        lane = self.lane(db)
        lane.announcements.claims_per_transaction = 2
        self.assertEqual(await lane.fetch_due(), 1)
        self.assertEqual(await self.status(db), (0, 5))
        self.assertEqual(await db.query("SELECT COUNT(*) FROM chain_claims"), [(5,)])

    async def test_the_parts_stop_once_it_is_forgotten(self) -> None:
        db = await self.database()
        announced = self.publish_manifest([record(n) for n in range(1, 6)])
        row = Announced("ab" * 32 + "/0", "ab" * 32, announced, 1, 1)
        records = [FileRecord.from_json(record(n)) for n in range(1, 6)]
        # Never read, or forgotten by a reorganisation: no part of it is kept.
        self.assertFalse(await Announcements(db, 2).keep(row, records))
        self.assertEqual(await db.query("SELECT COUNT(*) FROM chain_claims"), [(0,)])


class ReadingTests(ManifestTestCase):
    async def test_v02_and_v03_in_one_block(self) -> None:
        db = await self.database()
        self.fake.publish([record(1, "inline.txt")])
        self.publish_manifest([record(2), record(3)])
        self.fake.publish([record(4, "inline.txt")])
        self.fake.mine()
        await self.reader(db).read_once()
        self.assertEqual(await self.names(db, 1), "0000000_inline.txt")
        self.assertEqual(await self.names(db, 4), "0000000_inline.txt")
        self.assertIsNone(await self.find(db, filehash(2)))
        await self.lane(db).fetch_due()
        self.assertEqual(await self.names(db, 2), "0000000_hello.txt")
        self.assertEqual(await self.status(db), (0, 2))

    async def test_claim_order_is_chain_order_not_arrival(self) -> None:
        """
        A manifest's record from an earlier block beats an inline claim from a
        later block, though the manifest is fetched after that block is read;
        an inline claim from an earlier block beats a later manifest's record.
        """
        db = await self.database()
        self.fake.publish([record(2, "inline-first.txt")])
        self.fake.mine()
        self.publish_manifest([record(1, "manifest.txt"), record(2, "manifest.txt")])
        self.fake.mine()
        self.fake.publish([record(1, "inline-later.txt")])
        self.fake.mine()
        await self.reader(db).read_once()
        self.assertEqual(await self.names(db, 1), "0000000_inline-later.txt")  # for now
        await self.lane(db).fetch_due()
        self.assertEqual(await self.names(db, 1), "0000000_manifest.txt")
        self.assertEqual(await self.names(db, 2), "0000000_inline-first.txt")

    async def test_own_records_in_a_manifest_are_confirmed(self) -> None:
        db = await self.database()
        h = await self.add_file(db, 1)
        mine = (await Catalog(db).current(h)).to_json()
        self.publish_manifest([mine])
        [batch] = self.fake.mempool

        async def published(txn: ITransaction) -> None:
            # As the publisher leaves a record it announced: under the batch's first txid.
            await txn.execute(
                "INSERT INTO chain_records (filehash, record, txid) VALUES (?, ?, ?)",
                (h, json.dumps(mine), batch),
            )

        await db.transaction(published)
        self.fake.mine()
        await self.reader(db).read_once()
        self.assertEqual(await db.query("SELECT height FROM chain_records"), [(None,)])
        await self.lane(db).fetch_due()
        self.assertEqual(await db.query("SELECT height FROM chain_records"), [(1,)])

    async def test_a_reorganisation_forgets_the_manifest_and_its_claims(self) -> None:
        db = await self.database()
        self.publish_manifest([record(1)], name="fetched")
        self.publish_manifest([record(2)], name="pending")
        self.server.files.pop("pending")
        self.fake.mine()
        reader = self.reader(db)
        await reader.read_once()
        await self.lane(db).fetch_due()
        self.assertEqual(await self.states(db), ["fetched", "pending"])
        self.assertIsNotNone(await self.find(db, filehash(1)))
        self.fake.reorganise(1, keep=False)
        await reader.read_once()
        self.assertEqual(await self.states(db), [])
        self.assertIsNone(await self.find(db, filehash(1)))
        self.assertEqual(await self.status(db), (0, 0))

    async def test_a_fetch_that_ends_after_its_block_vanished_keeps_nothing(self) -> None:
        db = await self.database()
        self.publish_manifest([record(1)])
        self.fake.mine()
        reader = self.reader(db)
        await reader.read_once()
        self.server.hold = True
        lane = self.lane(db)
        fetching = Deferred.fromCoroutine(lane.fetch_due())
        while not self.server.held:
            await _turn()
        self.fake.reorganise(1, keep=False)
        await reader.read_once()
        self.server.release()
        self.assertEqual(await fetching, 0)
        self.assertIsNone(await self.find(db, filehash(1)))
        self.assertEqual(await db.query("SELECT COUNT(*) FROM chain_claims"), [(0,)])

    async def test_a_cold_node_reads_old_announcements(self) -> None:
        first = await self.database()
        self.publish_manifest([record(1), record(2)])
        self.fake.mine()
        self.fake.publish([record(3, "inline.txt")])
        self.fake.mine(3)
        await self.reader(first).read_once()
        await self.lane(first).fetch_due()
        # The manifest's host goes away: the node that read it keeps its records.
        self.server.files.clear()
        self.assertEqual(await self.names(first, 2), "0000000_hello.txt")
        self.server.files["m"] = codec.manifest_bytes([record(1), record(2)])
        cold = await self.database()
        await self.reader(cold).read_once()
        self.assertEqual(await self.status(cold), (1, 0))
        await self.lane(cold).fetch_due()
        self.assertEqual(await self.status(cold), (0, 2))
        for n in (1, 2, 3):
            self.assertEqual(
                (await self.find(cold, filehash(n))).to_json(),
                (await self.find(first, filehash(n))).to_json(),
            )


class StatusTests(ManifestTestCase):
    async def test_the_status_counts_manifests(self) -> None:
        db = await self.database()
        self.publish_manifest([record(1), record(2)], name="a")
        self.publish_manifest([record(3)], name="b")
        self.server.files.pop("b")
        self.fake.mine()
        service = self.service(db, self.lane(db))
        await service.reading.run()
        self.assertEqual((await service.status())["manifests"], {"pending": 2, "records": 0})
        await service.fetching.run()
        self.assertEqual((await service.status())["manifests"], {"pending": 1, "records": 2})
        self.assertIsNone((await service.status())["error"])


class ServiceTests(ManifestTestCase):
    async def test_an_announcement_read_wakes_the_lane(self) -> None:
        """Its manifest is fetched once the block is read, not a poll later."""
        db = await self.database()
        self.publish_manifest([record(1)])
        self.fake.mine()
        service = self.service(db, self.lane(db), poll=30)
        service.startService()
        self.addCleanup(service.stopService)

        async def fetched() -> bool:
            self.clock.advance(0)  # what is due now, no time passing
            return await self.status(db) == (0, 1)

        await eventually(fetched, 10, what="the manifest fetched with no time passing")


async def _turn() -> None:
    d: Deferred[None] = Deferred()
    reactor.callLater(0.01, d.callback, None)
    await d


class PostgresFetchTests(FetchTests):
    dialect = "postgresql"


class PostgresReadingTests(ReadingTests):
    dialect = "postgresql"


class LitecoinManifestTests(ManifestTestCase):
    """An announcement on a real C{litecoind -regtest}: read, fetched, and read by a cold node."""

    timeout = 120

    async def setUp(self) -> None:  # type: ignore[override]
        super().setUp()
        self.node = await litecoind(self)
        self.chain = BitcoinLike(self.node.rpc())

    async def test_an_announcement_on_litecoin(self) -> None:
        records = [record(n) for n in range(1, 101)]
        data = codec.manifest_bytes(records)
        self.server.files["m"] = data
        announced = codec.Announcement(
            hashlib.sha256(data).hexdigest(),
            len(records),
            len(data),
            (("web", self.server.url("m")),),
        )
        text = codec.batch_text([announced.to_json()])
        [region] = codec.split_regions(text, codec.MAX_ENTRY, codec.MAX_REGION_IN)
        entry = codec.entry_text(region, 0, None, None, len(text))
        await self.chain.send(await self.chain.prepare(entry, "announcement"))
        await self.node.mine()
        for _ in range(2):  # a node that follows the chain, then a cold one started later
            db = await self.database()
            await Reader(db=db, chain=self.chain, clock=self.clock, start_height=100).read_once()
            self.assertEqual(await self.status(db), (1, 0))
            self.assertEqual(await self.lane(db).fetch_due(), 1)
            self.assertEqual(await self.status(db), (0, 100))
            for r in records:
                self.assertEqual((await self.find(db, r["filehash"])).to_json(), r)
            await self.node.mine(3)


class NodeTests(TestCase):
    """A running node follows the chain, and its manifest lane fetches what is announced."""

    async def test_a_node_reads_a_manifest(self) -> None:
        fake = FakeFlorincoind()
        port, url = fake.listen(reactor)
        self.addCleanup(port.stopListening)
        server = ManifestServer(self)
        records = [record(n) for n in range(1, 11)]
        server.files["m"] = data = codec.manifest_bytes(records)
        fake.announce(
            codec.Announcement(
                hashlib.sha256(data).hexdigest(), 10, len(data), (("web", server.url("m")),)
            ),
        )
        fake.mine()
        base = Path(self.mktemp()).resolve()
        leftover = base / "data" / "manifests" / "crashed.part"
        leftover.parent.mkdir(parents=True)
        leftover.write_bytes(b"a fetch cut short by a crash")
        config = test_config(
            base,
            accounts={"enabled": False},
            chain={
                "kind": "florincoin",
                "url": url,
                "poll_interval": 0.1,
                "fetch_allowed_networks": ["127.0.0.0/8"],
            },
        )
        node = await start_node(self, config)
        self.assertFalse(leftover.exists())

        async def read() -> Any:
            status = await json_of(await node.http.get(f"{node.url}/api/status"))
            return status if status["sync"]["manifests"]["records"] == 10 else None

        status = await eventually(read, 30, what="the manifest to be read")
        self.assertEqual(status["sync"]["manifests"], {"pending": 0, "records": 10})
        self.assertNotIn("manifests", status["datacoin"])
        found = await json_of(await node.http.get(f"{node.url}/api/find/{filehash(7)}"))
        self.assertEqual(found, records[6])
