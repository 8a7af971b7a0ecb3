"""
What a client really received of a response. Bytes handed to a socket are
not delivered yet: a client that stops reading and goes away never gets what
sat in the node's buffers and its own (on loopback, the whole of a 3 MB
download fits there), so a download pays for bytes as they are acknowledged.

How: on Linux, over plain TCP, the kernel counts the bytes of a connection
that its peer has acknowledged (TCP_INFO's C{tcpi_bytes_acked}, Linux 4.1 and
later; still readable after a reset). Each connection counts the bytes it
handed to its transport; the difference is everything undelivered, Twisted's
own buffer included, with no private Twisted state read. (SIOCOUTQ,
write_seq - snd_una, would need that buffer added, and it is private.) The
socket is read at the close from the transport's producer, whose
C{stopProducing} Twisted calls just before it closes the socket. A close the
node did not ask for (the peer went away or reset) then resets the
connection, so that what the kernel still holds is discarded, not sent after
the refund: a client that half-closes cannot read it for free. Only bytes on
the wire at that instant (at most a window) may still arrive.

Elsewhere (other systems, TLS where the socket carries ciphertext, a unix
socket) what was handed over counts as delivered, as it always did.
"""

from __future__ import annotations

import socket
import struct
import sys
from typing import Any

from attrs import define
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IDelayedCall,
    IPushProducer,
    IReactorTime,
    ISSLTransport,
    ITCPTransport,
)
from zope.interface import implementer

_TCP_INFO_SIZE = 256
_BYTES_ACKED = struct.Struct("=Q")  # u64 tcpi_bytes_acked…
_BYTES_ACKED_AT = 120  # …at this offset of struct tcp_info (linux/tcp.h)
_RESET_ON_CLOSE = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() resets, dropping the queue
POLL_FIRST = 0.001  # seconds before looking again whether a span is acknowledged…
POLL_MAX = 0.5  # …doubling up to this


def acknowledged_bytes(sock: socket.socket) -> int | None:
    """Bytes of a TCP connection's output that its peer acknowledged; None if not told."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_SIZE)
    except OSError:
        return None
    if len(info) < _BYTES_ACKED_AT + _BYTES_ACKED.size:
        return None  # a kernel older than 4.1
    return int(_BYTES_ACKED.unpack_from(info, _BYTES_ACKED_AT)[0])


def _within(acknowledged: int, start: int, end: int) -> int:
    """How much of the span C{start}-C{end} of an output lies before C{acknowledged}."""
    return max(0, min(acknowledged, end) - start)


class Delivery:
    """
    One connection's output, where what was handed over counts as delivered.
    L{position} is how far the output has got; L{acknowledged} says how much
    of a span of it the client got.
    """

    def __init__(self) -> None:
        self.written = 0

    def wrote(self, n: int) -> None:
        self.written += n

    def position(self) -> int:
        return self.written

    def acknowledged(self, start: int, end: int) -> Deferred[int]:
        """How many of the output's bytes from C{start} to C{end} the client got, once known."""
        return succeed(end - start)

    def check(self) -> None:
        """The client sent something: what it acknowledged may have moved."""

    def closing(self) -> None:
        """The socket is about to close."""

    def closed(self) -> None:
        """The connection is gone."""


class AcknowledgedDelivery(Delivery):
    """
    A TCP connection's output on Linux: a span is delivered as far as the
    peer acknowledged it. L{acknowledged} answers once the whole span is
    acknowledged (looked at when the client sends again, having read what
    came before, and on a timer that backs off) or at the close; a peer
    that acknowledges nothing more for C{stall_timeout} seconds is cut off.
    """

    def __init__(self, transport: Any, clock: IReactorTime, stall_timeout: float) -> None:
        super().__init__()
        self._transport = transport
        self._socket: socket.socket = transport.getHandle()
        # Before the first write: the SYN, counted on a connecting side (not on an accepting one).
        self._syn = acknowledged_bytes(self._socket) or 0
        self._clock = clock
        self._stall_timeout = stall_timeout
        self._waiting: list[tuple[int, int, Deferred[int]]] = []
        self._final: int | None = None  # acknowledged when the socket closed
        self._acked = 0
        self._progress_at = 0.0
        self._poll: IDelayedCall | None = None
        self._interval = POLL_FIRST

    def acknowledged(self, start: int, end: int) -> Deferred[int]:
        if end <= start:
            return succeed(0)
        if self._final is not None:
            return succeed(_within(self._final, start, end))
        d: Deferred[int] = Deferred()
        self._waiting.append((start, end, d))
        self._interval = POLL_FIRST
        self._progress_at = self._clock.seconds()
        self.check()
        return d

    def check(self) -> None:
        if not self._waiting:
            return
        acked = self._read()
        if acked is None:  # not readable any more: as handed over
            self._answer(self.written, final=True)
            return
        now = self._clock.seconds()
        if acked > self._acked:
            self._acked, self._progress_at = acked, now
        self._answer(acked, final=False)
        if not self._waiting:
            self._stop_polling()
        elif now - self._progress_at >= self._stall_timeout:
            self._transport.abortConnection()  # its close answers the spans
        elif self._poll is None:
            self._poll = self._clock.callLater(self._interval, self._tick)

    def _tick(self) -> None:
        self._poll = None
        self._interval = min(self._interval * 2, POLL_MAX)
        self.check()

    def closing(self) -> None:
        acked = self._read()
        self._final = acked if acked is not None else self.written
        if self._final < self.written and (self._waiting or not self._transport.disconnecting):
            # Closed by the peer, or by us while a download waits for its acknowledgement
            # (idle, or at shutdown): reset rather than send what is still queued and unpaid.
            try:
                self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
            except OSError:
                pass  # already reset
        self._stop_polling()
        self._answer(self._final, final=True)

    def closed(self) -> None:
        if self._final is None:
            # Closed without its producer: the node let go of it after a whole response,
            # and an orderly close still sends what the kernel holds.
            self._final = self.written
            self._stop_polling()
            self._answer(self._final, final=True)

    def _read(self) -> int | None:
        acked = acknowledged_bytes(self._socket)
        # At most what was written: a FIN, once acknowledged, counts one more.
        return min(acked - self._syn, self.written) if acked is not None else None

    def _answer(self, acked: int, *, final: bool) -> None:
        waiting, self._waiting = self._waiting, []
        for start, end, d in waiting:
            if final or acked >= end:
                d.callback(_within(acked, start, end))
            else:
                self._waiting.append((start, end, d))

    def _stop_polling(self) -> None:
        if self._poll is not None:
            self._poll.cancel()
            self._poll = None


def delivery_for(transport: Any, clock: IReactorTime, stall_timeout: float) -> Delivery:
    """The way to measure what a connection's peer got, for its transport."""
    if (
        sys.platform.startswith("linux")
        and ITCPTransport.providedBy(transport)
        and not ISSLTransport.providedBy(transport)
        and acknowledged_bytes(transport.getHandle()) is not None
    ):
        return AcknowledgedDelivery(transport, clock, stall_timeout)
    return Delivery()


def delivery_of(request: Any) -> Delivery:
    """
    The L{Delivery} of the connection C{request} came on; where the connection
    has none (not behind a L{ConnectionGuard}), one that counts what was handed over.
    """
    transport = getattr(getattr(request, "channel", None), "transport", None)
    delivery = getattr(transport, "delivery", None)
    return delivery if isinstance(delivery, Delivery) else Delivery()


@implementer(IPushProducer)
@define
class ClosingProducer:
    """
    Stands in for a transport's producer (the HTTP channel): Twisted stops
    the producer just before it closes the socket, the last moment to read
    what the peer acknowledged.
    """

    _producer: Any
    _delivery: Delivery

    def pauseProducing(self) -> None:
        self._producer.pauseProducing()

    def resumeProducing(self) -> None:
        self._producer.resumeProducing()

    def stopProducing(self) -> None:
        self._delivery.closing()
        self._producer.stopProducing()
