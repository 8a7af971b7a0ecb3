"""
Blobs named by a record from the chain on a host this node has not
configured: fetched from the record's http(s) URL. The caller
(L{metadisk.store.cloudsync.CloudSync.fetch}) checks the SHA-256, so a URL
can waste a download but never serve wrong bytes; and it cannot hold the
cache room set aside for it for long: the bytes must keep coming.

The URL is a stranger's: its agent connects only to public addresses
(L{metadisk.store.hosts.publicnet}), and a redirect is not followed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import BinaryIO
from urllib.parse import urlsplit

from attrs import define
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IAgent
from zope.interface import implementer

from metadisk.interfaces import IFileHost
from metadisk.store.hosts import SLOWEST_RATE, HostError, Stored, check_filehash

PROGRESS_WINDOW = 30.0  # seconds: in each, at least SLOWEST_RATE bytes a second must arrive
_PRINTABLE = re.compile(r"[!-~]+")  # ASCII, no space, no control character (no CRLF)


def request_uri(url: str) -> bytes:
    """
    C{url} as an agent takes it, or a L{HostError}: an http(s) URL naming a
    host, with no credentials and a good port.
    """
    where = url[:100]
    if not _PRINTABLE.fullmatch(url):
        raise HostError(f"not a printable ASCII URL: {where!r}")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:  # a bad port, a bad IPv6 address
        raise HostError(f"{where}: {e}") from None
    if parts.scheme not in ("http", "https"):
        raise HostError(f"not an http(s) URL: {where!r}")
    if parts.username is not None or parts.password is not None:
        raise HostError(f"{where}: a URL with credentials")
    if not parts.hostname:
        raise HostError(f"{where}: no host")
    if port == 0:
        raise HostError(f"{where}: bad port 0")
    return url.encode("ascii")


@implementer(IFileHost)
@define
class URLHost:
    """Read-only: it fetches what other nodes stored; it stores nothing."""

    _agent: IAgent  # publicnet.public_agent(): public addresses only, https verified
    max_size: int  # bytes: no blob is larger than the cache that is to hold it
    _clock: IReactorTime
    name: str = "url"

    def store(self, filehash: str, path: str) -> Deferred[str]:
        raise HostError("a URL host cannot store")

    def store_all(self, blobs: Sequence[tuple[str, str]]) -> Deferred[list[Stored]]:
        return succeed([HostError("a URL host cannot store") for _ in blobs])

    def fetch(self, filehash: str, url: str, destination: str, size: int) -> Deferred[None]:
        return Deferred.fromCoroutine(self._fetch(filehash, url, destination, size))

    async def _fetch(self, filehash: str, url: str, destination: str, size: int) -> None:
        check_filehash(filehash)
        # The headers come within a window too; a refusal's body is not worth reading.
        response = await self._agent.request(b"GET", request_uri(url)).addTimeout(
            PROGRESS_WINDOW, self._clock
        )
        if response.code != 200:  # a redirect too: it is not followed
            response.deliverBody(_Hangup())
            raise HostError(f"{url[:100]}: HTTP {response.code}")
        # The record's size, which the chain could overstate: never more than the cache holds.
        limit = min(size, self.max_size)
        with open(destination, "wb") as f:
            receiver = BlobReceiver(f, limit, url[:100], self._clock)
            response.deliverBody(receiver)
            await receiver.done

    def exists(self, filehash: str, url: str) -> Deferred[bool]:
        async def exists() -> bool:
            response = await self._agent.request(b"HEAD", request_uri(url)).addTimeout(
                PROGRESS_WINDOW, self._clock
            )
            return bool(response.code == 200)

        return Deferred.fromCoroutine(exists())


class BlobReceiver(Protocol):
    """
    Writes a response body to a file: no more than C{limit} bytes, and at
    least L{SLOWEST_RATE} bytes a second in every L{PROGRESS_WINDOW}, or the
    connection is dropped.
    """

    def __init__(self, file: BinaryIO, limit: int, url: str, clock: IReactorTime) -> None:
        self._file = file
        self._limit = limit
        self._url = url
        self._clock = clock
        self._received = 0
        self._checked = 0  # bytes received at the last progress check
        self._check: IDelayedCall | None = None
        # Cancelled (a timeout, the node stopping): the connection is dropped.
        self.done: Deferred[None] = Deferred(lambda _: self._hang_up())

    def connectionMade(self) -> None:
        self._check = self._clock.callLater(PROGRESS_WINDOW, self._check_progress)

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self._received += len(data)
        if self._received > self._limit:
            self._abort(f"larger than {self._limit} bytes")
            return
        self._file.write(data)

    def _check_progress(self) -> None:
        self._check = None
        if self._received - self._checked < SLOWEST_RATE * PROGRESS_WINDOW:
            self._abort(f"slower than {SLOWEST_RATE} bytes/s")
            return
        self._checked = self._received
        self._check = self._clock.callLater(PROGRESS_WINDOW, self._check_progress)

    def _hang_up(self) -> None:
        if self._check is not None and self._check.active():
            self._check.cancel()
        self._check = None
        self.transport.stopProducing()

    def _abort(self, why: str) -> None:
        self._hang_up()  # first: the errback may go on to another host at once
        self.done.errback(HostError(f"{self._url}: {why}"))

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        if self._check is not None and self._check.active():
            self._check.cancel()
        if self.done.called:
            return
        # A body that ends with the connection (no length given) may be whole: the
        # SHA-256 check tells.
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(None)
        else:
            why = reason.getErrorMessage() or reason.type.__name__
            self.done.errback(HostError(f"{self._url}: {why}"))


class _Hangup(Protocol):
    """Takes a response body by dropping its connection."""

    def connectionMade(self) -> None:
        self.transport.stopProducing()
