"""The node's HTTP clients (the chain's JSON-RPC, URL hosts) share one kind of connection pool."""

from __future__ import annotations

from typing import Any

from twisted.web.client import HTTPConnectionPool, _HTTP11ClientFactory


class _QuietFactory(_HTTP11ClientFactory):
    # A factory logs "Starting factory"/"Stopping factory" for every connection: two lines
    # per JSON-RPC call, hundreds a minute on an idle node with a chain.
    noisy = False


class QuietPool(HTTPConnectionPool):
    """An HTTP connection pool whose connections do not log their coming and going."""

    _factory = _QuietFactory


def quiet_pool(reactor: Any) -> QuietPool:
    """A pool that keeps no idle connection: a stopped node leaves none behind."""
    return QuietPool(reactor, persistent=False)
