"""
Every route of the HTTP API, written once: the OpenAPI path templates that
the document describes (L{metadisk.web.openapi}), that metrics label
requests by (L{metadisk.metrics}) and that the access log redacts
(L{metadisk.web.site}). C{tests/test_openapi.py} checks that the Klein apps
serve exactly these. A new route is a template here, a handler in its Klein
app, and an operation in the document.
"""

from __future__ import annotations

import re
from collections.abc import Callable

UPLOAD = "/api/upload"
DOWNLOAD = "/api/download/{filehash}"
FIND = "/api/find/{filehash}"
STATUS = "/api/status"
TUS = "/api/tus/"  # resumable uploads: the tus protocol
TUS_UPLOAD = "/api/tus/{upload_id}"
OPENAPI = "/api/openapi.json"
NEW_TOKEN = "/accounts/token/new"
PRICES = "/accounts/token/prices"
BALANCE = "/accounts/token/balance/{token}"
REDEEM = "/accounts/token/redeem/{token}"
DEPOSIT = "/accounts/token/deposit/{token}"
WITHDRAW = "/accounts/token/withdraw/{token}"
METRICS = "/metrics"
PAGE = "/"
ASSET = "/{asset}"  # the page's files, served beside it (under "/" in the document)

TEMPLATES = (
    UPLOAD,
    DOWNLOAD,
    FIND,
    STATUS,
    TUS,
    TUS_UPLOAD,
    OPENAPI,
    NEW_TOKEN,
    PRICES,
    BALANCE,
    REDEEM,
    DEPOSIT,
    WITHDRAW,
    METRICS,
    PAGE,
)
# Path parameters the access log never shows in full: a token, and a resumable upload's id
# (its URL is its capability).
SECRET_PARAMETERS = {"token", "upload_id"}
_PARAMETER = re.compile(r"\{([a-z_]+)\}")
_VALUES = {"asset": r"[A-Za-z0-9_-]+\.(?:css|js|svg|png|ico|html)"}
_SLASHES = re.compile(rb"//+")


def _pattern(template: str) -> re.Pattern[str]:
    parts = _PARAMETER.split(template)
    # split() alternates: literal text, a parameter's name, literal text…
    return re.compile(
        "".join(
            re.escape(part) if i % 2 == 0 else f"(?P<{part}>{_VALUES.get(part, '[^/]+')})"
            for i, part in enumerate(parts)
        )
    )


_PATTERNS = tuple((template, _pattern(template)) for template in (*TEMPLATES, ASSET))


def route_of(path: str) -> str:
    """The template a request path (query string allowed) matches; C{"other"} for none."""
    path = path.split("?", 1)[0]
    for template, pattern in _PATTERNS:
        if pattern.fullmatch(path):
            return template
    return "other"


def redact_path(path: str, redact: Callable[[str], str]) -> str:
    """The path with each secret parameter's value (a token) passed through C{redact}."""
    for _, pattern in _PATTERNS:
        match = pattern.fullmatch(path)
        if match:
            for name in SECRET_PARAMETERS & set(match.groupdict()):
                start, end = match.span(name)
                path = path[:start] + redact(match.group(name)) + path[end:]
            return path
    return path


def merge_slashes(target: bytes) -> bytes:
    """
    A request target with repeated slashes in its path merged: clients that
    join a base URL ending in C{/} with a path starting with one ask for
    C{//accounts/token/new}, which web-core's server answered like the route.
    """
    path, question, query = target.partition(b"?")
    return _SLASHES.sub(b"/", path) + question + query
