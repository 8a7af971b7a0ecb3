"""
Manifests (docs/protocol.md, sections 5.8 and 5.9): the records of a v0.3
batch as a public blob of this node's, and the announcement that says where
it is.

A manifest takes the path of an upload's blob, not one of its own: it goes
into the blob cache, gets a row in C{files} (of kind C{manifest}, which
find, downloads and the status leave out) and one in the cloud queue, and
L{CloudSync} puts it on C{copies} hosts, which repair keeps. The publisher
announces it once the hosts hold it, with the URLs other nodes can fetch.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from typing import Any

from attrs import define, frozen
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from metadisk.chain import codec
from metadisk.config import HostConfig
from metadisk.interfaces import ITransaction
from metadisk.store.blocking import RunBlocking
from metadisk.store.cache import BlobCache
from metadisk.store.catalog import Catalog
from metadisk.store.cloudsync import CloudSync
from metadisk.store.hosts.rclone import object_url

FETCHABLE = ("http://", "https://")  # what another node can fetch (plowshare links are too)


def gives_public_urls(host: HostConfig) -> bool:
    """Whether the copies of a configured host get a URL other nodes can fetch."""
    if host.kind == "local":
        return host.public_url.startswith(FETCHABLE)
    if host.kind == "rclone":
        return object_url(host.remote, "0" * 64).startswith(FETCHABLE)
    return True  # plowshare: the site's links


class ManifestUnreachable(Exception):
    """The hosts that hold a manifest give it no URL another node could fetch."""


@frozen
class Manifest:
    """A manifest as this node made it: its name, its size and its records' JSON."""

    manifest: str  # SHA-256 of its bytes
    records: int
    size: int
    payload: str  # the JSON array of its records (codec.batch_text)


def build(records: Sequence[dict[str, Any]]) -> tuple[Manifest, bytes]:
    """
    The manifest of the first of C{records} that fit a manifest's limits
    (most often all of them: 50,000 typical records take about 4 MB), and
    its bytes. Blocking: bzip2 of megabytes takes a while.
    """
    count = min(len(records), codec.MAX_MANIFEST_RECORDS)
    while True:
        payload = codec.batch_text(records[:count])
        data = codec.compress_manifest(payload)
        if count == 1 or (
            len(data) <= codec.MAX_MANIFEST_SIZE and len(payload) <= codec.MAX_MANIFEST_TEXT
        ):
            break
        count //= 2  # records with long names and many URLs: a reader would refuse it
    return Manifest(hashlib.sha256(data).hexdigest(), count, len(data), payload), data


@define(kw_only=True)
class ManifestStore:
    _catalog: Catalog
    _cache: BlobCache
    _sync: CloudSync
    _clock: IReactorTime
    _run_blocking: RunBlocking
    publish_wait: float  # seconds after which a manifest is announced with the hosts it has

    log = Logger()

    async def make(self, records: Sequence[dict[str, Any]]) -> Manifest:
        """The manifest of C{records} (the first of them that fit), in the cache."""
        manifest, data = await self._run_blocking(build, records)
        if manifest.manifest in self._cache:
            self._cache.touch(manifest.manifest)
            return manifest
        allocation = await self._cache.allocate(manifest.size)
        partial = self._cache.partial(manifest.manifest, "manifest")
        try:
            await self._run_blocking(_write, str(partial), data)
        except BaseException:
            self._cache.release(allocation)
            partial.unlink(missing_ok=True)
            raise
        self._cache.add(manifest.manifest, partial, allocation)
        return manifest

    async def record(self, txn: ITransaction, manifest: Manifest) -> None:
        """In the transaction that claims its records: the blob is this node's, for the hosts."""
        await self._catalog.add_manifest(
            txn, manifest.manifest, manifest.size, int(self._clock.seconds())
        )
        await self._sync.queue.add(txn, manifest.manifest)

    def replicate(self) -> None:
        """A manifest was recorded: copy it to the hosts in a moment."""
        self._sync.soon()

    async def forget(self, manifest: Manifest) -> None:
        """Its claim failed: the cached blob, unless recorded all the same, goes."""
        if not await self._catalog.known([manifest.manifest]):
            self._cache.discard(manifest.manifest)

    async def announcement(
        self, manifest: str, records: int, size: int, since: float
    ) -> codec.Announcement | None:
        """
        The announcement of a manifest once C{copies} hosts hold it, or,
        C{publish_wait} seconds after C{since}, once any does (the rule for
        records); None until then. Raises L{ManifestUnreachable} if those
        that hold it give no URL another node can fetch.
        """
        holders = await self._catalog.hosts_of(manifest)
        waited = self._clock.seconds() >= since + self.publish_wait
        if not holders or (len(holders) < self._sync.copies and not waited):
            return None
        urls = [(name, url) for name, url in holders if url.startswith(FETCHABLE)]
        if not urls:
            raise ManifestUnreachable(
                f"manifest {manifest} is on {', '.join(name for name, _ in holders)},"
                " none of which gives it a public URL"
            )
        return codec.Announcement(manifest, records, size, tuple(urls[: codec.MAX_UPLOADS_IN]))


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
