"""
The twisted.web plumbing under the API: a request that streams uploads
instead of buffering them, answers early (413, 411, 429, …) before a body is
read, adds CORS headers, and an access log that never shows a secret.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, quote, unquote_to_bytes, urlsplit

from attrs import define
from twisted.internet.interfaces import IAddress, IDelayedCall
from twisted.python import log as twisted_log
from twisted.web import http, server
from twisted.web.iweb import IRequest

from metadisk.logs import RequestLog, Started
from metadisk.metrics import Metrics
from metadisk.routes import TUS, UPLOAD, merge_slashes, redact_path, route_of
from metadisk.web.addresses import TrustedProxies
from metadisk.web.errors import APIError, error, raw_response, write_json
from metadisk.web.guard import TokenGuard
from metadisk.web.tus import TusIntake, TusReceiver
from metadisk.web.upload import UploadPolicy, UploadReceiver, multipart_boundary

# What a page on another origin may send and read of the tus protocol (resumable uploads).
TUS_ALLOWED = "Tus-Resumable, Upload-Length, Upload-Metadata, Upload-Offset, Upload-Checksum"
TUS_EXPOSED = (
    "Location, Upload-Offset, Upload-Length, Upload-Expires, Tus-Resumable, Tus-Version,"
    " Tus-Extension, Tus-Max-Size, Tus-Checksum-Algorithm, MetaDisk-Filehash, MetaDisk-Key"
)
MAX_SMALL_BODY = 64 * 1024  # the accounts API takes a few short parameters
IDLE_TIMEOUT = 300  # seconds a connection may send nothing (a stalled or lying client)
HEADER_TIMEOUT = 30.0  # seconds for a request line and headers ([node] header_timeout)
NO_PROXIES = TrustedProxies()
_SECRET_PARAMS = {"key", "token"}


@define
class CORS:
    origins: tuple[str, ...]

    def headers(self, origin: bytes | None) -> dict[str, str]:
        if not self.origins:
            return {}
        # The answer depends on the Origin (allowed or not): caches must keep answers apart.
        vary = {"Vary": "Origin"}
        if origin is None:
            return vary
        text = origin.decode("latin-1")
        if "*" not in self.origins and text not in self.origins:
            return vary
        return {
            "Access-Control-Allow-Origin": text,
            "Vary": "Origin",
            "Access-Control-Expose-Headers": (
                "Content-Disposition, Content-Length, Content-Range, Retry-After, " + TUS_EXPOSED
            ),
        }

    def preflight(self, origin: bytes | None) -> dict[str, str]:
        headers = self.headers(origin)
        if "Access-Control-Allow-Origin" in headers:
            headers.update(
                {
                    "Access-Control-Allow-Methods": "GET, HEAD, POST, PATCH, DELETE, OPTIONS",
                    "Access-Control-Allow-Headers": (
                        "Content-Type, Authentication, Range, " + TUS_ALLOWED
                    ),
                    "Access-Control-Max-Age": "600",
                }
            )
        return headers


def _redact(value: str) -> str:
    return value[:4] + "..." if len(value) > 4 else "..."


def redact_uri(uri: str) -> str:
    """The URI with every key and token cut to its first four characters."""
    parts = urlsplit(uri)
    path = redact_path(parts.path, _redact)
    if not parts.query:
        return path
    query = "&".join(
        f"{quote(name)}={_redact(value) if name in _SECRET_PARAMS else quote(value)}"
        for name, value in parse_qsl(parts.query, keep_blank_values=True)
    )
    return f"{path}?{query}"


@define
class _RedactedRequest:
    """What the access log sees of a request: no key, token or secret."""

    _request: Any

    def __getattr__(self, name: str) -> Any:
        return getattr(self._request, name)

    @property
    def uri(self) -> bytes:
        return redact_uri(self._request.uri.decode("latin-1")).encode("utf-8")

    def getHeader(self, name: bytes) -> bytes | None:
        value = self._request.getHeader(name)
        if value is not None and name.lower() == b"referer":
            value = redact_uri(value.decode("latin-1")).encode("utf-8")
        return value


def redacting_log_formatter(timestamp: str, request: IRequest) -> str:
    return http.combinedLogFormatter(timestamp, _RedactedRequest(request))


class MetaDiskRequest(server.Request):
    """
    A request that can answer before its body is read (L{respond_early}), and
    that hands an upload's body to an L{UploadReceiver} chunk by chunk.
    """

    upload: UploadReceiver | None = None
    tus: TusReceiver | None = None  # a resumable upload's body (PATCH, or POST with one)
    _early = False
    _body_size = 0
    _head: tuple[bytes, bytes, bytes] = (b"GET", b"/", b"HTTP/1.1")
    started: Started | None = None  # for the request log, from the headers on
    bytes_received = 0
    _client_address: IAddress | None = None

    def getClientAddress(self) -> IAddress:
        """
        Who sent the request: the peer, or, when the peer is a trusted proxy,
        the client it forwarded for (L{TrustedProxies.client}). Every limit
        on an address and the access log go by this.
        """
        return self._client_address or self.client

    def gotLength(self, length: int | None) -> None:
        # The request line is parsed but not yet given to us: read it off the channel.
        channel = self.channel
        self._head = (channel._command, merge_slashes(channel._path), channel._version)
        site: MetaDiskSite = channel.site
        forwarded = self.requestHeaders.getRawHeaders(b"x-forwarded-for", [])
        self._client_address = site.proxies.client(self.client, forwarded)
        self.started = site.request_log.started(self._head[0], self._head[1])
        retry = site.guard.retry_after(self.getClientAddress())
        if retry is not None:
            self.content = _Discard()
            self.respond_early(error(429, "too-many-requests", Retry_After=str(retry)))
        elif not _utf8_url(self._head[1], self.requestHeaders.getRawHeaders(b"host", [b""])[-1]):
            # Klein would answer this in text/html (and log an error): answer it here, in JSON.
            self.content = _Discard()
            self.respond_early(error(400, "bad-request"))
        elif self._head[0] == b"POST" and route_of(self._head[1].decode("latin-1")) == UPLOAD:
            self.content = _Discard()
            self._begin_upload(site, length)
        elif site.tus is not None and site.tus.handles(self._head[0], self._head[1]):
            self.content = _Discard()
            self.tus = site.tus.receive(self, self._head[0], self._head[1], length)
        elif length is not None and length > MAX_SMALL_BODY:
            self.content = _Discard()
            self.respond_early(error(413, "request-too-large"))
        else:
            super().gotLength(length)

    def _begin_upload(self, site: MetaDiskSite, length: int | None) -> None:
        policy = site.upload_policy
        boundary = multipart_boundary(self.requestHeaders.getRawHeaders(b"content-type", [None])[0])
        if length is None:
            self.respond_early(error(411, "length-required"))
        elif policy.too_large(length):
            self.respond_early(error(413, "file-too-large"))
        elif boundary is None:
            self.respond_early(error(400, "no-file"))
        else:
            query = dict(parse_qsl(urlsplit(self._head[1].decode("latin-1")).query))
            self.upload = UploadReceiver(policy, self, length, boundary, query.get("token"))

    def handleContentChunk(self, data: bytes) -> None:
        self.bytes_received += len(data)
        if self.upload is not None:
            self.upload.dataReceived(data)
        elif self.tus is not None:
            self.tus.dataReceived(data)
        elif not self._early:
            self._body_size += len(data)
            if self._body_size > MAX_SMALL_BODY:
                self.respond_early(error(413, "request-too-large"))
            else:
                super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        path = merge_slashes(path)  # every route answers //api/status as /api/status
        if self._early:
            # Answered already; the body, if any, was read past.
            self.finish()
            return
        if self.upload is not None:
            self.upload.bodyReceived()
        if self.tus is not None:
            self.tus.bodyReceived()
        super().requestReceived(command, path, version)

    def connectionLost(self, reason: Any) -> None:
        if self.upload is not None:
            self.upload.connectionLost()
        if self.tus is not None:
            self.tus.connectionLost()
        if self.started is not None:
            self.channel.site.request_log.done(self, complete=False)
        super().connectionLost(reason)

    def respond_early(self, failure: APIError) -> None:
        """Answer now, before the body is in, and close the connection after it."""
        if self._early or self.startedWriting or self.finished or self._disconnected:
            return
        self._early = True
        self.method, self.uri, self.clientproto = self._head
        self.path = self.uri.split(b"?")[0]
        # Twisted would otherwise send "100 Continue" after this final answer.
        self.requestHeaders.removeHeader(b"expect")
        self.channel.persistent = False
        self.add_cors_headers()
        headers = {**failure.headers, "Connection": "close"}
        self.write(write_json(self, failure.status, failure.body, headers))

    def add_cors_headers(self) -> None:
        origin = self.getHeader(b"origin")
        for name, value in self.channel.site.cors.headers(origin).items():
            self.setHeader(name.encode("ascii"), value.encode("ascii"))

    def process(self) -> None:
        self.add_cors_headers()
        if self.method == b"OPTIONS":
            origin = self.getHeader(b"origin")
            for name, value in self.channel.site.cors.preflight(origin).items():
                self.setHeader(name.encode("ascii"), value.encode("ascii"))
            if route_of(self.path.decode("latin-1")) == TUS:
                super().process()  # tus discovery (metadisk.web.tus): its own answer
                return
            self.setResponseCode(204)
            self.finish()
            return
        super().process()


def _utf8_url(uri: bytes, host: bytes) -> bool:
    """Whether the path (percent-decoded) and the Host header are UTF-8, as Klein needs."""
    try:
        unquote_to_bytes(uri.split(b"?")[0]).decode("utf-8")
        host.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class MetaDiskChannel(http.HTTPChannel):
    """
    Twisted's HTTP/1.1 channel, except that a request its parser refuses (a
    request line or header over 16 KiB, over 500 headers, a bad
    Content-Length…) gets a JSON 400 like every other error, instead of a
    bare status line or a silently closed connection; and that a request
    line and headers must be complete within the site's C{header_timeout}
    of the connection's start, or of the end of the previous response.

    Twisted's own timeout cannot do this: it is an idle timeout, reset by
    every byte, so a client that sends a byte now and then holds the
    connection (and its descriptor) for ever.
    """

    _header_deadline: IDelayedCall | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self._await_headers()

    def allHeadersReceived(self) -> None:
        self._stop_deadline()
        super().allHeadersReceived()

    def requestDone(self, request: Any) -> None:
        if self.persistent:
            # Before Twisted parses what the client sent meanwhile (the next request, maybe whole).
            self._await_headers()
        super().requestDone(request)

    def connectionLost(self, reason: Any) -> None:
        self._stop_deadline()
        super().connectionLost(reason)

    def _await_headers(self) -> None:
        self._header_deadline = self.callLater(self.site.header_timeout, self._headers_late)

    def _stop_deadline(self) -> None:
        if self._header_deadline is not None and self._header_deadline.active():
            self._header_deadline.cancel()
        self._header_deadline = None

    def _headers_late(self) -> None:
        self._header_deadline = None
        # A client that sent nothing has no request to answer (and on a kept-alive connection
        # an answer could pass its next request on the way): it is closed, as an idle one is.
        # Something was sent if a request line was parsed, or part of one is buffered.
        if self.requests or self.clearLineBuffer():
            self.transport.write(raw_response(error(408, "request-timeout")))
        self.dataReceived = lambda data: None  # the rest of a late request is not parsed
        self.loseConnection()

    def _respondToBadRequestAndDisconnect(self) -> None:
        # Twisted's own (private) hook for these refusals; tests/test_hostile.py pins it.
        self.transport.write(raw_response(error(400, "bad-request")))
        self.loseConnection()

    def lineLengthExceeded(self, line: bytes) -> None:
        self._respondToBadRequestAndDisconnect()


class _Discard:
    """A request's content for bodies that are read past or streamed elsewhere."""

    def write(self, data: bytes) -> None:
        pass

    def tell(self) -> int:
        return 0

    def seek(self, offset: int, whence: int = 0) -> int:
        return 0

    def read(self, n: int = -1) -> bytes:
        return b""

    def close(self) -> None:
        pass


class MetaDiskSite(server.Site):
    """The node's site: streaming uploads, early answers, a log without secrets."""

    requestFactory = MetaDiskRequest

    def __init__(
        self,
        resource: Any,
        *,
        upload_policy: UploadPolicy,
        guard: TokenGuard,
        cors: CORS,
        reactor: Any,
        metrics: Metrics | None = None,
        private: bool = False,
        header_timeout: float = HEADER_TIMEOUT,
        proxies: TrustedProxies = NO_PROXIES,
        tus: TusIntake | None = None,
    ) -> None:
        super().__init__(
            resource,
            parsePOSTFormSubmission=False,
            logFormatter=redacting_log_formatter,
            reactor=reactor,
            timeout=IDLE_TIMEOUT,
        )
        self.upload_policy = upload_policy
        self.guard = guard
        self.cors = cors
        self.header_timeout = header_timeout
        self.proxies = proxies  # whose X-Forwarded-For names the client
        self.tus = tus  # resumable uploads' bodies; None: not served
        self.request_log = RequestLog(reactor, redact_uri, metrics)
        self.private = private  # the local-only listener of the private API ([node] private_listen)

    def protocol(self) -> Any:
        # Twisted's wrapper (it would switch to HTTP/2 when TLS negotiates it) around our channel.
        return http._GenericHTTPChannelProtocol(MetaDiskChannel())

    def log(self, request: Any) -> None:
        if getattr(self, "_logFile", None) is not twisted_log.logfile:
            super().log(request)  # a combined-format file; the twistd log gets the line below
        self.request_log.done(request, complete=True)
