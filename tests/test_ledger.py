"""The ledger on SQLite and on PostgreSQL: every balance exact, none below zero."""

from __future__ import annotations

import random
import string
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from attrs import define
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, gatherResults
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from metadisk import ledger as ledger_module
from metadisk.db import open_database
from metadisk.interfaces import IDatabase
from metadisk.ledger import (
    FREE,
    MAX_BALANCE,
    SETTLE_BATCH_DELAY,
    BalanceFull,
    BalanceInsufficient,
    Ledger,
    Reservation,
    UnknownToken,
)
from tests.pg import create_database

T = TypeVar("T")


@define
class CountingDatabase:
    """A database that counts the transactions run on it."""

    _db: IDatabase
    transactions: int = 0

    def transaction(self, work: Any, *, brief: bool = False) -> Deferred[Any]:
        self.transactions += 1
        return self._db.transaction(work, brief=brief)

    def read(self, work: Any, *, brief: bool = False) -> Deferred[Any]:
        return self._db.read(work, brief=brief)

    def query(self, sql: str, params: tuple = ()) -> Deferred[list[tuple]]:
        return self._db.query(sql, params)

    def execute(self, sql: str, params: tuple = ()) -> Deferred[int]:
        return self._db.execute(sql, params)


class LedgerTestsMixin:
    """Subclasses give C{fresh_url()}: a new, empty database of the test's own."""

    def fresh_url(self) -> str:
        raise NotImplementedError

    async def setUp(self) -> None:
        self.db: IDatabase = await open_database(self.fresh_url(), reactor)
        self.addCleanup(self.db.close)
        self.ledger = Ledger(self.db, reactor, "node-a")

    async def funded(self, amount: int) -> str:
        token = await self.ledger.new_token()
        await self.ledger.deposit(token, amount)
        return token

    async def reservations(self) -> int:
        return (await self.db.query("SELECT COUNT(*) FROM reservations"))[0][0]

    async def test_new_token(self) -> None:
        token = await self.ledger.new_token()
        self.assertEqual(len(token), 16)
        self.assertTrue(set(token) <= set(string.ascii_letters + string.digits))
        self.assertEqual(await self.ledger.balance(token), 0)
        self.assertNotEqual(token, await self.ledger.new_token())
        self.assertIsNone(await self.ledger.balance("nosuchtoken00000"))

    async def test_deposit_and_withdraw(self) -> None:
        token = await self.funded(1000)
        await self.ledger.withdraw(token, 400)
        self.assertEqual(await self.ledger.balance(token), 600)
        with self.assertRaises(BalanceInsufficient):
            await self.ledger.withdraw(token, 601)
        await self.ledger.withdraw(token, 600)
        self.assertEqual(await self.ledger.balance(token), 0)
        with self.assertRaises(UnknownToken):
            await self.ledger.withdraw("nosuchtoken00000", 1)
        with self.assertRaises(UnknownToken):
            await self.ledger.deposit("nosuchtoken00000", 1)

    async def test_balance_is_capped(self) -> None:
        token = await self.funded(MAX_BALANCE)
        with self.assertRaises(BalanceFull):
            await self.ledger.deposit(token, 1)
        self.assertEqual(await self.ledger.balance(token), MAX_BALANCE)

    async def test_reserve_then_settle(self) -> None:
        token = await self.funded(1000)
        reservation = await self.ledger.reserve(token, 400)
        self.assertEqual(await self.ledger.balance(token), 600)
        self.assertEqual(await self.reservations(), 1)
        await self.ledger.settle(reservation, 250)
        self.assertEqual(await self.ledger.balance(token), 750)
        self.assertEqual(await self.reservations(), 0)
        # Settling again gives nothing back twice.
        await self.ledger.settle(reservation, 0)
        await self.ledger.refund(reservation)
        self.assertEqual(await self.ledger.balance(token), 750)

    async def test_settle_keeps_no_more_than_reserved(self) -> None:
        token = await self.funded(1000)
        await self.ledger.settle(await self.ledger.reserve(token, 100), 5000)
        self.assertEqual(await self.ledger.balance(token), 900)
        await self.ledger.settle(FREE, 10)
        self.assertEqual(await self.ledger.balance(token), 900)

    async def test_settled_soon_together(self) -> None:
        """Transfers that end within the batch's delay are settled in one transaction."""
        clock = Clock()
        counting = CountingDatabase(self.db)
        ledger = Ledger(counting, clock, "node-a")
        token = await self.funded(1000)
        reservations = [await ledger.reserve(token, 100) for _ in range(3)]
        before = counting.transactions
        kept = (100, 40, 0)
        settled = [ledger.settle_soon(r, k) for r, k in zip(reservations, kept, strict=True)]
        self.assertEqual((counting.transactions, await self.reservations()), (before, 3))
        clock.advance(SETTLE_BATCH_DELAY)
        await gatherResults(settled)
        self.assertEqual(counting.transactions, before + 1)
        self.assertEqual(await self.ledger.balance(token), 1000 - 140)
        self.assertEqual(await self.reservations(), 0)
        self.assertEqual(clock.getDelayedCalls(), [])

    async def test_a_full_batch_and_a_stop_do_not_wait(self) -> None:
        self.patch(ledger_module, "SETTLE_BATCH_MAX", 2)
        clock = Clock()
        ledger = Ledger(self.db, clock, "node-a")
        token = await self.funded(1000)
        reservations = [await ledger.reserve(token, 100) for _ in range(3)]
        full = [ledger.settle_soon(r, 50) for r in reservations[:2]]
        await gatherResults(full)  # the second filled the batch: committed without the delay
        self.assertEqual(await self.reservations(), 1)
        ledger.settle_soon(reservations[2], 50)
        await ledger.flush()  # a stop: what is due now
        self.assertEqual(await self.reservations(), 0)
        self.assertEqual(await self.ledger.balance(token), 1000 - 150)
        self.assertEqual(clock.getDelayedCalls(), [])

    async def test_refund(self) -> None:
        token = await self.funded(1000)
        await self.ledger.refund(await self.ledger.reserve(token, 1000))
        self.assertEqual(await self.ledger.balance(token), 1000)

    async def test_reserve_refused(self) -> None:
        token = await self.funded(10)
        with self.assertRaises(BalanceInsufficient):
            await self.ledger.reserve(token, 11)
        with self.assertRaises(UnknownToken):
            await self.ledger.reserve("nosuchtoken00000", 1)
        self.assertEqual(await self.ledger.balance(token), 10)
        self.assertEqual(await self.reservations(), 0)

    async def test_promocode_once_per_token(self) -> None:
        await self.ledger.add_promocode("WELCOME", 5000)
        first, second = await self.ledger.new_token(), await self.ledger.new_token()
        self.assertTrue(await self.ledger.redeem(first, "WELCOME"))
        self.assertFalse(await self.ledger.redeem(first, "WELCOME"))
        self.assertTrue(await self.ledger.redeem(second, "WELCOME"))
        self.assertFalse(await self.ledger.redeem(first, "NOSUCHCODE"))
        with self.assertRaises(UnknownToken):
            await self.ledger.redeem("nosuchtoken00000", "WELCOME")
        self.assertEqual(await self.ledger.balance(first), 5000)
        self.assertEqual(await self.ledger.balance(second), 5000)

    async def test_promocode_redeemed_at_once_credits_once(self) -> None:
        await self.ledger.add_promocode("RUSH", 700)
        token = await self.ledger.new_token()
        results = await DeferredList(
            [Deferred.fromCoroutine(self.ledger.redeem(token, "RUSH")) for _ in range(10)],
            consumeErrors=True,
        )
        self.assertEqual(await self.ledger.balance(token), 700)
        self.assertEqual([r for ok, r in results if ok].count(True), 1)
        # The losers of the race are told False, never an error (a 500 from the API).
        self.assertEqual(
            sorted(r for ok, r in results if ok), [False] * (len(results) - 1) + [True]
        )

    async def test_refund_abandoned(self) -> None:
        """A restarted node gives back what it held; another node's reservations stay."""
        token = await self.funded(1000)
        other = Ledger(self.db, reactor, "node-b")
        await self.ledger.reserve(token, 100)
        await self.ledger.reserve(token, 200)
        held_elsewhere = await other.reserve(token, 300)
        self.assertEqual(await self.ledger.balance(token), 400)
        self.assertEqual(await self.ledger.refund_abandoned(), 2)
        self.assertEqual(await self.ledger.balance(token), 700)
        self.assertEqual(await self.ledger.refund_abandoned(), 0)
        await other.settle(held_elsewhere, 300)
        self.assertEqual(await self.ledger.balance(token), 700)
        self.assertEqual(await self.reservations(), 0)

    async def test_prices(self) -> None:
        self.assertEqual(
            await self.ledger.prices(),
            [
                {"amount": 10737418240, "cost": 100},
                {"amount": 107374182400, "cost": 500},
                {"amount": 1099511627776, "cost": 2500},
            ],
        )
        await self.ledger.set_price(10737418240, 90)
        await self.ledger.set_price(5, 1)
        await self.ledger.remove_price(1099511627776)
        self.assertEqual(
            await self.ledger.prices(),
            [
                {"amount": 5, "cost": 1},
                {"amount": 10737418240, "cost": 90},
                {"amount": 107374182400, "cost": 500},
            ],
        )

    async def test_concurrent_reserves_never_overdraw(self) -> None:
        token = await self.funded(1000)
        attempts = [Deferred.fromCoroutine(self.ledger.reserve(token, 7)) for _ in range(200)]
        results = await DeferredList(attempts, consumeErrors=True)
        taken = [r for ok, r in results if ok]
        refused = [r for ok, r in results if not ok]
        self.assertEqual(len(taken), 1000 // 7)
        for failure in refused:
            failure.trap(BalanceInsufficient)
        self.assertEqual(await self.ledger.balance(token), 1000 % 7)
        # All settled at once, each keeping part of its reservation.
        await gatherResults([Deferred.fromCoroutine(self.ledger.settle(r, 3)) for r in taken])
        self.assertEqual(await self.ledger.balance(token), 1000 - 3 * len(taken))
        self.assertEqual(await self.reservations(), 0)

    async def test_concurrent_mix_is_exact(self) -> None:
        """Deposits, withdraws and transfers on two tokens at once, from two nodes' ledgers."""
        ledgers = [self.ledger, Ledger(self.db, reactor, "node-b")]
        tokens = [await self.funded(10**9), await self.funded(10**9)]
        expected = dict.fromkeys(tokens, 10**9)
        rng = random.Random(4)
        calls: list[Deferred] = []

        async def transfer(ledger: Ledger, token: str, reserved: int, cost: int) -> None:
            reservation: Reservation = await ledger.reserve(token, reserved)
            await ledger.settle(reservation, cost)

        for i in range(300):
            ledger, token = ledgers[i % 2], tokens[rng.randrange(2)]
            amount = rng.randrange(1, 10**5)
            kind = i % 3
            if kind == 0:
                calls.append(Deferred.fromCoroutine(ledger.deposit(token, amount)))
                expected[token] += amount
            elif kind == 1:
                calls.append(Deferred.fromCoroutine(ledger.withdraw(token, amount)))
                expected[token] -= amount
            else:
                cost = rng.randrange(amount + 1)
                calls.append(Deferred.fromCoroutine(transfer(ledger, token, amount, cost)))
                expected[token] -= cost
        await gatherResults(calls)
        for token in tokens:
            self.assertEqual(await self.ledger.balance(token), expected[token])
        self.assertEqual(await self.reservations(), 0)


class SQLiteLedgerTests(LedgerTestsMixin, TestCase):
    def fresh_url(self) -> str:
        return f"sqlite:///{Path(self.mktemp()).resolve()}"

    def now(self, call: Coroutine[Any, Any, T]) -> T:
        """The result of C{call}, which must have come with no hop to SQLite's thread."""
        return self.successResultOf(Deferred.fromCoroutine(call))

    async def test_token_reads_and_writes_wait_for_no_thread(self) -> None:
        """
        A token's writes and reads are brief: done in the call, with no hop
        to SQLite's thread (where every other write would wait for its answer).
        """
        token = self.now(self.ledger.new_token())
        self.now(self.ledger.deposit(token, 10))
        self.now(self.ledger.withdraw(token, 4))
        self.now(self.ledger.set_price(10, 1))
        self.now(self.ledger.add_promocode("CODE", 5))
        self.assertEqual(self.now(self.ledger.balance(token)), 6)
        self.assertIn({"amount": 10, "cost": 1}, self.now(self.ledger.prices()))


class PostgresLedgerTests(LedgerTestsMixin, TestCase):
    def fresh_url(self) -> str:
        return create_database(self)
