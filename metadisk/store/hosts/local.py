"""A host that is a directory on this machine (a disk, an NFS or FUSE mount…)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from attrs import define
from twisted.internet.defer import Deferred
from zope.interface import implementer

from metadisk.interfaces import IFileHost
from metadisk.store.blocking import RunBlocking
from metadisk.store.hosts import HostError, check_filehash


def _copy(source: Path, destination: Path) -> None:
    partial = destination.with_name(destination.name + ".partial")
    try:
        with open(source, "rb") as src, open(partial, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
            dst.flush()
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

    def fetch(self, filehash: str, url: str, destination: str) -> Deferred[None]:
        # The object is found by its filehash, never by a URL that came from elsewhere.
        source = self._object(filehash)
        return self._run_blocking(_copy, source, Path(destination))

    def exists(self, filehash: str, url: str) -> Deferred[bool]:
        return self._run_blocking(self._object(filehash).is_file)
