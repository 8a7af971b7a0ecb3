"""
Clients for the open-network tests, from chosen loopback addresses (Linux
routes all of 127.0.0.0/8 to lo).
"""

from __future__ import annotations

from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.web.client import Agent, HTTPConnectionPool


def client_from(source: str) -> HTTPClient:
    """An HTTP client whose connections come from C{source} (a loopback address)."""
    agent = Agent(
        reactor, bindAddress=(source, 0), pool=HTTPConnectionPool(reactor, persistent=False)
    )
    return HTTPClient(agent)
