"""
A stranger's URL leads the node to public addresses only: the ranges refused
and why, the allow list, the node's own addresses, and the guarded path to a
URL's host, down to real sockets on loopback that count the connections they
receive (a refused fetch must not reach them at all).
"""

from __future__ import annotations

import hashlib
import ipaddress
import socket
from pathlib import Path
from typing import Any

from attrs import define, field
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IHostnameResolver, IHostResolution, IResolutionReceiver
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import Certificate, PrivateCertificate, optionsForClientTLS
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from twisted.web.client import URI
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data
from twisted.web.util import Redirect
from zope.interface import implementer

from metadisk.config import networks
from metadisk.store.hosts import HostError
from metadisk.store.hosts.publicnet import (
    TIMEOUT,
    AddressPolicy,
    ListeningAddresses,
    PublicEndpoints,
    public_agent,
    range_refusal,
    resolve,
    this_machine,
)
from metadisk.store.hosts.url import URLHost
from tests.support import CountingServer
from tests.test_tls import self_signed

BLOB = b"an internal service's answer"
FILEHASH = hashlib.sha256(BLOB).hexdigest()


@implementer(IHostResolution)
@define
class _Resolution:
    name: str


@implementer(IHostnameResolver)
@define
class StaticResolver:
    """Names to addresses, answered at once; it keeps the names it was asked."""

    names: dict[str, list[str]]
    asked: list[str] = field(factory=list)

    def resolveHostName(
        self,
        receiver: IResolutionReceiver,
        hostName: str,
        portNumber: int = 0,
        addressTypes: Any = None,
        transportSemantics: str = "TCP",
    ) -> IResolutionReceiver:
        self.asked.append(hostName)
        receiver.resolutionBegan(_Resolution(hostName))
        for address in self.names.get(hostName, []):
            kind = IPv6Address if ":" in address else IPv4Address
            receiver.addressResolved(kind("TCP", address, portNumber))
        receiver.resolutionComplete()
        return receiver


@implementer(IHostnameResolver)
class SilentResolver:
    """A resolver that never answers; it keeps the receivers it was given."""

    def __init__(self) -> None:
        self.receivers: list[IResolutionReceiver] = []

    def resolveHostName(self, receiver: IResolutionReceiver, *args: Any, **kwargs: Any) -> Any:
        self.receivers.append(receiver)
        return receiver


class RangeTests(SynchronousTestCase):
    def test_refused(self) -> None:
        refused = {
            "0.0.0.0": "unspecified",
            "0.1.2.3": "unspecified",
            "127.0.0.1": "loopback",
            "127.255.255.254": "loopback",
            "10.1.2.3": "private",
            "172.16.0.1": "private",
            "172.31.255.255": "private",
            "192.168.1.1": "private",
            "169.254.169.254": "link-local",
            "100.64.0.1": "shared",
            "100.127.255.255": "shared",
            "224.0.0.1": "multicast",
            "239.255.255.250": "multicast",
            "240.0.0.1": "reserved",
            "255.255.255.255": "broadcast",
            "192.0.0.8": "special-purpose",
            "198.18.0.1": "special-purpose",
            "192.0.2.1": "documentation",
            "198.51.100.1": "documentation",
            "203.0.113.1": "documentation",
            "::": "unspecified",
            "::1": "loopback",
            "fc00::1": "private",
            "fd12:3456::1": "private",
            "fe80::1": "link-local",
            "fe80::1%1": "link-local",
            "fec0::1": "site-local",
            "ff02::1": "multicast",
            "ff05::1:3": "multicast",
            "2001:db8::1": "documentation",
            "3fff::1": "documentation",
            "64:ff9b:1::a00:1": "site-local",
            "2002:7f00:1::1": "tunnel",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2": "tunnel",
            "100::1": "outside global unicast",
            "4000::1": "outside global unicast",
            # IPv4-mapped: Python's is_loopback says no to the first.
            "::ffff:127.0.0.1": "loopback address (IPv4 127.0.0.1 inside IPv6)",
            "::ffff:10.0.0.1": "private address (IPv4",
            "::ffff:169.254.169.254": "link-local address (IPv4",
            "::ffff:100.64.0.1": "shared (CGNAT) address (IPv4",
            "::ffff:0.0.0.0": "unspecified address (IPv4",
            # IPv4-compatible: Python's is_global says yes to the first.
            "::127.0.0.1": "loopback address (IPv4 127.0.0.1 inside IPv6)",
            "::10.0.0.1": "private address (IPv4",
            "::169.254.169.254": "link-local address (IPv4",
            "::100.64.0.1": "shared (CGNAT) address (IPv4",
            "::224.0.0.1": "multicast address (IPv4",
            # NAT64: the gateway would connect to the IPv4 address.
            "64:ff9b::7f00:1": "loopback address (IPv4",
            "64:ff9b::a9fe:a9fe": "link-local address (IPv4",
        }
        for address, why in refused.items():
            refusal = range_refusal(ipaddress.ip_address(address))
            self.assertIsNotNone(refusal, address)
            self.assertIn(why, str(refusal), address)

    def test_public(self) -> None:
        for address in (
            "8.8.8.8",
            "1.1.1.1",
            "93.184.216.34",
            "100.63.255.255",  # just below the shared space
            "100.128.0.0",  # just above it
            "172.32.0.1",  # just above 172.16/12
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",  # the same host over a dual-stack socket
            "::8.8.8.8",
            "64:ff9b::808:808",  # NAT64 to a public address: all of IPv4 for an IPv6-only host
        ):
            self.assertIsNone(range_refusal(ipaddress.ip_address(address)), address)


def listening(*addresses: Any, local: tuple[str, ...] = ()) -> ListeningAddresses:
    """A node's listening addresses; C{local}: the addresses of the machine (by default none)."""
    own = ListeningAddresses(lambda ip: str(ip) in local)
    for address in addresses:
        own.add(address)
    return own


class AddressPolicyTests(SynchronousTestCase):
    def test_public_only_by_default(self) -> None:
        policy = AddressPolicy()
        self.assertIsNone(policy.refusal("93.184.216.34", 80))
        self.assertEqual(policy.refusal("127.0.0.1", 80), "loopback address")
        self.assertEqual(policy.refusal("example.net", 80), "not an IP address")
        with self.assertRaises(HostError) as caught:
            policy.check("10.0.0.1", 8080)
        self.assertEqual(str(caught.exception), "10.0.0.1 port 8080 is refused: private address")

    def test_the_allow_list_wins(self) -> None:
        policy = AddressPolicy(networks(["127.0.0.0/8", "fc00::/7", "100.64.0.0/10"]))
        for address in ("127.0.0.1", "127.0.0.2", "::ffff:127.0.0.1", "fd00::1", "100.64.0.1"):
            self.assertIsNone(policy.refusal(address, 80), address)
        for address in ("::1", "10.0.0.1", "169.254.169.254"):
            self.assertIsNotNone(policy.refusal(address, 80), address)

    def test_never_this_node(self) -> None:
        """The node's own address is refused even where the allow list lets loopback through."""
        own = listening(IPv4Address("TCP", "127.0.0.1", 8080), IPv6Address("TCP", "::1", 8443))
        policy = AddressPolicy(networks(["127.0.0.0/8", "::1/128", "0.0.0.0/8"]), own)
        for address, port in (
            ("127.0.0.1", 8080),
            ("::ffff:127.0.0.1", 8080),
            ("0.0.0.0", 8080),  # reaches this machine
            ("::1", 8443),
        ):
            self.assertEqual(policy.refusal(address, port), "this node's own address", address)
        for address, port in (("127.0.0.1", 8081), ("127.0.0.2", 8080), ("::1", 8080)):
            self.assertIsNone(policy.refusal(address, port), (address, port))

    def test_a_wildcard_listener(self) -> None:
        """Listening on 0.0.0.0 or ::, the node is reached through any address of its machine."""
        for wildcard in (IPv4Address("TCP", "0.0.0.0", 80), IPv6Address("TCP", "::", 80)):
            own = listening(wildcard, local=("93.184.216.34", "127.0.0.1"))
            policy = AddressPolicy(networks(["127.0.0.0/8"]), own)
            for address in ("93.184.216.34", "::ffff:93.184.216.34", "127.0.0.1"):
                self.assertEqual(policy.refusal(address, 80), "this node's own address", address)
            self.assertIsNone(policy.refusal("93.184.216.35", 80))
            self.assertIsNone(policy.refusal("93.184.216.34", 81))

    def test_a_unix_socket_is_not_an_address(self) -> None:
        own = listening(UNIXAddress(b"/run/metadisk.sock"))
        self.assertIsNone(AddressPolicy(own=own).refusal("93.184.216.34", 80))

    def test_this_machine(self) -> None:
        self.assertTrue(this_machine(ipaddress.ip_address("127.0.0.1")))
        self.assertFalse(this_machine(ipaddress.ip_address("192.0.2.1")))  # documentation


class ResolutionTests(TestCase):
    async def test_loopback_in_other_spellings(self) -> None:
        """What the system resolver makes of them: loopback, refused."""
        policy = AddressPolicy()
        for name in ("localhost", "0x7f000001", "2130706433", "127.1", "0177.0.0.1", "0x7f.1"):
            addresses = await resolve(reactor.nameResolver, reactor, name, TIMEOUT)
            self.assertTrue(addresses, name)
            for address in addresses:
                self.assertIn("loopback", str(policy.refusal(address, 80)), (name, address))


class ResolverTimeoutTests(SynchronousTestCase):
    def test_the_resolver_has_a_timeout(self) -> None:
        resolver, clock = SilentResolver(), MemoryReactorClock()
        resolved = Deferred.fromCoroutine(resolve(resolver, clock, "slow.example", TIMEOUT))
        clock.advance(TIMEOUT - 1)
        self.assertNoResult(resolved)
        clock.advance(1)
        self.assertIn(
            "no address within", self.failureResultOf(resolved, HostError).getErrorMessage()
        )
        resolver.receivers[0].resolutionComplete()  # a late answer is dropped

    def test_a_name_without_addresses(self) -> None:
        resolved = Deferred.fromCoroutine(
            resolve(StaticResolver({}), MemoryReactorClock(), "nowhere.example", TIMEOUT)
        )
        self.failureResultOf(resolved, HostError)


class PublicEndpointTests(SynchronousTestCase):
    """The guarded path on a memory reactor: where it connects, and what it checks."""

    def connect(
        self, url: bytes, names: dict[str, list[str]], **options: Any
    ) -> tuple[Deferred[Any], MemoryReactorClock, StaticResolver]:
        reactor, resolver = MemoryReactorClock(), StaticResolver(names)
        endpoints = PublicEndpoints(
            reactor=reactor, policy=AddressPolicy(), resolver=resolver, **options
        )
        factory = Factory.forProtocol(Protocol)
        return endpoints.endpointForURI(URI.fromBytes(url)).connect(factory), reactor, resolver

    def test_connects_to_the_checked_address(self) -> None:
        """The name is resolved once; the connection goes to the address itself."""
        connected, reactor, resolver = self.connect(
            b"http://files.example:8080/blob", {"files.example": ["93.184.216.34"]}
        )
        self.assertEqual(resolver.asked, ["files.example"])
        self.assertEqual(reactor.tcpClients[0][:2], ("93.184.216.34", 8080))
        self.assertNoResult(connected)

    def test_one_address_refused_refuses_the_name(self) -> None:
        connected, reactor, _ = self.connect(
            b"http://files.example/blob", {"files.example": ["93.184.216.34", "10.0.0.1"]}
        )
        self.assertIn("private", self.failureResultOf(connected, HostError).getErrorMessage())
        self.assertEqual(reactor.tcpClients, [])

    def test_the_peer_is_checked(self) -> None:
        """Should the connection reach anywhere else, it is dropped before a byte is sent."""
        connected, reactor, _ = self.connect(
            b"http://files.example/blob", {"files.example": ["93.184.216.34"]}
        )
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 80))
        reactor.tcpClients[0][2].buildProtocol(None).makeConnection(transport)
        self.assertIn("loopback", self.failureResultOf(connected, HostError).getErrorMessage())
        self.assertTrue(transport.disconnected)
        self.assertEqual(transport.value(), b"")

    def test_the_next_address_when_one_is_down(self) -> None:
        connected, reactor, _ = self.connect(
            b"http://files.example/blob",
            {"files.example": ["2606:2800:220:1:248:1893:25c8:1946", "93.184.216.34"]},
        )
        first = reactor.tcpClients[0]
        self.assertEqual(first[:2], ("2606:2800:220:1:248:1893:25c8:1946", 80))
        first[2].clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        self.assertEqual(reactor.tcpClients[1][:2], ("93.184.216.34", 80))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "93.184.216.34", 80))
        protocol = reactor.tcpClients[1][2].buildProtocol(None)
        protocol.makeConnection(transport)
        self.assertIsInstance(self.successResultOf(connected), Protocol)

    def test_https_is_verified_for_the_host_name(self) -> None:
        names: list[str] = []

        def tls(host: str) -> Any:
            names.append(host)
            return optionsForClientTLS(host)

        self.connect(b"https://files.example/blob", {"files.example": ["93.184.216.34"]}, tls=tls)
        self.assertEqual(names, ["files.example"])

    def test_what_cannot_be_a_url_host(self) -> None:
        endpoints = PublicEndpoints(
            reactor=MemoryReactorClock(), policy=AddressPolicy(), resolver=StaticResolver({})
        )
        for url in (b"ftp://files.example/blob", b"http://files.example:0/", b"http://h:99999/"):
            with self.assertRaises(HostError):
                endpoints.endpointForURI(URI.fromBytes(url))


def blobs(**children: Resource) -> Resource:
    root = Resource()
    for name, child in children.items():
        root.putChild(name.encode(), child)
    return root


def url_host(
    allowed: tuple[str, ...] = (), own: ListeningAddresses | None = None, **options: Any
) -> URLHost:
    """A URL host on the guarded path, letting C{allowed} networks through."""
    policy = AddressPolicy(networks(allowed), own or ListeningAddresses())
    agent = public_agent(reactor, PublicEndpoints(reactor=reactor, policy=policy, **options))
    return URLHost(agent, 10**6, reactor)


class CountedFetchTests(TestCase):
    """
    Real sockets on loopback that count their connections: a refused fetch
    must fail with a L{HostError} without reaching them at all.
    """

    def setUp(self) -> None:
        self.internal = CountingServer(self, blobs(secret=Data(BLOB, "text/plain")))
        self.target = str(Path(self.mktemp()))

    async def refused(self, host: URLHost, url: str) -> HostError:
        with self.assertRaises(HostError) as caught:
            await host.fetch(FILEHASH, url, self.target, len(BLOB))
        return caught.exception

    async def test_loopback_by_any_name(self) -> None:
        host = url_host()
        for name in ("127.0.0.1", "localhost", "0x7f000001", "2130706433", "127.1"):
            await self.refused(host, self.internal.url("secret", host=name))
        self.assertEqual(self.internal.connections, 0)

    async def test_exists_is_guarded_too(self) -> None:
        with self.assertRaises(HostError):
            await url_host().exists(FILEHASH, self.internal.url("secret"))
        self.assertEqual(self.internal.connections, 0)
        self.assertTrue(
            await url_host(("127.0.0.0/8",)).exists(FILEHASH, self.internal.url("secret"))
        )

    async def test_ipv6_loopback(self) -> None:
        if not socket.has_ipv6:
            raise SkipTest("no IPv6 on this machine")
        try:
            internal = CountingServer(self, blobs(secret=Data(BLOB, "text/plain")), "::1")
        except OSError as e:
            raise SkipTest(f"no IPv6 loopback: {e}") from None
        for url in (internal.url("secret"), internal.url("secret", host="[::ffff:127.0.0.1]")):
            await self.refused(url_host(), url)
        self.assertEqual(internal.connections, 0)
        # Let through, the same URL is fetched: the refusal is the policy's, not a parser's.
        await url_host(("::1/128",)).fetch(FILEHASH, internal.url("secret"), self.target, len(BLOB))
        self.assertEqual(Path(self.target).read_bytes(), BLOB)

    async def test_a_redirect_to_loopback(self) -> None:
        """127.0.0.2 is let through; it answers 302 to 127.0.0.1, which is not."""
        to_internal = Redirect(self.internal.url("secret").encode())
        attacker = CountingServer(self, blobs(go=to_internal), interface="127.0.0.2")
        host = url_host(("127.0.0.2/32",))
        error = await self.refused(host, attacker.url("go"))
        self.assertIn("HTTP 302", str(error))
        self.assertEqual((attacker.connections, self.internal.connections), (1, 0))
        # Were a redirect followed, its address would be checked all the same.
        agent = public_agent(
            reactor,
            PublicEndpoints(reactor=reactor, policy=AddressPolicy(networks(["127.0.0.2/32"]))),
        )
        with self.assertRaises(HostError):
            await HTTPClient(agent).get(attacker.url("go"), allow_redirects=True)
        self.assertEqual((attacker.connections, self.internal.connections), (2, 0))

    async def test_this_node_even_with_loopback_allowed(self) -> None:
        own = ListeningAddresses()
        own.add(self.internal.port.getHost())
        host = url_host(("127.0.0.0/8",), own)
        for name in ("127.0.0.1", "localhost", "0.0.0.0"):
            error = await self.refused(host, self.internal.url("secret", host=name))
            self.assertIn("own address", str(error))
        self.assertEqual(self.internal.connections, 0)
        # Another server on loopback is let through.
        other = CountingServer(self, blobs(blob=Data(BLOB, "text/plain")))
        await host.fetch(FILEHASH, other.url("blob"), self.target, len(BLOB))
        self.assertEqual(other.connections, 1)

    async def test_this_node_listening_on_every_address(self) -> None:
        node = CountingServer(self, blobs(secret=Data(BLOB, "text/plain")), interface="0.0.0.0")
        own = ListeningAddresses()
        own.add(node.port.getHost())
        host = url_host(("127.0.0.0/8",), own)
        for name in ("127.0.0.1", "127.0.0.2", "localhost"):
            error = await self.refused(host, node.url("secret", host=name))
            self.assertIn("own address", str(error))
        self.assertEqual(node.connections, 0)

    async def test_https_checks_the_name_it_connects_for(self) -> None:
        """The certificate is verified for the URL's host name, at the checked address."""
        directory = Path(self.mktemp()).resolve()
        directory.mkdir()
        key, cert = self_signed(directory)  # for localhost and 127.0.0.1
        root = Certificate.loadPEM(cert.read_bytes())
        server = PrivateCertificate.loadPEM(key.read_text() + cert.read_text())
        site = Site(blobs(blob=Data(BLOB, "text/plain")))
        port = reactor.listenSSL(0, site, server.options(), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        number = port.getHost().port
        resolver = StaticResolver({"localhost": ["127.0.0.1"], "elsewhere.example": ["127.0.0.1"]})
        host = url_host(
            ("127.0.0.0/8",),
            resolver=resolver,
            tls=lambda name: optionsForClientTLS(name, trustRoot=root),
        )
        await host.fetch(FILEHASH, f"https://localhost:{number}/blob", self.target, len(BLOB))
        self.assertEqual(Path(self.target).read_bytes(), BLOB)
        with self.assertRaises(Exception) as caught:
            await host.fetch(
                FILEHASH, f"https://elsewhere.example:{number}/blob", self.target, len(BLOB)
            )
        self.assertIn("VerificationError", str(caught.exception))  # the name, not the address
