"""The files API: upload, download, find and the node's status."""

from __future__ import annotations

import os
import re
from collections.abc import Awaitable, Callable
from typing import Any, BinaryIO
from urllib.parse import quote

from attrs import define, evolve
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.task import Cooperator
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from metadisk.crypto import is_hex64
from metadisk.interfaces import ITransaction
from metadisk.ledger import FREE, BalanceInsufficient, Ledger, Reservation, UnknownToken
from metadisk.meters import INCOMING, OUTGOING, Meters
from metadisk.store.catalog import FileRecord
from metadisk.store.files import FileStore
from metadisk.throttle import Throttle
from metadisk.web.delivery import Delivery, delivery_of
from metadisk.web.errors import error, json_app, json_response, write_json
from metadisk.web.guard import TokenGuard
from metadisk.web.openapi import served as openapi_document
from metadisk.web.params import query_argument
from metadisk.web.producers import BlobProducer, ConsumerStopped
from metadisk.web.upload import UPLOAD_COST, ReceivedUpload, reserve_credit_in, unknown_token

_RANGE = re.compile(rb"\s*bytes\s*=\s*([0-9]*)\s*-\s*([0-9]*)\s*")

ChainStatus = Callable[[], Awaitable[dict[str, Any]]]


def byte_range(header: bytes | None, size: int) -> tuple[int, int] | None:
    """The first and last byte asked for by a C{Range} header, or None for the whole file."""
    if header is None:
        return None
    match = _RANGE.fullmatch(header)
    unsatisfiable = error(416, "invalid-range", Content_Range=f"bytes */{size}")
    if match is None or not (match.group(1) or match.group(2)):
        raise unsatisfiable
    first, last = _position(match.group(1)), _position(match.group(2))
    if first is not None:
        start = first
        end = min(last, size - 1) if last is not None else size - 1
        if start >= size or (last is not None and last < start):
            raise unsatisfiable
        return start, end
    suffix = last
    if suffix == 0 or size == 0:
        raise unsatisfiable
    return max(0, size - suffix), size - 1


def _position(digits: bytes) -> int | None:
    # Python will not parse more than 4300 digits (ValueError); anything past 2^53 is past the end.
    if not digits:
        return None
    digits = digits.lstrip(b"0") or b"0"
    return int(digits) if len(digits) <= 18 else 2**60


def content_disposition(filename: str) -> str:
    """C{attachment} with the name: plain ASCII for old clients, UTF-8 (RFC 6266) for the rest."""
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in filename)
    header = f'attachment; filename="{fallback}"'
    if fallback != filename:
        header += f"; filename*=UTF-8''{quote(filename, safe='')}"
    return header


@define
class Charge:
    """
    What a download holds of its token's credit (a reservation), and what it
    owes: the fetch of a blob not in the cache (its size, kept once the node
    has fetched it) and the bytes sent.
    """

    _ledger: Ledger | None  # None: transfers are free
    reservation: Reservation
    fetch: int  # what the fetch costs; 0: served from the cache
    send: int  # credit held for the bytes to send
    fetched: bool = False  # the fetch happened (or goes on without the client)

    async def pay_fetch(self, size: int) -> None:
        """A claim says the blob is C{size} bytes: hold that much for its fetch before it starts."""
        if size > self.fetch:
            await self._extend(size - self.fetch)
            self.fetch = size

    async def cover(self, send: int) -> None:
        """Hold enough for C{send} bytes to send."""
        if send > self.send:
            await self._extend(send - self.send)
        self.send = send

    async def _extend(self, amount: int) -> None:
        if self._ledger is not None:
            try:
                self.reservation = await self._ledger.extend(self.reservation, amount)
            except BalanceInsufficient:
                raise error(402, "balance-insufficient") from None

    async def settle(self, sent: int) -> None:
        """Keep the fetch if it happened and what was sent; give back the rest."""
        if self._ledger is not None:
            await self._ledger.settle(self.reservation, self._kept(sent))

    def settle_soon(self, sent: int) -> Deferred[None]:
        """L{settle}, in the ledger's next batch of settlements (fires once committed)."""
        if self._ledger is None:
            return succeed(None)
        return self._ledger.settle_soon(self.reservation, self._kept(sent))

    def _kept(self, sent: int) -> int:
        return (self.fetch if self.fetched else 0) + sent


@define(slots=False, kw_only=True)  # Klein binds itself to the instance's __dict__
class FilesAPI:
    _store: FileStore
    _ledger: Ledger | None  # None: accounts disabled, transfers are free
    _meters: Meters
    _guard: TokenGuard
    _cooperator: Cooperator
    _max_file_size: int
    _chain_status: ChainStatus
    _outgoing: Throttle | None = None  # the download bandwidth limits

    log = Logger()

    app = json_app()

    def resource(self) -> Any:
        return self.app.resource()

    @app.route("/upload", methods=["POST"])
    async def upload(self, request: IRequest) -> bytes:
        if getattr(request, "upload", None) is None:
            raise error(400, "no-file")  # a path the request plumbing did not take for an upload
        received: ReceivedUpload = await request.upload.result()
        reservation, cost = received.reservation, UPLOAD_COST * received.size

        async def charge(txn: ITransaction, filehash: str, key: bytes) -> None:
            await Ledger.settle_in(txn, reservation, cost)  # one commit: the file and its charge

        try:
            filehash, key = await self._store.ingest(
                received.path,
                received.sha256,
                received.size,
                received.filename,
                received.allocation,
                also=charge,
            )
        except BaseException:
            await self._settle(reservation, 0)
            raise
        if self._ledger is not None:
            self._ledger.counted(reservation, cost)
        return write_json(request, 201, {"filehash": filehash, "key": key.hex()})

    @app.route("/download/<filehash>", methods=["GET", "HEAD"])
    async def download(self, request: IRequest, filehash: str) -> bytes | None:
        if not is_hex64(filehash):
            raise error(400, "invalid-filehash")
        filehash = filehash.lower()
        key_hex = query_argument(request, "key")
        if key_hex is not None and not is_hex64(key_hex):
            raise error(400, "invalid-key")

        async def look_up(txn: ITransaction) -> tuple[FileRecord, Charge | None]:
            # The record and the credit it calls for in one transaction: one round trip.
            record = await self._store.find(filehash, txn)
            if record is None:
                raise error(404, "file-not-found")
            start, end = self._span(request, record)
            if request.method == b"HEAD" or end < start:
                return record, None  # free: headers only, or nothing to send
            # A blob not in the cache is fetched whole first, whatever the range: that costs
            # its size, paid up front, and kept once the node has fetched it.
            fetch = 0 if self._store.cached(filehash) else record.filesize
            length = end - start + 1
            self._meters.check(OUTGOING, length)
            if fetch:
                self._meters.check(INCOMING, fetch)
            reservation = await self._reserve(request, fetch + length, txn)
            return record, Charge(self._ledger, reservation, fetch, length)

        try:
            record, charge = await self._store.transaction(look_up)
        except UnknownToken:
            raise unknown_token(self._guard, request.getClientAddress()) from None
        if charge is None:
            self._download_headers(request, record)
            return b""
        delivery = delivery_of(request)
        producer: BlobProducer | None = None

        def lost(_: object) -> None:
            if producer is not None:
                producer.stopProducing()

        # Fires (with None) when the response ends, or when the connection is lost first.
        ended: Deferred[None] = request.notifyFinish().addErrback(lost)
        sent = 0
        position = 0  # where the body sent so far ends in the connection's output

        def count(n: int) -> None:
            nonlocal sent, position
            sent += n
            position = delivery.position()
            self._meters.record(OUTGOING, n)

        try:
            blob = await self._open(record, charge)
            size = os.fstat(blob.fileno()).st_size
            if size != record.filesize:
                # A claim that said another size: the file is the verified blob.
                record = await self._store.find(filehash) or evolve(record, filesize=size)
            start, end = self._span(request, record)
            length = end - start + 1
            await charge.cover(send=length)
            self._download_headers(request, record)
            key = bytes.fromhex(key_hex) if key_hex is not None else None
            share = self._outgoing.share() if self._outgoing is not None else None
            producer = BlobProducer(
                blob, start, end - start + 1, key, self._cooperator, count, share
            )
            await producer.start(request)
        except BaseException as e:
            # What was not sent, or was sent but never reached the client, is given back.
            await charge.settle(await delivery.acknowledged(position - sent, position))
            if isinstance(e, ConsumerStopped) and not ended.called:
                # The transport stops its producer before the request hears of the lost
                # connection, later in this turn, Klein first. Raised before that, the
                # cancellation would be answered as an error on a dead connection (and logged).
                await ended
            raise
        settling = Deferred.fromCoroutine(
            self._settle_delivered(charge, delivery, position - sent, position)
        )
        if not getattr(getattr(request, "channel", None), "persistent", False):
            # The node closes the connection after this response: not before the client has it.
            await settling
        # Else the client's next request on this connection need not wait for its
        # acknowledgement of this one (docs/architecture.md).
        return None

    async def _settle_delivered(
        self, charge: Charge, delivery: Delivery, start: int, end: int
    ) -> None:
        """
        Once the client's TCP has acknowledged what it got of the output from
        C{start} to C{end}: the charge, settled on that with the ledger's next batch.
        """
        settled = charge.settle_soon(await delivery.acknowledged(start, end))
        settled.addErrback(lambda f: self.log.failure("settling a download failed", f))

    async def _open(self, record: FileRecord, charge: Charge) -> BinaryIO:
        """The blob, fetched first if need be: a fetch begun is paid, even if the client goes."""
        if not charge.fetch:
            return await self._store.open_blob(record)
        try:
            blob = await self._store.open_blob(record, charge.pay_fetch)
        except CancelledError:
            charge.fetched = True  # the client left; the node's fetch goes on
            raise
        charge.fetched = True
        charge.fetch = os.fstat(blob.fileno()).st_size
        return blob

    @staticmethod
    def _download_headers(request: IRequest, record: FileRecord) -> None:
        span = byte_range(request.getHeader(b"range"), record.filesize)
        start, end = span if span is not None else (0, record.filesize - 1)
        request.setHeader(b"Content-Type", b"application/octet-stream")
        request.setHeader(
            b"Content-Disposition", content_disposition(record.filename).encode("ascii")
        )
        request.setHeader(b"Accept-Ranges", b"bytes")
        request.setHeader(b"Content-Length", b"%d" % (end - start + 1))
        if span is not None:
            request.setResponseCode(206)
            request.setHeader(b"Content-Range", b"bytes %d-%d/%d" % (start, end, record.filesize))

    @staticmethod
    def _span(request: IRequest, record: FileRecord) -> tuple[int, int]:
        """The first and last byte to send (last < first: none)."""
        span = byte_range(request.getHeader(b"range"), record.filesize)
        return span if span is not None else (0, record.filesize - 1)

    async def _reserve(self, request: IRequest, amount: int, txn: ITransaction) -> Reservation:
        if self._ledger is None:
            return FREE
        token = query_argument(request, "token")
        if token is None:
            raise error(401, "token-required")
        return await reserve_credit_in(self._ledger, txn, token, amount)

    async def _settle(self, reservation: Reservation, cost: int) -> None:
        if self._ledger is not None:
            await self._ledger.settle(reservation, cost)

    @app.route("/openapi.json", methods=["GET"])
    def openapi(self, request: IRequest) -> bytes:
        """The OpenAPI document of the whole API (metadisk.web.openapi)."""
        return json_response(request, 200, openapi_document())

    @app.route("/find/<filehash>", methods=["GET"])
    async def find(self, request: IRequest, filehash: str) -> bytes:
        record = await self._store.find(filehash.lower()) if is_hex64(filehash) else None
        if record is None:
            raise error(404, "File not found")
        return write_json(request, 200, record.to_json())

    @app.route("/status", methods=["GET"])
    async def status(self, request: IRequest) -> bytes:
        count, size = await self._store.sync.queue.pending()
        chain = await self._chain_status()
        body = {
            "bandwidth": self._meters.snapshot(),
            "storage": {
                "capacity": self._store.cache.capacity,
                "used": self._store.cache.used,
                "max_file_size": self._max_file_size,
            },
            "sync": {
                "blockchain_queue": chain.pop("queue", {"count": 0, "size": 0}),
                "cloud_queue": {"count": count, "size": size},
                "manifests": chain.pop("manifests", {"pending": 0, "records": 0}),
            },
            "datacoin": chain,
            "florincoin": chain,
            "metachains": {key: chain[key] for key in ("coin", "address", "block")},
        }
        return write_json(request, 200, body)
