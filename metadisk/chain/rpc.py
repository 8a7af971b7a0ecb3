"""
JSON-RPC 1.0 over HTTP(S) with treq, as florincoind, litecoind and bitcoind
speak it. Every call has a timeout; every way a call can fail ends in one of
the exceptions below, which say the method and what happened.
"""

from __future__ import annotations

import itertools
import json
from typing import Any
from urllib.parse import unquote

from attrs import define, field
from hyperlink import EncodedURL
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

MAX_RESPONSE = 64 * 2**20  # a verbose block of a busy chain is a few MB of JSON


class ChainError(Exception):
    """A chain call failed."""


class ChainUnavailable(ChainError):
    """
    No usable answer: the node is down, slow, unreachable, or answered
    something that is not JSON-RPC. The call may or may not have happened.
    """


class RPCAuthError(ChainUnavailable):
    """The node rejected the credentials (HTTP 401/403, empty body)."""


class RPCError(ChainError):
    """The node answered with a JSON-RPC error: the call did not happen."""

    def __init__(self, method: str, code: int | None, message: str) -> None:
        super().__init__(f"{method}: error {code}: {message}")
        self.method = method
        self.code = code
        self.message = message


class _TooLarge(Exception):
    pass


def split_credentials(url: str) -> tuple[str, tuple[str, str] | None]:
    """
    The URL without its C{user:password@} part, and those credentials: treq
    refuses credentials inside a URL, they go in C{auth=} instead.
    """
    parsed = EncodedURL.from_text(url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError("expected an http:// or https:// URL")
    if not parsed.userinfo:
        return url, None
    user, _, password = parsed.userinfo.partition(":")
    return parsed.replace(userinfo="").to_text(), (unquote(user), unquote(password))


@define(kw_only=True)
class JSONRPCClient:
    """
    One node's JSON-RPC endpoint. C{http} is a treq C{HTTPClient} (or a
    C{StubTreq}); https URLs are verified by its agent's TLS policy, which by
    default checks the certificate chain and the host name.
    """

    url: str  # without credentials
    auth: tuple[str, str] | None
    _http: Any
    _clock: IReactorTime
    timeout: float = 30.0
    max_response: int = MAX_RESPONSE
    _ids: itertools.count = field(factory=lambda: itertools.count(1))

    @classmethod
    def from_url(
        cls, url: str, http: Any, clock: IReactorTime, timeout: float = 30.0
    ) -> JSONRPCClient:
        bare, auth = split_credentials(url)
        return cls(url=bare, auth=auth, http=http, clock=clock, timeout=timeout)

    def call(self, method: str, *params: Any) -> defer.Deferred[Any]:
        """Call C{method}; fire with its result or fail with a L{ChainError}."""
        return defer.Deferred.fromCoroutine(self._call(method, params))

    async def _call(self, method: str, params: tuple[Any, ...]) -> Any:
        exchange = defer.Deferred.fromCoroutine(self._exchange(method, params))
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            exchange.cancel()

        timer = self._clock.callLater(self.timeout, expire)
        try:
            code, body = await exchange
        except _TooLarge:
            raise ChainUnavailable(
                f"{method}: answer larger than {self.max_response} bytes"
            ) from None
        except ChainError:
            raise
        except Exception as e:
            # A cancelled request fails in several ways (treq wraps the cancellation).
            if expired:
                raise ChainUnavailable(f"{method}: no answer within {self.timeout:g} s") from None
            if isinstance(e, defer.CancelledError):
                raise
            raise ChainUnavailable(f"{method}: {_describe(e)}") from None
        finally:
            if timer.active():
                timer.cancel()
        return _result(method, code, body)

    async def _exchange(self, method: str, params: tuple[Any, ...]) -> tuple[int, bytes]:
        request = {"jsonrpc": "1.0", "id": next(self._ids), "method": method, "params": params}
        response = await self._http.post(
            self.url,
            data=json.dumps(request).encode("utf-8"),
            headers={b"Content-Type": [b"application/json"]},
            auth=self.auth,
            allow_redirects=False,
            unbuffered=True,
        )
        chunks: list[bytes] = []
        size = 0

        def collect(data: bytes) -> None:
            nonlocal size
            size += len(data)
            if size > self.max_response:
                raise _TooLarge()
            chunks.append(data)

        await response.collect(collect)
        if response.code in (401, 403):
            raise RPCAuthError(
                f"{method}: the node rejected the credentials (HTTP {response.code})"
            )
        return response.code, b"".join(chunks)


def _result(method: str, code: int, body: bytes) -> Any:
    try:
        # Undecodable bytes (a hostile tx-comment) stay as surrogates, for the codec to refuse.
        answer = json.loads(body.decode("utf-8", "surrogateescape"))
    except (ValueError, RecursionError):
        answer = None
    if isinstance(answer, dict):
        error = answer.get("error")
        if error is not None:
            if isinstance(error, dict):
                raw_code = error.get("code")
                number = raw_code if isinstance(raw_code, int) else None
                raise RPCError(method, number, str(error.get("message", ""))[:500])
            raise RPCError(method, None, str(error)[:500])
        if code == 200 and "result" in answer:
            return answer["result"]
    raise ChainUnavailable(f"{method}: unexpected answer: HTTP {code}, {body[:200]!r}")


def _describe(e: BaseException) -> str:
    """One line for a transport failure (treq nests the reasons)."""
    reasons = getattr(e, "reasons", None)
    if reasons:
        return "; ".join(f"{r.type.__name__}: {r.getErrorMessage()}" for r in reasons)
    return f"{type(e).__name__}: {e}"
