"""
The cache's index: a small SQLite file in the cache's folder (the node's own
database may be PostgreSQL shared by several nodes; a cache is one data
directory's). One row per blob, its size and when it was last used; the
total kept by triggers, so that neither a start nor a question about room
reads every row. Its methods block: the cache calls them in the thread pool,
one at a time.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from attrs import define, frozen
from twisted.logger import Logger

from metadisk.crypto import is_hex64
from metadisk.store.shards import move_into_shard, remove

_SCHEMA = """
CREATE TABLE IF NOT EXISTS blobs (
    filehash TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    last_used INTEGER NOT NULL  -- microseconds, unique: the order of use
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS blobs_by_use ON blobs (last_used, filehash);
CREATE TABLE IF NOT EXISTS state (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    bytes INTEGER NOT NULL,
    clean INTEGER NOT NULL,  -- 1: the rows were the folder's when the node last stopped
    sharded INTEGER NOT NULL  -- 1: no blob is left in the flat layout
);
INSERT OR IGNORE INTO state VALUES (1, 0, 0, 0);
CREATE TRIGGER IF NOT EXISTS blob_added AFTER INSERT ON blobs
BEGIN UPDATE state SET bytes = bytes + NEW.size; END;
CREATE TRIGGER IF NOT EXISTS blob_dropped AFTER DELETE ON blobs
BEGIN UPDATE state SET bytes = bytes - OLD.size; END;
CREATE TRIGGER IF NOT EXISTS blob_resized AFTER UPDATE OF size ON blobs
BEGIN UPDATE state SET bytes = bytes - OLD.size + NEW.size; END;
"""

ADD, TOUCH, DROP = "add", "touch", "drop"
# What happens to a blob's row: (ADD, size, last_used), (TOUCH, 0, last_used), (DROP, 0, 0).
Change = tuple[str, int, int]


@frozen
class IndexState:
    bytes: int
    clean: bool
    sharded: bool
    last_used: int  # the latest use recorded


@frozen
class Found:
    """What a look at one shard folder changed in the index."""

    bytes: int  # the index's total after it
    added: int  # blobs on disk the index did not have
    dropped: int  # rows of blobs gone from the disk


def microseconds(seconds: float) -> int:
    return int(seconds * 1_000_000)


@define
class CacheIndex:
    _db: sqlite3.Connection
    fresh: bool  # made now: the folder's blobs are not in it yet

    log = Logger()

    @classmethod
    def open(cls, path: Path) -> CacheIndex:
        """Open the index at C{path}; one missing or unreadable is made anew (and rebuilt)."""
        fresh = not path.exists()
        try:
            return cls(_connect(path), fresh)
        except sqlite3.DatabaseError as e:
            cls.log.warn(
                "the cache index {path} is unreadable ({e}): rebuilding it", path=str(path), e=e
            )
            for name in (path.name, f"{path.name}-wal", f"{path.name}-shm"):
                (path.parent / name).unlink(missing_ok=True)
            return cls(_connect(path), True)

    def state(self) -> IndexState:
        bytes_, clean, sharded = self._db.execute(
            "SELECT bytes, clean, sharded FROM state"
        ).fetchone()
        [last_used] = self._db.execute("SELECT MAX(last_used) FROM blobs").fetchone()
        return IndexState(bytes_, bool(clean), bool(sharded), last_used or 0)

    def mark(self, *, clean: bool | None = None, sharded: bool | None = None) -> None:
        if clean is not None:
            self._db.execute("UPDATE state SET clean = ?", (int(clean),))
        if sharded is not None:
            self._db.execute("UPDATE state SET sharded = ?", (int(sharded),))

    def apply(self, changes: Sequence[tuple[str, Change]]) -> int:
        """Write a batch of changes in one transaction; the total after it."""
        with _transaction(self._db):
            for filehash, (kind, size, last_used) in changes:
                if kind == ADD:
                    self._db.execute(
                        "INSERT INTO blobs VALUES (?, ?, ?) ON CONFLICT (filehash)"
                        " DO UPDATE SET size = excluded.size, last_used = excluded.last_used",
                        (filehash, size, last_used),
                    )
                elif kind == TOUCH:
                    self._db.execute(
                        "UPDATE blobs SET last_used = ? WHERE filehash = ?", (last_used, filehash)
                    )
                else:
                    self._db.execute("DELETE FROM blobs WHERE filehash = ?", (filehash,))
        return self._total()

    def least_recent(self, after: tuple[int, str], n: int) -> list[tuple[str, int, int]]:
        """The next C{n} blobs in order of use, after C{after}: (filehash, size, last_used)."""
        return self._db.execute(
            "SELECT filehash, size, last_used FROM blobs WHERE (last_used, filehash) > (?, ?)"
            " ORDER BY last_used, filehash LIMIT ?",
            (*after, n),
        ).fetchall()

    def by_name(self, after: str, n: int) -> list[tuple[str, int]]:
        """The next C{n} blobs by filehash, after C{after}: (filehash, last_used)."""
        return self._db.execute(
            "SELECT filehash, last_used FROM blobs WHERE filehash > ? ORDER BY filehash LIMIT ?",
            (after, n),
        ).fetchall()

    def move_flat(self, root: Path, filehashes: Sequence[str]) -> int:
        """Move blobs of the flat layout into their shards, indexed if they were not."""
        with _transaction(self._db):
            for filehash in filehashes:
                try:
                    stat = move_into_shard(root, filehash).stat()
                except FileNotFoundError:
                    continue  # evicted meanwhile
                self._db.execute(
                    "INSERT OR IGNORE INTO blobs VALUES (?, ?, ?)",
                    (filehash, stat.st_size, microseconds(stat.st_mtime)),
                )
        return self._total()

    def reconcile(self, folder: Path) -> Found:
        """
        Make the rows of one shard agree with its folder: blobs that are
        there but not indexed (a crash before their row was written; order
        of use from their mtime), rows of blobs that are not there (a crash
        after the delete, or a blob removed behind the node's back), and
        leftovers that are no blob (removed). The listing and the rows are
        read in one go: the cache writes no row while this runs.
        """
        on_disk: dict[str, os.stat_result] = {}
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    if is_hex64(entry.name) and entry.name.startswith(folder.name):
                        if entry.is_file(follow_symlinks=False):
                            on_disk[entry.name] = entry.stat(follow_symlinks=False)
                            continue
                    remove(entry.path)
        except FileNotFoundError:
            pass
        prefix = folder.name
        indexed = {
            filehash
            for (filehash,) in self._db.execute(
                "SELECT filehash FROM blobs WHERE filehash BETWEEN ? AND ?", (prefix, prefix + "g")
            )
        }
        missing = [(filehash,) for filehash in indexed - on_disk.keys()]
        new = [
            (filehash, stat.st_size, microseconds(stat.st_mtime))
            for filehash, stat in on_disk.items()
            if filehash not in indexed
        ]
        if missing or new:
            with _transaction(self._db):
                self._db.executemany("DELETE FROM blobs WHERE filehash = ?", missing)
                self._db.executemany("INSERT INTO blobs VALUES (?, ?, ?)", new)
        return Found(self._total(), len(new), len(missing))

    def close(self) -> None:
        self._db.close()

    def _total(self) -> int:
        [total] = self._db.execute("SELECT bytes FROM state").fetchone()
        return total


def _connect(path: Path) -> sqlite3.Connection:
    # Used from the thread pool's threads, one call at a time (the cache sees to it).
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode = WAL")
        # A crash may lose the last batch, never spoil the file; the next start reconciles.
        db.execute("PRAGMA synchronous = NORMAL")
        db.executescript(_SCHEMA)
        db.execute("SELECT bytes FROM state").fetchone()
    except sqlite3.DatabaseError:
        db.close()
        raise
    return db


@contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    # The connection commits each statement alone unless told: a batch is one commit.
    db.execute("BEGIN")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
