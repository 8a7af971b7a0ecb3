"""A host that is a directory on this machine (a disk, an NFS or FUSE mount…)."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import BinaryIO

from attrs import define
from twisted.internet.defer import Deferred
from zope.interface import implementer

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


@implementer(IFileHost)
@define
class LocalDirectoryHost:
    name: str
    root: Path
    _run_blocking: RunBlocking

    def _object(self, filehash: str) -> Path:
        check_filehash(filehash)
        return self.root / filehash

    def store(self, filehash: str, path: str) -> Deferred[str]:
        target = self._object(filehash)

        def store() -> str:
            target.parent.mkdir(parents=True, exist_ok=True)
            _copy(Path(path), target)
            return target.resolve().as_uri()

        return self._run_blocking(store)

    def fetch(self, filehash: str, url: str, destination: str, size: int) -> Deferred[None]:
        # The object is found by its filehash, never by a URL that came from elsewhere.
        source = self._object(filehash)
        return self._run_blocking(_copy, source, Path(destination))

    def exists(self, filehash: str, url: str) -> Deferred[bool]:
        return self._run_blocking(self._object(filehash).is_file)
