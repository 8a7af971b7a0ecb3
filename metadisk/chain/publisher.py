"""
The publisher: due records from the blockchain queue go out in batches, one
transaction per region (docs/protocol.md, section 5), and each record exactly once.

What makes "exactly once" hold across crashes and nodes sharing a database:
- claiming records for a batch is one transaction that only takes rows still
  C{waiting}, and a queue row never goes back to waiting;
- a v0.3 batch (section 5.9) is claimed with its manifest, already in the
  cache; its announcement is written on the batch once the hosts hold the
  manifest (L{ManifestStore.announcement}), and sent from there like any
  batch's text;
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
from collections.abc import Awaitable, Callable
from typing import Any

from attrs import define, evolve, frozen
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from metadisk.chain import codec
from metadisk.chain.adapter import ChainBusy, Ticket
from metadisk.chain.manifests import ManifestStore, ManifestUnreachable
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
class ManifestRef:
    manifest: str
    records: int
    size: int


@frozen
class Batch:
    id: str
    payload: str  # the text its entries carry: records inline, or a manifest's announcement
    regions: tuple[bytes, ...]  # empty: a manifest's batch whose announcement is not written yet
    attempts: int
    created: float
    manifest: ManifestRef | None = None  # a v0.3 batch: its records are in the manifest


@define(kw_only=True)
class Publisher:
    _db: IDatabase
    _chain: IChain
    _catalog: Catalog
    _queue: ChainQueue
    _clock: IReactorTime
    _node_id: str
    recover_after: float = 60.0  # an unanswered send is checked after this long
    # Where v0.3 manifests go (docs/protocol.md 5.9); None: no host could serve one.
    manifests: ManifestStore | None = None
    make_manifests: bool = False  # format "auto"; with "0.2" a node still announces those it made
    records_per_manifest: int = 100  # due records that go out as one manifest
    manifest_wait: float = 600.0  # seconds a due record waits for a manifest to fill
    manifest_max_records: int = codec.MAX_MANIFEST_RECORDS

    log = Logger()

    async def publish_once(self) -> int:
        """
        Publish the batches that are due; return how many went out. A failure
        is written on its batch (retried with a backoff) and raised.
        """
        published = 0
        # Once a round sends records inline, the others due go with them.
        inline = not self._auto
        while True:
            batch = await self._resume() or await self._claim(inline)
            if batch is None:
                return published
            if not await self._publish(batch):
                return published  # its manifest is not on its hosts yet: the next round looks
            published += 1
            inline = inline or batch.manifest is None

    @property
    def _auto(self) -> bool:
        return self.make_manifests and self.manifests is not None

    async def _resume(self) -> Batch | None:
        """This node's oldest batch that is not out yet and is due."""
        rows = await self._db.query(
            "SELECT b.id, b.payload, b.regions, b.attempts, b.created,"
            " m.manifest, m.records, m.size"
            " FROM chain_batches b LEFT JOIN chain_manifests m ON m.batch_id = b.id"
            " WHERE b.node_id = ? AND b.published IS NULL AND b.next_attempt <= ?"
            " ORDER BY b.created LIMIT 1",
            (self._node_id, self._clock.seconds()),
        )
        if not rows:
            return None
        batch_id, payload, regions, attempts, created, manifest, records, size = rows[0]
        return Batch(
            batch_id,
            payload,
            tuple(r.encode("ascii") for r in json.loads(regions)),
            attempts,
            created,
            None if manifest is None else ManifestRef(manifest, records, size),
        )

    async def _open_batches(self) -> bool:
        rows = await self._db.query(
            "SELECT 1 FROM chain_batches WHERE node_id = ? AND published IS NULL LIMIT 1",
            (self._node_id,),
        )
        return bool(rows)

    async def _claim(self, inline: bool) -> Batch | None:
        """
        A new batch of due records, claimed in one transaction: a manifest
        of them whenever C{records_per_manifest} are due, else inline once
        one has waited C{manifest_wait} (or the round sends inline already).
        """
        if await self._open_batches():
            return None  # one at a time: a batch waiting for its retry keeps its place
        now = self._clock.seconds()
        if self._auto and self.manifests is not None:
            due = await self._queue.due(now, self.records_per_manifest)
            if len(due) >= self.records_per_manifest:
                return await self._claim_manifest(self.manifests, now)
            if not inline:
                oldest = await self._queue.oldest_due(now)
                if oldest is None or oldest > now - self.manifest_wait:
                    return None  # waiting for a manifest to fill
        return await self._claim_inline(now)

    async def _due_records(self, now: float, limit: int) -> list[dict[str, Any]]:
        records = await self._catalog.current_many(await self._queue.due(now, limit))
        return [record.to_json() for record in records if record.uploads]

    async def _claim_inline(self, now: float) -> Batch | None:
        records = await self._due_records(now, CANDIDATES)
        if not records:
            return None
        chosen = codec.pack(records)[0]
        payload = codec.batch_text(chosen)
        regions = codec.split_regions(payload, self._chain.max_entry)
        batch = Batch(uuid.uuid4().hex, payload, tuple(regions), 0, now)

        async def claim(txn: ITransaction) -> None:
            await self._insert_batch(txn, batch)
            await self._take(txn, batch, [record["filehash"] for record in chosen])

        if not await self._claimed(claim):
            return None
        self.log.debug(
            "batch {batch}: {n} records in {regions} entries",
            batch=batch.id,
            n=len(chosen),
            regions=len(regions),
        )
        return batch

    async def _claim_manifest(self, manifests: ManifestStore, now: float) -> Batch | None:
        records = await self._due_records(now, self.manifest_max_records)
        if not records:
            return None
        # In the cache before the claim: a crash in between leaves a blob no record names,
        # which the cache clears at start.
        manifest = await manifests.make(records)
        ref = ManifestRef(manifest.manifest, manifest.records, manifest.size)
        batch = Batch(uuid.uuid4().hex, "", (), 0, now, ref)

        async def claim(txn: ITransaction) -> None:
            await self._insert_batch(txn, batch)
            await manifests.record(txn, manifest)
            await txn.execute(
                "INSERT INTO chain_manifests (batch_id, manifest, records, size, payload)"
                " VALUES (?, ?, ?, ?, ?)",
                (batch.id, ref.manifest, ref.records, ref.size, manifest.payload),
            )
            await self._take(txn, batch, [r["filehash"] for r in records[: ref.records]])

        if not await self._claimed(claim):
            await manifests.forget(manifest)
            return None
        manifests.replicate()
        self.log.info(
            "batch {batch}: {n} records in manifest {manifest} ({size} bytes), for the hosts",
            batch=batch.id,
            n=ref.records,
            manifest=ref.manifest,
            size=ref.size,
        )
        return batch

    async def _insert_batch(self, txn: ITransaction, batch: Batch) -> None:
        await txn.execute(
            "INSERT INTO chain_batches (id, node_id, payload, regions, created, next_attempt)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (
                batch.id,
                self._node_id,
                batch.payload,
                json.dumps([r.decode("ascii") for r in batch.regions]),
                batch.created,
                batch.created,
            ),
        )

    @staticmethod
    async def _take(txn: ITransaction, batch: Batch, filehashes: list[str]) -> None:
        if await ChainQueue.take_all(txn, filehashes, batch.id) != len(filehashes):
            raise BatchConflict(f"{len(filehashes)} records")

    async def _claimed(self, claim: Callable[[ITransaction], Awaitable[None]]) -> bool:
        """Run a claim's transaction; False if another node took some of its records first."""
        try:
            await self._db.transaction(claim)
        except BatchConflict as e:
            self.log.info("some of {records} were claimed by another node", records=str(e))
            return False
        return True

    async def _publish(self, batch: Batch) -> bool:
        """Send a batch; False if it is a manifest's that its hosts do not hold yet."""
        try:
            if batch.manifest is not None and not batch.regions:
                announced = await self._announce(batch, batch.manifest)
                if announced is None:
                    return False
                batch = announced
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
        records = json.loads(await self._records_of(batch))
        await self._db.transaction(lambda txn: self._published(txn, batch, records, first_txid))
        self.log.info(
            "batch {batch} is on the chain: {n} records in {entries} transactions from {txid}",
            batch=batch.id,
            n=len(records),
            entries=len(batch.regions),
            txid=first_txid,
        )
        return True

    async def _announce(self, batch: Batch, ref: ManifestRef) -> Batch | None:
        """
        Once the hosts hold its manifest: the batch's announcement, written
        on it before any entry is sent (as an inline batch's text is when it
        is claimed); None while they do not.
        """
        if self.manifests is None:
            raise ManifestUnreachable(f"manifest {ref.manifest}: no host gives a public URL now")
        announcement = await self.manifests.announcement(
            ref.manifest, ref.records, ref.size, batch.created
        )
        if announcement is None:
            return None
        payload = codec.batch_text([announcement.to_json()])
        # Longer regions than a record's: an announcement with three URLs is one entry.
        regions = codec.split_regions(payload, self._chain.max_entry, codec.MAX_REGION_IN)
        await self._db.execute(
            "UPDATE chain_batches SET payload = ?, regions = ? WHERE id = ?",
            (payload, json.dumps([r.decode("ascii") for r in regions]), batch.id),
        )
        return evolve(batch, payload=payload, regions=tuple(regions))

    async def _records_of(self, batch: Batch) -> str:
        """The JSON of the records a batch publishes: its text, or its manifest's."""
        if batch.manifest is None:
            return batch.payload
        rows = await self._db.query(
            "SELECT payload FROM chain_manifests WHERE batch_id = ?", (batch.id,)
        )
        return str(rows[0][0])

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
        await Catalog.published(txn, records, first_txid)
