"""
The rows of resumable uploads (table C{resumable_uploads}): what survives a
restart of an upload in progress besides its partial file (its offset, its
payer and reservation, its expiry) and, once it is complete, its result
until it expires.
"""

from __future__ import annotations

from attrs import define, frozen

from metadisk.interfaces import IDatabase, ITransaction

RECEIVING = "receiving"
COMPLETE = "complete"
EXPIRED = "expired"

_COLUMNS = (
    "id, node_id, token, reservation_id, reserved, length, received, filename, address,"
    " created, expires, state, filehash, file_key"
)


@frozen
class ResumableRow:
    id: str
    node_id: str
    token: str | None
    reservation_id: str | None
    reserved: int
    length: int
    received: int
    filename: str
    address: str
    created: int
    expires: int
    state: str
    filehash: str | None = None
    file_key: str | None = None


@define
class ResumableTable:
    """The one owner of C{resumable_uploads}."""

    _db: IDatabase

    async def create(self, row: ResumableRow) -> None:
        await self._db.execute(
            f"INSERT INTO resumable_uploads ({_COLUMNS})"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                row.id,
                row.node_id,
                row.token,
                row.reservation_id,
                row.reserved,
                row.length,
                row.received,
                row.filename,
                row.address,
                row.created,
                row.expires,
                row.state,
                row.filehash,
                row.file_key,
            ),
        )

    async def of_node(self, node_id: str) -> list[ResumableRow]:
        """Every upload this node holds (its partial files are in its data directory)."""
        rows = await self._db.query(
            f"SELECT {_COLUMNS} FROM resumable_uploads WHERE node_id = ? ORDER BY created",
            (node_id,),
        )
        return [ResumableRow(*row) for row in rows]

    async def receiving(self, token: str) -> list[int]:
        """The expiry times of the unfinished uploads C{token} pays for, earliest first."""
        rows = await self._db.query(
            "SELECT expires FROM resumable_uploads WHERE token = ? AND state = ? ORDER BY expires",
            (token, RECEIVING),
        )
        return [expires for (expires,) in rows]

    async def received(self, upload_id: str, offset: int) -> None:
        """C{offset} bytes are durable on disk (never moves back, except for a discarded chunk)."""
        await self._db.execute(
            "UPDATE resumable_uploads SET received = ? WHERE id = ? AND state = ?",
            (offset, upload_id, RECEIVING),
        )

    @staticmethod
    async def complete(txn: ITransaction, upload_id: str, filehash: str, key: str) -> None:
        """Stored: in the transaction that records the file."""
        await txn.execute(
            "UPDATE resumable_uploads SET state = ?, received = length, reservation_id = NULL,"
            " filehash = ?, file_key = ? WHERE id = ?",
            (COMPLETE, filehash, key, upload_id),
        )

    async def expire(self, upload_id: str) -> None:
        """Its partial file is gone and its credit given back; a result's key is forgotten."""
        await self._db.execute(
            "UPDATE resumable_uploads SET state = ?, reservation_id = NULL, file_key = NULL"
            " WHERE id = ?",
            (EXPIRED, upload_id),
        )

    async def forget(self, node_id: str, before: int) -> int:
        """Delete this node's expired rows that expired before C{before}; how many."""
        return await self._db.execute(
            "DELETE FROM resumable_uploads WHERE node_id = ? AND state = ? AND expires < ?",
            (node_id, EXPIRED, before),
        )

    async def delete(self, upload_id: str) -> None:
        """A terminated upload (DELETE): nothing of it is kept."""
        await self._db.execute("DELETE FROM resumable_uploads WHERE id = ?", (upload_id,))
