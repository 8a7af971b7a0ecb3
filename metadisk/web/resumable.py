"""
Resumable uploads: their lives on this node, whatever the HTTP around them
(L{metadisk.web.tus} speaks the tus protocol over them).

An upload is created paid for (4 x its length reserved, as a plain upload),
its bytes go to a partial file in C{data_dir/resumable}, and its offset is
what is durable: synced to disk and recorded in the database. When the last
byte is in, it goes through L{FileStore.ingest} as a plain upload does, and
the charge is settled, once. An upload that is terminated, or expires, is
removed and refunded. Everything survives a restart but what was not synced.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path
from typing import Any

from attrs import define, evolve, field
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from metadisk.crypto import sha256_file
from metadisk.interfaces import ITransaction
from metadisk.ledger import FREE, Ledger, Reservation
from metadisk.meters import INCOMING, Meters
from metadisk.store.blocking import RunBlocking, sync_path
from metadisk.store.cache import Allocation, BlobCache, StorageFull, remove
from metadisk.store.catalog import safe_filename
from metadisk.store.files import FileStore
from metadisk.store.resumable import (
    COMPLETE,
    EXPIRED,
    RECEIVING,
    ResumableRow,
    ResumableTable,
)
from metadisk.web.errors import error
from metadisk.web.guard import TokenGuard
from metadisk.web.unpaid import UnpaidBudget
from metadisk.web.upload import UNPAID_RETRY, UPLOAD_COST, reserve_credit

# Seconds of a long body between two syncs: what a crash can lose of it, at most. The kernel
# writes dirty pages back after 30 s anyway, so a sync this rare costs little extra writing,
# and a body shorter than that is written once, as the file it becomes.
CHECKPOINT = 30.0


def new_upload_id() -> str:
    """192 random bits, URL-safe: the upload's URL is its capability."""
    return secrets.token_urlsafe(24)


@define(eq=False, kw_only=True)
class LiveUpload:
    """One resumable upload of this node, in memory; its row is the truth across restarts."""

    row: ResumableRow
    path: Path
    durable: int  # bytes synced and recorded: the offset
    written: int  # bytes in the partial file, durable or not
    reservation: Reservation = FREE
    allocation: Allocation | None = None
    unpaid: int = 0  # bytes held in the unpaid budget (accounts disabled)
    # SHA-256 of the plaintext so far; None after a restart (the file is hashed at the end).
    hasher: Any = None
    busy: bool = False  # a request body is streaming in
    finishing: list[Deferred[tuple[str, str]]] | None = None  # who waits for its end

    @property
    def id(self) -> str:
        return self.row.id

    @property
    def length(self) -> int:
        return self.row.length

    @property
    def state(self) -> str:
        return self.row.state

    @property
    def result(self) -> tuple[str, str] | None:
        if self.row.filehash is None or self.row.file_key is None:
            return None
        return self.row.filehash, self.row.file_key

    @property
    def all_in(self) -> bool:
        """Every byte is in the partial file: the upload may be stored."""
        return self.state == RECEIVING and self.written == self.length


@define
class Chunk:
    """
    The bytes of one request body, written to the partial file as they come
    (never held), hashed for the file's key and, with a checksum, for the
    chunk's. A chunk that fails its checksum, or is cut before it could be
    checked, is discarded: the file and the hash go back to where it began.
    """

    upload: LiveUpload
    fd: int
    checksum: tuple[str, bytes] | None  # (algorithm, expected digest)
    start: int = field(init=False)
    _digest: Any = field(init=False, default=None)
    _saved: Any = field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        upload = self.upload
        if upload.written != upload.durable:
            # Bytes past the offset were never acknowledged (their sync, or the storing of the
            # file they completed, failed): they go, and the file is hashed again at the end.
            os.ftruncate(self.fd, upload.durable)
            upload.written = upload.durable
            upload.hasher = None
        self.start = upload.written
        if self.checksum is not None:
            self._digest = hashlib.new(self.checksum[0])
            if self.upload.hasher is not None:
                self._saved = self.upload.hasher.copy()

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.pwrite(self.fd, view, self.upload.written)
            self.upload.written += n
            view = view[n:]
        if self.upload.hasher is not None:
            self.upload.hasher.update(data)
        if self._digest is not None:
            self._digest.update(data)

    @property
    def verified(self) -> bool:
        return self.checksum is None or self._digest.digest() == self.checksum[1]

    def discard(self) -> None:
        """Back to the offset: what was not made durable goes."""
        upload = self.upload
        os.ftruncate(self.fd, upload.durable)
        if self._saved is not None and upload.durable == self.start:
            upload.hasher = self._saved
        elif upload.written != upload.durable:
            upload.hasher = None  # it has seen bytes that are gone: the file is hashed at the end
        upload.written = upload.durable

    def close(self) -> None:
        os.close(self.fd)


@define(kw_only=True)
class ResumableUploads:
    """This node's resumable uploads: creation, bytes, durability, the end, expiry."""

    _table: ResumableTable
    _store: FileStore
    _ledger: Ledger | None  # None: accounts disabled, uploads are free
    _cache: BlobCache
    _meters: Meters
    _guard: TokenGuard
    _unpaid: UnpaidBudget
    _clock: IReactorTime
    _run_blocking: RunBlocking
    _node_id: str
    folder: Path
    expiry: float
    per_token: int
    max_file_size: int
    checkpoint: float = CHECKPOINT
    _uploads: dict[str, LiveUpload] = field(factory=dict)

    log = Logger()

    @property
    def free(self) -> bool:
        return self._ledger is None

    def get(self, upload_id: str) -> LiveUpload | None:
        return self._uploads.get(upload_id)

    def _now(self) -> int:
        return int(self._clock.seconds())

    def seconds(self) -> float:
        return self._clock.seconds()

    def too_large(self, length: int) -> bool:
        """Over max_file_size; free uploads are unpaid bytes, bounded by an address's share."""
        return length > self.max_file_size or (self.free and length > self._unpaid.share)

    def check_month(self, n: int) -> None:
        """503 transfer-limit-reached if C{n} more bytes in would pass this month's cap."""
        self._meters.check(INCOMING, n)

    def record(self, n: int) -> None:
        self._meters.record(INCOMING, n)

    def expired(self, upload: LiveUpload) -> bool:
        return upload.state == EXPIRED or upload.row.expires <= self._now()

    # Start.

    async def recover(self) -> None:
        """
        After a restart: each upload's offset is what was recorded and is on
        disk (a partial file is cut back to it: bytes not synced may be
        anything after a power cut); partial files no upload names go.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        rows = await self._table.of_node(self._node_id)
        receiving = {row.id for row in rows if row.state == RECEIVING}
        for leftover in self.folder.iterdir():
            if leftover.name not in receiving:
                remove(leftover)
        for row in rows:
            path = self.folder / row.id
            upload = LiveUpload(row=row, path=path, durable=row.received, written=row.received)
            if row.reservation_id is not None:
                upload.reservation = Reservation(row.reservation_id, row.token, row.reserved)
            if row.state == RECEIVING:
                with open(path, "ab") as f:
                    on_disk = f.seek(0, os.SEEK_END)
                    if on_disk != row.received:
                        f.truncate(min(on_disk, row.received))
                upload.durable = upload.written = min(on_disk, row.received)
                if upload.durable != row.received:
                    await self._table.received(row.id, upload.durable)
                if self.free:
                    upload.unpaid = row.length if self._unpaid.take(row.address, row.length) else 0
                else:
                    try:
                        upload.allocation = await self._cache.allocate(row.length)
                    except StorageFull:
                        pass  # room is asked for again at the end
            self._uploads[row.id] = upload

    # Creation.

    async def create(
        self, token: str | None, address: Any, length: int, filename: str
    ) -> LiveUpload:
        """
        A new upload of C{length} bytes paid by C{token} (None: accounts
        disabled), or an L{APIError}: the month's cap, the token's number of
        unfinished uploads, its credit, the cache's room; accounts disabled,
        the unpaid budget, which holds the whole length until it is stored.
        """
        host = _host(address)
        upload_id = new_upload_id()
        now = self._now()
        row = ResumableRow(
            id=upload_id,
            node_id=self._node_id,
            token=token,
            reservation_id=None,
            reserved=0,
            length=length,
            received=0,
            filename=safe_filename(filename),
            address=host,
            created=now,
            expires=now + int(self.expiry),
            state=RECEIVING,
        )
        upload = LiveUpload(
            row=row, path=self.folder / upload_id, durable=0, written=0, hasher=hashlib.sha256()
        )
        try:
            self._meters.check(INCOMING, length)
            if token is not None:
                await self._under_limit(token)
            if self._ledger is not None:
                assert token is not None
                upload.reservation = await reserve_credit(
                    self._ledger, self._guard, address, token, UPLOAD_COST * length
                )
                upload.row = row = evolve(
                    row,
                    reservation_id=upload.reservation.id,
                    reserved=upload.reservation.amount,
                )
                upload.allocation = await self._cache.allocate(length)
            elif not self._unpaid.take(host, length):
                raise error(503, "unpaid-upload-limit", Retry_After=str(UNPAID_RETRY))
            else:
                upload.unpaid = length
            upload.path.touch()
            # Its name, durable too: a synced offset in a file a power cut forgot is worth nothing.
            await self._run_blocking(sync_path, self.folder)
            await self._table.create(row)
            if token is not None:
                await self._recount(upload, token)
        except BaseException:
            await self._release(upload)
            upload.path.unlink(missing_ok=True)
            raise
        self._uploads[upload_id] = upload
        return upload

    async def _under_limit(self, token: str) -> None:
        unfinished = await self._table.receiving(token)
        if len(unfinished) >= self.per_token:
            raise self._too_many(unfinished)

    async def _recount(self, upload: LiveUpload, token: str) -> None:
        # Checked again once the row is in: two creations at once may both have passed the
        # first check; each then sees the other, and neither goes over the limit.
        unfinished = await self._table.receiving(token)
        if len(unfinished) > self.per_token:
            await self._table.delete(upload.id)
            raise self._too_many(unfinished)

    def _too_many(self, expiries: list[int]) -> Exception:
        wait = max(1, expiries[0] - self._now()) if expiries else 1
        return error(429, "too-many-uploads", Retry_After=str(wait))

    # Bytes.

    def chunk(self, upload: LiveUpload, checksum: tuple[str, bytes] | None) -> Chunk:
        """Open the partial file for one request body's bytes, at the upload's offset."""
        fd = os.open(upload.path, os.O_WRONLY)
        return Chunk(upload, fd, checksum)

    async def make_durable(self, upload: LiveUpload, fd: int, offset: int) -> None:
        """Sync the partial file up to C{offset} and record it: that much is acknowledged."""
        await self._run_blocking(os.fsync, fd)
        if offset > upload.durable:
            await self._table.received(upload.id, offset)
            upload.durable = offset

    # The end.

    def finish(self, upload: LiveUpload) -> Deferred[tuple[str, str]]:
        """
        Store the complete upload as a plain upload is stored; (filehash, key).
        Once: concurrent callers wait for the same work, and a failure (507)
        may be tried again by the next caller.
        """
        if upload.result is not None:
            return succeed(upload.result)
        waiter: Deferred[tuple[str, str]] = Deferred()
        if upload.finishing is not None:
            upload.finishing.append(waiter)
            return waiter
        upload.finishing = [waiter]

        def done(result: Any) -> None:
            waiters, upload.finishing = upload.finishing or [], None
            for each in waiters:
                if isinstance(result, Failure):
                    each.errback(result)
                else:
                    each.callback(result)

        Deferred.fromCoroutine(self._finish(upload)).addBoth(done)
        return waiter

    async def _finish(self, upload: LiveUpload) -> tuple[str, str]:
        assert upload.all_in, (upload.written, upload.length)
        if upload.hasher is not None:
            sha256 = upload.hasher.hexdigest()
        else:
            sha256 = await self._run_blocking(sha256_file, str(upload.path))
        if upload.allocation is None:
            upload.allocation = await self._cache.allocate(upload.length)
        self._give_back_unpaid(upload)
        reservation, cost = upload.reservation, UPLOAD_COST * upload.length

        async def settle_and_complete(txn: ITransaction, filehash: str, key: bytes) -> None:
            # One commit: the file, its charge and the upload's end.
            await Ledger.settle_in(txn, reservation, cost)
            await self._table.complete(txn, upload.id, filehash, key.hex())

        filehash, key = await self._store.ingest(
            upload.path,
            sha256,
            upload.length,
            upload.row.filename,
            upload.allocation,
            settle_and_complete,
            keep_plaintext=True,
        )
        upload.allocation = None  # the cache's now
        upload.reservation = FREE
        if self._ledger is not None:
            self._ledger.counted(reservation, cost)
        upload.row = evolve(upload.row, state=COMPLETE, filehash=filehash, file_key=key.hex())
        upload.path.unlink(missing_ok=True)
        upload.hasher = None
        return filehash, key.hex()

    async def terminate(self, upload: LiveUpload) -> None:
        """DELETE: its bytes, its row and its credit go (a finished one's charge stays)."""
        await self._release(upload)
        upload.path.unlink(missing_ok=True)
        await self._table.delete(upload.id)
        self._uploads.pop(upload.id, None)

    async def expire_due(self) -> None:
        """
        The periodic job: unfinished uploads past their expiry are removed and
        refunded; a finished one's result is forgotten; rows expired for as
        long again go (until then their URLs answer 410).
        """
        now = self._now()
        for upload in list(self._uploads.values()):
            if upload.state == EXPIRED or upload.row.expires > now:
                continue
            if upload.busy or upload.finishing is not None:
                continue  # the next round
            await self._release(upload)
            upload.path.unlink(missing_ok=True)
            await self._table.expire(upload.id)
            upload.row = evolve(upload.row, state=EXPIRED, file_key=None)
            self.log.info("a resumable upload expired")
        before = now - int(self.expiry)
        await self._table.forget(self._node_id, before)
        for upload in list(self._uploads.values()):
            if upload.state == EXPIRED and upload.row.expires < before:
                del self._uploads[upload.id]

    async def _release(self, upload: LiveUpload) -> None:
        """Give back what an upload that will not be stored holds: room, budget, credit."""
        if upload.allocation is not None:
            self._cache.release(upload.allocation)
            upload.allocation = None
        self._give_back_unpaid(upload)
        if self._ledger is not None and upload.reservation.id is not None:
            reservation, upload.reservation = upload.reservation, FREE
            await self._ledger.refund(reservation)

    def _give_back_unpaid(self, upload: LiveUpload) -> None:
        self._unpaid.give_back(upload.row.address, upload.unpaid)
        upload.unpaid = 0


def _host(address: Any) -> str:
    return str(getattr(address, "host", None) or "unknown")
