"""What a client really received: the output's bytes against what its peer acknowledged."""

from __future__ import annotations

import socket
import struct
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IPushProducer, ISSLTransport, ITCPTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import directlyProvides, implementer

from metadisk.web.addresses import TrustedProxies
from metadisk.web.connections import ConnectionGuard
from metadisk.web.delivery import (
    POLL_FIRST,
    POLL_MAX,
    AcknowledgedDelivery,
    ClosingProducer,
    Delivery,
    acknowledged_bytes,
    delivery_for,
)
from metadisk.web.descriptors import DescriptorBudget

STALL = 5.0


class FakeSocket:
    """What the kernel says of a TCP socket: C{acked} bytes acknowledged."""

    def __init__(self) -> None:
        self.acked = 0
        self.closed = False
        self.options: dict[tuple[int, int], bytes] = {}

    def getsockopt(self, level: int, option: int, size: int) -> bytes:
        assert (level, option) == (socket.IPPROTO_TCP, socket.TCP_INFO)
        if self.closed:
            raise OSError(9, "Bad file descriptor")
        info = bytearray(232)  # struct tcp_info of a recent kernel
        struct.pack_into("=Q", info, 120, self.acked)
        return bytes(info)

    def setsockopt(self, level: int, option: int, value: bytes) -> None:
        self.options[level, option] = value


class FakeTransport:
    disconnecting = False
    aborted = False

    def __init__(self) -> None:
        self.socket = FakeSocket()

    def getHandle(self) -> FakeSocket:
        return self.socket

    def abortConnection(self) -> None:
        self.aborted = True


class AcknowledgedDeliveryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.transport = FakeTransport()
        self.socket = self.transport.socket
        self.delivery = AcknowledgedDelivery(self.transport, self.clock, STALL)
        self.delivery.wrote(200)  # the headers
        self.delivery.wrote(1000)  # the body
        self.results: list[int] = []

    def ask(self, start: int = 200, end: int = 1200) -> None:
        self.delivery.acknowledged(start, end).addCallback(self.results.append)

    def test_answers_once_the_span_is_acknowledged(self) -> None:
        self.socket.acked = 700
        self.ask()
        self.assertEqual(self.results, [])
        waits = []
        for _ in range(12):
            [poll] = self.clock.getDelayedCalls()
            waits.append(round(poll.getTime() - self.clock.seconds(), 6))
            self.clock.advance(waits[-1])
        self.assertEqual(waits[:3], [POLL_FIRST, 2 * POLL_FIRST, 4 * POLL_FIRST])
        self.assertEqual(waits[-1], POLL_MAX)  # backing off to this
        self.socket.acked = 1200
        self.clock.advance(POLL_MAX)
        self.assertEqual(self.results, [1000])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_client_that_sends_again_is_looked_at_at_once(self) -> None:
        self.ask()
        self.socket.acked = 1200
        self.delivery.check()
        self.assertEqual(self.results, [1000])

    def test_a_close_by_the_peer_counts_what_was_acknowledged_and_resets(self) -> None:
        self.ask()
        self.socket.acked = 500
        self.delivery.closing()
        self.assertEqual(self.results, [300])
        self.assertEqual(
            self.socket.options, {(socket.SOL_SOCKET, socket.SO_LINGER): struct.pack("ii", 1, 0)}
        )
        self.assertEqual(self.clock.getDelayedCalls(), [])
        # A span asked about after the close is answered from what was acknowledged then.
        self.delivery.acknowledged(0, 1200).addCallback(self.results.append)
        self.assertEqual(self.results, [300, 500])

    def test_a_close_by_the_node_sends_what_is_queued(self) -> None:
        self.transport.disconnecting = True
        self.socket.acked = 500
        self.delivery.closing()
        self.assertEqual(self.socket.options, {})

    def test_a_close_by_the_node_while_a_span_waits_discards_the_rest(self) -> None:
        # A kept-alive connection whose download was answered but not yet acknowledged,
        # closed idle or at a stop: what is unpaid must not be sent after the close.
        self.ask()
        self.transport.disconnecting = True
        self.socket.acked = 500
        self.delivery.closing()
        self.assertEqual(self.results, [300])
        self.assertEqual(
            self.socket.options, {(socket.SOL_SOCKET, socket.SO_LINGER): struct.pack("ii", 1, 0)}
        )

    def test_nothing_to_discard_no_reset(self) -> None:
        self.socket.acked = 1200
        self.delivery.closing()
        self.assertEqual(self.socket.options, {})

    def test_a_reader_that_stalls_is_cut_off(self) -> None:
        self.ask()
        for acked in (100, 300):
            self.socket.acked = acked
            self.clock.pump([POLL_MAX] * int(STALL / POLL_MAX - 1))
            self.assertFalse(self.transport.aborted, acked)  # progress restarts the wait
        self.clock.pump([POLL_MAX] * 2)
        self.assertTrue(self.transport.aborted)
        self.delivery.closing()  # the abort closes the socket: what was acknowledged is paid
        self.assertEqual(self.results, [100])

    def test_closed_without_its_producer_counts_as_handed_over(self) -> None:
        # The channel lets go of the transport only once a response is whole: an orderly
        # close then still sends what the kernel holds.
        self.ask()
        self.socket.closed = True
        self.delivery.closed()
        self.assertEqual(self.results, [1000])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_an_empty_span(self) -> None:
        self.ask(1200, 1200)
        self.assertEqual(self.results, [0])
        self.assertEqual(self.clock.getDelayedCalls(), [])


class ChoosingTests(SynchronousTestCase):
    def tcp_socket(self) -> socket.socket:
        listener = socket.socket()
        self.addCleanup(listener.close)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        client = socket.create_connection(listener.getsockname())
        self.addCleanup(client.close)
        return client

    def test_a_tcp_connection_on_linux(self) -> None:
        sock = self.tcp_socket()
        self.assertEqual(acknowledged_bytes(sock), 1)  # a connecting side: its SYN
        transport = FakeTransport()
        transport.socket = sock  # type: ignore[assignment]
        directlyProvides(transport, ITCPTransport)
        self.assertIsInstance(delivery_for(transport, Clock(), STALL), AcknowledgedDelivery)
        directlyProvides(transport, ITCPTransport, ISSLTransport)
        self.assertIs(type(delivery_for(transport, Clock(), STALL)), Delivery)  # ciphertext

    def test_anything_else_counts_what_was_handed_over(self) -> None:
        self.assertIs(type(delivery_for(StringTransport(), Clock(), STALL)), Delivery)
        with socket.socket(type=socket.SOCK_DGRAM) as udp:
            self.assertIsNone(acknowledged_bytes(udp))
        delivery = Delivery()
        delivery.wrote(50)
        self.assertEqual(delivery.position(), 50)
        results: list[int] = []
        delivery.acknowledged(10, 50).addCallback(results.append)
        self.assertEqual(results, [40])


class _Writer(Protocol):
    def connectionMade(self) -> None:
        self.transport.write(b"head")
        self.transport.writeSequence([b"bo", b"dy"])


@implementer(IPushProducer)
class _Producer:
    stopped = False

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        self.stopped = True


class GuardedConnectionTests(SynchronousTestCase):
    def test_counts_its_output_and_stands_in_for_its_producer(self) -> None:
        clock = Clock()
        guard = ConnectionGuard(
            Factory.forProtocol(_Writer),
            clock=clock,
            budget=DescriptorBudget(clock, 1000, count=lambda: 0),
            max_per_address=10,
            proxies=TrustedProxies(),
        )
        connection: Any = guard.buildProtocol(IPv4Address("TCP", "192.0.2.1", 1))
        transport = StringTransport()
        connection.makeConnection(transport)
        self.assertEqual(connection.delivery.position(), len(b"headbody"))
        producer = _Producer()
        connection.registerProducer(producer, True)
        self.assertIsInstance(transport.producer, ClosingProducer)
        transport.producer.stopProducing()
        self.assertTrue(producer.stopped)
