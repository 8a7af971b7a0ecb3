"""
The cloud queue (table C{cloud_queue}): blobs still to be copied to this
node's hosts, each by the node whose cache holds it, with its attempts and
when it is due again. Written before it is acted on, so a crash loses none.
"""

from __future__ import annotations

from attrs import define
from twisted.internet.interfaces import IReactorTime

from metadisk.interfaces import IDatabase, ITransaction
from metadisk.periodic import backoff
from metadisk.store.catalog import FILE


@define
class CloudQueue:
    _db: IDatabase
    _clock: IReactorTime
    _node_id: str

    async def add(self, txn: ITransaction, filehash: str) -> None:
        """
        Queue a recorded file's blob for the hosts, due now (once: a queued
        blob keeps its place), with its size for L{pending}.
        """
        await txn.execute(
            "INSERT INTO cloud_queue (filehash, node_id, attempts, next_attempt, filesize)"
            " SELECT filehash, ?, 0, ?, filesize FROM files WHERE filehash = ?"
            " ON CONFLICT (filehash) DO NOTHING",
            (self._node_id, self._clock.seconds(), filehash),
        )

    async def due(self, limit: int) -> list[tuple[str, int]]:
        """(filehash, attempts so far) of this node's blobs that are due, oldest first."""
        rows = await self._db.query(
            "SELECT filehash, attempts FROM cloud_queue WHERE node_id = ? AND next_attempt <= ?"
            " ORDER BY next_attempt LIMIT ?",
            (self._node_id, self._clock.seconds(), limit),
        )
        return [(filehash, attempts) for filehash, attempts in rows]

    @staticmethod
    async def done(txn: ITransaction, filehash: str) -> None:
        """The blob is on its hosts."""
        await txn.execute("DELETE FROM cloud_queue WHERE filehash = ?", (filehash,))

    async def failed(self, txn: ITransaction, filehash: str, attempts: int, error: str) -> None:
        """The C{attempts}-th attempt failed: due again after a backoff."""
        await txn.execute(
            "UPDATE cloud_queue SET attempts = ?, next_attempt = ?, last_error = ?"
            " WHERE filehash = ?",
            (attempts, self._clock.seconds() + backoff(attempts), error[:1000], filehash),
        )

    async def resume(self) -> None:
        """At start: whatever this node left queued is due now, whatever its backoff was."""
        await self._db.execute(
            "UPDATE cloud_queue SET next_attempt = ? WHERE node_id = ?",
            (self._clock.seconds(), self._node_id),
        )

    async def pending(self) -> tuple[int, int]:
        """
        (count, bytes) of files' blobs still to be copied (manifests aside), for
        C{/api/status} and C{/metrics}: read from the queue's own rows, whatever
        the catalog's size.
        """
        rows = await self._db.query(
            "SELECT COUNT(*), COALESCE(SUM(filesize), 0) FROM cloud_queue q WHERE NOT EXISTS"
            " (SELECT 1 FROM files f WHERE f.filehash = q.filehash AND f.kind <> ?)",
            (FILE,),
        )
        return int(rows[0][0]), int(rows[0][1])
