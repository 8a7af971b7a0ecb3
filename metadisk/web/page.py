"""
The MetaDisk web page: plain HTML, CSS and JavaScript from C{static/},
served at C{/} by the node itself. The files are read once, when the node
starts; the page asks for its assets by content hash (C{app.js?v=…}), so the
browser keeps them for a year and still never runs a stale copy.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from typing import Any

from attrs import frozen
from twisted.web.iweb import IRequest

STATIC_PACKAGE = "metadisk.web"
STATIC_FOLDER = "static"
INDEX = "index.html"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
# Everything the page loads comes from the node itself; never from elsewhere.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    # The page's own address can carry a file's key (after '#', never sent): no Referer at all.
    "Referrer-Policy": "no-referrer",
}


@frozen
class Asset:
    body: bytes
    content_type: str
    etag: str  # a strong validator: the first 16 hex digits of the body's SHA-256

    @classmethod
    def of(cls, name: str, body: bytes) -> Asset:
        suffix = name[name.rfind(".") :]
        return cls(body, CONTENT_TYPES[suffix], hashlib.sha256(body).hexdigest()[:16])


@frozen
class WebPage:
    """The page's files by URL path: C{/} (and C{/index.html}) and its assets."""

    assets: dict[str, Asset]

    @classmethod
    def from_package(cls) -> WebPage:
        folder = resources.files(STATIC_PACKAGE) / STATIC_FOLDER
        files = {
            entry.name: entry.read_bytes()
            for entry in folder.iterdir()
            if entry.is_file() and entry.name[entry.name.rfind(".") :] in CONTENT_TYPES
        }
        return cls.of_files(files)

    @classmethod
    def of_files(cls, files: dict[str, bytes]) -> WebPage:
        """The page of these files; the index asks for every other file by its hash."""
        assets = {f"/{name}": Asset.of(name, body) for name, body in files.items()}
        index = files[INDEX]
        for name in files:
            if name != INDEX:
                versioned = f"{name}?v={assets['/' + name].etag}"
                index = index.replace(f'"{name}"'.encode(), f'"{versioned}"'.encode())
        assets["/"] = assets[f"/{INDEX}"] = Asset.of(INDEX, index)
        return cls(assets)

    def handles(self, request: IRequest) -> bool:
        """Whether the request's path is one of the page's files (whatever its method)."""
        return self._path(request) in self.assets

    @staticmethod
    def _path(request: IRequest) -> str:
        return request.path.decode("latin-1")

    def render(self, request: IRequest) -> bytes:
        """The file at the request's path (see L{handles}), or 304 if the browser has it."""
        asset = self.assets[self._path(request)]
        versioned = request.args.get(b"v") == [asset.etag.encode("ascii")]
        etag = f'"{asset.etag}"'
        headers: dict[str, Any] = {
            "Content-Type": asset.content_type,
            "Cache-Control": IMMUTABLE if versioned else REVALIDATE,
            "ETag": etag,
            **SECURITY_HEADERS,
        }
        for name, value in headers.items():
            request.setHeader(name.encode("ascii"), value.encode("ascii"))
        if _matches(request.getHeader(b"if-none-match"), etag):
            request.setResponseCode(304)
            return b""
        request.setHeader(b"Content-Length", b"%d" % len(asset.body))
        return asset.body


def _matches(header: bytes | None, etag: str) -> bool:
    if header is None:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in header.decode("latin-1").split(",")}
    return etag in tags or "*" in tags
