"""
Receiving an upload as it streams in: the multipart body is parsed chunk by
chunk, the file part hashed and written to disk, and the upload admitted
(this month's cap, the payer's credit, then room in the cache) as soon as
the payer is known. Bytes that come before that are unpaid, and bounded
(L{metadisk.web.unpaid}). Nothing of the body is held in memory.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, BinaryIO

from attrs import define, frozen
from multipart import MultipartError, MultipartSegment, PushMultipartParser, parse_options_header
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from metadisk.interfaces import ITransaction
from metadisk.ledger import FREE, BalanceInsufficient, Ledger, Reservation, UnknownToken
from metadisk.meters import INCOMING, Meters
from metadisk.store.cache import Allocation, BlobCache
from metadisk.throttle import Throttle, throttled_reader
from metadisk.web.errors import APIError, as_api_error, error
from metadisk.web.guard import TokenGuard
from metadisk.web.holds import SocketHolds
from metadisk.web.unpaid import ALLOWANCE, UnpaidBudget

UPLOAD_COST = 4  # bytes of credit per byte uploaded: 1 for the transfer in, 3 for hosting
MAX_TOKEN_FIELD = 128
TOKEN_PATTERN = re.compile(r"[A-Za-z0-9]{1,128}")
# What a multipart body may carry beyond the file itself: boundaries, part headers, a token.
MULTIPART_ALLOWANCE = 64 * 1024
UNPAID_RETRY = 10  # seconds: Retry-After when the unpaid budget is spent


async def reserve_credit(
    ledger: Ledger,
    guard: TokenGuard,
    address: Any,
    token: str,
    amount: int,
) -> Reservation:
    """
    Take C{amount} of credit from C{token} for a transfer, or refuse it as
    the API documents: an unknown token is 401 (and counts as a guess), too
    little credit is 402.
    """
    try:
        return await reserve_credit_in(ledger, None, token, amount)
    except UnknownToken:
        raise unknown_token(guard, address) from None


async def reserve_credit_in(
    ledger: Ledger, txn: ITransaction | None, token: str, amount: int
) -> Reservation:
    """
    L{reserve_credit} (in C{txn}, if given) but for an unknown token, which
    raises L{UnknownToken}: the guess is for the caller to count, in the
    reactor's thread (SQLite may run a transaction's work in a thread of its own).
    """
    if not TOKEN_PATTERN.fullmatch(token):
        raise UnknownToken()
    try:
        if txn is not None:
            return await ledger.reserve_in(txn, token, amount)
        return await ledger.reserve(token, amount)
    except BalanceInsufficient:
        raise error(402, "balance-insufficient") from None


def unknown_token(guard: TokenGuard, address: Any) -> APIError:
    """An unknown token, counted as a guess from C{address}: the 401 to raise."""
    guard.unknown_token(address)
    return error(401, "invalid-token")


@frozen
class ReceivedUpload:
    """A completely received, admitted upload, handed to the route handler."""

    path: Path
    sha256: str
    size: int
    filename: str
    reservation: Reservation
    allocation: Allocation


@define(kw_only=True)
class UploadPolicy:
    """What the node requires of an upload, and where uploads go."""

    ledger: Ledger | None  # None: accounts disabled, uploads are free
    cache: BlobCache
    meters: Meters
    guard: TokenGuard
    max_file_size: int
    temporary: Callable[[str], Path]
    unpaid: UnpaidBudget
    incoming: Throttle | None = None  # the upload bandwidth limits

    def too_large(self, content_length: int) -> bool:
        if self.ledger is None and content_length > self.unpaid.share:
            return True  # free uploads are unpaid bytes, bounded by an address's share
        return content_length > self.max_file_size + MULTIPART_ALLOWANCE


def multipart_boundary(content_type: bytes | None) -> str | None:
    if not content_type:
        return None
    kind, options = parse_options_header(content_type.decode("latin-1"))
    if kind != "multipart/form-data":
        return None
    return options.get("boundary") or None


class UploadReceiver:
    """
    One upload in progress. The request feeds it body chunks; admission
    steps run in order while the socket is paused; L{result} fires with a
    L{ReceivedUpload} or fails with an L{APIError}. A failure before the
    body is complete is answered at once through C{respond_early}.
    """

    log = Logger()

    def __init__(
        self,
        policy: UploadPolicy,
        request: Any,
        length: int,
        boundary: str,
        query_token: str | None,
    ) -> None:
        self._policy = policy
        self._request = request
        self._length = length
        self._address = str(getattr(request.getClientAddress(), "host", None) or "unknown")
        self._received = 0
        self._unpaid = 0  # bytes held in the unpaid budget for this upload
        self._parser = PushMultipartParser(boundary, content_length=length, max_segment_count=16)
        self._part: str | None = None
        self._file: BinaryIO | None = None
        self._path: Path | None = None
        self._filename = "file"
        self._file_complete = False
        self._sha256 = hashlib.sha256()
        self._size = 0
        self._token_field = bytearray()
        self._token: str | None = None
        self._reservation = FREE
        self._allocation: Allocation | None = None
        self._steps: Deferred[None] = succeed(None)
        self._pending = 0
        self._paused = False  # by the steps in progress
        self._failure: APIError | None = None
        self._body_complete = False
        self._lost = False
        self._holds = SocketHolds(request)
        self._throttle = throttled_reader(policy.incoming, self._holds.pause, self._holds.resume)
        if self._throttle is not None:
            # However the request ends (answered early, cut off), its share of bandwidth ends.
            request.notifyFinish().addBoth(lambda _: self._end_throttle())
        self._result: Deferred[ReceivedUpload] = Deferred()
        self._admit(self._begin)
        if policy.ledger is not None and query_token is not None:
            self._accept_token(query_token)

    def result(self) -> Deferred[ReceivedUpload]:
        return self._result

    # Admission: each step is a coroutine; the socket is paused while any waits.

    def _admit(self, step: Callable[[], Awaitable[None]]) -> None:
        self._pending += 1

        def run(_: object) -> Deferred[None] | None:
            if self._failure is not None:
                return None
            return Deferred.fromCoroutine(step())

        def done(outcome: object) -> None:
            self._pending -= 1
            if isinstance(outcome, Failure):
                self._fail(as_api_error(outcome))
            elif self._failure is not None:
                self._discard()  # the step took something after the upload failed: give it back
            if self._pending == 0:
                if self._paused:
                    self._paused = False
                    self._holds.resume()
                self._maybe_finish()

        self._steps.addCallback(run).addBoth(done)
        if self._pending and not self._paused:
            # The step waits (for the database, the cache): no more of the body until it is done.
            self._paused = True
            self._holds.pause()

    async def _begin(self) -> None:
        self._policy.meters.check(INCOMING, self._length)
        if self._policy.ledger is None:
            # Free: the whole upload is unpaid bytes while it comes in.
            self._hold(self._length)

    async def _pay(self) -> None:
        """The payer is known: its credit, then the cache's room; the bytes are paid for now."""
        ledger = self._policy.ledger
        assert ledger is not None and self._token is not None
        self._reservation = await reserve_credit(
            ledger,
            self._policy.guard,
            self._request.getClientAddress(),
            self._token,
            UPLOAD_COST * self._length,
        )
        await self._make_room()

    async def _make_room(self) -> None:
        self._allocation = await self._policy.cache.allocate(self._length)
        self._release_unpaid()

    def _hold(self, n: int) -> None:
        if not self._policy.unpaid.take(self._address, n):
            raise error(503, "unpaid-upload-limit", Retry_After=str(UNPAID_RETRY))
        self._unpaid += n

    def _release_unpaid(self) -> None:
        self._policy.unpaid.give_back(self._address, self._unpaid)
        self._unpaid = 0

    def _accept_token(self, token: str) -> None:
        if self._token is not None:
            return  # the first token given pays: the query string's, else the form's
        if not TOKEN_PATTERN.fullmatch(token):
            self._fail(unknown_token(self._policy.guard, self._request.getClientAddress()))
            return
        self._token = token
        self._admit(self._pay)

    # The body.

    def dataReceived(self, data: bytes) -> None:
        self._policy.meters.record(INCOMING, len(data))
        if self._throttle is not None:
            self._throttle.received(len(data))
        if self._failure is not None:
            return
        self._received += len(data)
        try:
            if self._token is None and self._policy.ledger is not None:
                # Nobody has paid for these yet.
                self._hold(max(0, self._received - ALLOWANCE - self._unpaid))
            for event in self._parser.parse(data):
                if self._failure is not None:
                    return  # refused mid-chunk (a bad token field): open no file after that
                self._event(event)
        except MultipartError as e:
            self.log.info("malformed upload: {e}", e=e)
            self._fail(error(400, "bad-request"))
        except APIError as e:
            self._fail(e)

    def _event(self, event: MultipartSegment | bytes | None) -> None:
        if isinstance(event, MultipartSegment):
            self._start_part(event)
        elif event is None:
            self._end_part()
        elif self._part == "file":
            assert self._file is not None
            self._size += len(event)
            if self._size > self._policy.max_file_size:
                raise error(413, "file-too-large")
            self._sha256.update(event)
            self._file.write(event)
        elif self._part == "token":
            self._token_field += event
            if len(self._token_field) > MAX_TOKEN_FIELD:
                raise error(400, "bad-request")

    def _start_part(self, segment: MultipartSegment) -> None:
        if segment.name == "file":
            if self._path is not None:
                raise error(400, "bad-request")  # two files in one upload
            self._path = self._policy.temporary(".part")
            self._file = open(self._path, "wb")
            self._filename = segment.filename or "file"
            self._part = "file"
        elif segment.name == "token":
            self._part = "token"
        else:
            self._part = None  # other fields are read past

    def _end_part(self) -> None:
        if self._part == "file":
            assert self._file is not None
            self._file.close()
            self._file_complete = True
        elif self._part == "token":
            self._accept_token(self._token_field.decode("latin-1").strip())
            self._token_field = bytearray()
        self._part = None

    def bodyReceived(self) -> None:
        """The whole body is in."""
        self._body_complete = True
        self._end_throttle()
        if self._failure is None:
            try:
                self._parser.close()
            except MultipartError:
                self._fail(error(400, "bad-request"))
        if self._failure is None:
            if not self._file_complete:
                self._fail(error(400, "no-file"))
            elif self._policy.ledger is None:
                self._admit(self._make_room)  # free: room once the whole file is in
            elif self._token is None:
                self._fail(error(401, "token-required"))
        self._maybe_finish()

    def connectionLost(self) -> None:
        """The client went away before the body was complete: forget the upload."""
        if not self._body_complete:
            self._lost = True
            self._fail(error(400, "connection-lost"))

    # Endings.

    def _end_throttle(self) -> None:
        if self._throttle is not None:
            self._throttle.close()

    def _fail(self, failure: APIError) -> None:
        if self._failure is not None:
            return
        self._failure = failure
        self._discard()
        if not self._body_complete and not self._lost:
            self._request.respond_early(failure)
        self._maybe_finish()

    def _discard(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._path is not None:
            self._path.unlink(missing_ok=True)
        if self._allocation is not None:
            self._policy.cache.release(self._allocation)
        self._release_unpaid()
        if self._reservation.id is not None and self._policy.ledger is not None:
            reservation, self._reservation = self._reservation, FREE
            d = Deferred.fromCoroutine(self._policy.ledger.refund(reservation))
            d.addErrback(lambda f: self.log.failure("refund failed", f))

    def _maybe_finish(self) -> None:
        if not self._body_complete or self._pending or self._result.called:
            return
        if self._failure is not None:
            self._result.errback(self._failure)
            return
        assert self._path is not None and self._allocation is not None
        self._result.callback(
            ReceivedUpload(
                path=self._path,
                sha256=self._sha256.hexdigest(),
                size=self._size,
                filename=self._filename,
                reservation=self._reservation,
                allocation=self._allocation,
            )
        )
