"""
The pieces in front of the site, on a Clock with in-memory transports: the
header deadline, the per-address limit, the descriptor budget.
"""

from __future__ import annotations

import json
import resource
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.static import Data

from metadisk.config import networks
from metadisk.web.addresses import TrustedProxies
from metadisk.web.connections import LINGER, ConnectionGuard, GuardedConnection
from metadisk.web.descriptors import Admission, DescriptorBudget, raise_open_file_limit
from metadisk.web.guard import TokenGuard
from metadisk.web.site import CORS, MetaDiskSite
from tests.test_openapi import raw_parts


def peer(host: str = "192.0.2.7") -> IPv4Address:
    return IPv4Address("TCP", host, 40000)


def answer(transport: StringTransport) -> tuple[int, dict[str, str], Any]:
    status, headers, body = raw_parts(transport.value())
    return status, headers, json.loads(body)


class HeaderDeadlineTests(SynchronousTestCase):
    """C{[node] header_timeout}, kept by the site's channel on the site's clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        root = Resource()
        root.putChild(b"ok", Data(b"fine", "text/plain"))
        self.site = MetaDiskSite(
            root,
            upload_policy=None,  # type: ignore[arg-type]  # these requests upload nothing
            guard=TokenGuard(self.clock, limit=10, window=60),
            cors=CORS(()),
            reactor=self.clock,
            header_timeout=30,
        )

    def connect(self) -> tuple[Any, StringTransport]:
        protocol = self.site.buildProtocol(peer())
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def test_a_partial_request_gets_408(self) -> None:
        protocol, transport = self.connect()
        protocol.dataReceived(b"GET /ok HTTP/1.1\r\nHost: x\r\n")
        for _ in range(29):  # a byte a second: Twisted's idle timeout would wait for ever
            self.clock.advance(1)
            protocol.dataReceived(b"X")
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        status, headers, body = answer(transport)
        self.assertEqual((status, body), (408, {"error": "request-timeout"}))
        self.assertEqual(headers["Connection"], "close")
        self.assertTrue(transport.disconnecting)
        # What comes after is not parsed, let alone answered.
        transport.clear()
        protocol.dataReceived(b": y\r\n\r\nGET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(transport.value(), b"")

    def test_a_silent_connection_is_closed_without_an_answer(self) -> None:
        _, transport = self.connect()
        self.clock.advance(30)
        self.assertEqual(transport.value(), b"")
        self.assertTrue(transport.disconnecting)

    def test_complete_headers_stop_the_deadline(self) -> None:
        protocol, transport = self.connect()
        protocol.dataReceived(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertIn(b"fine", transport.value())
        self.assertFalse(transport.disconnecting)

    def test_kept_alive_the_deadline_runs_from_the_end_of_the_response(self) -> None:
        protocol, transport = self.connect()
        self.clock.advance(20)
        protocol.dataReceived(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
        self.clock.advance(29)
        self.assertFalse(transport.disconnecting)
        protocol.dataReceived(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")  # the next one, in time
        self.assertEqual(transport.value().count(b"fine"), 2)
        self.clock.advance(30)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value().count(b"HTTP/1.1 "), 2)  # closed, not answered

    def test_pipelined_requests_each_get_the_deadline(self) -> None:
        protocol, transport = self.connect()
        protocol.dataReceived(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\nGET /ok HTTP/1.1\r\n")
        self.clock.advance(30)
        status, _, body = raw_parts(transport.value().split(b"fine", 1)[1])
        self.assertEqual((status, json.loads(body)), (408, {"error": "request-timeout"}))

    def test_a_lost_connection_leaves_no_timer(self) -> None:
        protocol, _ = self.connect()
        protocol.connectionLost(None)
        self.assertEqual(
            [call for call in self.clock.getDelayedCalls() if call.active()],
            [],
        )


class ConnectionGuardTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.budget = DescriptorBudget(self.clock, 1000, reserve=64, count=lambda: 10)
        self.guard = ConnectionGuard(
            Factory.forProtocol(Protocol),
            clock=self.clock,
            budget=self.budget,
            max_per_address=2,
            proxies=TrustedProxies(networks(["10.0.0.0/8"])),
        )

    def connect(self, host: str) -> tuple[Any, StringTransport]:
        protocol = self.guard.buildProtocol(peer(host))
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def test_an_address_past_its_limit_gets_429(self) -> None:
        held = [self.connect("192.0.2.7") for _ in range(2)]
        self.assertTrue(all(t.value() == b"" for _, t in held))
        refused, transport = self.connect("192.0.2.7")
        status, headers, body = answer(transport)
        self.assertEqual((status, body), (429, {"error": "too-many-connections"}))
        self.assertEqual(headers["Connection"], "close")
        self.assertEqual(headers["Retry-After"], "2")
        # Another address is served.
        _, other = self.connect("192.0.2.8")
        self.assertEqual(other.value(), b"")
        # The refused one is read past, then cut after LINGER seconds, if its client stays.
        refused.dataReceived(b"GET / HTTP/1.1\r\n")
        self.assertFalse(transport.disconnecting)
        self.clock.advance(LINGER)
        self.assertTrue(transport.disconnecting)
        refused.connectionLost(None)
        # When one of its connections ends, the address may open another.
        held[0][0].connectionLost(None)
        _, again = self.connect("192.0.2.7")
        self.assertEqual(again.value(), b"")

    def test_a_refused_client_that_closes_leaves_no_timer(self) -> None:
        for _ in range(2):
            self.connect("192.0.2.7")
        refused, _ = self.connect("192.0.2.7")
        refused.connectionLost(None)
        self.assertEqual([c for c in self.clock.getDelayedCalls() if c.active()], [])
        self.assertNotIn(refused, self.guard.protocols)

    def test_a_trusted_proxy_is_not_counted(self) -> None:
        for _ in range(5):
            _, transport = self.connect("10.1.2.3")
            self.assertEqual(transport.value(), b"")

    def test_every_connection_is_known_for_the_stop(self) -> None:
        connections = {self.connect("192.0.2.7")[0] for _ in range(3)}  # the third is refused
        self.assertEqual(set(self.guard.protocols), connections)

    def test_out_of_descriptors(self) -> None:
        self.budget.limit = 10 + 64 + 2 * 3  # room for three connections and their files
        served = [self.connect(f"192.0.2.{i}") for i in range(3)]
        self.assertTrue(all(t.value() == b"" for _, t in served))
        _, transport = self.connect("192.0.2.100")
        status, headers, body = answer(transport)
        self.assertEqual((status, body), (503, {"error": "node-busy"}))
        self.assertEqual(headers["Retry-After"], "2")
        self.budget.limit = 10 + 3 + 1 + 63  # the reserve itself would be eaten into
        self.assertIsNone(self.guard.buildProtocol(peer("192.0.2.101")))
        served[0][0].connectionLost(None)
        self.budget.limit = 10 + 64 + 2 * 4
        self.assertIsInstance(self.guard.buildProtocol(peer("192.0.2.102")), GuardedConnection)


class DescriptorBudgetTests(SynchronousTestCase):
    def test_counts_at_most_every_half_second(self) -> None:
        clock = Clock()
        counted = []

        def count() -> int:
            counted.append(clock.seconds())
            return 10

        budget = DescriptorBudget(clock, 100, reserve=64, count=count)
        self.assertIs(budget.admission(), Admission.ADMIT)
        # Counted once; the connections opened since are added, two descriptors each.
        for _ in range(13):
            budget.opened()
        self.assertIs(budget.admission(), Admission.BUSY)  # 100 - 23 - 13 - 1 < 64 <= 100 - 23
        for _ in range(14):
            budget.opened()
        self.assertIs(budget.admission(), Admission.DROP)  # 100 - 37 < 64
        self.assertEqual(counted, [0])
        clock.advance(0.5)
        for _ in range(27):
            budget.closed()
        self.assertIs(budget.admission(), Admission.ADMIT)
        self.assertEqual(counted, [0, 0.5])

    def test_no_descriptor_even_to_count(self) -> None:
        def count() -> int:
            raise OSError(24, "Too many open files")

        self.assertIs(DescriptorBudget(Clock(), 1000, count=count).admission(), Admission.DROP)

    def test_nothing_to_count_with(self) -> None:
        """Without /proc, the connections are all that is counted."""
        budget = DescriptorBudget(Clock(), 100, reserve=64, count=lambda: None)
        for _ in range(17):
            budget.opened()
        self.assertIs(budget.admission(), Admission.ADMIT)  # 100 - 17 - 17 - 1 >= 64
        budget.opened()
        self.assertIs(budget.admission(), Admission.BUSY)

    def test_the_soft_limit_is_raised_to_the_hard_limit(self) -> None:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, hard, 200), hard))
        self.assertEqual(raise_open_file_limit(), hard)
        self.assertEqual(resource.getrlimit(resource.RLIMIT_NOFILE), (hard, hard))
