"""
The blockchain queue: the files whose record is to be published (table
C{chain_queue}). A file joins it when it is recorded, in the same
transaction; its record is due once the hosts hold the blob (it has left the
cloud queue) or, after C{publish_wait} seconds, with the hosts that hold it
so far. A row never goes back to an earlier state, so a record goes out once
(L{metadisk.chain.publisher}).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

from attrs import define

from metadisk.db import IN_BATCH
from metadisk.interfaces import IDatabase, ITransaction


class State(enum.StrEnum):
    WAITING = "waiting"  # due once its blob left the cloud queue, or after publish_wait
    BATCHED = "batched"  # claimed by a batch, on its way to the chain
    PUBLISHED = "published"  # on the chain (its record is in chain_records)


# The queue's own rows only (its waiting ones, by the state index): a file's size is kept in
# its row, so neither due() nor pending() reads files, whatever the catalog's size.
_DUE = f"""
    FROM chain_queue q
    WHERE q.state = '{State.WAITING}'
      AND EXISTS (SELECT 1 FROM uploads u WHERE u.filehash = q.filehash)
      AND (q.enqueued <= ?
           OR NOT EXISTS (SELECT 1 FROM cloud_queue c WHERE c.filehash = q.filehash))
"""


@define
class ChainQueue:
    _db: IDatabase
    wait: float  # seconds after which a record goes out with the hosts it has

    @staticmethod
    async def add(txn: ITransaction, filehash: str, when: float) -> None:
        """
        Put a recorded file in the queue, with its size (once: a file that was
        ever queued stays where it got).
        """
        if await txn.execute(
            "INSERT INTO chain_queue (filehash, enqueued, state, filesize)"
            " SELECT filehash, ?, ?, filesize FROM files WHERE filehash = ?"
            " ON CONFLICT (filehash) DO NOTHING",
            (when, State.WAITING, filehash),
        ):
            await _count_waiting(txn, filehash, +1)

    async def due(self, now: float, limit: int) -> list[str]:
        """The filehashes whose record is due, oldest first."""
        rows = await self._db.query(
            f"SELECT q.filehash {_DUE} ORDER BY q.enqueued, q.filehash LIMIT ?",
            (now - self.wait, limit),
        )
        return [filehash for (filehash,) in rows]

    async def oldest_due(self, now: float) -> float | None:
        """When the record due longest ago was queued; None if none is due."""
        rows = await self._db.query(f"SELECT MIN(q.enqueued) {_DUE}", (now - self.wait,))
        return None if rows[0][0] is None else float(rows[0][0])

    @staticmethod
    async def take_all(txn: ITransaction, filehashes: Sequence[str], batch_id: str) -> int:
        """
        Claim waiting records for a batch, a statement per L{IN_BATCH} of
        them; return how many were still waiting (all of them, or the
        caller rolls back: another node took the others).
        """
        taken = 0
        for start in range(0, len(filehashes), IN_BATCH):
            batch = tuple(filehashes[start : start + IN_BATCH])
            taken += await txn.execute(
                "UPDATE chain_queue SET state = ?, batch_id = ?"
                f" WHERE state = ? AND filehash IN ({', '.join('?' * len(batch))})",
                (State.BATCHED, batch_id, State.WAITING, *batch),
            )
        # They left the waiting ones: C{chain_queue_waiting} follows, as for L{_count_waiting}.
        await txn.execute(
            "UPDATE chain_queue_waiting SET count = count - ?, size = size -"
            " (SELECT COALESCE(SUM(filesize), 0) FROM chain_queue WHERE batch_id = ?)",
            (taken, batch_id),
        )
        return taken

    @staticmethod
    async def published(txn: ITransaction, batch_id: str) -> None:
        await txn.execute(
            "UPDATE chain_queue SET state = ? WHERE batch_id = ?", (State.PUBLISHED, batch_id)
        )

    async def waiting(self) -> tuple[int, int]:
        """
        (count, bytes) of every record waiting, due or not: what the status says
        with the chain disabled, where every record waits for ever. Counted as
        records come and go, so it costs one row however many there are.
        """
        rows = await self._db.query("SELECT count, size FROM chain_queue_waiting")
        return int(rows[0][0]), int(rows[0][1])

    async def pending(self, now: float) -> tuple[int, int]:
        """(count, bytes) of the files whose record is due or on its way, for C{/api/status}."""
        due = await self._db.query(
            f"SELECT COUNT(*), COALESCE(SUM(q.filesize), 0) {_DUE}", (now - self.wait,)
        )
        batched = await self._db.query(
            "SELECT COUNT(*), COALESCE(SUM(filesize), 0) FROM chain_queue WHERE state = ?",
            (State.BATCHED,),
        )
        return int(due[0][0]) + int(batched[0][0]), int(due[0][1]) + int(batched[0][1])


async def _count_waiting(txn: ITransaction, filehash: str, step: int) -> None:
    """A record joined (+1) or left (-1) the waiting ones: C{chain_queue_waiting} follows."""
    await txn.execute(
        "UPDATE chain_queue_waiting SET count = count + ?,"
        " size = size + ? * (SELECT filesize FROM chain_queue WHERE filehash = ?)",
        (step, step, filehash),
    )
