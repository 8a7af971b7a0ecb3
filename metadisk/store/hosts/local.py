"""
A host that is a directory on this machine (a disk, an NFS or FUSE mount…).

The folder carries a marker file, so that a disk that is not mounted is told
apart from a host that lost its copies: without the marker the host never
answers that a copy is gone (repair would copy every blob again) and stores
nothing (it would fill the disk under the mount point).

Blobs are in shard folders by filehash (C{ab/abcdef…}); a folder of the older
flat layout is moved into shards in the background once the node listens,
and a blob is found in either place meanwhile.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

from attrs import define
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from metadisk.crypto import is_hex64
from metadisk.interfaces import IFileHost
from metadisk.store.blocking import RunBlocking, sync_together
from metadisk.store.hosts import HostError, Stored, check_filehash, host_errors, one
from metadisk.store.shards import flat, flat_blobs, is_shard, move_into_shard, sharded

# copy_file_range cannot do this copy (another filesystem, an old kernel, a special file…).
_NO_KERNEL_COPY = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF}
_BUFFER = 1 << 20  # what a copy the kernel cannot do reads at a time, at most


def _copy_contents(src: BinaryIO, dst: BinaryIO) -> None:
    """
    Copy in the kernel where it can (copy_file_range: a reflink on btrfs or
    XFS, a server-side copy on NFS, a page-cache copy elsewhere), else
    through a buffer. Either way nothing passes through Python objects.
    """
    size = os.fstat(src.fileno()).st_size
    copied = 0
    if hasattr(os, "copy_file_range"):
        try:
            while copied < size:
                n = os.copy_file_range(src.fileno(), dst.fileno(), size - copied)
                if not n:
                    break  # a filesystem that copies nothing without saying why: read the rest
                copied += n
        except OSError as e:
            if copied or e.errno not in _NO_KERNEL_COPY:
                raise
    if copied == size:
        return
    # What the kernel did not copy, from where it stopped (it moved both offsets), to the end;
    # a buffer no larger than that (a blob is often small, and 1 MiB costs its page faults).
    buffer = bytearray(min(_BUFFER, size - copied))
    view = memoryview(buffer)
    while n := src.readinto(buffer):
        done = 0
        while done < n:  # an unbuffered write may take part of it
            done += dst.write(view[done:n])


def _copy(source: Path, destination: Path) -> None:
    """Copy a file durably: it is at C{destination} whole, or not at all (a L{HostError})."""
    [error] = _copy_all([(source, destination)])
    if error is not None:
        raise error


def _copy_all(copies: Sequence[tuple[Path, Path]]) -> list[HostError | None]:
    """
    Copy files durably, each at its destination whole or not at all; for
    each, None or why it failed. All are written, then flushed together,
    then put in place, then their folders flushed together: one journal
    commit for a batch's bytes and one for its renames, however many blobs
    (L{sync_together}).
    """
    outcome: list[HostError | None] = [None] * len(copies)
    partials = [destination.with_name(destination.name + ".partial") for _, destination in copies]

    def failed(i: int, e: HostError) -> None:
        outcome[i] = e
        partials[i].unlink(missing_ok=True)

    def step(i: int, action: Callable[[], object]) -> None:
        if outcome[i] is None:
            try:
                with host_errors():
                    action()
            except HostError as e:
                failed(i, e)

    for i, (source, _) in enumerate(copies):
        step(i, lambda source=source, partial=partials[i]: _write(source, partial))
    written = [i for i in range(len(copies)) if outcome[i] is None]
    try:
        with host_errors():
            sync_together([partials[i] for i in written])
    except HostError as e:
        for i in written:  # not known to be on the disk: none is put in place
            failed(i, e)
    for i, (_, destination) in enumerate(copies):
        step(
            i, lambda partial=partials[i], destination=destination: os.replace(partial, destination)
        )
    placed = {destination.parent for i, (_, destination) in enumerate(copies) if not outcome[i]}
    # The shards' entries too: a shard made for this batch must survive a crash with it.
    with host_errors():
        # The renames: a crash must not lose a copy recorded as made.
        sync_together(placed | {shard.parent for shard in placed})
    return outcome


def _write(source: Path, destination: Path) -> None:
    # Unbuffered: the kernel copy moves the file offsets that a fallback goes on from.
    with open(source, "rb", buffering=0) as src, _create(destination) as dst:
        _copy_contents(src, dst)


def _create(path: Path) -> BinaryIO:
    """A new file, unbuffered; its shard folder is made the first time one goes there."""
    try:
        return open(path, "wb", buffering=0)
    except FileNotFoundError:
        path.parent.mkdir(exist_ok=True)
        return open(path, "wb", buffering=0)


MARKER = ".metadisk-host"
MOVE_BATCH = 10_000  # flat blobs moved into their shards per call in the thread pool


@implementer(IFileHost)
@define(kw_only=True)
class LocalDirectoryHost:
    name: str
    root: Path
    _run_blocking: RunBlocking
    # Where a web server serves the folder; "": copies have no URL. Never the folder's own
    # path: a record goes on a public chain, and that path is of use to no other node.
    public_url: str = ""
    # A host that holds no copy yet may make its folder (and mark it) when it is not
    # there. Set at start from the node's records; false once a copy is stored.
    _new: bool = True
    _stopping: bool = False  # the node stops: the move into shards ends after its batch

    log = Logger()

    @property
    def marker(self) -> Path:
        return self.root / MARKER

    def claim(self, holds_copies: bool) -> Deferred[bool]:
        """
        At start: make the folder this host's (marked), unless the node's
        records put copies there and not one is there, folder or not: a disk
        that is not mounted. Fire with whether the folder is marked now.
        """
        self._new = not holds_copies
        return self._run_blocking(self._claim, holds_copies)

    def _claim(self, holds_copies: bool) -> bool:
        try:
            if self.marker.is_file():
                return True
            if holds_copies and not _holds_a_blob(self.root):
                self.log.error(
                    "host {host}: {root} has no {marker} and none of the copies recorded"
                    " there: is its disk mounted? Until the marker is there the host answers as"
                    " unreachable; create the file to take the folder as it is.",
                    host=self.name,
                    root=str(self.root),
                    marker=MARKER,
                )
                return False
            # New, or a folder of blobs from before markers.
            self.root.mkdir(parents=True, exist_ok=True)
            self._mark()
        except OSError as e:
            self.log.warn(
                "host {host}: cannot mark {root} as its folder: {e}",
                host=self.name,
                root=str(self.root),
                e=e,
            )
            return False
        return True

    def _mark(self) -> None:
        self.marker.write_text(f"MetaDisk blobs of host {self.name}; do not delete.\n")

    def _object(self, filehash: str) -> Path:
        check_filehash(filehash)
        return sharded(self.root, filehash)

    def _find(self, filehash: str) -> Path:
        """Where the copy is: its shard, or the flat layout's place if not moved yet."""
        where = self._object(filehash)
        if where.is_file() or not flat(self.root, filehash).is_file():
            return where
        return flat(self.root, filehash)

    async def move_flat(self) -> int:
        """
        Move the blobs of the flat layout into their shards, a batch at a
        time in the thread pool (once the node listens: a large folder takes
        a while, and its blobs are found in either place meanwhile). Only in
        the host's own, marked, folder. The number moved.
        """
        moved = 0
        before: list[str] = []
        while not self._stopping:
            batch = await self._run_blocking(self._move_batch)
            if not batch:
                break
            if batch == before:
                raise HostError(f"cannot move the blobs of {self.root} into shards")
            moved += len(batch)
            before = batch
        if moved:
            self.log.info("host {host}: moved {n} blobs into shards", host=self.name, n=moved)
        return moved

    def _move_batch(self) -> list[str]:
        if not self.marker.is_file():
            return []
        batch = flat_blobs(self.root, MOVE_BATCH)
        for filehash in batch:
            try:
                move_into_shard(self.root, filehash)
            except FileNotFoundError:
                pass  # moved or removed meanwhile
        if batch:
            # The renames out of the root, into their shards, and the shards made for them.
            sync_together({sharded(self.root, filehash).parent for filehash in batch} | {self.root})
        return batch

    def stop_moving(self) -> None:
        self._stopping = True

    def _check_marked(self) -> None:
        if not self.marker.is_file():
            raise HostError(f"{self.root} has no {MARKER}: not mounted, or not this host's folder")

    def store(self, filehash: str, path: str) -> Deferred[str]:
        return self.store_all([(filehash, path)]).addCallback(one)

    def store_all(self, blobs: Sequence[tuple[str, str]]) -> Deferred[list[Stored]]:
        def store_all() -> list[Stored]:
            copies, results = [], []
            for filehash, path in blobs:
                try:
                    copies.append((Path(path), self._object(filehash)))
                    results.append(self._url(filehash))
                except HostError as e:
                    results.append(e)
            with host_errors():
                if self._new and not self.marker.is_file():
                    self.root.mkdir(parents=True, exist_ok=True)  # a concurrent store may too
                    self._mark()
                self._check_marked()
            failures = iter(_copy_all(copies))
            self._new = False
            # Each blob that could be copied has its URL, or the error its copy met.
            return [r if isinstance(r, HostError) else next(failures) or r for r in results]

        return self._run_blocking(store_all)

    def _url(self, filehash: str) -> str:
        # The copy's place under the folder, shard and all: a plain static server serves it.
        where = f"{filehash[:2]}/{filehash}"
        return f"{self.public_url.rstrip('/')}/{where}" if self.public_url else ""

    def fetch(self, filehash: str, url: str, destination: str, size: int) -> Deferred[None]:
        # The object is found by its filehash, never by a URL that came from elsewhere.
        # Without its disk the copy is not there to read: an error, which loses nothing.
        check_filehash(filehash)

        def fetch() -> None:
            source = self._find(filehash)
            try:
                _copy(source, Path(destination))
            except HostError:
                # Moved into its shard since it was found in the flat layout: read it there.
                if source == self._object(filehash) or not self._object(filehash).is_file():
                    raise
                _copy(self._object(filehash), Path(destination))

        return self._run_blocking(fetch)

    def exists(self, filehash: str, url: str) -> Deferred[bool]:
        check_filehash(filehash)

        def exists() -> bool:
            with host_errors():
                shard = self._object(filehash)
                # The shard again after the flat place: the move may have renamed it between.
                if shard.is_file() or flat(self.root, filehash).is_file() or shard.is_file():
                    return True
                self._check_marked()  # only the host's own folder may say a copy is gone
                return False

        return self._run_blocking(exists)


def _holds_a_blob(root: Path) -> bool:
    """Whether the folder holds any blob, flat or in a shard (a look at a few entries)."""
    try:
        with os.scandir(root) as entries:
            folders = []
            for entry in entries:
                if is_hex64(entry.name):
                    return True
                if is_shard(entry.name):
                    folders.append(entry.path)
        for folder in folders:
            with os.scandir(folder) as entries:
                if any(is_hex64(entry.name) for entry in entries):
                    return True
    except FileNotFoundError:
        pass
    return False
