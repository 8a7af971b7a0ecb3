"""The cache: capacity, allocation, and eviction of only what the hosts hold, LRU first."""

from __future__ import annotations

import os
from pathlib import Path

from twisted.trial.unittest import TestCase

from metadisk.store.cache import BlobCache, StorageFull


def filehash(i: int) -> str:
    return f"{i:064x}"


class CacheTests(TestCase):
    def setUp(self) -> None:
        self.root = Path(self.mktemp())
        self.safe: set[str] = set()
        self.cache = BlobCache(self.root, 1000, self.evictable)
        self.cache.load()

    async def evictable(self, filehashes: list[str]) -> set[str]:
        return self.safe & set(filehashes)

    async def put(self, i: int, size: int) -> str:
        allocation = await self.cache.allocate(size)
        source = self.root.parent / f"incoming-{i}"
        source.write_bytes(b"x" * size)
        self.cache.add(filehash(i), source, allocation)
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
        self.assertEqual(len(self.cache.filehashes()), 7)  # three evicted: the 250 asked for
        self.assertEqual(self.cache.filehashes(), blobs[3:])

    async def test_an_allocation_grows(self) -> None:
        allocation = await self.cache.allocate(100)
        self.assertIs(await self.cache.allocate(300, allocation), allocation)
        self.assertEqual((allocation.size, self.cache.used), (400, 400))
        self.cache.release(allocation)
        self.assertEqual(self.cache.used, 0)

    async def test_load_indexes_and_cleans(self) -> None:
        a = await self.put(1, 100)
        b = await self.put(2, 200)
        os.utime(self.cache.path(a), (10, 10))
        os.utime(self.cache.path(b), (5, 5))
        (self.root / "junk.partial").write_bytes(b"half")
        (self.root / "tool-leftovers").mkdir()
        (self.root / "tool-leftovers" / "x").write_bytes(b"x")
        again = BlobCache(self.root, 1000, self.evictable)
        again.load()
        self.assertEqual(again.filehashes(), [b, a])  # oldest first
        self.assertEqual(again.used, 300)
        self.assertFalse((self.root / "junk.partial").exists())
        self.assertFalse((self.root / "tool-leftovers").exists())
