"""JSON responses and the errors of the API, as documented in the README."""

from __future__ import annotations

import json
from typing import Any

from klein import Klein
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.iweb import IRequest
from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.routing import RequestRedirect

from metadisk.db import DatabaseUnavailable
from metadisk.ledger import BalanceInsufficient
from metadisk.meters import TransferLimitReached
from metadisk.store.cache import StorageFull
from metadisk.store.cloudsync import NoCopyAvailable

log = Logger()


class APIError(Exception):
    """An error the API documents: a status, a JSON body and maybe headers."""

    def __init__(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None):
        super().__init__(status, body)
        self.status = status
        self.body = body
        self.headers = headers or {}


def error(status: int, code: str, **headers: str) -> APIError:
    """The usual shape: C{{"error": code}}."""
    return APIError(status, {"error": code}, {k.replace("_", "-"): v for k, v in headers.items()})


def json_bytes(body: Any) -> bytes:
    return json.dumps(body, separators=(", ", ": ")).encode("utf-8")


def raw_response(failure: APIError) -> bytes:
    """
    A whole HTTP/1.1 response with C{failure}'s JSON body, that closes the
    connection: for answers written straight to a transport, outside any request.
    """
    body = json_bytes(failure.body)
    head = [
        b"HTTP/1.1 %d %s" % (failure.status, http.RESPONSES.get(failure.status, b"Error")),
        b"Content-Type: application/json",
        b"Content-Length: %d" % len(body),
        b"Connection: close",
        *(f"{name}: {value}".encode("ascii") for name, value in failure.headers.items()),
    ]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def write_json(
    request: IRequest, status: int, body: Any, headers: dict[str, str] | None = None
) -> bytes:
    """Set the status and headers of a JSON response and return its body."""
    return json_response(request, status, json_bytes(body), headers)


def json_response(
    request: IRequest, status: int, data: bytes, headers: dict[str, str] | None = None
) -> bytes:
    """L{write_json} for a body already encoded (L{json_bytes})."""
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Content-Length", b"%d" % len(data))
    for name, value in (headers or {}).items():
        request.setHeader(name.encode("ascii"), value.encode("ascii"))
    return data


def as_api_error(failure: Failure) -> APIError:
    """Map any failure to the API's answer; log the unexpected ones."""
    if failure.check(APIError):
        return failure.value
    if failure.check(NotFound):
        return error(404, "not-found")
    if failure.check(RequestRedirect):
        # The router's canonical form of a path (e.g. the trailing slash of /api/).
        return APIError(308, {"error": "moved"}, {"Location": failure.value.new_url})
    if failure.check(MethodNotAllowed):
        return error(405, "method-not-allowed", Allow=", ".join(failure.value.valid_methods or ()))
    if failure.check(DatabaseUnavailable):
        log.warn("database unavailable: {e}", e=failure.value)
        return error(503, "database-unavailable")
    if failure.check(TransferLimitReached):
        return error(503, "transfer-limit-reached", Retry_After=str(failure.value.retry_after))
    if failure.check(StorageFull):
        return error(507, "storage-full")
    if failure.check(BalanceInsufficient):
        return error(402, "balance-insufficient")
    if failure.check(NoCopyAvailable):
        return error(502, "error-downloading-file")
    log.failure("unexpected error", failure)
    return error(500, "internal-error")


def render_failure(request: IRequest, failure: Failure) -> bytes:
    """The failure as the API's JSON answer."""
    e = as_api_error(failure)
    return write_json(request, e.status, e.body, e.headers)


def json_app() -> Klein:
    """A Klein app for a class of routes: whatever they raise is answered as JSON."""
    app = Klein()
    # Bound to an instance, Klein hands it the instance first.
    app.handle_errors(Exception)(lambda _, request, failure: render_failure(request, failure))
    return app
