"""
The open network: attacks by anonymous clients on a running node, as they
were observed, reproduced one class per attack. Each asserts what a user of
the node sees (answers, balances, files on disk), and fails on a node
without the defence.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from treq.client import HTTPClient
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from metadisk.logs import ACCESS_NAMESPACE
from tests.flood import client_from
from tests.support import start_node, test_config


class ProxyTests(TestCase):
    """
    Item 7: behind a reverse proxy every client has the proxy's address, and
    the token-guessing limit, per address, locked out everyone.
    """

    async def guess(self, client: HTTPClient, url: str, forwarded: str | None) -> int:
        headers = {"X-Forwarded-For": [forwarded]} if forwarded is not None else {}
        response = await client.get(
            url + f"/accounts/token/balance/{secrets.token_hex(8)}", headers=headers
        )
        await response.content()
        return response.code

    async def test_clients_behind_a_trusted_proxy(self) -> None:
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        config = test_config(
            Path(self.mktemp()).resolve(),
            node={"trusted_proxies": ["127.0.0.1/32"]},
            accounts={"guess_limit": 3, "guess_window": 60},
        )
        node = await start_node(self, config)
        proxy = node.http  # its connections come from 127.0.0.1
        guesses = [await self.guess(proxy, node.url, "203.0.113.5") for _ in range(3)]
        self.assertEqual(guesses, [404] * 3)
        self.assertEqual(await self.guess(proxy, node.url, "203.0.113.5"), 429)
        # Through a chain of proxies the client is the rightmost address not a trusted proxy.
        self.assertEqual(await self.guess(proxy, node.url, "10.9.9.9, 203.0.113.5, 127.0.0.1"), 429)
        # Another client behind the same proxy is served.
        self.assertEqual(await self.guess(proxy, node.url, "203.0.113.6"), 404)
        response = await proxy.get(
            node.url + "/api/status", headers={"X-Forwarded-For": ["203.0.113.6"]}
        )
        self.assertEqual(response.code, 200)
        await response.content()
        clients = {e["client"] for e in observer if e.get("log_namespace") == ACCESS_NAMESPACE}
        self.assertEqual(clients, {"203.0.113.5", "203.0.113.6"})

        # A client that is not a trusted proxy cannot dodge the limit by naming others.
        direct = client_from("127.0.0.2")
        for i in range(3):
            self.assertEqual(await self.guess(direct, node.url, f"198.51.100.{i}"), 404)
        self.assertEqual(await self.guess(direct, node.url, "198.51.100.99"), 429)

    async def test_without_trusted_proxies_the_header_is_ignored(self) -> None:
        config = test_config(
            Path(self.mktemp()).resolve(), accounts={"guess_limit": 3, "guess_window": 60}
        )
        node = await start_node(self, config)
        for i in range(3):
            self.assertEqual(await self.guess(node.http, node.url, f"203.0.113.{i}"), 404)
        self.assertEqual(await self.guess(node.http, node.url, "203.0.113.99"), 429)
        self.assertEqual(await self.guess(node.http, node.url, None), 429)
