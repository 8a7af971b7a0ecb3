"""
An HTTP proxy on loopback in front of a real server (`rclone serve webdav`)
that answers some requests itself with an error status, as a busy or picky
WebDAV server would (423 Locked for two MKCOLs of one folder at once, 403 for
one file, no answer at all), and passes the others on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from attrs import define, field
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.trial.unittest import TestCase
from twisted.web.proxy import ReverseProxyResource
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

# (method, path) -> the status to answer with, HANG, or None to pass the request on.
Rule = Callable[[bytes, bytes], int | None]
HANG = 0  # never answer: a server that stalls


@define(eq=False)
class RefusingProxy:
    target: int  # the server's port
    rule: Rule
    port: Any = None
    refused: list[tuple[bytes, bytes, int]] = field(factory=list)  # (method, path, status)
    hung: list[Request] = field(factory=list)

    @classmethod
    async def start(cls, case: TestCase, target_url: str, rule: Rule) -> RefusingProxy:
        proxy = cls(int(target_url.rsplit(":", 1)[1]), rule)
        site = Site(_Refusing(proxy))
        site.noisy = False
        proxy.port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
        case.addCleanup(proxy.port.stopListening)
        case.addCleanup(proxy.let_go)
        return proxy

    def let_go(self) -> None:
        """Drop the connections of the requests left unanswered (the client may be gone)."""
        for request in self.hung:
            if request.channel is not None:  # None: the client closed it already
                request.channel.transport.abortConnection()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port.getHost().port}"


class _Refusing(Resource):
    isLeaf = True

    def __init__(self, proxy: RefusingProxy) -> None:
        super().__init__()
        self._proxy = proxy

    def render(self, request: Request) -> Any:
        status = self._proxy.rule(request.method, request.path)
        if status is not None:
            self._proxy.refused.append((request.method, request.path, status))
            if status == HANG:
                self._proxy.hung.append(request)
                return NOT_DONE_YET
            request.setResponseCode(status)
            return b""
        forward = ReverseProxyResource("127.0.0.1", self._proxy.target, request.path)
        return forward.render(request)


def first(methods: tuple[bytes, ...], status: int) -> Rule:
    """Refuse the first request of one of C{methods} with C{status}, pass everything else."""
    seen: list[bytes] = []

    def rule(m: bytes, path: bytes) -> int | None:
        if m not in methods or seen:
            return None
        seen.append(path)
        return status

    return rule


def always(method: bytes, path_ends: str, status: int) -> Rule:
    """Refuse every C{method} request whose path ends with C{path_ends}."""

    def rule(m: bytes, path: bytes) -> int | None:
        return status if m == method and path.endswith(path_ends.encode()) else None

    return rule
