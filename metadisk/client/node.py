"""
The HTTP client to one node: blocking (http.client), a new connection per
request, and the checks of what goes into a request's path.
"""

from __future__ import annotations

import http.client
import json
import ssl
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from attrs import define, field

from metadisk.client.errors import EXIT_USAGE, CLIError, Unreachable, node_error
from metadisk.crypto import is_hex64

CHUNK = 256 * 1024  # bytes per read or write of a transfer


@define
class NodeClient:
    """Blocking HTTP to one node; a new connection per request."""

    url: str
    timeout: float
    _scheme: str = field(init=False)
    _host: str = field(init=False)
    _port: int | None = field(init=False)
    _prefix: str = field(init=False)

    def __attrs_post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise CLIError(f"--node: expected http://HOST[:PORT], got {self.url!r}", EXIT_USAGE)
        try:
            self._port = parts.port
        except ValueError:
            raise CLIError(f"--node: bad port in {self.url!r}", EXIT_USAGE) from None
        self._scheme, self._host = parts.scheme, parts.hostname
        self._prefix = parts.path.rstrip("/")

    def path(self, path: str) -> str:
        return self._prefix + path

    def connect(self) -> http.client.HTTPConnection:
        if self._scheme == "https":
            return http.client.HTTPSConnection(
                self._host, self._port, timeout=self.timeout, context=ssl.create_default_context()
            )
        return http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)

    def unreachable(self, error: BaseException) -> Unreachable:
        reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
        return Unreachable(f"cannot reach the node at {self.url}: {reason}")

    def open(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
    ) -> http.client.HTTPResponse:
        """Send a request; the response's body is still to be read."""
        connection = self.connect()
        try:
            connection.request(method, self.path(path), body=body, headers=dict(headers or {}))
            return connection.getresponse()
        except (OSError, http.client.HTTPException) as e:
            connection.close()
            raise self.unreachable(e) from None

    def call(self, what: str, method: str, path: str, params: dict[str, Any] | None = None) -> Any:
        """A JSON request; the JSON answer, or L{CLIError} with the node's error."""
        body = json.dumps(params).encode("utf-8") if params is not None else None
        headers = {"Content-Type": "application/json"} if body is not None else {}
        response = self.open(method, path, headers=headers, body=body)
        try:
            data = response.read()
        except (OSError, http.client.HTTPException) as e:
            raise self.unreachable(e) from None
        finally:
            response.close()
        if response.status >= 400:
            raise node_error(what, response.status, data, response.headers)
        try:
            return json.loads(data)
        except ValueError:
            raise CLIError(
                f"{what}: the node's answer is not JSON (HTTP {response.status})"
            ) from None


def filehash_argument(value: str, what: str) -> str:
    """A FILEHASH argument, checked before any request: 64 hex digits, in lower case."""
    if not is_hex64(value):
        raise CLIError(f"{what}: FILEHASH must be 64 hexadecimal digits", EXIT_USAGE)
    return value.lower()
