"""
Resumable uploads' lives, on SQLite and on PostgreSQL, time on a Clock: the
credit reserved at creation and given back when they end unfinished, the
offset across restarts, expiry, the limit per token; and a tus body through
L{TusReceiver}: what a cut or a bad checksum keeps, one writer at a time,
the bandwidth limit.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import TestCase

from metadisk.db import open_database
from metadisk.interfaces import IDatabase
from metadisk.ledger import Ledger
from metadisk.meters import Meters
from metadisk.store.blocking import in_caller
from metadisk.store.cache import BlobCache, StorageFull
from metadisk.store.resumable import EXPIRED, ResumableTable
from metadisk.throttle import Throttle
from metadisk.web.errors import APIError
from metadisk.web.guard import TokenGuard
from metadisk.web.resumable import LiveUpload, ResumableUploads
from metadisk.web.tus import TusIntake, TusReceiver
from metadisk.web.unpaid import UnpaidBudget
from tests.pg import create_database
from tests.test_throttle import TCP_READ, FakeRequest, feed

EXPIRY = 3600
CREDIT = 10**9


class ResumableTestsMixin:
    """Subclasses give C{fresh_url()}: a new, empty database of the test's own."""

    def fresh_url(self) -> str:
        raise NotImplementedError

    async def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.db: IDatabase = await open_database(self.fresh_url(), reactor)
        self.addCleanup(self.db.close)
        self.ledger = Ledger(self.db, self.clock, "node-a")
        self.base = Path(self.mktemp()).resolve()
        self.base.mkdir()
        self.uploads = self.node()
        await self.uploads.recover()
        self.token = await self.ledger.new_token()
        await self.ledger.deposit(self.token, CREDIT)

    def node(self, capacity: int = 2**30, per_token: int = 8) -> ResumableUploads:
        """This node's resumable uploads, as a (re)started node builds them."""

        async def nothing_evictable(filehashes: list[str]) -> set[str]:
            return set()

        cache = BlobCache(
            root=self.base / "cache",
            capacity=capacity,
            evictable=nothing_evictable,
            clock=self.clock,
            run_blocking=in_caller,
        )
        cache.load()
        return ResumableUploads(
            table=ResumableTable(self.db),
            store=None,  # a FileStore: these tests never store a finished upload
            ledger=self.ledger,
            cache=cache,
            meters=Meters(db=None, clock=self.clock, monthly_limits={}, rate_limits={}),
            guard=TokenGuard(self.clock, 20, 60),
            unpaid=UnpaidBudget(2**30),
            clock=self.clock,
            run_blocking=in_caller,
            node_id="node-a",
            folder=self.base / "resumable",
            expiry=EXPIRY,
            per_token=per_token,
            max_file_size=2**30,
        )

    async def create(self, length: int, uploads: ResumableUploads | None = None) -> LiveUpload:
        uploads = uploads or self.uploads
        return await uploads.create(self.token, None, length, "f.bin")

    def receiver(
        self, upload: LiveUpload, checksum: tuple[str, bytes] | None = None, rate: int = 0
    ) -> tuple[TusReceiver, FakeRequest]:
        request = FakeRequest()
        intake = TusIntake(self.uploads, TokenGuard(self.clock, 20, 60), Throttle(self.clock, rate))
        return TusReceiver(intake, request, upload, checksum), request

    async def send(self, upload: LiveUpload, data: bytes, checksum: Any = None) -> LiveUpload:
        receiver, _ = self.receiver(upload, checksum)
        receiver.dataReceived(data)
        receiver.bodyReceived()
        return await receiver.result()

    async def balance(self) -> int | None:
        return await self.ledger.balance(self.token)

    async def test_creation_reserves_and_a_restart_keeps_it(self) -> None:
        """4 x length is held; a restarted node refunds its transfers, never a live upload's."""
        upload = await self.create(1000)
        self.assertEqual(await self.balance(), CREDIT - 4000)
        self.assertEqual(len(upload.id), 32)  # 192 random bits, URL-safe
        self.assertEqual(await self.ledger.refund_abandoned(), 0)
        self.assertEqual(await self.balance(), CREDIT - 4000)
        await self.ledger.reserve(self.token, 5)  # a plain transfer the crash cut
        self.assertEqual(await self.ledger.refund_abandoned(), 1)
        self.assertEqual(await self.balance(), CREDIT - 4000)
        self.assertEqual(await self.db.query("SELECT COUNT(*) FROM reservations"), [(1,)])

    async def test_offset_survives_a_restart(self) -> None:
        """Acknowledged bytes stay; bytes written but never synced and recorded are cut off."""
        upload = await self.create(10_000)
        await self.send(upload, b"a" * 3000)
        self.assertEqual((upload.durable, upload.written), (3000, 3000))
        # A body the crash cut: written, never acknowledged.
        receiver, _ = self.receiver(upload)
        receiver.dataReceived(b"b" * 2000)
        self.assertEqual(upload.path.stat().st_size, 5000)

        again = self.node()
        await again.recover()
        restarted = again.get(upload.id)
        assert restarted is not None
        self.assertEqual((restarted.durable, restarted.written), (3000, 3000))
        self.assertEqual(restarted.path.read_bytes(), b"a" * 3000)
        self.assertIsNone(restarted.hasher)  # the file is hashed again at the end
        self.assertEqual(restarted.reservation, upload.reservation)
        self.uploads = again
        await self.send(restarted, b"c" * 6000)
        self.assertEqual(restarted.durable, 9000)
        self.assertEqual(restarted.path.read_bytes(), b"a" * 3000 + b"c" * 6000)

    async def test_a_cut_body_keeps_what_arrived(self) -> None:
        upload = await self.create(10_000)
        receiver, request = self.receiver(upload)
        receiver.dataReceived(b"x" * 4321)
        self.assertTrue(upload.busy)
        receiver.connectionLost()
        await self.wait_idle(upload)
        self.assertEqual(upload.durable, 4321)
        self.assertEqual(request.early, [])  # nobody to answer
        rows = await self.db.query("SELECT received FROM resumable_uploads")
        self.assertEqual(rows, [(4321,)])
        self.assertEqual(upload.hasher.hexdigest(), hashlib.sha256(b"x" * 4321).hexdigest())

    async def wait_idle(self, upload: LiveUpload) -> None:
        # The database answers from its own thread: a bounded wait for the reactor to hear it.
        for _ in range(500):
            if not upload.busy:
                return
            await deferLater(reactor, 0.01, lambda: None)
        self.fail("the upload stayed busy")

    async def test_a_long_body_is_synced_as_it_goes(self) -> None:
        """Every 30 s of a body, what it brought is made durable: a crash loses less."""
        upload = await self.create(10_000)
        receiver, _ = self.receiver(upload)
        receiver.dataReceived(b"s" * 1000)
        self.clock.advance(29)
        receiver.dataReceived(b"s" * 1000)
        self.assertEqual(upload.durable, 0)
        self.clock.advance(1)
        receiver.dataReceived(b"s" * 1000)  # 30 s: synced up to here
        await self.wait_durable(upload, 3000)
        receiver.dataReceived(b"s" * 500)
        self.assertEqual((upload.durable, upload.written), (3000, 3500))
        again = self.node()
        await again.recover()  # a crash now: what was synced stays
        self.assertEqual(again.get(upload.id).durable, 3000)

    async def wait_durable(self, upload: LiveUpload, offset: int) -> None:
        for _ in range(500):
            if upload.durable == offset:
                return
            await deferLater(reactor, 0.01, lambda: None)
        self.fail(f"the offset stayed at {upload.durable}")

    async def test_checksum_mismatch_discards_the_chunk(self) -> None:
        upload = await self.create(10_000)
        await self.send(upload, b"a" * 1000)
        wrong = ("sha256", hashlib.sha256(b"something else").digest())
        with self.assertRaises(APIError) as raised:
            await self.send(upload, b"b" * 1000, wrong)
        self.assertEqual(
            (raised.exception.status, raised.exception.body["error"]), (460, "checksum-mismatch")
        )
        self.assertEqual((upload.durable, upload.written), (1000, 1000))
        self.assertEqual(upload.path.read_bytes(), b"a" * 1000)
        right = ("sha1", hashlib.sha1(b"b" * 1000).digest())
        await self.send(upload, b"b" * 1000, right)
        self.assertEqual(upload.durable, 2000)
        expected = hashlib.sha256(b"a" * 1000 + b"b" * 1000).hexdigest()
        self.assertEqual(upload.hasher.hexdigest(), expected)  # the discarded bytes left no trace

    async def test_a_checked_chunk_cut_short_is_discarded(self) -> None:
        """Its checksum cannot vouch for part of it."""
        upload = await self.create(10_000)
        receiver, _ = self.receiver(upload, ("sha256", hashlib.sha256(b"z" * 5000).digest()))
        receiver.dataReceived(b"z" * 2500)
        receiver.connectionLost()
        await self.wait_idle(upload)
        self.assertEqual((upload.durable, upload.written), (0, 0))
        self.assertEqual(upload.path.stat().st_size, 0)

    async def test_expiry_refunds_then_forgets(self) -> None:
        upload = await self.create(1000)
        await self.send(upload, b"q" * 10)
        self.clock.advance(EXPIRY - 1)
        await self.uploads.expire_due()
        self.assertEqual(await self.balance(), CREDIT - 4000)
        self.clock.advance(1)
        self.assertTrue(self.uploads.expired(upload))  # 410 from now on
        await self.uploads.expire_due()
        self.assertEqual(await self.balance(), CREDIT)
        self.assertFalse(upload.path.exists())
        self.assertEqual(upload.state, EXPIRED)
        self.assertIs(self.uploads.get(upload.id), upload)
        await self.uploads.expire_due()
        self.assertEqual(await self.balance(), CREDIT)  # refunded once
        self.clock.advance(EXPIRY + 1)
        await self.uploads.expire_due()
        self.assertIsNone(self.uploads.get(upload.id))  # 404 from now on
        self.assertEqual(await self.db.query("SELECT COUNT(*) FROM resumable_uploads"), [(0,)])
        self.assertEqual(await self.db.query("SELECT COUNT(*) FROM reservations"), [(0,)])

    async def test_a_busy_upload_expires_once_idle(self) -> None:
        upload = await self.create(1000)
        receiver, _ = self.receiver(upload)
        receiver.dataReceived(b"w" * 10)
        self.clock.advance(EXPIRY)
        await self.uploads.expire_due()
        self.assertEqual(await self.balance(), CREDIT - 4000)
        receiver.bodyReceived()
        await receiver.result()
        await self.uploads.expire_due()
        self.assertEqual(await self.balance(), CREDIT)

    async def test_terminate_refunds(self) -> None:
        upload = await self.create(1000)
        await self.send(upload, b"t" * 100)
        await self.uploads.terminate(upload)
        self.assertEqual(await self.balance(), CREDIT)
        self.assertIsNone(self.uploads.get(upload.id))
        self.assertFalse(upload.path.exists())
        self.assertEqual(await self.db.query("SELECT COUNT(*) FROM resumable_uploads"), [(0,)])

    async def test_unfinished_uploads_per_token(self) -> None:
        uploads = self.node(per_token=2)
        first = await self.create(10, uploads)
        self.clock.advance(100)
        await self.create(10, uploads)
        with self.assertRaises(APIError) as raised:
            await self.create(10, uploads)
        self.assertEqual(
            (raised.exception.status, raised.exception.body["error"]), (429, "too-many-uploads")
        )
        self.assertEqual(raised.exception.headers["Retry-After"], str(EXPIRY - 100))
        self.assertEqual(await self.balance(), CREDIT - 80)  # the refused one holds nothing
        await uploads.terminate(first)
        await self.create(10, uploads)

    async def test_credit_and_room_are_checked_at_creation(self) -> None:
        poor = await self.ledger.new_token()
        await self.ledger.deposit(poor, 3999)
        with self.assertRaises(APIError) as raised:
            await self.uploads.create(poor, None, 1000, "f")
        self.assertEqual(raised.exception.status, 402)
        small = self.node(capacity=1500)
        await self.create(1000, small)
        with self.assertRaises(StorageFull):  # 507
            await self.create(1000, small)
        self.assertEqual(await self.balance(), CREDIT - 4000)  # the refused one is refunded
        self.assertEqual(os.listdir(self.base / "resumable"), [self.uploads_ids(small)[0]])

    def uploads_ids(self, uploads: ResumableUploads) -> list[str]:
        return [each.id for each in uploads._uploads.values()]

    async def test_patch_rate_is_throttled(self) -> None:
        """A PATCH body is read at the node's incoming rate: its socket paused, never buffered."""
        upload = await self.create(3_000_000)  # not finished by this PATCH: no store needed
        receiver, request = self.receiver(upload, rate=500_000)
        body = os.urandom(2_000_000)
        timeline = feed(self.clock, receiver, request, body, 8)
        for seconds, received in timeline:
            self.assertLessEqual(received, 500_000 * seconds + TCP_READ)
        finished = next(seconds for seconds, received in timeline if received == len(body))
        self.assertApproximates(finished, 4.0, 0.2)
        self.assertGreater(request.transport.pauses, 10)
        await receiver.result()
        self.assertEqual(upload.path.read_bytes(), body)
        self.assertFalse(request.transport.paused)


class SQLiteResumableTests(ResumableTestsMixin, TestCase):
    def fresh_url(self) -> str:
        return f"sqlite:///{Path(self.mktemp()).resolve()}"


class PostgresResumableTests(ResumableTestsMixin, TestCase):
    def fresh_url(self) -> str:
        return create_database(self)
