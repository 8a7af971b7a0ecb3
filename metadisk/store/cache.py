"""
The local cache of blobs: a directory with one file per blob, a capacity,
and eviction of the least recently used blobs that are safe on their hosts.
"""

from __future__ import annotations

import os
import shutil
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path

from attrs import define, field
from twisted.internet.defer import DeferredLock
from twisted.logger import Logger

from metadisk.crypto import is_hex64


class StorageFull(Exception):
    """The cache cannot make room: what it holds is not yet safe on the hosts."""


@define(eq=False)
class Allocation:
    """Room set aside in the cache for a blob on its way in."""

    size: int
    released: bool = False


def remove(path: str | Path) -> None:
    """Remove a leftover file or folder (what a crash, or a tool, left behind)."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.unlink(path)


# Told a list of filehashes (least recently used first), answers those safe to delete.
Evictable = Callable[[list[str]], Awaitable[set[str]]]


@define
class BlobCache:
    root: Path
    capacity: int
    _evictable: Evictable
    _entries: OrderedDict[str, int] = field(factory=OrderedDict)  # filehash -> size, LRU first
    _allocated: int = 0
    _deciding: DeferredLock = field(factory=DeferredLock)

    log = Logger()

    def load(self) -> None:
        """Index the blobs on disk, least recently used first; drop leftovers of a crash."""
        self.root.mkdir(parents=True, exist_ok=True)
        found = []
        for entry in os.scandir(self.root):
            if is_hex64(entry.name) and entry.is_file():
                stat = entry.stat()
                found.append((stat.st_mtime, entry.name, stat.st_size))
            else:
                remove(entry.path)
        self._entries = OrderedDict((name, size) for _, name, size in sorted(found))

    def path(self, filehash: str) -> Path:
        return self.root / filehash

    def __contains__(self, filehash: str) -> bool:
        return filehash in self._entries

    def filehashes(self) -> list[str]:
        return list(self._entries)

    @property
    def used(self) -> int:
        return sum(self._entries.values()) + self._allocated

    def touch(self, filehash: str) -> None:
        """Mark a blob as just used; its mtime keeps the order across restarts."""
        if filehash in self._entries:
            self._entries.move_to_end(filehash)
            try:
                os.utime(self.path(filehash))
            except FileNotFoundError:
                del self._entries[filehash]

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
                for filehash in await self._victims(self.used + size - self.capacity):
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
        os.replace(source, self.path(filehash))
        self.release(allocation)
        self._entries[filehash] = self.path(filehash).stat().st_size
        self._entries.move_to_end(filehash)

    def discard(self, filehash: str) -> None:
        self._entries.pop(filehash, None)
        self.path(filehash).unlink(missing_ok=True)

    async def _victims(self, needed: int) -> list[str]:
        """
        The least recently used blobs, safe to evict, that free C{needed}
        bytes; none if all that is safe to evict would not free that much.
        """
        chosen: list[str] = []
        freed = 0
        candidates = list(self._entries)
        for start in range(0, len(candidates), 500):
            batch = candidates[start : start + 500]
            safe = await self._evictable(batch)
            for filehash in batch:
                if filehash in safe and filehash in self._entries:
                    chosen.append(filehash)
                    freed += self._entries[filehash]
                    if freed >= needed:
                        return chosen
        return []
