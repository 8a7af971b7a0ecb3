"""
The files of a node: ingesting an upload (encrypt, cache, catalog, queue for
the hosts) and opening a blob for download (from the cache, or fetched and
verified: a file of this node's from its hosts, a file known only from the
chain from its claims' URLs).
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import BinaryIO, TypeVar

from attrs import define, field
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from metadisk.crypto import convergent_key, encrypt_file, encrypt_in_place
from metadisk.interfaces import IDatabase, ITransaction
from metadisk.store.blocking import RunBlocking
from metadisk.store.cache import Allocation, BlobCache, Evictable, remove
from metadisk.store.catalog import Catalog, FileRecord
from metadisk.store.claims import ClaimFetcher, Claims, Pay
from metadisk.store.cloudsync import CloudSync


def evictable(catalog: Catalog, claims: Claims, copies: int) -> Evictable:
    """
    What the cache may delete: this node's files once C{copies} of its hosts
    hold them, and the blobs of files known only from claims (a cache of what
    their URLs serve). A claim never makes a file of this node's evictable.
    """

    async def safe(filehashes: list[str]) -> set[str]:
        own = await catalog.known(filehashes)
        others = await claims.known([f for f in filehashes if f not in own])
        return await catalog.replicated(list(own), copies) | others

    return safe


T = TypeVar("T")
Recorded = Callable[[ITransaction, str, float], Awaitable[None]]
# In the transaction that records a file, given its filehash and key.
Work = Callable[[ITransaction, str, bytes], Awaitable[object]]


async def _no_work(txn: ITransaction, filehash: str, key: bytes) -> None:
    """Nothing else to do in the transaction."""


async def _nothing(txn: ITransaction, filehash: str, when: float) -> None:
    """Nothing else needs to know of a recorded file."""


async def _free(size: int) -> None:
    """What a download that has paid up front, or costs nothing, pays for a fetch."""


@define(kw_only=True)
class FileStore:
    _db: IDatabase
    catalog: Catalog
    claims: Claims
    cache: BlobCache
    sync: CloudSync
    _claim_fetcher: ClaimFetcher
    _clock: IReactorTime
    _run_blocking: RunBlocking
    _convergence_secret: bytes
    incoming: Path
    # Runs in the transaction that records a file: what else must know of it, atomically
    # (the chain's queue: published once the hosts hold it).
    _recorded: Recorded = _nothing
    # Blobs being fetched into the cache: the fetch, and the readers waiting for it.
    _fetching: dict[str, tuple[Deferred[None], list[Deferred[None]]]] = field(factory=dict)

    log = Logger()

    def temporary(self, suffix: str) -> Path:
        """A fresh path for a file on its way in; whatever is left here at start is garbage."""
        return self.incoming / f"{secrets.token_hex(16)}{suffix}"

    async def recover(self) -> None:
        """
        After a restart: clear half-received files and open the cache's
        index (quick: the rest of the cache's check waits for L{start_checks}).
        """
        self.incoming.mkdir(parents=True, exist_ok=True)
        for leftover in self.incoming.iterdir():
            remove(leftover)
        self.cache.load()

    def start_checks(self) -> None:
        """
        Once the node listens, in the background: the cache's folder against
        its index, and the blobs that no record names (a crash between the
        cache and the record) removed.
        """
        self.cache.start_checking(self._recorded_blobs)

    async def _recorded_blobs(self, filehashes: list[str]) -> set[str]:
        known = await self.catalog.known(filehashes)
        return known | await self.claims.known([f for f in filehashes if f not in known])

    async def ingest(
        self,
        plaintext: Path,
        sha256_hex: str,
        size: int,
        name: str,
        allocation: Allocation,
        also: Work = _no_work,
        *,
        keep_plaintext: bool = False,
    ) -> tuple[str, bytes]:
        """
        Encrypt a received file into the cache, record it and queue it for
        the hosts. Return (filehash, key). The plaintext file is encrypted
        over itself and becomes the blob (or is removed, if the cache has it);
        with C{keep_plaintext}, into a new file, the plaintext left as it was
        (a resumable upload's: a crash while encrypting must not spoil it).
        C{also} runs in the transaction that records the file (the upload's
        charge, a resumable upload's end: one commit for all).
        """
        key = convergent_key(self._convergence_secret, sha256_hex)
        blob = self.temporary(".blob") if keep_plaintext else plaintext

        def encrypt_into_cache() -> tuple[str, int | None]:
            # One job in the thread pool: the reactor waits for no file operation.
            if keep_plaintext:
                filehash = encrypt_file(str(plaintext), str(blob), key)
            else:
                filehash = encrypt_in_place(str(blob), key)
            return filehash, self.cache.move_in(filehash, blob)

        try:
            filehash, moved = await self._run_blocking(encrypt_into_cache)
        except BaseException:
            blob.unlink(missing_ok=True)
            self.cache.release(allocation)
            raise
        self.cache.moved_in(filehash, allocation, moved)

        async def record(txn: ITransaction) -> None:
            await self.catalog.add_file(txn, filehash, name, size, int(self._clock.seconds()))
            await self._recorded(txn, filehash, self._clock.seconds())
            if await self.catalog.holders(txn, filehash) < self.sync.copies:
                await self.sync.queue.add(txn, filehash)
            await also(txn, filehash, key)

        await self._db.transaction(record, brief=True)
        self.sync.soon()
        return filehash, key

    async def find(
        self, filehash: str, using: IDatabase | ITransaction | None = None
    ) -> FileRecord | None:
        """This node's record of its file, or else the earliest claim not disproved."""
        if using is None:
            # Both lookups in one brief read: on SQLite, in the reactor's thread.
            return await self._db.read(lambda txn: self.find(filehash, txn), brief=True)
        return await self.catalog.find(filehash, using) or await self.claims.earliest(
            filehash, using
        )

    def transaction(self, work: Callable[[ITransaction], Awaitable[T]]) -> Deferred[T]:
        """A brief transaction on the store's database (a lookup and what it decides)."""
        return self._db.transaction(work, brief=True)

    def cached(self, filehash: str) -> bool:
        return filehash in self.cache

    async def open_blob(self, record: FileRecord, pay: Pay = _free) -> BinaryIO:
        """
        Open the blob of C{record} for reading, fetching it into the cache
        first if it is not there (C{pay}: see L{ClaimFetcher.fetch}). Raises
        L{NoCopyAvailable} or L{StorageFull}. A fetched blob may show the
        record's size wrong (a claim): its size is the file's.
        """
        filehash = record.filehash
        if filehash not in self.cache:
            await self._fetch_once(record, pay)
        self.cache.touch(filehash)
        # Opened at once: an eviction after this point cannot take it away from the reader.
        return self.cache.open(filehash)

    def _fetch_once(self, record: FileRecord, pay: Pay) -> Deferred[None]:
        """
        Fetch a blob into the cache; concurrent readers share one fetch. A
        reader that leaves (cancels) stops waiting, but not the fetch: others
        may wait for it, and the blob is worth caching all the same.
        """
        filehash = record.filehash
        waiter: Deferred[None] = Deferred()
        if filehash in self._fetching:
            self._fetching[filehash][1].append(waiter)
            return waiter

        def fetched(result: object) -> None:
            _, waiters = self._fetching.pop(filehash)
            if isinstance(result, Failure) and all(each.called for each in waiters):
                # Its readers have left: no one else would hear of it.
                self.log.warn("fetching {filehash} failed: {e}", filehash=filehash, e=result.value)
            for each in waiters:
                if each.called:
                    continue  # a reader that left, answered with CancelledError
                if isinstance(result, Failure):
                    each.errback(result)
                else:
                    each.callback(None)

        fetch = Deferred.fromCoroutine(self._fetch(record, pay))
        self._fetching[filehash] = (fetch, [waiter])
        fetch.addBoth(fetched)
        return waiter

    async def _fetch(self, record: FileRecord, pay: Pay) -> None:
        allocation = await self.cache.allocate(record.filesize)

        async def pay_and_make_room(size: int) -> None:
            # A later claim may say the blob is larger: paid for, and room made, first.
            await pay(size)
            if size > allocation.size:
                await self.cache.allocate(size - allocation.size, allocation)

        destination = self.temporary(".fetch")
        try:
            if await self.catalog.known([record.filehash]):
                await self.sync.fetch(record.filehash, destination, record.filesize)
            else:
                await self._claim_fetcher.fetch(record.filehash, destination, pay_and_make_room)
        except BaseException:
            destination.unlink(missing_ok=True)
            self.cache.release(allocation)
            raise
        self.cache.add(record.filehash, destination, allocation)

    async def stop(self) -> None:
        """The node stops: cancel the fetches in flight (their readers are gone)."""
        fetches = [fetch for fetch, _ in self._fetching.values()]
        for fetch in fetches:
            fetch.cancel()
        await DeferredList(fetches)
