"""Reading API parameters from a JSON body, a form body or the query string."""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qs

from twisted.web.iweb import IRequest

MAX_BYTES = 2**53
_DIGITS = re.compile(r"[0-9]{1,64}")


def _repeats_as_lists(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose repeated names hold the list of their values (see L{parameter})."""
    document: dict[str, Any] = {}
    for key, value in pairs:
        document[key] = [document[key], value] if key in document else value
    return document


def parameter(request: IRequest, name: str) -> Any | None:
    """
    The parameter C{name}: from a JSON object body, else a form body, else
    the query string; the first that carries it. None when none does. A name
    given twice in one place is ambiguous: its values come back as a list,
    which no caller accepts (parameter pollution must not pick a winner).
    """
    request.content.seek(0)
    body = request.content.read()
    if body:
        try:
            document = json.loads(body, object_pairs_hook=_repeats_as_lists)
        except (ValueError, UnicodeDecodeError, RecursionError):  # deep nesting: not a crash
            document = None
        if isinstance(document, dict) and name in document:
            return document[name]
        try:
            form = parse_qs(body.decode("utf-8"), keep_blank_values=True)
        except UnicodeDecodeError:
            form = {}
        if name in form:
            return form[name][0] if len(form[name]) == 1 else form[name]
    values = request.args.get(name.encode("ascii"))
    if values:
        decoded = [value.decode("utf-8", "replace") for value in values]
        return decoded[0] if len(decoded) == 1 else decoded
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
