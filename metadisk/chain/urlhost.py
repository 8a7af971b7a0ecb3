"""
Blobs named by a record from the chain on a host this node has not
configured: fetched from the record's http(s) URL with treq. The caller
(L{metadisk.store.cloudsync.CloudSync.fetch}) checks the SHA-256, so a URL
can waste a download but never serve wrong bytes.
"""

from __future__ import annotations

from typing import Any

from attrs import define
from twisted.internet.defer import Deferred
from zope.interface import implementer

from metadisk.interfaces import IFileHost
from metadisk.store.hosts import HostError, check_filehash


@implementer(IFileHost)
@define
class URLHost:
    """Read-only: it fetches what other nodes stored; it stores nothing."""

    _http: Any  # a treq HTTPClient: https is verified by its agent
    max_size: int  # bytes: no blob is larger than the cache that is to hold it
    name: str = "url"

    def store(self, filehash: str, path: str) -> Deferred[str]:
        raise HostError("a URL host cannot store")

    def fetch(self, filehash: str, url: str, destination: str, size: int) -> Deferred[None]:
        return Deferred.fromCoroutine(self._fetch(filehash, url, destination, size))

    async def _fetch(self, filehash: str, url: str, destination: str, size: int) -> None:
        check_filehash(filehash)
        if not url.startswith(("http://", "https://")):
            raise HostError(f"not an http(s) URL: {url[:100]!r}")
        response = await self._http.get(url, unbuffered=True)
        if response.code != 200:
            await response.collect(lambda _: None)
            raise HostError(f"{url[:100]}: HTTP {response.code}")
        # The record's size, which the chain could overstate: never more than the cache holds.
        limit = min(size, self.max_size)
        received = 0
        with open(destination, "wb") as f:

            def write(data: bytes) -> None:
                nonlocal received
                received += len(data)
                if received > limit:
                    raise HostError(f"{url[:100]}: larger than {limit} bytes")
                f.write(data)

            await response.collect(write)

    def exists(self, filehash: str, url: str) -> Deferred[bool]:
        async def exists() -> bool:
            response = await self._http.head(url)
            return bool(response.code == 200)

        return Deferred.fromCoroutine(exists())
