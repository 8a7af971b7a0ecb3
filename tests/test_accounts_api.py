"""
The accounts API over a real port, on SQLite and on PostgreSQL: every route
and every documented error; and, on PostgreSQL, what a client sees while the
database is away.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

import psycopg2
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.trial.unittest import TestCase

from metadisk.db import DatabaseUnavailable
from tests.nodes import Client
from tests.pg import ThrowawayCluster, create_database, require_postgres, terminate_connections
from tests.support import eventually, start_node, test_config

BASE62 = set(string.ascii_letters + string.digits)
UNAVAILABLE = (503, {"error": "database-unavailable"})


OK = (200, {"status": "ok"})
BAD_REQUEST = (400, {"status": "bad-request"})
MALFORMED = [
    "",
    "0",
    "-1",
    "12a",
    "1.5",
    " 5",
    "5 ",
    "0x10",
    "\uff11\uff12",
    str(2**53 + 1),
    2**53 + 1,
    0,
    -3,
    1.5,
    True,
    None,
    [1],
    {"n": 1},
]


class AccountsAPITestsMixin:
    """Subclasses give C{database_url()}: "" for the embedded SQLite, or a PostgreSQL URL."""

    def database_url(self) -> str:
        raise NotImplementedError

    async def start(self) -> Client:
        config = test_config(
            Path(self.mktemp()).resolve(),
            database={"url": self.database_url()},
            node={"max_connections_per_address": 1000},  # 127.0.0.1 plays 120 clients at once
        )
        return Client(await start_node(self, config))

    async def test_new_token(self) -> None:
        client = await self.start()
        tokens = {await client.new_token() for _ in range(5)}
        self.assertEqual(len(tokens), 5)
        for token in tokens:
            self.assertEqual(len(token), 16)
            self.assertTrue(set(token) <= BASE62)
            self.assertEqual(await client.balance(token), 0)

    async def test_prices(self) -> None:
        client = await self.start()
        self.assertEqual(
            await client.call("GET", "/accounts/token/prices"),
            (
                200,
                {
                    "prices": [
                        {"amount": 10737418240, "cost": 100},
                        {"amount": 107374182400, "cost": 500},
                        {"amount": 1099511627776, "cost": 2500},
                    ]
                },
            ),
        )

    async def test_balance_of_unknown_token(self) -> None:
        client = await self.start()
        self.assertEqual(
            await client.call("GET", "/accounts/token/balance/nosuchtoken00000"),
            (404, {"status": "error"}),
        )

    async def test_redeem(self) -> None:
        """A promocode from a JSON body, a form body or the query string; once per token."""
        client = await self.start()
        await client.node.node.ledger.add_promocode("WELCOME", 12345)
        for how in (
            {"json": {"promocode": "WELCOME"}},
            {"data": {"promocode": "WELCOME"}},
            {"params": {"promocode": "WELCOME"}},
        ):
            token = await client.new_token()
            path = f"/accounts/token/redeem/{token}"
            self.assertEqual(await client.call("POST", path, **how), (201, {"status": "ok"}))
            self.assertEqual(await client.balance(token), 12345)
            self.assertEqual(await client.call("POST", path, **how), (403, {"status": "error"}))
            self.assertEqual(await client.balance(token), 12345)
        token = await client.new_token()
        refused = (403, {"status": "error"})
        path = f"/accounts/token/redeem/{token}"
        self.assertEqual(await client.call("POST", path, json={"promocode": "NOPE"}), refused)
        self.assertEqual(await client.call("POST", path), refused)
        self.assertEqual(await client.call("POST", path, json={"promocode": ""}), refused)
        self.assertEqual(
            await client.call(
                "POST", "/accounts/token/redeem/nosuchtoken00000", json={"promocode": "WELCOME"}
            ),
            refused,
        )
        self.assertEqual(await client.balance(token), 0)

    async def test_deposit_in_every_form(self) -> None:
        client = await self.start()
        token = await client.new_token()
        path = f"/accounts/token/deposit/{token}"
        secret = client.node.secret
        for how in (
            {"json": {"bytes": 1}},
            {"json": {"bytes": "20"}},
            {"data": {"bytes": "300"}},
            {"params": {"bytes": "4000"}},
            {"json": {"bytes": 2**53}},
        ):
            self.assertEqual(await client.call("POST", path, secret=secret, **how), OK)
        self.assertEqual(await client.balance(token), 4321 + 2**53)

    async def test_first_source_that_has_the_parameter_wins(self) -> None:
        client = await self.start()
        token = await client.new_token()
        path = f"/accounts/token/deposit/{token}"
        secret = client.node.secret
        both = {"json": {"bytes": 5}, "params": {"bytes": "700"}}
        self.assertEqual(await client.call("POST", path, secret=secret, **both), OK)
        form = {"data": {"bytes": "30"}, "params": {"bytes": "700"}}
        self.assertEqual(await client.call("POST", path, secret=secret, **form), OK)
        other = {"json": {"other": 1}, "params": {"bytes": "100"}}
        self.assertEqual(await client.call("POST", path, secret=secret, **other), OK)
        self.assertEqual(await client.balance(token), 135)

    async def test_private_routes_need_the_secret(self) -> None:
        client = await self.start()
        token = await client.new_token()
        refused = (401, {"status": "invalid-authentication"})
        for route in ("deposit", "withdraw"):
            path = f"/accounts/token/{route}/{token}"
            self.assertEqual(await client.call("POST", path, json={"bytes": 1}), refused)
            for wrong in ("x", client.node.secret[:-1], client.node.secret + "x"):
                self.assertEqual(
                    await client.call("POST", path, secret=wrong, json={"bytes": 1}), refused
                )
        self.assertEqual(await client.balance(token), 0)

    async def test_malformed_bytes(self) -> None:
        client = await self.start()
        token = await client.new_token()
        await client.deposit(token, 1000)
        for value in MALFORMED:
            self.assertEqual(await client.deposit(token, value), BAD_REQUEST, value)
            self.assertEqual(await client.withdraw(token, value), BAD_REQUEST, value)
        for route in ("deposit", "withdraw"):
            self.assertEqual(
                await client.call(
                    "POST", f"/accounts/token/{route}/{token}", secret=client.node.secret
                ),
                BAD_REQUEST,
            )
        self.assertEqual(await client.balance(token), 1000)

    async def test_unknown_token_is_a_bad_request(self) -> None:
        client = await self.start()
        self.assertEqual(await client.deposit("nosuchtoken00000", 5), BAD_REQUEST)
        self.assertEqual(await client.withdraw("nosuchtoken00000", 5), BAD_REQUEST)

    async def test_withdraw(self) -> None:
        client = await self.start()
        token = await client.new_token()
        self.assertEqual(await client.deposit(token, 1000), OK)
        self.assertEqual(await client.withdraw(token, 400), OK)
        self.assertEqual(
            await client.withdraw(token, 601), (402, {"status": "balance-insufficient"})
        )
        self.assertEqual(await client.balance(token), 600)
        self.assertEqual(await client.withdraw(token, 600), OK)
        self.assertEqual(await client.balance(token), 0)

    async def test_wrong_method_and_unknown_route(self) -> None:
        client = await self.start()
        code, body = await client.call("GET", "/accounts/token/new")
        self.assertEqual((code, body), (405, {"error": "method-not-allowed"}))
        self.assertEqual(
            await client.call("GET", "/accounts/token/nothing"), (404, {"error": "not-found"})
        )

    async def test_concurrent_deposits_and_withdraws_are_exact(self) -> None:
        client = await self.start()
        token = await client.new_token()
        await client.deposit(token, 10**6)
        calls = [Deferred.fromCoroutine(client.deposit(token, 1000 + i)) for i in range(60)]
        calls += [Deferred.fromCoroutine(client.withdraw(token, 500 + i)) for i in range(60)]
        self.assertEqual(await gatherResults(calls), [OK] * 120)
        expected = 10**6 + sum(1000 + i for i in range(60)) - sum(500 + i for i in range(60))
        self.assertEqual(await client.balance(token), expected)

    async def test_concurrent_withdraws_never_overdraw(self) -> None:
        client = await self.start()
        token = await client.new_token()
        await client.deposit(token, 500)
        answers = await gatherResults(
            [Deferred.fromCoroutine(client.withdraw(token, 30)) for _ in range(40)]
        )
        self.assertEqual(answers.count(OK), 500 // 30)
        self.assertEqual(answers.count((402, {"status": "balance-insufficient"})), 40 - 500 // 30)
        self.assertEqual(await client.balance(token), 500 % 30)


class SQLiteAccountsAPITests(AccountsAPITestsMixin, TestCase):
    def database_url(self) -> str:
        return ""


class PostgresAccountsAPITests(AccountsAPITestsMixin, TestCase):
    def database_url(self) -> str:
        return create_database(self)


async def every_route(client: Client, token: str) -> list[tuple[int, Any]]:
    """One request to each route of the accounts API (and the node's status)."""
    secret = client.node.secret
    calls = [
        client.call("POST", "/accounts/token/new"),
        client.call("GET", "/accounts/token/prices"),
        client.call("GET", f"/accounts/token/balance/{token}"),
        client.call("POST", f"/accounts/token/redeem/{token}", json={"promocode": "P"}),
        client.call("POST", f"/accounts/token/deposit/{token}", secret=secret, json={"bytes": 1}),
        client.call("POST", f"/accounts/token/withdraw/{token}", secret=secret, json={"bytes": 1}),
        client.call("GET", "/api/status"),
    ]
    # "Quickly": every answer within a few seconds, none left hanging.
    return await gatherResults([Deferred.fromCoroutine(c).addTimeout(5, reactor) for c in calls])


class PostgresOutageAPITests(TestCase):
    """While PostgreSQL is away: 503 database-unavailable at once; then back by itself."""

    def setUp(self) -> None:
        require_postgres()
        # Registered first, so run last: the node's background work logs what failed too.
        self.addCleanup(self.flushLoggedErrors, DatabaseUnavailable, psycopg2.InterfaceError)

    async def start(self, url: str) -> Client:
        config = test_config(Path(self.mktemp()).resolve(), database={"url": url})
        return Client(await start_node(self, config))

    async def test_connections_cut(self) -> None:
        url = create_database(self, pool_size=3)
        client = await self.start(url)
        token = await client.new_token()
        await client.deposit(token, 1000)
        self.assertEqual(terminate_connections(url), 3)
        answers = await gatherResults(
            [Deferred.fromCoroutine(client.withdraw(token, 1)) for _ in range(30)]
        )
        for answer in answers:
            self.assertIn(answer, (OK, UNAVAILABLE))

        async def back() -> bool:
            code, _ = await client.call("GET", f"/accounts/token/balance/{token}")
            return code == 200

        await eventually(back)
        # The connections were cut before any withdraw was sent: a 503 changed nothing.
        self.assertEqual(await client.balance(token), 1000 - answers.count(OK))
        for code, _ in await every_route(client, token):
            self.assertIn(code, (200, 403))

    async def test_database_server_stopped_and_started(self) -> None:
        cluster = ThrowawayCluster.create(self)
        client = await self.start(cluster.url + "?pool_size=3")
        token = await client.new_token()
        await client.deposit(token, 1000)

        cluster.stop()
        for answer in await every_route(client, token):
            self.assertEqual(answer, UNAVAILABLE)
        # Still refused at once while it stays down, the reconnections notwithstanding.
        for answer in await every_route(client, token):
            self.assertEqual(answer, UNAVAILABLE)

        cluster.start()

        async def back() -> bool:
            code, _ = await client.call("GET", f"/accounts/token/balance/{token}")
            return code == 200

        await eventually(back, 10)
        self.assertEqual(await client.balance(token), 1000)
        self.assertEqual(await client.withdraw(token, 10), OK)
        self.assertEqual(await client.balance(token), 990)
