"""
The cache: capacity, allocation, and eviction of only what the hosts hold, LRU
first; its index on disk (kept across restarts, rebuilt when lost, reconciled
after a crash) and its folders sharded by filehash (the flat layout moved).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from attrs import define
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from metadisk.store import cache as cache_module
from metadisk.store.blocking import in_caller
from metadisk.store.cache import INDEX, BlobCache, StorageFull
from metadisk.store.cacheindex import CacheIndex
from metadisk.store.shards import sharded


def filehash(i: int) -> str:
    return f"{i:064x}"


class CacheTests(TestCase):
    def setUp(self) -> None:
        self.root = Path(self.mktemp())
        self.clock = Clock()
        self.safe: set[str] = set()
        self.recorded: set[str] | None = None  # None: every blob has a record
        self.cache = self.open()

    def open(self) -> BlobCache:
        cache = BlobCache(
            root=self.root,
            capacity=1000,
            evictable=self.evictable,
            clock=self.clock,
            run_blocking=in_caller,
        )
        cache.load()
        return cache

    async def restart(self) -> BlobCache:
        """The node stops (cleanly) and starts again on the same folder."""
        await self.cache.close()
        self.cache = self.open()
        return self.cache

    async def evictable(self, filehashes: list[str]) -> set[str]:
        return self.safe & set(filehashes)

    async def known(self, filehashes: list[str]) -> set[str]:
        return set(filehashes) if self.recorded is None else self.recorded & set(filehashes)

    async def put(self, i: int, size: int) -> str:
        allocation = await self.cache.allocate(size)
        source = self.root.parent / f"incoming-{i}"
        source.write_bytes(b"x" * size)
        self.cache.add(filehash(i), source, allocation)
        return filehash(i)

    def put_flat(self, i: int, size: int, mtime: float) -> str:
        """A blob as the flat layout kept it (a node from before shards, with no index)."""
        if (self.root / INDEX).exists():
            self.cache._index.close()
            self.root = Path(self.mktemp())
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / filehash(i)
        path.write_bytes(b"x" * size)
        os.utime(path, (mtime, mtime))
        return filehash(i)

    async def test_allocation_counts(self) -> None:
        allocation = await self.cache.allocate(600)
        self.assertEqual(self.cache.used, 600)
        with self.assertRaises(StorageFull):
            await self.cache.allocate(500)
        self.cache.release(allocation)
        self.cache.release(allocation)  # twice is harmless
        self.assertEqual(self.cache.used, 0)
        with self.assertRaises(StorageFull):
            await self.cache.allocate(1001)

    async def test_evicts_only_safe_least_recent_first(self) -> None:
        a = await self.put(1, 300)
        b = await self.put(2, 300)
        c = await self.put(3, 300)
        self.safe = {a, c}
        self.cache.touch(a)  # now b, c, a from least to most recent
        await self.put(4, 300)
        self.assertNotIn(c, self.cache)  # the least recent safe one
        self.assertIn(a, self.cache)
        self.assertIn(b, self.cache)  # not safe: never evicted
        self.assertFalse(self.cache.path(c).exists())
        with self.assertRaises(StorageFull):
            await self.cache.allocate(800)  # even with a evicted, b and the new one stay
        self.assertIn(b, self.cache)
        self.assertIn(a, self.cache)  # so a is not evicted for nothing

    async def test_racing_allocations_evict_only_for_room_granted(self) -> None:
        """
        Two allocations at once, each of which would need every evictable blob:
        the first gets its room, the second is refused, and what was evicted
        is only what the first needed.
        """
        blobs = [await self.put(i, 100) for i in range(10)]
        self.safe = set(blobs)
        first = self.cache.allocate(250)
        second = self.cache.allocate(950)
        self.assertEqual((await first).size, 250)
        with self.assertRaises(StorageFull):
            await second
        self.assertEqual(self.cache.filehashes(), blobs[3:])  # three evicted: the 250 asked for

    async def test_an_allocation_grows(self) -> None:
        allocation = await self.cache.allocate(100)
        self.assertIs(await self.cache.allocate(300, allocation), allocation)
        self.assertEqual((allocation.size, self.cache.used), (400, 400))
        self.cache.release(allocation)
        self.assertEqual(self.cache.used, 0)

    async def test_blobs_live_in_shards(self) -> None:
        a = await self.put(1, 100)
        self.assertEqual(self.cache.path(a), self.root / a[:2] / a)
        self.assertTrue((self.root / a[:2] / a).is_file())
        self.assertFalse((self.root / a).exists())
        with self.cache.open(a) as f:
            self.assertEqual(f.read(), b"x" * 100)

    async def test_eviction_reads_the_index_in_pages(self) -> None:
        """
        The victims are found a page at a time, least recent first: a page
        of blobs not safe to evict is read past, and no more pages are read
        than the room needs.
        """
        self.patch(cache_module, "PAGE", 3)
        asked: list[list[str]] = []

        async def evictable(filehashes: list[str]) -> set[str]:
            asked.append(filehashes)
            return self.safe & set(filehashes)

        self.cache._evictable = evictable
        blobs = [await self.put(i, 100) for i in range(10)]
        self.safe = set(blobs[4:])
        await self.cache.allocate(150)  # 1000 used: two of the safe ones go
        self.assertEqual(asked, [blobs[0:3], blobs[3:6]])
        self.assertEqual(self.cache.filehashes(), blobs[:4] + blobs[6:])
        self.assertEqual(self.cache.used, 950)

    async def test_uses_are_written_in_batches(self) -> None:
        """A use costs no disk write on the spot: the index learns of it with the next batch."""
        writes: list[int] = []

        def run_blocking(function: Any, *args: Any) -> Deferred[Any]:
            if getattr(function, "__name__", "") == "apply":
                writes.append(len(args[0]))
            return in_caller(function, *args)

        self.cache._run_blocking = run_blocking
        await self.put(1, 100)
        for _ in range(5):
            self.cache.touch(filehash(1))
        await self.put(2, 100)
        self.assertEqual(writes, [])
        self.clock.advance(cache_module.FLUSH_DELAY)
        self.assertEqual(writes, [2])  # one blob's add and its uses are one change
        self.assertEqual(self.cache.used, 200)

    async def test_index_survives_restart_in_lru_order(self) -> None:
        a = await self.put(1, 100)
        b = await self.put(2, 200)
        c = await self.put(3, 300)
        self.cache.touch(a)  # b, c, a
        again = await self.restart()
        self.assertEqual(again.used, 600)
        self.assertTrue(again._trusted)  # a clean stop: no check of the folder needed
        self.safe = {a, b, c}
        await again.allocate(500)  # 100 more than room: b goes, the least recent
        self.assertEqual(again.filehashes(), [a, c])
        again.touch(c)  # a, c
        again = await self.restart()
        await again.allocate(900)  # 300 more than room: a (100) and c (300) go
        self.assertEqual(again.filehashes(), [])

    async def test_load_reads_no_folder(self) -> None:
        """A start with a trusted index looks at no blob: the folder may hold millions."""
        await self.put(1, 100)
        await self.cache.close()
        scanned: list[object] = []
        real = os.scandir

        def scandir(path: object = ".") -> object:
            scanned.append(path)
            return real(path)

        self.patch(os, "scandir", scandir)
        self.cache = self.open()
        self.assertEqual(scanned, [self.root])  # only whether it is empty: one entry read
        self.assertEqual(self.cache.used, 100)

    async def test_old_flat_layout_is_moved_into_shards(self) -> None:
        """
        A node from before shards: its blobs are found where they are at
        once, moved by the check (its LRU order from their mtimes), and its
        leftovers removed.
        """
        old = self.put_flat(1, 100, mtime=20)
        older = self.put_flat(2, 200, mtime=10)
        (self.root / "junk.partial").write_bytes(b"half")
        (self.root / "tool-leftovers").mkdir()
        (self.root / "tool-leftovers" / "x").write_bytes(b"x")
        cache = self.cache = self.open()
        self.assertIn(old, cache)  # found in the flat place before any move
        with cache.open(old) as f:
            self.assertEqual(f.read(), b"x" * 100)
        allocation = Deferred.fromCoroutine(cache.allocate(10))
        self.assertNoResult(allocation)  # the room used is not known yet
        await cache.check()
        await allocation
        self.assertEqual(cache.used, 310)
        for blob in (old, older):
            self.assertTrue(sharded(self.root, blob).is_file())
            self.assertFalse((self.root / blob).exists())
        self.assertFalse((self.root / "junk.partial").exists())
        self.assertFalse((self.root / "tool-leftovers").exists())
        self.safe = {old, older}
        await cache.allocate(890)  # 200 more than room: the older goes
        self.assertEqual(cache.filehashes(), [old])

    async def test_moved_in_from_a_thread_then_counted(self) -> None:
        """
        L{BlobCache.move_in} (the disk's half, for a thread) then
        L{BlobCache.moved_in}: the blob counted once; a second copy of it is
        removed and counts as a use.
        """
        for i in range(2):
            allocation = await self.cache.allocate(30)
            source = self.root.parent / f"incoming-{i}"
            source.write_bytes(b"y" * 30)
            moved = self.cache.move_in(filehash(7), source)
            self.assertEqual(moved, 30 if i == 0 else None)
            self.assertFalse(source.exists())
            self.assertEqual(self.cache.used, 30 * (i + 1))  # its room; not counted as a blob yet
            self.cache.moved_in(filehash(7), allocation, moved)
            self.assertEqual(self.cache.used, 30)
        self.assertEqual(self.cache.filehashes(), [filehash(7)])

    async def test_locate_in_shards_and_the_flat_layout(self) -> None:
        """Where each blob held is, and its size, wherever it is; nothing for one not held."""
        old = self.put_flat(1, 100, mtime=20)
        cache = self.cache = self.open()
        self.assertEqual(cache.locate([old, filehash(3)]), {old: (str(self.root / old), 100)})
        await cache.check()  # the flat blob moves into its shard
        new = await self.put(2, 50)
        self.assertEqual(
            cache.locate([old, new, filehash(3)]),
            {old: (str(sharded(self.root, old)), 100), new: (str(sharded(self.root, new)), 50)},
        )

    async def test_crash_mid_move_blob_in_one_place_or_both(self) -> None:
        """
        A crash while moving: some blobs still flat, some in their shards,
        one in both (written into its shard before the flat one moved). All
        are found, each once, and the next check finishes the move.
        """
        moved = self.put_flat(1, 100, mtime=10)
        both = self.put_flat(2, 200, mtime=10)
        flat_left = self.put_flat(3, 300, mtime=10)
        for blob in (moved, both):
            sharded(self.root, blob).parent.mkdir(exist_ok=True)
            os.link(self.root / blob, sharded(self.root, blob))
        os.unlink(self.root / moved)
        cache = self.cache = self.open()
        for blob in (moved, both, flat_left):
            self.assertIn(blob, cache)
        await cache.check()
        self.assertEqual(cache.filehashes(), [moved, both, flat_left])
        self.assertEqual(cache.used, 600)
        self.assertEqual(
            sorted(os.listdir(self.root)),
            sorted(["00", INDEX, *_index_files(self.root), "partial"]),
        )

    async def test_a_crash_mid_move_holds_allocations_until_counted(self) -> None:
        """
        A crash cut the move from the flat layout short: the index counts
        only the blobs moved, so the next start waits for the check before it
        grants room (else a full cache would look mostly free).
        """
        blobs = [self.put_flat(i, 100, mtime=10) for i in (1, 2, 3)]
        self.cache = self.open()
        index = CacheIndex.open(self.root / INDEX)
        index.move_flat(self.root, blobs[:1])
        index.close()
        self.cache._index.close()  # a crash: the rest not moved, the stop never written
        cache = self.cache = self.open()
        allocation = Deferred.fromCoroutine(cache.allocate(10))
        self.assertNoResult(allocation)
        await cache.check()
        await allocation
        self.assertEqual(cache.used, 310)

    async def test_a_blob_moved_while_it_is_discarded_goes(self) -> None:
        """The move renames a flat blob into its shard as it is discarded: it goes all the same."""
        blob = self.put_flat(1, 100, mtime=10)
        cache = self.cache = self.open()
        flat_place = cache_module.flat

        @define
        class MovedWhenLookedAt:
            """The flat place, its blob renamed into the shard just as it is looked at."""

            place: Path

            def stat(self) -> os.stat_result:
                if self.place.is_file():
                    sharded(self.place.parent, self.place.name).parent.mkdir(exist_ok=True)
                    os.rename(self.place, sharded(self.place.parent, self.place.name))
                return self.place.stat()

            def unlink(self) -> None:
                self.place.unlink()

        self.patch(
            cache_module, "flat", lambda root, name: MovedWhenLookedAt(flat_place(root, name))
        )
        cache.discard(blob)
        self.assertFalse(sharded(self.root, blob).exists())
        self.assertFalse(flat_place(self.root, blob).exists())

    async def test_missing_index_is_rebuilt_in_background(self) -> None:
        a = await self.put(1, 100)
        b = await self.put(2, 200)
        await self.cache.close()
        for name in [*_index_files(self.root), INDEX]:
            (self.root / name).unlink()
        cache = self.cache = self.open()
        self.assertIn(a, cache)  # answered from the disk meanwhile
        self.assertNoResult(cache.allocate(10))
        await cache.check()
        self.assertEqual(cache.used, 310)
        self.assertEqual(cache.filehashes(), [a, b])

    async def test_corrupt_index_is_rebuilt(self) -> None:
        a = await self.put(1, 100)
        await self.cache.close()
        for name in _index_files(self.root):
            (self.root / name).unlink()
        (self.root / INDEX).write_bytes(b"not a database, not at all" * 100)
        cache = self.cache = self.open()
        await cache.check()
        self.assertEqual(cache.used, 100)
        self.assertIn(a, cache)

    async def test_crash_reconciled_by_the_check(self) -> None:
        """
        A crash: uses, an add and a discard never reached the index. The
        next start does not trust it, and the check makes it the folder's:
        the added blob found, the discarded one's row dropped.
        """
        a = await self.put(1, 100)
        b = await self.put(2, 200)
        await self.cache.flush()
        self.cache.discard(a)
        c = await self.put(3, 300)
        self.cache = self.open()  # no close: a crash
        self.assertFalse(self.cache._trusted)
        await self.cache.check()
        self.assertEqual(self.cache.used, 500)
        self.safe = {b, c}
        await self.cache.allocate(1000)  # everything safe goes
        self.assertEqual(self.cache.filehashes(), [])
        self.assertEqual(self.cache.used, 1000)

    async def test_blob_deleted_behind_the_nodes_back(self) -> None:
        a = await self.put(1, 100)
        b = await self.put(2, 200)
        sharded(self.root, a).unlink()
        self.assertNotIn(a, self.cache)  # the disk is the truth at once
        # The room it took is known again at the next check (after a crash, or a lost index).
        await self.cache.flush()
        self.cache = self.open()
        await self.cache.check()
        self.assertEqual(self.cache.used, 200)
        self.assertEqual(self.cache.filehashes(), [b])

    async def test_unrecorded_blobs_dropped_in_pages(self) -> None:
        self.patch(cache_module, "PAGE", 2)
        blobs = [await self.put(i, 10) for i in range(5)]
        self.cache = await self.restart()  # what is dropped is left from before a start
        self.recorded = {blobs[0], blobs[3]}
        self.assertEqual(await self.cache.drop_unrecorded(self.known), 3)
        self.assertEqual(self.cache.filehashes(), [blobs[0], blobs[3]])
        self.assertEqual(self.cache.used, 20)

    async def test_a_blob_used_while_dropping_is_kept(self) -> None:
        """An upload's blob is in the cache before its record: one used meanwhile stays."""
        a = await self.put(1, 10)

        async def known(filehashes: list[str]) -> set[str]:
            self.cache.touch(a)  # an upload of the same bytes, its record on its way
            return set()

        self.assertEqual(await self.cache.drop_unrecorded(known), 0)
        self.assertIn(a, self.cache)

    async def test_blobs_of_this_run_are_kept_whatever_their_page(self) -> None:
        """
        An upload's blob is in the cache before its record commits: one added
        since the start, before the drop or during it, in any page, stays.
        """
        self.patch(cache_module, "PAGE", 2)
        for i in range(4):
            await self.put(i, 10)
        self.cache = await self.restart()
        before = await self.put(10, 10)  # accepted after the start, its record on its way
        during: list[str] = []

        async def known(filehashes: list[str]) -> set[str]:
            if not during:
                during.append(await self.put(11, 10))
            return set()

        self.assertEqual(await self.cache.drop_unrecorded(known), 4)
        self.assertEqual(sorted(self.cache.filehashes()), sorted([before, *during]))

    async def test_restore_partials_cleared_at_start(self) -> None:
        partial = self.cache.partial(filehash(1))
        partial.write_bytes(b"half")
        self.cache = self.open()
        self.assertFalse(partial.exists())
        self.assertTrue(partial.parent.is_dir())


def _index_files(root: Path) -> list[str]:
    """The index's journal files, if any (WAL)."""
    return [name for name in os.listdir(root) if name.startswith(INDEX + "-")]
