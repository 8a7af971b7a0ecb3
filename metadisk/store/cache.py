"""
The local cache of blobs: a folder of blobs sharded by filehash, a capacity,
and eviction of the least recently used blobs that are safe on their hosts.

What is cached is what is on disk (a lookup is one stat); the order of use
and the sizes are in an index on disk (L{CacheIndex}), so that a million
blobs cost no memory per blob and no scan at start. Uses are written to the
index in batches from the thread pool: a download never waits on a disk
write. The index is checked against the folder in the background after the
node listens when it cannot be trusted: made anew (a first start on the flat
layout, a lost or unreadable index) or left by a crash.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, BinaryIO

from attrs import define, field
from twisted.internet.defer import Deferred, DeferredLock
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from metadisk.store.blocking import RunBlocking
from metadisk.store.cacheindex import ADD, DROP, TOUCH, CacheIndex, Change, microseconds
from metadisk.store.shards import flat, flat_blobs, is_shard, remove, sharded

__all__ = ["Allocation", "BlobCache", "Evictable", "StorageFull", "remove"]

INDEX = "index.sqlite"
PARTIAL = "partial"  # blobs on their way back from a host (L{BlobCache.partial})
FLUSH_DELAY = 2.0  # seconds uses wait, to be written to the index together
FLUSH_BATCH = 1000  # changes waiting that are written at once
PAGE = 500  # rows read from the index at a time
MOVE_BATCH = 10_000  # flat blobs moved into their shards per step


class StorageFull(Exception):
    """The cache cannot make room: what it holds is not yet safe on the hosts."""


@define(eq=False)
class Allocation:
    """Room set aside in the cache for a blob on its way in."""

    size: int
    released: bool = False


# Told a list of filehashes (least recently used first), answers those safe to delete.
Evictable = Callable[[list[str]], Awaitable[set[str]]]
# Told a list of filehashes, answers those some record names.
Recorded = Callable[[list[str]], Awaitable[set[str]]]


@define(kw_only=True)
class BlobCache:
    root: Path
    capacity: int
    _evictable: Evictable
    _clock: IReactorTime
    _run_blocking: RunBlocking
    _index: CacheIndex | None = None
    # The index's total after its last write, and what the changes not yet written (or
    # being written) add to it: the room used is known without reading the index.
    _indexed: int = 0
    _pending: dict[str, Change] = field(factory=dict)
    _pending_bytes: int = 0
    _writing_bytes: int = 0
    _allocated: int = 0
    _last_use: int = 0  # microseconds; each use later than the one before
    _trusted: bool = True  # the index is the folder's (else check() makes it so)
    _flat_possible: bool = False  # blobs may still be in the flat layout
    _flush_call: IDelayedCall | None = None
    _failed_write: bool = False  # a batch was lost: the next start must check
    # Filehashes used while unrecorded blobs are being dropped: they may be records in the making.
    _used_during_drop: set[str] | None = None
    _started_at: int = 0  # microseconds: a blob used since is this run's (its record on its way?)
    _holding: bool = False  # load() holds allocations back until check() is done
    _checking: Deferred[None] | None = None
    _stopping: bool = False
    _deciding: DeferredLock = field(factory=DeferredLock)
    _index_lock: DeferredLock = field(factory=DeferredLock)

    log = Logger()

    def load(self) -> None:
        """
        Open the index: quick whatever the cache holds (the node listens
        after it). An index made anew on a folder of blobs holds allocations
        back until L{check} has found them.
        """
        if self._index is not None:
            self._index.close()  # loaded again (a folder emptied by hand)
        self.root.mkdir(parents=True, exist_ok=True)
        with os.scandir(self.root) as entries:
            empty = next(entries, None) is None
        index = self._index = CacheIndex.open(self.root / INDEX)
        if index.fresh and empty:
            index.mark(clean=True, sharded=True)  # a new cache: nothing to find
        state = index.state()
        self._indexed = state.bytes
        self._last_use = state.last_used
        self._started_at = max(state.last_used, microseconds(self._clock.seconds()))
        self._trusted = state.clean  # a new index is not, unless its folder was empty
        self._flat_possible = not state.sharded
        index.mark(clean=False)  # until a stop writes every change
        partial = self.root / PARTIAL
        partial.mkdir(exist_ok=True)
        for leftover in partial.iterdir():
            remove(leftover)  # restores a crash cut short
        if not empty and (index.fresh or not state.sharded):
            # The room used is not known until the blobs are found (a new index) or moved
            # (flat blobs are counted as they move, and a crash may have cut the move
            # short): allocations wait for check(). After another crash it is known but
            # for the last batch of changes.
            self._deciding.acquire()  # free at once: released when check() is done
            self._holding = True

    def path(self, filehash: str) -> Path:
        """Where the blob is (in its shard, unless the flat layout still holds it)."""
        where = sharded(self.root, filehash)
        if self._flat_possible and not where.exists() and flat(self.root, filehash).exists():
            return flat(self.root, filehash)
        return where

    def partial(self, filehash: str, purpose: str = "restore") -> Path:
        """
        Where a blob on its way in (fetched back from a host, or a manifest
        being written) is put before L{add}; cleared at start.
        """
        return self.root / PARTIAL / f"{filehash}.{purpose}"

    def open(self, filehash: str) -> BinaryIO:
        """Open a cached blob for reading (an eviction after this cannot take it away)."""
        try:
            return open(self.path(filehash), "rb")
        except FileNotFoundError:
            if not self._flat_possible:
                raise
            # Moved into its shard between the look and the open.
            return open(sharded(self.root, filehash), "rb")

    def __contains__(self, filehash: str) -> bool:
        if sharded(self.root, filehash).is_file():
            return True
        if not self._flat_possible:
            return False
        # The background move may take it from one place to the other between two looks.
        return flat(self.root, filehash).is_file() or sharded(self.root, filehash).is_file()

    def locate(self, filehashes: list[str]) -> dict[str, tuple[str, int]]:
        """
        Where each of these blobs that the cache holds is, and its size
        (blocking: a stat each, for the thread pool).
        """
        found = {}
        # Twice: the background move may take a blob from one place to the other between looks.
        for _ in range(2 if self._flat_possible else 1):
            for filehash in [f for f in filehashes if f not in found]:
                path = self.path(filehash)
                try:
                    found[filehash] = (str(path), os.stat(path).st_size)
                except FileNotFoundError:
                    pass
        return found

    def filehashes(self) -> list[str]:
        """Every blob in the folder, by filehash (a listing of all of it: for tests and tools)."""
        found = flat_blobs(self.root, 2**63) if self._flat_possible else []
        with os.scandir(self.root) as entries:
            folders = sorted(e.path for e in entries if is_shard(e.name) and e.is_dir())
        for folder in folders:
            found.extend(name for name in os.listdir(folder) if len(name) == 64)
        return sorted(found)

    @property
    def used(self) -> int:
        return self._indexed + self._writing_bytes + self._pending_bytes + self._allocated

    def touch(self, filehash: str) -> None:
        """Mark a blob as just used (written to the index with the next batch)."""
        previous = self._pending.get(filehash)
        when = self._next_use()
        if previous is not None and previous[0] == ADD:
            self._change(filehash, (ADD, previous[1], when), 0)
        else:
            self._change(filehash, (TOUCH, 0, when), 0)

    async def allocate(self, size: int, more: Allocation | None = None) -> Allocation:
        """
        Set aside C{size} bytes (for C{more}, an allocation that grows, if
        given), evicting what is safe to evict; or raise L{StorageFull},
        having evicted nothing. One allocation decides at a time, so two
        cannot both evict for room that only one of them gets.
        """
        if size > self.capacity:
            raise StorageFull()
        await self._deciding.acquire()
        try:
            if self.used + size > self.capacity:
                for filehash, _ in await self._victims(self.used + size - self.capacity):
                    self.log.info("evicting {filehash} from the cache", filehash=filehash)
                    self.discard(filehash)
            if self.used + size > self.capacity:
                raise StorageFull()
            self._allocated += size
        finally:
            self._deciding.release()
        if more is None:
            return Allocation(size)
        more.size += size
        return more

    def release(self, allocation: Allocation) -> None:
        if not allocation.released:
            allocation.released = True
            self._allocated -= allocation.size

    def add(self, filehash: str, source: Path, allocation: Allocation) -> None:
        """Move the finished blob at C{source} into the cache, in the room allocated for it."""
        self.moved_in(filehash, allocation, self.move_in(filehash, source))

    def move_in(self, filehash: str, source: Path) -> int | None:
        """
        The first half of L{add}, the one on the disk (blocking: the thread
        pool may run it): the blob at C{source} put in its shard. Its size;
        or None if the cache holds the blob already, and C{source} is removed.
        """
        if filehash in self:
            source.unlink()
            return None
        destination = sharded(self.root, filehash)
        try:
            os.replace(source, destination)
        except FileNotFoundError:
            destination.parent.mkdir(exist_ok=True)  # the first blob of its shard
            os.replace(source, destination)
        return destination.stat().st_size

    def moved_in(self, filehash: str, allocation: Allocation, size: int | None) -> None:
        """
        The second half of L{add}, in the reactor: the room the blob takes
        (C{size}, from L{move_in}), or a use of the one already there.
        """
        self.release(allocation)
        if size is None:
            self.touch(filehash)
        else:
            # Two uploads of one blob may both count it: the index's next write corrects that.
            self._change(filehash, (ADD, size, self._next_use()), size)

    def discard(self, filehash: str) -> None:
        size = 0
        shard = sharded(self.root, filehash)
        # The shard again after the flat place: the move may have renamed it between.
        for where in (shard, flat(self.root, filehash), shard):
            try:
                size = where.stat().st_size
                where.unlink()
            except FileNotFoundError:
                pass
        self._change(filehash, (DROP, 0, 0), -size)

    def start_checking(self, recorded: Recorded) -> None:
        """
        Once the node listens: L{check} the folder, then drop the blobs no
        record names, in the background (a failure is logged; the next
        start tries again). L{close} waits for it to reach a step's end.
        """
        self._checking = Deferred.fromCoroutine(self._check_all(recorded))

    async def _check_all(self, recorded: Recorded) -> None:
        try:
            await self.check()
            if not self._stopping:
                dropped = await self.drop_unrecorded(recorded)
                self.log.info("cache checked: {n} unrecorded blobs removed", n=dropped)
        except Exception:
            self.log.failure("checking the cache failed")

    async def check(self) -> None:
        """
        Move the blobs of the flat layout into their shards, and, if the
        index cannot be trusted, make it agree with the folder shard by
        shard (found blobs, lost ones, leftovers). Meanwhile a lookup looks
        on the disk, in both places.
        """
        try:
            if self._flat_possible:
                await self._move_flat()
            if not self._trusted:
                added = dropped = 0
                for i in range(256):
                    if self._stopping:
                        return
                    folder = self.root / f"{i:02x}"
                    found = await self._with_index(lambda index, f=folder: index.reconcile(f))
                    self._indexed = found.bytes
                    added, dropped = added + found.added, dropped + found.dropped
                self.log.info(
                    "cache index checked: {added} blobs found, {dropped} gone",
                    added=added,
                    dropped=dropped,
                )
                self._trusted = True
        finally:
            if self._holding:
                # Also after a check that failed or was stopped: room is counted as it is,
                # and the next start (not marked clean) checks again.
                self._holding = False
                self._deciding.release()

    async def drop_unrecorded(self, recorded: Recorded) -> int:
        """
        Remove the blobs that no record names (a crash between the cache and
        the record, a claim disproved since), reading the index a page at a
        time. Only blobs left from before this start go: one added or used
        since (before the drop began, or during it, in whatever page) is left,
        since its record may be on its way.
        """
        await self.flush()
        self._used_during_drop = set()
        dropped = 0
        after = ""
        try:
            while not self._stopping and (
                page := await self._with_index(lambda index, a=after: index.by_name(a, PAGE))
            ):
                after = page[-1][0]
                older = [filehash for filehash, used in page if used <= self._started_at]
                known = await recorded(older) if older else set()
                for filehash in older:
                    if filehash not in known and filehash not in self._used_during_drop:
                        self.log.info("removing unrecorded blob {filehash}", filehash=filehash)
                        self.discard(filehash)
                        dropped += 1
        finally:
            self._used_during_drop = None
        return dropped

    async def flush(self) -> None:
        """Write the changes waiting to the index, in one transaction."""
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        await self._index_lock.acquire()
        try:
            if not self._pending:
                return
            changes, self._pending = self._pending, {}
            self._writing_bytes, self._pending_bytes = self._pending_bytes, 0
            index = self._index
            assert index is not None
            try:
                self._indexed = await self._run_blocking(index.apply, list(changes.items()))
            except Exception:
                self.log.failure("cannot write {n} changes to the cache index", n=len(changes))
                self._indexed += self._writing_bytes  # the best guess until the next start
                self._failed_write = True
            finally:
                self._writing_bytes = 0
        finally:
            self._index_lock.release()

    async def close(self) -> None:
        """The node stops: end the check, write what waits, and say the index is the folder's."""
        self._stopping = True
        if self._checking is not None:
            await self._checking
        await self.flush()
        index = self._index
        if index is None:
            return
        await self._index_lock.acquire()
        try:
            if self._trusted and not self._failed_write:
                await self._run_blocking(lambda: index.mark(clean=True))
            await self._run_blocking(index.close)
            self._index = None
        finally:
            self._index_lock.release()

    def _next_use(self) -> int:
        self._last_use = max(microseconds(self._clock.seconds()), self._last_use + 1)
        return self._last_use

    def _change(self, filehash: str, change: Change, delta: int) -> None:
        self._pending[filehash] = change
        self._pending_bytes += delta
        if self._used_during_drop is not None:
            self._used_during_drop.add(filehash)
        if len(self._pending) >= FLUSH_BATCH:
            self._flush_soon()
        elif self._flush_call is None:
            self._flush_call = self._clock.callLater(FLUSH_DELAY, self._flush_soon)

    def _flush_soon(self) -> None:
        self._flush_call = None
        Deferred.fromCoroutine(self.flush())  # logs its own failure

    async def _with_index(self, read: Callable[[CacheIndex], Any]) -> Any:
        """Run C{read} on the index in the thread pool, alone."""
        await self._index_lock.acquire()
        try:
            return await self._run_blocking(read, self._index)
        finally:
            self._index_lock.release()

    async def _move_flat(self) -> None:
        moved = 0
        before: list[str] = []
        while not self._stopping and (
            batch := await self._run_blocking(flat_blobs, self.root, MOVE_BATCH)
        ):
            if batch == before:
                raise OSError(f"cannot move the blobs of {self.root} into shards")
            self._indexed = await self._with_index(lambda i, b=batch: i.move_flat(self.root, b))
            moved += len(batch)
            before = batch
        if self._stopping:
            return
        for entry in await self._run_blocking(os.listdir, self.root):
            if not (is_shard(entry) or entry.startswith(INDEX) or entry == PARTIAL):
                await self._run_blocking(remove, self.root / entry)  # a crash's leftovers
        await self._with_index(lambda i: i.mark(sharded=True))
        self._flat_possible = False
        if moved:
            self.log.info("moved {n} cached blobs into shard folders", n=moved)

    async def _victims(self, needed: int) -> list[tuple[str, int]]:
        """
        The least recently used blobs, safe to evict, that free C{needed}
        bytes; none if all that is safe to evict would not free that much.
        """
        await self.flush()  # the index knows every use
        chosen: list[tuple[str, int]] = []
        freed = 0
        after = (-1, "")
        while page := await self._with_index(lambda i, a=after: i.least_recent(a, PAGE)):
            after = (page[-1][2], page[-1][0])
            safe = await self._evictable([filehash for filehash, _, _ in page])
            for filehash, size, _ in page:
                if filehash in safe and filehash not in self._pending:  # not used since
                    chosen.append((filehash, size))
                    freed += size
                    if freed >= needed:
                        return chosen
        return []
