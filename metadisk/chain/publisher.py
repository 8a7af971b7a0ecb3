"""
The publisher: due records from the blockchain queue go out in batches, one
transaction per region (docs/protocol.md, section 5), and each record exactly once.

What makes "exactly once" hold across crashes and nodes sharing a database:
- claiming records for a batch is one transaction that only takes rows still
  C{waiting}, and a queue row never goes back to waiting;
- a batch belongs to the node that claimed it, which alone sends its entries;
- each entry is written down (C{sending}, with its txid and signed
  transaction where the chain can know them first) before it is sent, and
  marked C{sent} after; an entry left C{sending} (a crash, or a send that got
  no answer) is resolved by asking the chain (L{IChain.recover}) whether it
  went out, never by sending a new one blindly.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from attrs import define, frozen
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from metadisk.chain import codec
from metadisk.chain.adapter import ChainBusy, Ticket
from metadisk.chain.queue import ChainQueue
from metadisk.chain.rpc import ChainError, RPCError
from metadisk.interfaces import IChain, IDatabase, ITransaction
from metadisk.periodic import backoff
from metadisk.store.catalog import Catalog

CANDIDATES = 50  # due records looked at to fill one batch
RETRY_FIRST, RETRY_LONGEST = 10.0, 600.0  # seconds before a failed batch is tried again
BUSY_RETRY = 60.0  # the mempool is full of our chain: give the chain a block or two


class BatchConflict(Exception):
    """Another node claimed some of the records first; the next round tries again."""


class SendInDoubt(ChainError):
    """An entry was sent without an answer; it is checked once the chain has had time."""


@frozen
class Batch:
    id: str
    payload: str
    regions: tuple[bytes, ...]
    attempts: int


@define
class Publisher:
    _db: IDatabase
    _chain: IChain
    _catalog: Catalog
    _queue: ChainQueue
    _clock: IReactorTime
    _node_id: str
    recover_after: float = 60.0  # an unanswered send is checked after this long

    log = Logger()

    async def publish_once(self) -> int:
        """
        Publish the batches that are due; return how many went out. A failure
        is written on its batch (retried with a backoff) and raised.
        """
        published = 0
        while True:
            batch = await self._resume() or await self._claim()
            if batch is None:
                return published
            await self._publish(batch)
            published += 1

    async def _resume(self) -> Batch | None:
        """This node's oldest batch that is not out yet and is due."""
        rows = await self._db.query(
            "SELECT id, payload, regions, attempts FROM chain_batches"
            " WHERE node_id = ? AND published IS NULL AND next_attempt <= ?"
            " ORDER BY created LIMIT 1",
            (self._node_id, self._clock.seconds()),
        )
        if not rows:
            return None
        batch_id, payload, regions, attempts = rows[0]
        return Batch(
            batch_id, payload, tuple(r.encode("ascii") for r in json.loads(regions)), attempts
        )

    async def _open_batches(self) -> bool:
        rows = await self._db.query(
            "SELECT 1 FROM chain_batches WHERE node_id = ? AND published IS NULL LIMIT 1",
            (self._node_id,),
        )
        return bool(rows)

    async def _claim(self) -> Batch | None:
        """A new batch of due records, claimed in one transaction."""
        if await self._open_batches():
            return None  # one at a time: a batch waiting for its retry keeps its place
        now = self._clock.seconds()
        records: list[dict[str, Any]] = []
        for filehash in await self._queue.due(now, CANDIDATES):
            record = await self._catalog.current(filehash)
            if record is not None and record.uploads:
                records.append(record.to_json())
        if not records:
            return None
        chosen = codec.pack(records)[0]
        payload = codec.batch_text(chosen)
        regions = codec.split_regions(payload, self._chain.max_entry)
        batch = Batch(uuid.uuid4().hex, payload, tuple(regions), 0)

        async def claim(txn: ITransaction) -> None:
            await txn.execute(
                "INSERT INTO chain_batches (id, node_id, payload, regions, created, next_attempt)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    batch.id,
                    self._node_id,
                    payload,
                    json.dumps([r.decode("ascii") for r in regions]),
                    now,
                    now,
                ),
            )
            for record in chosen:
                if not await ChainQueue.take(txn, record["filehash"], batch.id):
                    raise BatchConflict(record["filehash"])

        try:
            await self._db.transaction(claim)
        except BatchConflict as e:
            self.log.info("{filehash} was claimed by another node", filehash=str(e))
            return None
        self.log.debug(
            "batch {batch}: {n} records in {regions} entries",
            batch=batch.id,
            n=len(chosen),
            regions=len(regions),
        )
        return batch

    async def _publish(self, batch: Batch) -> None:
        try:
            first_txid = await self._send_entries(batch)
        except ChainBusy as e:
            await self._retry(batch, BUSY_RETRY, str(e), count=False)
            raise
        except SendInDoubt as e:
            await self._retry(batch, self.recover_after, str(e), count=False)
            raise
        except Exception as e:
            await self._retry(
                batch, backoff(batch.attempts + 1, RETRY_FIRST, RETRY_LONGEST), str(e)
            )
            raise
        records = json.loads(batch.payload)
        await self._db.transaction(lambda txn: self._published(txn, batch, records, first_txid))
        self.log.info(
            "batch {batch} is on the chain: {n} records in {entries} transactions from {txid}",
            batch=batch.id,
            n=len(records),
            entries=len(batch.regions),
            txid=first_txid,
        )

    async def _send_entries(self, batch: Batch) -> str:
        """Send what is not sent yet; return the txid of the first entry."""
        rows = await self._db.query(
            "SELECT idx, entry, tag, txid, raw, state, started FROM chain_entries"
            " WHERE batch_id = ?",
            (batch.id,),
        )
        written = {row[0]: row for row in rows}
        total = len(batch.payload)
        txids: list[str] = []
        for index, region in enumerate(batch.regions):
            row = written.get(index)
            if row is not None and row[5] == "sent":
                txids.append(row[3])
                continue
            if row is not None:
                txid = await self._resolve(batch, index, row)
                if txid is not None:
                    txids.append(txid)
                    continue
            prev = txids[-1] if txids else None
            entry = codec.entry_text(region, index, prev, txids[0] if txids else None, total)
            txids.append(await self._send(batch, index, entry))
        return txids[0]

    async def _resolve(self, batch: Batch, index: int, row: tuple) -> str | None:
        """An entry left C{sending}: its txid if it went out; None (row gone) if it did not."""
        _, entry, tag, txid, raw, _, started = row
        if self._clock.seconds() < started + self.recover_after:
            raise SendInDoubt(f"entry {index} was sent without an answer; checking it later")
        found = await self._chain.recover(Ticket(entry, tag, txid, raw))
        if found is None:
            self.log.info("entry {index} of {batch} did not go out", index=index, batch=batch.id)
            await self._db.execute(
                "DELETE FROM chain_entries WHERE batch_id = ? AND idx = ?", (batch.id, index)
            )
            return None
        await self._sent(batch, index, found)
        return found

    async def _send(self, batch: Batch, index: int, entry: str) -> str:
        ticket = await self._chain.prepare(entry, f"metadisk {batch.id} {index}")
        try:
            await self._db.execute(
                "INSERT INTO chain_entries (batch_id, idx, entry, tag, txid, raw, state, started)"
                " VALUES (?, ?, ?, ?, ?, ?, 'sending', ?)",
                (
                    batch.id,
                    index,
                    entry,
                    ticket.tag,
                    ticket.txid,
                    ticket.raw,
                    self._clock.seconds(),
                ),
            )
        except BaseException:
            # Not written down, so never sent: free what the ticket holds.
            await self._chain.abandon(ticket)
            raise
        try:
            txid = await self._chain.send(ticket)
        except (RPCError, ChainBusy):
            # The node said no: nothing went out, the entry is built again next time.
            await self._db.execute(
                "DELETE FROM chain_entries WHERE batch_id = ? AND idx = ?", (batch.id, index)
            )
            raise
        except ChainError as e:
            raise SendInDoubt(f"entry {index}: {e}") from None
        await self._sent(batch, index, txid)
        return txid

    async def _sent(self, batch: Batch, index: int, txid: str) -> None:
        await self._db.execute(
            "UPDATE chain_entries SET state = 'sent', txid = ? WHERE batch_id = ? AND idx = ?",
            (txid, batch.id, index),
        )

    async def _retry(self, batch: Batch, delay: float, error: str, count: bool = True) -> None:
        self.log.warn("batch {batch}: {error}", batch=batch.id, error=error)
        await self._db.execute(
            "UPDATE chain_batches SET attempts = attempts + ?, next_attempt = ?, last_error = ?"
            " WHERE id = ?",
            (1 if count else 0, self._clock.seconds() + delay, error[:1000], batch.id),
        )

    async def _published(
        self, txn: ITransaction, batch: Batch, records: list[dict[str, Any]], first_txid: str
    ) -> None:
        await txn.execute(
            "UPDATE chain_batches SET published = ?, first_txid = ?, last_error = NULL"
            " WHERE id = ?",
            (self._clock.seconds(), first_txid, batch.id),
        )
        await ChainQueue.published(txn, batch.id)
        for record in records:
            await Catalog.published(txn, record, first_txid)
