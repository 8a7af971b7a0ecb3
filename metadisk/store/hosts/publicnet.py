"""
Where a stranger's URL may lead this node: to the public Internet, and
nowhere else.

Anyone can publish a record on the chain, naming any URL, and the node fetches
it from inside its own network. Left alone, such a URL reaches what only the
node can reach (its own API, the services of its machine and its network, the
cloud's metadata service), and the answer, its hash or its timing tells the
stranger what is there. So a URL's host name is resolved once, every address
it has is checked, the connection goes to a checked address itself (no second
lookup, which a DNS server could answer differently), and the peer reached is
checked again. Redirects are not followed (L{metadisk.store.hosts.url}).

Refused, and why:
  - 0.0.0.0/8, :: (unspecified): connecting there reaches this machine;
  - 127.0.0.0/8, ::1 (loopback): this machine's own services;
  - 10/8, 172.16/12, 192.168/16 (RFC 1918), fc00::/7 (unique local): the
    node's own network;
  - 169.254/16, fe80::/10 (link-local): the network segment, and the cloud's
    metadata service (169.254.169.254) with its credentials;
  - 100.64/10 (shared address space, RFC 6598): a carrier's or a cloud's
    inner network (Python's C{is_private} says no);
  - 224/4, ff00::/8 (multicast), 240/4 (reserved, with 255.255.255.255
    broadcast): not one host on the Internet;
  - 192.0.0/24 (IETF protocol assignments), 198.18/15 (benchmarking, used
    inside networks), documentation ranges: never a public server;
  - fec0::/10 (site-local), 64:ff9b:1::/48 (local-use NAT64): inner networks;
  - 2002::/16 (6to4), 2001::/32 (Teredo): tunnels to an IPv4 host this check
    does not see;
  - any other IPv6 address outside 2000::/3 (global unicast): not on the
    Internet;
  - an IPv4 address inside IPv6 (::ffff:a.b.c.d mapped, ::a.b.c.d compatible,
    64:ff9b::a.b.c.d NAT64) is judged by its IPv4 address: Python calls
    ::ffff:127.0.0.1 not loopback and ::127.0.0.1 global;
  - this node's own listening addresses, whatever the allow list says: a node
    that fetches from itself serves itself, or waits on itself.

C{[chain] fetch_allowed_networks} lets the addresses of its networks through
(tests serve blobs on loopback; a private network of nodes has private hosts).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from typing import Any

from attrs import Factory, define, field, frozen
from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import (
    IAddress,
    IHostnameResolver,
    IHostResolution,
    IOpenSSLClientConnectionCreator,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IResolutionReceiver,
    IStreamClientEndpoint,
)
from twisted.internet.ssl import optionsForClientTLS
from twisted.web.client import URI, Agent
from twisted.web.iweb import IAgent, IAgentEndpointFactory
from zope.interface import implementer

from metadisk.config import Network
from metadisk.httpclient import quiet_pool
from metadisk.store.hosts import HostError

IP = ipaddress.IPv4Address | ipaddress.IPv6Address

TIMEOUT = 10.0  # seconds: to resolve a name, and to connect to each of its addresses

_RANGES = (
    (("0.0.0.0/8", "::/128"), "unspecified"),
    (("127.0.0.0/8", "::1/128"), "loopback"),
    (("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"), "private"),
    (("169.254.0.0/16", "fe80::/10"), "link-local"),
    (("100.64.0.0/10",), "shared (CGNAT)"),
    (("224.0.0.0/4", "ff00::/8"), "multicast"),
    (("240.0.0.0/4",), "reserved or broadcast"),
    (("192.0.0.0/24", "198.18.0.0/15"), "special-purpose"),
    (
        ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32", "3fff::/20"),
        "documentation",
    ),
    (("fec0::/10", "64:ff9b:1::/48"), "site-local"),
    (("2002::/16", "2001::/32"), "tunnel (6to4, Teredo)"),
)
_REFUSED = tuple((ipaddress.ip_network(cidr), why) for cidrs, why in _RANGES for cidr in cidrs)
# IPv6 ranges whose last 32 bits are an IPv4 address: mapped, compatible, NAT64.
_IPV4_INSIDE = tuple(ipaddress.ip_network(n) for n in ("::ffff:0:0/96", "::/96", "64:ff9b::/96"))
_GLOBAL_UNICAST = ipaddress.ip_network("2000::/3")


def range_refusal(ip: IP) -> str | None:
    """Why no stranger's URL may lead to C{ip}, by its range; None for a public address."""
    for network, why in _REFUSED:
        if ip in network:
            return f"{why} address"
    if any(ip in network for network in _IPV4_INSIDE):
        inner = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        why = range_refusal(inner)
        return None if why is None else f"{why} (IPv4 {inner} inside IPv6)"
    if ip.version == 6 and ip not in _GLOBAL_UNICAST:
        return "IPv6 address outside global unicast"
    return None


def _unmapped(ip: IP) -> IP:
    """The IPv4 address an IPv4-mapped one connects to (a dual-stack socket does)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def this_machine(ip: IP) -> bool:
    """Whether C{ip} is an address of this machine: only those can be bound to."""
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((str(ip), 0))
        except OSError:
            return False
    return True


@define
class ListeningAddresses:
    """
    Where this node listens, filled in by its service once it does (the port
    may only be chosen then). A wildcard listener (0.0.0.0, ::) is reached
    through any address of this machine.
    """

    _is_local: Callable[[IP], bool] = this_machine
    _listening: set[tuple[IP, int]] = field(factory=set)

    def add(self, address: IAddress) -> None:
        """A listening port's C{getHost()}; a UNIX socket is no URL's business."""
        if isinstance(address, (IPv4Address, IPv6Address)):
            self._listening.add((_unmapped(ipaddress.ip_address(address.host)), address.port))

    def reached_by(self, ip: IP, port: int) -> bool:
        """Whether connecting to C{ip} on C{port} reaches this node."""
        ip = _unmapped(ip)
        return any(
            port == listening
            # Connecting to 0.0.0.0 or :: reaches this machine.
            and (host == ip or ip.is_unspecified or (host.is_unspecified and self._is_local(ip)))
            for host, listening in self._listening
        )


@frozen
class AddressPolicy:
    """Where a stranger's URL may make this node connect."""

    allowed: tuple[Network, ...] = ()  # [chain] fetch_allowed_networks: let through…
    own: ListeningAddresses = field(factory=ListeningAddresses)  # …but never to this node

    def refusal(self, host: str, port: int) -> str | None:
        """Why this node may not connect to C{host} (an address) on C{port}; None if it may."""
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return "not an IP address"
        if self.own.reached_by(ip, port):
            return "this node's own address"
        if any(address in network for address in (ip, _unmapped(ip)) for network in self.allowed):
            return None
        return range_refusal(ip)

    def check(self, host: str, port: int) -> None:
        why = self.refusal(host, port)
        if why is not None:
            raise HostError(f"{host} port {port} is refused: {why}")


@implementer(IResolutionReceiver)
class _Addresses:
    """What a resolver finds for one name."""

    def __init__(self) -> None:
        self.found: list[str] = []
        # Cancelled by a timeout, it drops the resolver's late answer.
        self.done: Deferred[list[str]] = Deferred()

    def resolutionBegan(self, resolution: IHostResolution) -> None:
        pass

    def addressResolved(self, address: IAddress) -> None:
        if isinstance(address, (IPv4Address, IPv6Address)):
            self.found.append(address.host)

    def resolutionComplete(self) -> None:
        self.done.callback(self.found)


async def resolve(
    resolver: IHostnameResolver, clock: IReactorTime, host: str, timeout: float
) -> list[str]:
    """The IPv4 and IPv6 addresses of C{host} (a name, or an address in any spelling)."""
    addresses = _Addresses()
    resolver.resolveHostName(addresses, host, addressTypes=[IPv4Address, IPv6Address])
    try:
        found = await addresses.done.addTimeout(timeout, clock)
    except defer.TimeoutError:
        raise HostError(f"{host}: no address within {timeout} s") from None
    if not found:
        raise HostError(f"{host}: no address")
    return found


@implementer(IStreamClientEndpoint)
@frozen
class PublicEndpoint:
    """
    Connects to a URL's host only where the policy allows: every address of
    the name is checked (one refused refuses the name: it has no business
    pointing inside), the connection goes to a checked address as it is, and
    the peer reached is checked before the request is sent.
    """

    _reactor: Any  # IReactorTCP and IReactorTime
    _resolver: IHostnameResolver
    _policy: AddressPolicy
    _host: str
    _port: int
    _tls: Callable[[str], IOpenSSLClientConnectionCreator] | None  # for a host name; None: http
    _timeout: float = TIMEOUT

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        return Deferred.fromCoroutine(self._connect(factory))

    async def _connect(self, factory: IProtocolFactory) -> IProtocol:
        addresses = await resolve(self._resolver, self._reactor, self._host, self._timeout)
        for address in addresses:
            self._policy.check(address, self._port)
        failures: list[ConnectError] = []
        for address in addresses:  # in the resolver's order of preference
            try:
                protocol = await self._endpoint(address).connect(factory)
            except ConnectError as e:
                failures.append(e)
                continue
            peer = protocol.transport.getPeer()
            try:
                self._policy.check(peer.host, peer.port)
            except HostError:
                protocol.transport.abortConnection()
                raise
            return protocol
        raise failures[-1]

    def _endpoint(self, address: str) -> IStreamClientEndpoint:
        tcp = TCP6ClientEndpoint if ":" in address else TCP4ClientEndpoint
        endpoint = tcp(self._reactor, address, self._port, timeout=self._timeout)
        # https: the certificate is verified for the URL's host name, not the address.
        return endpoint if self._tls is None else wrapClientTLS(self._tls(self._host), endpoint)


@implementer(IAgentEndpointFactory)
@frozen(kw_only=True)
class PublicEndpoints:
    """An L{Agent}'s endpoints to the hosts of strangers' URLs."""

    _reactor: Any  # IReactorTCP, IReactorTime and IReactorPluggableNameResolver
    _policy: AddressPolicy
    _resolver: IHostnameResolver = Factory(lambda self: self._reactor.nameResolver, takes_self=True)
    # The certificate verified for a host name, against the system's roots.
    _tls: Callable[[str], IOpenSSLClientConnectionCreator] = optionsForClientTLS
    _timeout: float = TIMEOUT

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        if uri.scheme not in (b"http", b"https"):
            raise HostError(f"not an http(s) URL: {uri.toBytes()[:100]!r}")
        if not 0 < uri.port < 65536:
            raise HostError(f"bad port {uri.port}")
        try:
            host = uri.host.decode("ascii")
        except UnicodeDecodeError:
            raise HostError(f"not an ASCII host name: {uri.host[:100]!r}") from None
        tls = self._tls if uri.scheme == b"https" else None
        return PublicEndpoint(
            self._reactor, self._resolver, self._policy, host, uri.port, tls, self._timeout
        )


def public_agent(reactor: Any, endpoints: PublicEndpoints) -> IAgent:
    """An agent over C{endpoints} that keeps no connection: each request is checked anew."""
    return Agent.usingEndpointFactory(reactor, endpoints, quiet_pool(reactor))
