"""
A web server on loopback that serves v0.3 manifests by name, for the
manifest lane's tests: it counts requests, can redirect, and can hold answers.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site


class ManifestServer(Resource):
    """Serves manifests by name on a loopback port; counts the requests; can hold one."""

    isLeaf = True

    def __init__(self, case: Any) -> None:
        super().__init__()
        self.files: dict[str, bytes] = {}
        self.redirects: dict[str, str] = {}
        self.requests: dict[str, int] = {}
        self.held: list[Any] = []
        self.hold = False
        self.port = reactor.listenTCP(0, Site(self), interface="127.0.0.1")
        case.addCleanup(self.port.stopListening)
        case.addCleanup(self.release)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port.getHost().port}/{name}"

    def render_GET(self, request: Any) -> Any:
        name = request.path.decode().lstrip("/")
        self.requests[name] = self.requests.get(name, 0) + 1
        if name in self.redirects:
            request.redirect(self.redirects[name].encode())
            return b""
        if name not in self.files:
            request.setResponseCode(404)
            return b"not here"
        if self.hold:
            self.held.append((request, self.files[name]))
            return NOT_DONE_YET
        return self.files[name]

    def release(self) -> None:
        held, self.held = self.held, []
        for request, data in held:
            request.write(data)
            request.finish()
