"""
The tus 1.0.0 protocol at C{/api/tus/} (docs/protocol.md section 2.10): core,
creation, creation-with-upload, termination, expiration and checksum, over
L{ResumableUploads}.

Bodies stream as plain uploads do: C{MetaDiskRequest.gotLength} hands a POST
or PATCH to L{TusIntake.receive} before any body byte, which refuses it at
once (everything a PATCH needs is known then) or makes a L{TusReceiver} that
writes the bytes to the partial file as they come. The Klein app answers
the requests once their bodies are in, and the ones that have none.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import re
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from attrs import define
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest

from metadisk.routes import TUS, TUS_UPLOAD, route_of
from metadisk.store.resumable import COMPLETE
from metadisk.throttle import Throttle, throttled_reader
from metadisk.web.errors import APIError, as_api_error, error, json_app, write_json
from metadisk.web.guard import TokenGuard
from metadisk.web.holds import SocketHolds
from metadisk.web.resumable import Chunk, LiveUpload, ResumableUploads

VERSION = "1.0.0"
EXTENSIONS = "creation,creation-with-upload,termination,expiration,checksum"
CHECKSUMS = {"sha1": 20, "sha256": 32}  # algorithm: digest size
OFFSET_STREAM = "application/offset+octet-stream"
MAX_METADATA_VALUE = 1024  # bytes of one decoded Upload-Metadata value
_DIGITS = re.compile(r"[0-9]{1,16}")
_ID = re.compile(r"/api/tus/([^/?]+)")
_TOKEN_PATTERN = re.compile(r"[A-Za-z0-9]{1,128}")


def tus_error(status: int, code: str, **headers: str) -> APIError:
    """An error of the tus routes: the API's JSON, and the protocol's version."""
    return error(status, code, Tus_Resumable=VERSION, **headers)


def with_version(failure: APIError) -> APIError:
    """Any refusal of a tus request says which version the node speaks."""
    return APIError(failure.status, failure.body, {**failure.headers, "Tus-Resumable": VERSION})


def http_date(seconds: float) -> str:
    return email.utils.formatdate(seconds, usegmt=True)


def parse_metadata(header: str) -> dict[str, str] | None:
    """C{Upload-Metadata}: comma-separated C{key base64(value)}; None when malformed."""
    pairs: dict[str, str] = {}
    for item in header.split(",") if header.strip() else ():
        parts = item.strip().split(" ")
        if not parts[0] or len(parts) > 2 or parts[0] in pairs:
            return None
        value = b""
        if len(parts) == 2:
            try:
                value = base64.b64decode(parts[1], validate=True)
            except binascii.Error:
                return None
        if len(value) > MAX_METADATA_VALUE:
            return None
        pairs[parts[0]] = value.decode("utf-8", "replace")
    return pairs


def parse_checksum(header: str | None) -> tuple[str, bytes] | None:
    """C{Upload-Checksum: ALGORITHM BASE64}; None if absent; 400 if unusable."""
    if header is None:
        return None
    algorithm, _, encoded = header.strip().partition(" ")
    if algorithm not in CHECKSUMS:
        raise tus_error(400, "unsupported-checksum")
    try:
        digest = base64.b64decode(encoded.strip(), validate=True)
    except binascii.Error:
        raise tus_error(400, "bad-request") from None
    if len(digest) != CHECKSUMS[algorithm]:
        raise tus_error(400, "bad-request")
    return algorithm, digest


def _whole(value: str | None) -> int | None:
    return int(value) if value is not None and _DIGITS.fullmatch(value.strip()) else None


def _header(request: Any, name: bytes) -> str | None:
    value = request.requestHeaders.getRawHeaders(name)
    return value[-1].decode("latin-1") if value else None


def _media_type(request: Any) -> str:
    return (_header(request, b"content-type") or "").split(";")[0].strip().lower()


def check_version(request: Any) -> None:
    """Every tus request but OPTIONS says which version it speaks: this one, or 412."""
    if _header(request, b"tus-resumable") != VERSION:
        raise tus_error(412, "unsupported-version", Tus_Version=VERSION)


@define
class TusIntake:
    """Takes tus request bodies as they begin (C{gotLength}), before any body byte."""

    uploads: ResumableUploads
    guard: TokenGuard
    incoming: Throttle | None = None  # the upload bandwidth limits

    def handles(self, method: bytes, path: bytes) -> bool:
        route = route_of(path.decode("latin-1"))
        return (method, route) in ((b"POST", TUS), (b"PATCH", TUS_UPLOAD))

    def receive(self, request: Any, method: bytes, path: bytes, length: int | None) -> Any:
        """A L{TusReceiver} for the body, or None when the request was answered early."""
        try:
            check_version(request)
            if length is None:
                raise tus_error(411, "length-required")  # no chunked bodies
            if method == b"PATCH":
                return self._patch(request, path, length)
            return self._create(request, path, length)
        except Exception:  # an APIError, or this month's cap (TransferLimitReached)
            request.respond_early(with_version(as_api_error(Failure())))
            return None

    def known(self, request: Any, upload_id: str) -> LiveUpload:
        """The upload this URL names, or 404 (a guess, as an unknown token is), or 410."""
        upload = self.uploads.get(upload_id)
        if upload is None:
            self.guard.unknown_token(request.getClientAddress())
            raise tus_error(404, "upload-not-found")
        if self.uploads.expired(upload):
            raise tus_error(410, "upload-expired")
        return upload

    def _patch(self, request: Any, path: bytes, length: int) -> TusReceiver:
        match = _ID.fullmatch(path.decode("latin-1").split("?")[0])
        assert match is not None  # the route said so
        if _media_type(request) != OFFSET_STREAM:
            raise tus_error(415, "unsupported-content-type")
        upload = self.known(request, match.group(1))
        offset = _whole(_header(request, b"upload-offset"))
        if offset is None:
            raise tus_error(400, "bad-request")
        if upload.busy:
            raise tus_error(423, "upload-locked")
        current = upload.length if upload.state == COMPLETE else upload.durable
        if offset != current:
            raise tus_error(409, "offset-mismatch", Upload_Offset=str(current))
        if offset + length > upload.length:
            raise tus_error(413, "upload-length-exceeded")
        checksum = parse_checksum(_header(request, b"upload-checksum"))
        self.uploads.check_month(length)
        return TusReceiver(self, request, upload, checksum)

    def _create(self, request: Any, path: bytes, length: int) -> TusReceiver:
        if _header(request, b"upload-defer-length") is not None:
            raise tus_error(400, "bad-request")  # creation-defer-length is not offered
        upload_length = _whole(_header(request, b"upload-length"))
        if upload_length is None:
            raise tus_error(400, "bad-request")
        if self.uploads.too_large(upload_length):
            raise tus_error(413, "file-too-large")
        if length:
            if _media_type(request) != OFFSET_STREAM:
                raise tus_error(415, "unsupported-content-type")
            if length > upload_length:
                raise tus_error(413, "upload-length-exceeded")
        metadata = parse_metadata(_header(request, b"upload-metadata") or "")
        if metadata is None:
            raise tus_error(400, "bad-request")
        query = dict(parse_qsl(urlsplit(path.decode("latin-1")).query))
        token = query.get("token") or metadata.get("token", "").strip() or None
        if self.uploads.free:
            token = None
        elif token is None:
            raise tus_error(401, "token-required")
        elif not _TOKEN_PATTERN.fullmatch(token):
            self.guard.unknown_token(request.getClientAddress())
            raise tus_error(401, "invalid-token")
        checksum = parse_checksum(_header(request, b"upload-checksum")) if length else None
        receiver = TusReceiver(self, request, None, checksum)
        receiver.create(token, upload_length, metadata.get("filename") or "file")
        return receiver


class TusReceiver:
    """
    One tus request body: written to the upload's partial file as it streams
    (through the bandwidth limits, counted in the meters), made durable at its
    end or when it is cut, then the upload finished if that was its last byte.
    A POST's body waits (the socket paused) for the upload's creation.
    L{result} fires with the upload once all is done, or fails with an
    L{APIError}.
    """

    log = Logger()

    def __init__(
        self,
        intake: TusIntake,
        request: Any,
        upload: LiveUpload | None,
        checksum: tuple[str, bytes] | None,
    ) -> None:
        self._uploads = intake.uploads
        self._request = request
        self._upload = upload
        self._checksum = checksum
        self._chunk: Chunk | None = None
        self._early: list[bytes] = []  # a POST's bytes before its upload exists: one read
        self._synced_at = self._uploads.seconds()
        self._syncing: Deferred[None] | None = None
        self._failure: APIError | None = None
        self._body_complete = False
        self._lost = False
        self._ending = False
        self._holds = SocketHolds(request)
        self._result: Deferred[LiveUpload] = Deferred()
        self._creation = upload is None
        if upload is not None:
            upload.busy = True
        self._throttle = throttled_reader(intake.incoming, self._holds.pause, self._holds.resume)
        if self._throttle is not None:
            request.notifyFinish().addBoth(lambda _: self._end_throttle())

    def result(self) -> Deferred[LiveUpload]:
        return self._result

    # Creation (POST).

    def create(self, token: str | None, length: int, filename: str) -> None:
        self._holds.pause()
        address = self._request.getClientAddress()
        d = Deferred.fromCoroutine(self._uploads.create(token, address, length, filename))
        d.addCallbacks(self._created, self._not_created)

    def _created(self, upload: LiveUpload) -> None:
        self._upload = upload
        upload.busy = True
        if self._lost:
            # The client never learnt the upload's URL: nobody can resume it.
            self._run(self._uploads.terminate(upload))
            return
        early, self._early = self._early, []
        for data in early:
            self._write(data)
        self._holds.resume()
        self._maybe_end()

    def _not_created(self, failure: Failure) -> None:
        self._early = []
        self._holds.resume()
        self._fail(as_api_error(failure))

    # The body.

    def dataReceived(self, data: bytes) -> None:
        self._uploads.record(len(data))
        if self._throttle is not None:
            self._throttle.received(len(data))
        if self._failure is not None:
            return
        if self._upload is None:
            self._early.append(data)  # the socket is paused: no more than what was read
            return
        self._write(data)

    def _write(self, data: bytes) -> None:
        assert self._upload is not None
        try:
            if self._chunk is None:
                self._chunk = self._uploads.chunk(self._upload, self._checksum)
            self._chunk.write(data)
        except OSError as e:
            self.log.error("a resumable upload could not be written: {e}", e=e)
            self._fail(error(507, "storage-full"))
            return
        if (
            self._checksum is None
            and self._uploads.seconds() - self._synced_at >= self._uploads.checkpoint
        ):
            self._checkpoint()

    def _checkpoint(self) -> None:
        """A long body is made durable as it goes, so that a crash loses little of it."""
        if self._syncing is not None or self._chunk is None or self._upload is None:
            return
        self._synced_at = self._uploads.seconds()
        d = Deferred.fromCoroutine(
            self._uploads.make_durable(self._upload, self._chunk.fd, self._upload.written)
        )
        self._syncing = d

        def done(outcome: object) -> None:
            self._syncing = None
            if isinstance(outcome, Failure):
                self.log.failure("a resumable upload could not be synced", outcome)
            self._maybe_end()

        d.addBoth(done)

    def bodyReceived(self) -> None:
        self._body_complete = True
        self._end_throttle()
        self._maybe_end()

    def connectionLost(self) -> None:
        if not self._body_complete:
            self._lost = True
            self._end_throttle()
            self._maybe_end()

    # Endings.

    def _maybe_end(self) -> None:
        """Once the body is in (or cut, or refused) and no sync runs: its bytes' fate."""
        over = self._body_complete or self._lost or self._failure is not None
        if not over or self._ending or self._syncing is not None:
            return
        if self._upload is None:
            if self._failure is not None:
                self._finish(self._failure)  # not created
            return  # still being created: _created() comes back here
        self._ending = True
        self._run(self._end())

    async def _end(self) -> None:
        upload = self._upload
        assert upload is not None
        chunk, self._chunk = self._chunk, None
        try:
            if self._lost and self._creation:
                if chunk is not None:
                    chunk.close()
                # The client never got the upload's URL: nobody can resume it.
                await self._uploads.terminate(upload)
                return
            if chunk is not None:
                try:
                    if not self._keeps(chunk):
                        chunk.discard()
                        if self._failure is None and self._body_complete:
                            self._failure = tus_error(460, "checksum-mismatch")
                    elif not self._last_byte(upload):
                        await self._uploads.make_durable(upload, chunk.fd, upload.written)
                finally:
                    chunk.close()
        finally:
            upload.busy = False
        if self._failure is not None:
            self._finish(self._failure)
        elif self._body_complete:
            if upload.all_in:
                await self._uploads.finish(upload)
            self._finish(None)

    def _last_byte(self, upload: LiveUpload) -> bool:
        # Such a body is not synced apart: the file it completes is, when it is stored below,
        # and a crash before that loses only this body, never acknowledged.
        return self._body_complete and upload.written == upload.length

    def _keeps(self, chunk: Chunk) -> bool:
        """What arrived is kept (tus: as much as possible), unless its checksum cannot vouch."""
        if self._failure is not None:
            return False
        if self._checksum is None:
            return True
        return self._body_complete and chunk.verified

    def _fail(self, failure: APIError) -> None:
        if self._failure is not None:
            return
        self._failure = failure = with_version(failure)
        if not self._body_complete and not self._lost:
            self._request.respond_early(failure)
        self._maybe_end()

    def _finish(self, failure: APIError | None) -> None:
        # Only a complete body reaches the Klein handler; an answer given early, or a client
        # gone, has nobody waiting.
        if self._result.called or not self._body_complete:
            return
        if failure is not None:
            self._result.errback(failure)
        else:
            assert self._upload is not None
            self._result.callback(self._upload)

    def _run(self, work: Any) -> None:
        def failed(failure: Failure) -> None:
            self._finish(with_version(as_api_error(failure)))

        Deferred.fromCoroutine(work).addErrback(failed)

    def _end_throttle(self) -> None:
        if self._throttle is not None:
            self._throttle.close()


def _upload_headers(upload: LiveUpload) -> dict[str, str]:
    complete = upload.state == COMPLETE
    headers = {
        "Tus-Resumable": VERSION,
        "Upload-Offset": str(upload.length if complete else upload.durable),
        "Upload-Length": str(upload.length),
        "Upload-Expires": http_date(upload.row.expires),
        "Cache-Control": "no-store",
    }
    if upload.result is not None:
        headers["MetaDisk-Filehash"], headers["MetaDisk-Key"] = upload.result
    return headers


def _set(request: IRequest, status: int, headers: dict[str, str]) -> bytes:
    request.setResponseCode(status)
    for name, value in headers.items():
        request.setHeader(name.encode("ascii"), value.encode("ascii"))
    return b""


@define(slots=False)  # Klein binds itself to the instance's __dict__
class TusAPI:
    _intake: TusIntake
    _max_file_size: int

    app = json_app()

    def resource(self) -> Any:
        return self.app.resource()

    @property
    def _uploads(self) -> ResumableUploads:
        return self._intake.uploads

    @app.route("/", methods=["OPTIONS"])
    def options(self, request: IRequest) -> bytes:
        return _set(
            request,
            204,
            {
                "Tus-Resumable": VERSION,
                "Tus-Version": VERSION,
                "Tus-Extension": EXTENSIONS,
                "Tus-Max-Size": str(self._max_file_size),
                "Tus-Checksum-Algorithm": ",".join(CHECKSUMS),
            },
        )

    @app.route("/", methods=["POST"])
    async def create(self, request: IRequest) -> bytes:
        upload = await self._received(request)
        headers = _upload_headers(upload)
        headers["Location"] = f"/api/tus/{upload.id}"
        return _set(request, 201, headers)

    @app.route("/<upload_id>", methods=["PATCH"])
    async def patch(self, request: IRequest, upload_id: str) -> bytes:
        return _set(request, 204, _upload_headers(await self._received(request)))

    async def _received(self, request: IRequest) -> LiveUpload:
        receiver: TusReceiver | None = getattr(request, "tus", None)
        if receiver is None:
            raise tus_error(400, "bad-request")  # not taken by the request plumbing
        return await receiver.result()

    @app.route("/<upload_id>", methods=["DELETE"])
    async def delete(self, request: IRequest, upload_id: str) -> bytes:
        check_version(request)
        upload = self._intake.known(request, upload_id)
        if upload.busy or upload.finishing is not None:
            raise tus_error(423, "upload-locked")
        await self._uploads.terminate(upload)
        return _set(request, 204, {"Tus-Resumable": VERSION})

    @app.route("/<upload_id>", methods=["GET", "HEAD"])
    async def result(self, request: IRequest, upload_id: str) -> bytes:
        """
        HEAD: the upload's offset (tus). GET, not tus: what the upload became,
        for a client that missed the answer to its last PATCH.
        """
        if request.method == b"HEAD":
            check_version(request)
            return _set(request, 200, _upload_headers(self._intake.known(request, upload_id)))
        upload = self._intake.known(request, upload_id)
        if upload.result is None and not upload.all_in:
            raise tus_error(409, "upload-incomplete", Upload_Offset=str(upload.durable))
        if upload.busy:
            raise tus_error(423, "upload-locked")
        filehash, key = await self._uploads.finish(upload)
        return write_json(request, 200, {"filehash": filehash, "key": key})
