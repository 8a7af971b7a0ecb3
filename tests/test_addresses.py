"""Who a request comes from: X-Forwarded-For, believed only from a trusted proxy."""

from __future__ import annotations

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.trial.unittest import SynchronousTestCase

from metadisk.config import networks
from metadisk.web.addresses import TrustedProxies, host_of

PROXIES = TrustedProxies(networks(["10.0.0.0/8", "127.0.0.1/32", "2001:db8:1::/48"]))
PROXY = IPv4Address("TCP", "10.1.1.1", 5000)


def client(peer: IPv4Address | IPv6Address, *values: bytes) -> str:
    return PROXIES.client(peer, list(values)).host


class ForwardedForTests(SynchronousTestCase):
    def test_from_a_trusted_proxy(self) -> None:
        self.assertEqual(client(PROXY, b"203.0.113.5"), "203.0.113.5")
        address = PROXIES.client(PROXY, [b"203.0.113.5"])
        self.assertIsInstance(address, IPv4Address)
        self.assertEqual(address.type, "TCP")

    def test_rightmost_address_not_a_trusted_proxy(self) -> None:
        # What lies left of it was written by the client: it proves nothing.
        self.assertEqual(client(PROXY, b"198.51.100.1, 203.0.113.5"), "203.0.113.5")
        # A chain of trusted proxies in front of this one.
        self.assertEqual(client(PROXY, b"203.0.113.5, 10.2.2.2, 127.0.0.1"), "203.0.113.5")
        # The header given several times is one list, in order.
        self.assertEqual(client(PROXY, b"198.51.100.1", b"203.0.113.5, 10.2.2.2"), "203.0.113.5")
        # All of them proxies: the first is the client.
        self.assertEqual(client(PROXY, b"10.3.3.3, 10.2.2.2"), "10.3.3.3")

    def test_ipv6(self) -> None:
        address = PROXIES.client(PROXY, [b"2001:db8:2::5, 2001:db8:1::7"])
        self.assertIsInstance(address, IPv6Address)
        self.assertEqual(address.host, "2001:db8:2::5")
        via_ipv6_proxy = IPv6Address("TCP", "2001:db8:1::1", 5000)
        self.assertEqual(client(via_ipv6_proxy, b"203.0.113.5"), "203.0.113.5")
        # A dual-stack listener sees an IPv4 proxy as an IPv4-mapped address.
        mapped = IPv6Address("TCP", "::ffff:10.1.1.1", 5000)
        self.assertEqual(client(mapped, b"203.0.113.5"), "203.0.113.5")
        self.assertEqual(client(PROXY, b"::ffff:203.0.113.5"), "203.0.113.5")

    def test_garbage_leaves_the_peer(self) -> None:
        for value in (
            b"",
            b"unknown",
            b"203.0.113.5:4711",
            b"[2001:db8::1]",
            b"203.0.113.5,",
            b"203.0.113.5, , 10.2.2.2",
            b"300.1.1.1",
            b"203.0.113.5 203.0.113.6",
            b"\xff\xfe",
            b"\xd9\xa1.1.1.1",  # not ASCII digits
        ):
            self.assertEqual(client(PROXY, value), "10.1.1.1", value)
        # Garbage left of the client is never looked at.
        self.assertEqual(client(PROXY, b"garbage, 203.0.113.5"), "203.0.113.5")

    def test_from_anyone_else_the_header_is_ignored(self) -> None:
        stranger = IPv4Address("TCP", "192.0.2.9", 5000)
        self.assertIs(PROXIES.client(stranger, [b"203.0.113.5"]), stranger)
        self.assertIs(TrustedProxies().client(PROXY, [b"203.0.113.5"]), PROXY)
        unix = UNIXAddress(b"/run/metadisk.sock")
        self.assertIs(PROXIES.client(unix, [b"203.0.113.5"]), unix)
        self.assertIs(PROXIES.client(PROXY, []), PROXY)

    def test_host_of(self) -> None:
        self.assertEqual(host_of(IPv4Address("TCP", "127.0.0.1", 1)), "127.0.0.1")
        self.assertEqual(host_of(IPv6Address("TCP", "::ffff:127.0.0.1", 1)), "127.0.0.1")
        self.assertEqual(host_of(IPv6Address("TCP", "::1", 1)), "::1")
        self.assertIsNone(host_of(UNIXAddress(b"/run/metadisk.sock")))
        self.assertIsNone(host_of(None))
