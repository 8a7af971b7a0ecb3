"""
Structured logs: one event per HTTP request (method, redacted path, status,
bytes, duration) through C{twisted.logger}, and a JSON-lines observer for
operators (C{twistd -n metadisk --log-format json}).
"""

from __future__ import annotations

import datetime
import json
import sys
from collections.abc import Callable
from typing import Any, TextIO

from attrs import define, frozen
from twisted.internet.interfaces import IReactorTime
from twisted.logger import ILogObserver, LogEvent, Logger, formatEvent
from twisted.python.components import Componentized
from zope.interface import implementer

from metadisk.metrics import Metrics, transfer_direction
from metadisk.routes import route_of

LOG_FORMATS = ("text", "json")
ACCESS_NAMESPACE = "metadisk.access"
ACCESS_FORMAT = "{client} {method} {path} {status} in={bytes_in} out={bytes_out} {duration:.3f}s"
# Keys of legacy (twisted.python.log) events that are already in the envelope, or noise.
_SKIPPED = {"message", "isError", "format", "why", "failure", "time", "system"}


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


def event_as_json(event: LogEvent) -> str:
    """
    One line of JSON: time (UTC, ISO 8601), level, namespace, the formatted
    message, a traceback if any, then the event's own fields.
    """
    fields = {
        key: _jsonable(value)
        for key, value in event.items()
        if not key.startswith("log_") and key not in _SKIPPED
    }
    when = datetime.datetime.fromtimestamp(event.get("log_time", 0), datetime.UTC)
    level = event.get("log_level")
    envelope: dict[str, Any] = {
        "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "level": level.name if level is not None else "info",
        "namespace": event.get("log_namespace", "-"),
        "message": formatEvent(event),
    }
    if event.get("log_system") not in (None, "-"):
        envelope["system"] = str(event["log_system"])
    failure = event.get("log_failure")
    if failure is not None:
        envelope["traceback"] = failure.getTraceback()
    return json.dumps({**fields, **envelope}, ensure_ascii=False)


@implementer(ILogObserver)
@define
class JSONLinesObserver:
    """Writes each event as one JSON object on one line."""

    _out: TextIO

    def __call__(self, event: LogEvent) -> None:
        try:
            line = event_as_json(event)
        except Exception as e:
            # A log line must never take the node down.
            line = json.dumps({"level": "error", "message": f"unloggable event: {e!r}"})
        self._out.write(line + "\n")
        self._out.flush()


def json_log_observer(out: TextIO | None = None) -> JSONLinesObserver:
    """
    JSON lines on standard output. Also usable as
    C{twistd --logger metadisk.logs.json_log_observer}.
    """
    return JSONLinesObserver(out if out is not None else sys.stdout)


def log_observer(log_format: str) -> JSONLinesObserver | None:
    """The observer for C{--log-format}; None for twistd's usual text log."""
    if log_format not in LOG_FORMATS:
        choices = ", ".join(LOG_FORMATS)
        raise ValueError(f"--log-format: expected one of {choices}, got {log_format!r}")
    return json_log_observer() if log_format == "json" else None


def offer_log_observer(parent: Any, observer: ILogObserver) -> None:
    """
    twistd and the .tac pass a service's parent as the L{Application}; twistd
    logs to its L{ILogObserver} component (unless C{--logger} says otherwise).
    """
    if isinstance(parent, Componentized):
        parent.setComponent(ILogObserver, observer)


# Module level: a Logger that is a class attribute takes the class's name as its namespace.
_access = Logger(namespace=ACCESS_NAMESPACE)


def _all_sent(request: Any) -> bool:
    length = request.responseHeaders.getRawHeaders(b"content-length")
    return bool(request.startedWriting and length and int(length[0]) == request.sentLength)


@frozen
class Started:
    """What is known of a request when its headers are in."""

    method: bytes
    uri: bytes
    route: str  # the template the path matches (metadisk.routes)
    at: float
    direction: str | None  # a transfer: incoming (upload) or outgoing (download)


@define
class RequestLog:
    """One log event and one set of metrics per request, when it ends or is cut short."""

    _clock: IReactorTime
    _redact: Callable[[str], str]
    _metrics: Metrics | None = None

    def started(self, method: bytes, uri: bytes) -> Started:
        route = route_of(uri.decode("latin-1"))
        direction = transfer_direction(method, route)
        if direction is not None and self._metrics is not None:
            self._metrics.transfers_running.labels(direction).inc()
        return Started(method, uri, route, self._clock.seconds(), direction)

    def done(self, request: Any, *, complete: bool) -> None:
        """
        Log C{request} (once). C{complete}: answered in full; otherwise the
        connection was lost first.
        """
        started: Started | None = request.started
        if started is None:
            return
        request.started = None
        # A client may close as soon as it has every byte, before the node calls finish().
        complete = complete or _all_sent(request)
        uri = started.uri.decode("latin-1")
        method = started.method.decode("latin-1")
        status = str(request.code) if complete else "aborted"
        bytes_in = int(getattr(request, "bytes_received", 0))
        bytes_out = int(request.sentLength)
        duration = self._clock.seconds() - started.at
        fields = {
            "client": getattr(request.getClientAddress(), "host", "-"),
            "method": method,
            "path": self._redact(uri),
            "route": started.route,
            "status": status,
            "bytes_in": bytes_in,
            "bytes_out": bytes_out,
            "duration": round(duration, 6),
            "complete": complete,
        }
        # The line is rendered here, once, by str.format, and the event's format is that text
        # with its braces escaped: twisted.logger's own formatting of the fields (a Formatter
        # in Python) was a quarter of what the log cost each request.
        line = ACCESS_FORMAT.format(**fields)
        _access.info(line.replace("{", "{{").replace("}", "}}"), **fields)
        if self._metrics is not None:
            if started.direction is not None:
                self._metrics.transfers_running.labels(started.direction).dec()
            self._metrics.request_done(started.route, method, status, bytes_in, bytes_out, duration)
