"""Reading API parameters from a JSON body, a form body or the query string."""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qs

from twisted.web.iweb import IRequest

MAX_BYTES = 2**53
_DIGITS = re.compile(r"[0-9]{1,64}")


def parameter(request: IRequest, name: str) -> Any | None:
    """
    The parameter C{name}: from a JSON object body, else a form body, else
    the query string; the first that carries it. None when none does.
    """
    request.content.seek(0)
    body = request.content.read()
    if body:
        try:
            document = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            document = None
        if isinstance(document, dict) and name in document:
            return document[name]
        try:
            form = parse_qs(body.decode("utf-8"), keep_blank_values=True)
        except UnicodeDecodeError:
            form = {}
        if name in form:
            return form[name][0]
    values = request.args.get(name.encode("ascii"))
    if values:
        return values[0].decode("utf-8", "replace")
    return None


def byte_count(value: Any) -> int | None:
    """A C{bytes} parameter: decimal digits or a JSON integer, 1 to 2^53; else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and _DIGITS.fullmatch(value):
        value = int(value)
    if isinstance(value, int) and 1 <= value <= MAX_BYTES:
        return value
    return None


def query_argument(request: IRequest, name: str) -> str | None:
    values = request.args.get(name.encode("ascii"))
    return values[0].decode("utf-8", "replace") if values else None
