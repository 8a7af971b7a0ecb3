"""
Who a request comes from. Behind a reverse proxy every connection comes from
the proxy; only a proxy the node trusts (C{[node] trusted_proxies}) may say,
in C{X-Forwarded-For}, whom it forwards for. Everything that limits an
address (the token-guessing limit, the connection limit, the access log)
asks C{request.getClientAddress()}, which answers from here.
"""

from __future__ import annotations

import ipaddress

from attrs import frozen
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IAddress

from metadisk.config import Network

IP = ipaddress.IPv4Address | ipaddress.IPv6Address


def ip_of(host: str | None) -> IP | None:
    """C{host} as an IP address (an IPv4-mapped IPv6 address as the IPv4 one), or None."""
    if not host:
        return None
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # a dual-stack listener's IPv4 client is still that IPv4 client
    return ip


def host_of(address: IAddress | None) -> str | None:
    """The IP of a connection's peer, as text (C{"127.0.0.1"}); None for a unix socket."""
    ip = ip_of(getattr(address, "host", None))
    return str(ip) if ip is not None else None


@frozen
class TrustedProxies:
    """The networks whose connections are proxies: they alone may forward a client's address."""

    networks: tuple[Network, ...] = ()  # [node] trusted_proxies

    def trusts(self, host: str | None) -> bool:
        return self._trusts(ip_of(host))

    def _trusts(self, ip: IP | None) -> bool:
        return ip is not None and any(ip in network for network in self.networks)

    def client(self, peer: IAddress, forwarded_for: list[bytes]) -> IAddress:
        """
        The client of a request that came from C{peer} with these
        C{X-Forwarded-For} values: C{peer} itself unless it is a trusted
        proxy; otherwise the rightmost forwarded address that is not a
        trusted proxy (each proxy appends the address it got the request
        from, so what lies left of that was written by the client and
        proves nothing), or the leftmost if all are. A malformed entry met on
        the way leaves the peer's own address.
        """
        if not self.trusts(getattr(peer, "host", None)) or not forwarded_for:
            return peer
        client: IP | None = None
        for entry in reversed(b",".join(forwarded_for).split(b",")):
            client = ip_of(entry.strip().decode("latin-1"))
            if client is None:
                return peer
            if not self._trusts(client):
                break
        assert client is not None  # split() gives at least one entry
        if isinstance(client, ipaddress.IPv4Address):
            return IPv4Address("TCP", str(client), 0)  # the port is the proxy's business
        return IPv6Address("TCP", str(client), 0)
