"""
Blocking file work runs in the reactor's thread pool, behind one injectable
callable; and the blocking steps that several parts share.
"""

from __future__ import annotations

import os
from collections.abc import Callable
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
