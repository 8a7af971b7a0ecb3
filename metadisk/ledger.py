"""
Access tokens and their credit. Every change of a balance is one atomic SQL
statement, so no balance goes below zero whatever the concurrency; credit
taken for a transfer is held in a reservation until the transfer ends.
"""

from __future__ import annotations

import secrets
import string

from attrs import define, evolve, field, frozen
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from metadisk.interfaces import IDatabase, ITransaction
from metadisk.metrics import Metrics

TOKEN_ALPHABET = string.ascii_letters + string.digits
TOKEN_LENGTH = 16
MAX_TRANSFER = 2**53
# Far below SQLite's and PostgreSQL's 2^63, so balance + deposit never overflows.
MAX_BALANCE = 2**62
# A transfer whose client already has its bytes is settled with the others that end within this
# many seconds, in one transaction (L{Ledger.settle_soon}): a small download costs a fraction of a
# commit, and no thread hop of its own.
SETTLE_BATCH_DELAY = 0.02
SETTLE_BATCH_MAX = 500  # settlements in one transaction at most
BRIEF_BATCH = 50  # settlements few enough for a brief transaction (IDatabase.transaction)


class UnknownToken(Exception):
    """No such token."""


class BalanceInsufficient(Exception):
    """The token has less credit than the operation needs."""


class BalanceFull(Exception):
    """A deposit would take the balance past L{MAX_BALANCE}."""


def new_token_string() -> str:
    """16 base-62 characters from the operating system's CSPRNG."""
    return "".join(secrets.choice(TOKEN_ALPHABET) for _ in range(TOKEN_LENGTH))


@frozen
class Reservation:
    """Credit held for one transfer. C{id} is None when nothing was taken."""

    id: str | None
    token: str | None
    amount: int


FREE = Reservation(id=None, token=None, amount=0)


@define
class Ledger:
    _db: IDatabase
    _clock: IReactorTime
    _node_id: str
    metrics: Metrics = field(factory=Metrics)
    # Settlements waiting for their batch (L{settle_soon}), and the batches being committed.
    _due: list[tuple[Reservation, int, Deferred[None]]] = field(factory=list, init=False)
    _batch_call: IDelayedCall | None = field(default=None, init=False)
    _committing: set[Deferred[None]] = field(factory=set, init=False)

    def _now(self) -> int:
        return int(self._clock.seconds())

    def _execute(self, sql: str, params: tuple) -> Deferred[int]:
        """
        One statement on a few rows found by their key (a token's, a code's,
        a price's): a brief transaction. Sent to SQLite's thread instead, it
        would keep every other write waiting until the reactor, busy with
        requests, got around to its answer.
        """
        return self._db.transaction(lambda txn: txn.execute(sql, params), brief=True)

    def _query(self, sql: str, params: tuple = ()) -> Deferred[list[tuple]]:
        """A read of a few rows (a token's, the prices): brief, to spare it two hops."""
        return self._db.read(lambda txn: txn.query(sql, params), brief=True)

    async def new_token(self) -> str:
        token = new_token_string()
        await self._execute(
            "INSERT INTO tokens (token, balance, created) VALUES (?, 0, ?)", (token, self._now())
        )
        return token

    async def balance(self, token: str) -> int | None:
        rows = await self._query("SELECT balance FROM tokens WHERE token = ?", (token,))
        return rows[0][0] if rows else None

    async def exists(self, token: str) -> bool:
        return await self.balance(token) is not None

    async def deposit(self, token: str, amount: int) -> None:
        changed = await self._execute(
            "UPDATE tokens SET balance = balance + ? WHERE token = ? AND balance <= ?",
            (amount, token, MAX_BALANCE - amount),
        )
        if not changed:
            raise UnknownToken() if not await self.exists(token) else BalanceFull()

    async def withdraw(self, token: str, amount: int) -> None:
        changed = await self._execute(
            "UPDATE tokens SET balance = balance - ? WHERE token = ? AND balance >= ?",
            (amount, token, amount),
        )
        if not changed:
            raise UnknownToken() if not await self.exists(token) else BalanceInsufficient()

    async def redeem(self, token: str, code: str) -> bool:
        """
        Credit a promocode to a token, once. False for an unknown or already
        redeemed code; L{UnknownToken} for an unknown token.
        """

        async def work(txn: ITransaction) -> bool:
            if not await txn.query("SELECT 1 FROM tokens WHERE token = ?", (token,)):
                raise UnknownToken()
            rows = await txn.query("SELECT bytes FROM promocodes WHERE code = ?", (code,))
            if not rows:
                return False
            # One statement decides, so two concurrent redemptions cannot both win.
            if not await txn.execute(
                "INSERT INTO redemptions (token, code, redeemed) VALUES (?, ?, ?)"
                " ON CONFLICT (token, code) DO NOTHING",
                (token, code, self._now()),
            ):
                return False
            changed = await txn.execute(
                "UPDATE tokens SET balance = balance + ? WHERE token = ? AND balance <= ?",
                (rows[0][0], token, MAX_BALANCE - rows[0][0]),
            )
            if not changed:
                raise BalanceFull()
            return True

        try:
            return await self._db.transaction(work, brief=True)
        except BalanceFull:
            return False

    async def prices(self) -> list[dict[str, int]]:
        rows = await self._query("SELECT amount, cost FROM prices ORDER BY amount")
        return [{"amount": amount, "cost": cost} for amount, cost in rows]

    async def reserve(self, token: str, amount: int) -> Reservation:
        """Take C{amount} from the token now; L{settle} or L{refund} it later."""
        return await self._db.transaction(
            lambda txn: self.reserve_in(txn, token, amount), brief=True
        )

    async def reserve_in(self, txn: ITransaction, token: str, amount: int) -> Reservation:
        """L{reserve} inside another transaction (a download's lookup and its credit)."""
        reservation = Reservation(id=secrets.token_hex(16), token=token, amount=amount)
        if not await _take(txn, token, amount):
            if not await txn.query("SELECT 1 FROM tokens WHERE token = ?", (token,)):
                raise UnknownToken()
            raise BalanceInsufficient()
        await txn.execute(
            "INSERT INTO reservations (id, token, amount, node_id, created) VALUES (?, ?, ?, ?, ?)",
            (reservation.id, token, amount, self._node_id, self._now()),
        )
        return reservation

    async def extend(self, reservation: Reservation, amount: int) -> Reservation:
        """Take C{amount} more for the transfer C{reservation} holds; the grown reservation."""
        if reservation.id is None or amount <= 0:
            return reservation

        async def work(txn: ITransaction) -> None:
            if not await _take(txn, str(reservation.token), amount):
                raise BalanceInsufficient()
            await txn.execute(
                "UPDATE reservations SET amount = amount + ? WHERE id = ?",
                (amount, reservation.id),
            )

        await self._db.transaction(work, brief=True)
        return evolve(reservation, amount=reservation.amount + amount)

    async def settle(self, reservation: Reservation, cost: int) -> None:
        """End a reservation, keeping C{cost} of it and giving back the rest."""
        if reservation.id is None:
            return
        settled = self._db.transaction(
            lambda txn: self.settle_in(txn, reservation, cost), brief=True
        )
        if await settled:
            self.counted(reservation, cost)

    async def refund(self, reservation: Reservation) -> None:
        await self.settle(reservation, 0)

    def settle_soon(self, reservation: Reservation, cost: int) -> Deferred[None]:
        """
        L{settle}, in one transaction with the others due within
        L{SETTLE_BATCH_DELAY} seconds; fires once committed. Until then the
        reservation holds the credit, as during the transfer; a stop settles
        what is due (L{flush}), a crash leaves it to L{refund_abandoned}.
        """
        if reservation.id is None:
            return succeed(None)
        settled: Deferred[None] = Deferred()
        self._due.append((reservation, cost, settled))
        if len(self._due) >= SETTLE_BATCH_MAX:
            self._commit_due()
        elif self._batch_call is None:
            self._batch_call = self._clock.callLater(SETTLE_BATCH_DELAY, self._commit_due)
        return settled

    async def flush(self) -> None:
        """Settle now what L{settle_soon} holds, and wait for every batch to commit."""
        self._commit_due()
        await gatherResults(list(self._committing))

    def _commit_due(self) -> None:
        if self._batch_call is not None:
            if self._batch_call.active():
                self._batch_call.cancel()
            self._batch_call = None
        due, self._due = self._due, []
        if due:
            committing = Deferred.fromCoroutine(self._commit(due))
            self._committing.add(committing)
            committing.addBoth(lambda _: self._committing.discard(committing))

    async def _commit(self, due: list[tuple[Reservation, int, Deferred[None]]]) -> None:
        async def work(txn: ITransaction) -> list[bool]:
            return [await self.settle_in(txn, reservation, cost) for reservation, cost, _ in due]

        try:
            ended = await self._db.transaction(work, brief=len(due) <= BRIEF_BATCH)
        except Exception as e:
            # Their credit stays held: the next start refunds it (refund_abandoned).
            for _, _, settled in due:
                settled.errback(e)
            return
        for (reservation, cost, settled), now in zip(due, ended, strict=True):
            if now:
                self.counted(reservation, cost)
            settled.callback(None)

    @staticmethod
    async def settle_in(txn: ITransaction, reservation: Reservation, cost: int) -> bool:
        """
        L{settle} inside another transaction (one commit for a transfer's
        record and its charge); True if this ended the reservation. Once it
        has committed, L{counted} counts it.
        """
        if reservation.id is None:
            return False
        # Deleting first makes settling idempotent: the refund happens once.
        if not await txn.execute("DELETE FROM reservations WHERE id = ?", (reservation.id,)):
            return False
        kept = _kept(reservation, cost)
        if reservation.amount > kept:
            await txn.execute(
                "UPDATE tokens SET balance = balance + ? WHERE token = ?",
                (reservation.amount - kept, reservation.token),
            )
        return True

    def counted(self, reservation: Reservation, cost: int) -> None:
        """A settlement committed: count what was kept and given back."""
        if reservation.id is not None:
            kept = _kept(reservation, cost)
            self.metrics.settled(kept, reservation.amount - kept)

    async def refund_abandoned(self) -> int:
        """
        Refund the reservations this node held when it stopped without settling
        them, except those of resumable uploads: they live on across restarts,
        and end when their upload does (L{metadisk.store.resumable}).
        """
        rows = await self._db.query(
            "SELECT id, token, amount FROM reservations r WHERE node_id = ?"
            " AND NOT EXISTS (SELECT 1 FROM resumable_uploads u WHERE u.reservation_id = r.id)",
            (self._node_id,),
        )
        for id_, token, amount in rows:
            await self.refund(Reservation(id=id_, token=token, amount=amount))
        return len(rows)

    async def add_promocode(self, code: str, amount: int) -> None:
        await self._execute(
            "INSERT INTO promocodes (code, bytes) VALUES (?, ?)"
            " ON CONFLICT (code) DO UPDATE SET bytes = excluded.bytes",
            (code, amount),
        )

    async def set_price(self, amount: int, cost: int) -> None:
        await self._execute(
            "INSERT INTO prices (amount, cost) VALUES (?, ?)"
            " ON CONFLICT (amount) DO UPDATE SET cost = excluded.cost",
            (amount, cost),
        )

    async def remove_price(self, amount: int) -> None:
        await self._execute("DELETE FROM prices WHERE amount = ?", (amount,))


async def _take(txn: ITransaction, token: str, amount: int) -> bool:
    """Take C{amount} from the token in one statement, never below zero; False if it cannot."""
    return bool(
        await txn.execute(
            "UPDATE tokens SET balance = balance - ? WHERE token = ? AND balance >= ?",
            (amount, token, amount),
        )
    )


def _kept(reservation: Reservation, cost: int) -> int:
    """What a settlement keeps: the cost, never more than was reserved, never below zero."""
    return max(0, min(cost, reservation.amount))
