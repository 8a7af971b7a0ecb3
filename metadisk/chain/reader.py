"""
The reader: follows the chain block by block from its persisted height,
reassembles batches from their entries, and keeps what their records say as
claims (L{metadisk.store.claims}), so that C{find} and C{download} work for
files this node never saw uploaded. A v0.3 announcement is kept pending for
the manifest lane (L{metadisk.chain.manifest_lane}), which fetches its records
apart from the reading of blocks. A record is a stranger's claim: it never
becomes one of this node's files or placements.

Each block is applied in one database transaction (its hash, its entries,
the claims it completes), so the position and what was learned up to it
never disagree. Before reading on, the hashes of the last C{rescan_depth}
blocks read are compared with the chain's: blocks that a reorganisation
replaced are read again, and what they said is forgotten. Claims are kept
idempotently; nothing read from the chain is trusted (L{metadisk.chain.codec}),
and what one entry and one block can make the node store is bounded.
"""

from __future__ import annotations

import base64

from attrs import define, field
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from metadisk.chain.adapter import ChainBlock
from metadisk.chain.codec import (
    Announcement,
    CodecError,
    Entry,
    Fragment,
    assemble,
    decode_batch,
    decode_entry,
)
from metadisk.chain.manifest_lane import Announced, Announcements
from metadisk.chain.rpc import ChainUnavailable, RPCError
from metadisk.interfaces import IChain, IDatabase, ITransaction
from metadisk.store.catalog import Catalog
from metadisk.store.claims import Claim, Claims

BLOCKS_PER_ROUND = 200  # then the round ends and the next one reads on
FRAGMENT_HORIZON = 1_000  # blocks after which a batch still incomplete is given up
# Decoded bytes of entries kept from one block: what a block can make the node store (for
# FRAGMENT_HORIZON blocks at most) is bounded, however many entries it carries.
MAX_BLOCK_IN = 256 * 1024


@define(kw_only=True)
class Reader:
    _db: IDatabase
    _chain: IChain
    _clock: IReactorTime
    start_height: int = 0
    min_confirmations: int = 1
    rescan_depth: int = 10
    # Announcements read so far (a block rolled back counts too): the service wakes the
    # manifest lane when it grows.
    announced: int = field(default=0, init=False)

    log = Logger()

    async def height(self) -> int | None:
        """The last block read, or None before the first one."""
        rows = await self._db.query("SELECT MAX(height) FROM chain_blocks")
        return rows[0][0]

    async def read_once(self) -> int:
        """Read the confirmed blocks not read yet (a bounded number); return how many."""
        tip = await self._chain.block_count()
        last = await self._rewind(tip)
        newest = tip - max(self.min_confirmations, 1) + 1
        height = self.start_height if last is None else last[0] + 1
        previous = None if last is None else last[1]
        read = 0
        while height <= newest and read < BLOCKS_PER_ROUND:
            block = await self._chain.block(await self._chain.block_hash(height))
            if block.height != height:
                raise ChainUnavailable(f"asked for block {height}, got {block.height}")
            if previous is not None and block.previous != previous:
                # The chain changed under us: the next round finds where, and reads again.
                self.log.info("block {height} does not follow ours: reorganisation", height=height)
                return read
            await self._apply(block)
            previous = block.hash
            height += 1
            read += 1
        return read

    async def _rewind(self, tip: int) -> tuple[int, str] | None:
        """
        Compare the kept hashes with the chain's, newest first, and forget the
        blocks above the newest that still matches (usually the first: one
        call). Return (height, hash) of the block to read on from, or None to
        start at C{start_height}.
        """
        rows = await self._db.query("SELECT height, hash FROM chain_blocks ORDER BY height DESC")
        for i, (height, block_hash) in enumerate(rows):
            if await self._hash_at(height, tip) == block_hash:
                if i > 0:
                    await self._forget_above(height)
                return height, block_hash
        if not rows:
            return None
        # Deeper than the hashes kept: read again from a little below them.
        self.log.warn("reorganisation deeper than the {n} blocks checked", n=len(rows))
        restart = rows[-1][0] - self.rescan_depth - 1
        await self._forget_above(max(restart, self.start_height - 1))
        if restart < self.start_height:
            return None
        return restart, await self._chain.block_hash(restart)

    async def _hash_at(self, height: int, tip: int) -> str | None:
        if height > tip:
            return None
        try:
            return await self._chain.block_hash(height)
        except RPCError:
            return None  # out of range: the chain got shorter

    async def _forget_above(self, height: int) -> None:
        self.log.warn("chain reorganised: reading again from block {h}", h=height + 1)

        async def forget(txn: ITransaction) -> None:
            await txn.execute("DELETE FROM chain_blocks WHERE height > ?", (height,))
            await txn.execute("DELETE FROM chain_fragments WHERE height > ?", (height,))
            # The announcements first: on PostgreSQL that waits for a manifest being kept
            # (it holds its row), whose claims the next statement then sees and forgets.
            await Announcements.forget_above(txn, height)
            await Claims.forget_above(txn, height)
            # Our own records in those blocks are on the chain again only once read again.
            await Catalog.unconfirm_above(txn, height)

        await self._db.transaction(forget)

    async def _apply(self, block: ChainBlock) -> None:
        fragments = []
        stored = 0  # bytes this block makes the node keep
        for position, (txid, data) in enumerate(block.entries):
            try:
                entry = decode_entry(data)
            except CodecError as e:
                # A public chain carries all sorts of data: not ours is not an error.
                self.log.debug("block {h}: skipping {txid}: {e}", h=block.height, txid=txid, e=e)
                continue
            stored += len(entry.region)
            if stored > MAX_BLOCK_IN:
                self.log.info(
                    "block {h}: more than {n} bytes of entries; the rest are skipped",
                    h=block.height,
                    n=MAX_BLOCK_IN,
                )
                break
            fragments.append(Fragment(txid, entry, (block.height, position)))
        learned: list[Claim] = []

        async def apply(txn: ITransaction) -> None:
            learned.clear()
            await txn.execute(
                "INSERT INTO chain_blocks (height, hash) VALUES (?, ?)"
                " ON CONFLICT (height) DO UPDATE SET hash = excluded.hash",
                (block.height, block.hash),
            )
            await txn.execute(
                "DELETE FROM chain_blocks WHERE height <= ?", (block.height - self.rescan_depth,)
            )
            # In block order: a batch is confirmed where its last entry is, and the claims
            # of a file are ordered by where they were confirmed.
            for fragment in fragments:
                await _store_fragment(txn, fragment)
                learned.extend(await self._complete(txn, fragment))
            await txn.execute(
                "DELETE FROM chain_fragments WHERE height < ?", (block.height - FRAGMENT_HORIZON,)
            )

        await self._db.transaction(apply)
        if learned:
            self.log.info("block {h}: {n} records read", h=block.height, n=len(learned))

    async def _complete(self, txn: ITransaction, last: Fragment) -> list[Claim]:
        """If the batch of C{last} is complete now, keep its claims and drop its entries."""
        batch_id = last.entry.batch_id(last.txid)
        rows = await txn.query(
            "SELECT txid, idx, prev_txid, first_txid, total_length, region, height, position"
            " FROM chain_fragments WHERE batch_id = ?",
            (batch_id,),
        )
        fragments = [_fragment(row) for row in rows]
        heads = [f for f in fragments if f.txid == batch_id and f.entry.index == 0]
        if not heads:
            return []
        try:
            data = assemble(heads[0], fragments)
            if data is None:
                return []
            decoded = decode_batch(data)
            records, problems = decoded.records, decoded.problems
            announcements = decoded.announcements
        except CodecError as e:
            self.log.info("batch {batch} is not valid: {e}", batch=batch_id, e=e)
            records, problems, announcements = [], [], []
        await txn.execute("DELETE FROM chain_fragments WHERE batch_id = ?", (batch_id,))
        for problem in problems:
            self.log.info("batch {batch}: skipped a record: {p}", batch=batch_id, p=problem)
        height, position = last.position
        claims = [
            Claim(record, batch_id, index, height, position) for index, record in enumerate(records)
        ]
        # A statement for the batch's claims and one for this node's records among them, not
        # two a record: on a catalog of millions each statement a record was a random page.
        await Claims.add_all(txn, claims)
        await Catalog.confirm_all(txn, {c.record.filehash for c in claims}, batch_id, height)
        await _announced(txn, batch_id, announcements, height, position)
        self.announced += len(announcements)
        return claims


async def _announced(
    txn: ITransaction, batch_id: str, announcements: list[Announcement], height: int, position: int
) -> None:
    """
    The announcements of a batch wait for their manifests (the manifest lane,
    L{metadisk.chain.manifest_lane}), confirmed where the batch was: the n-th is
    C{<batch_id>/<n>}, the txid of the claims its manifest holds.
    """
    for n, announcement in enumerate(announcements):
        await Announcements.add(
            txn, Announced(f"{batch_id}/{n}", batch_id, announcement, height, position)
        )


async def _store_fragment(txn: ITransaction, fragment: Fragment) -> None:
    entry = fragment.entry
    await txn.execute(
        "INSERT INTO chain_fragments (txid, batch_id, idx, prev_txid, first_txid, total_length,"
        " region, height, position) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (txid) DO NOTHING",
        (
            fragment.txid,
            entry.batch_id(fragment.txid),
            entry.index,
            entry.prev_txid,
            entry.first_txid,
            entry.total_length,
            base64.b64encode(entry.region).decode("ascii"),
            fragment.position[0],
            fragment.position[1],
        ),
    )


def _fragment(row: tuple) -> Fragment:
    txid, index, prev_txid, first_txid, total_length, region, height, position = row
    entry = Entry(index, prev_txid, first_txid, total_length, base64.b64decode(region))
    return Fragment(txid, entry, (height, position))
