"""
A host that is a directory on this machine (a disk, an NFS or FUSE mount…).

The folder carries a marker file, so that a disk that is not mounted is told
apart from a host that lost its copies: an unmounted mount point is an empty
folder without the marker, and every call there fails as unreachable, where
answering "no such copy" would have repair copy every blob again.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import BinaryIO

from attrs import define
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from metadisk.crypto import is_hex64
from metadisk.interfaces import IFileHost
from metadisk.store.blocking import RunBlocking
from metadisk.store.hosts import HostError, check_filehash

# copy_file_range cannot do this copy (another filesystem, an old kernel, a special file…).
_NO_KERNEL_COPY = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF}


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
    # What the kernel did not copy, from where it stopped (it moved both offsets), to the end.
    buffer = bytearray(1 << 20)
    view = memoryview(buffer)
    while n := src.readinto(buffer):
        done = 0
        while done < n:  # an unbuffered write may take part of it
            done += dst.write(view[done:n])


def _copy(source: Path, destination: Path) -> None:
    partial = destination.with_name(destination.name + ".partial")
    try:
        # Unbuffered: the kernel copy moves the file offsets that a fallback goes on from.
        with open(source, "rb", buffering=0) as src, open(partial, "wb", buffering=0) as dst:
            _copy_contents(src, dst)
            os.fsync(dst.fileno())
        os.replace(partial, destination)
    except OSError as e:
        partial.unlink(missing_ok=True)
        raise HostError(f"{e.strerror}: {e.filename}") from None


MARKER = ".metadisk-host"


@implementer(IFileHost)
@define
class LocalDirectoryHost:
    name: str
    root: Path
    _run_blocking: RunBlocking

    log = Logger()

    @property
    def marker(self) -> Path:
        return self.root / MARKER

    def claim(self, holds_copies: bool) -> Deferred[bool]:
        """
        At start: make the folder this host's, unless it looks like a disk
        that is not mounted (C{holds_copies}, by the node's records, and not
        one blob there). Fire with whether the folder is the host's now.
        """
        return self._run_blocking(self._claim, holds_copies)

    def _claim(self, holds_copies: bool) -> bool:
        try:
            if self.marker.is_file():
                return True
            # A mount point is there when its disk is not: a folder that is gone is no disk
            # missing but copies lost, which repair restores.
            if holds_copies and self.root.is_dir() and not _holds_a_blob(self.root):
                self.log.error(
                    "host {host}: {root} holds none of the copies recorded there and has no"
                    " {marker}: is its disk mounted? The host is unreachable until it is (or"
                    " until that file is created, to use the folder as it is).",
                    host=self.name,
                    root=str(self.root),
                    marker=MARKER,
                )
                return False
            self.root.mkdir(parents=True, exist_ok=True)
            self._mark()
        except OSError as e:
            self.log.warn(
                "host {host}: cannot use {root}: {e}", host=self.name, root=str(self.root), e=e
            )
            return False
        return True

    def _mark(self) -> None:
        self.marker.write_text(f"MetaDisk blobs of host {self.name}; do not delete.\n")

    def _object(self, filehash: str) -> Path:
        check_filehash(filehash)
        return self.root / filehash

    def _check_marked(self) -> None:
        if not self.marker.is_file():
            raise HostError(f"{self.root} has no {MARKER}: not mounted, or not this host's folder")

    def store(self, filehash: str, path: str) -> Deferred[str]:
        target = self._object(filehash)

        def store() -> str:
            if not self.root.exists():
                # Made here, so it is ours; a folder there unmarked may be an empty mount point.
                try:
                    self.root.mkdir(parents=True, exist_ok=True)  # a concurrent store may too
                    self._mark()
                except OSError as e:
                    raise HostError(f"{e.strerror}: {e.filename}") from None
            self._check_marked()
            _copy(Path(path), target)
            return target.resolve().as_uri()

        return self._run_blocking(store)

    def fetch(self, filehash: str, url: str, destination: str, size: int) -> Deferred[None]:
        # The object is found by its filehash, never by a URL that came from elsewhere.
        source = self._object(filehash)

        def fetch() -> None:
            self._check_marked()
            _copy(source, Path(destination))

        return self._run_blocking(fetch)

    def exists(self, filehash: str, url: str) -> Deferred[bool]:
        target = self._object(filehash)

        def exists() -> bool:
            self._check_marked()
            return target.is_file()

        return self._run_blocking(exists)


def _holds_a_blob(root: Path) -> bool:
    with os.scandir(root) as entries:
        return any(is_hex64(entry.name) for entry in entries)
