"""
Blocking file work runs in the reactor's thread pool, behind one injectable
callable; and the blocking steps that several parts share.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.threads import deferToThreadPool

T = TypeVar("T")

RunBlocking = Callable[..., Deferred]


def in_thread_pool(reactor: Any) -> RunBlocking:
    """Run blocking calls in C{reactor}'s thread pool."""

    def run(function: Callable[..., T], *args: Any) -> Deferred[T]:
        return deferToThreadPool(reactor, reactor.getThreadPool(), function, *args)

    return run


def in_caller(function: Callable[..., T], *args: Any) -> Deferred[T]:
    """Run blocking calls right away (for tests that drive time with a Clock)."""
    return maybeDeferred(function, *args)


def sync_path(path: Path) -> None:
    """Make a file's bytes, or a folder's entries, durable (blocking)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _libc_syncfs() -> Callable[[int], int] | None:
    try:
        function = ctypes.CDLL(None, use_errno=True).syncfs
    except (AttributeError, OSError):
        return None  # not Linux
    function.argtypes = (ctypes.c_int,)
    return function


_syncfs = _libc_syncfs()


def sync_together(paths: Collection[Path]) -> None:
    """
    Make files' bytes and folders' entries durable, all at once (blocking):
    one syncfs for each filesystem on a block device (ext4, XFS on a disk)
    where Linux has it, else an fsync each (a network or FUSE filesystem's
    syncfs may not reach its server or daemon). A batch of small files then
    costs its filesystem one journal commit, not one a file; the price is
    that the filesystem's other unsaved writes are flushed with it
    (docs/architecture.md, "Durability").
    """
    by_device: dict[int, list[Path]] = {}
    for path in paths:
        by_device.setdefault(os.stat(path).st_dev, []).append(path)
    for device, together in by_device.items():
        if _syncfs is not None and os.major(device) != 0:  # 0: no block device under it
            _sync_filesystem(together[0])
        else:
            for path in together:
                sync_path(path)


def _sync_filesystem(path: Path) -> None:
    assert _syncfs is not None
    fd = os.open(path, os.O_RDONLY)
    try:
        if _syncfs(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), str(path))
    finally:
        os.close(fd)
