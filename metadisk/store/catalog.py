"""
The catalog of this node's own files (tables C{files}, C{uploads}, and its
published records in C{chain_records}): what C{/api/find} returns for them,
and which of this node's hosts hold each blob. What the chain says of other
files is in L{metadisk.store.claims}.
"""

from __future__ import annotations

import json
import re
import unicodedata

from attrs import define, frozen

from metadisk.db import IN_BATCH, insert_rows, matching
from metadisk.interfaces import IDatabase, ITransaction

FORMAT_VERSION = "0.2"
MAX_NAME = 200
# files.kind: a user's file, or a manifest of this node's records (docs/protocol.md 5.8),
# a blob replicated like a file's that find, downloads and the status leave out.
FILE, MANIFEST = "file", "manifest"


def safe_filename(name: str, longest: int = MAX_NAME) -> str:
    """
    The uploaded name made safe: no path parts, no control characters, not
    empty, at most C{longest} characters.
    """
    name = re.split(r"[/\\]", name)[-1]
    name = "".join(c for c in name if unicodedata.category(c)[0] != "C")
    name = name.strip().lstrip(".")
    return name[:longest] or "file"


@frozen
class FileRecord:
    filehash: str
    filename: str
    filesize: int
    datetime: int
    version: str
    uploads: tuple[tuple[str, str], ...]  # (host_name, url)

    def to_json(self) -> dict:
        return {
            "datetime": str(self.datetime),
            "filehash": self.filehash,
            "filename": self.filename,
            "filesize": self.filesize,
            "uploads": [{"host_name": h, "url": u} for h, u in self.uploads],
            "version": self.version,
        }

    @classmethod
    def from_json(cls, data: dict) -> FileRecord:
        """The inverse of L{to_json}, for records this node stored itself (already checked)."""
        return cls(
            data["filehash"],
            data["filename"],
            data["filesize"],
            int(data["datetime"]),
            data["version"],
            tuple((u["host_name"], u["url"]) for u in data["uploads"]),
        )


@define
class Catalog:
    _db: IDatabase

    async def add_file(
        self, txn: ITransaction, filehash: str, name: str, size: int, when: int
    ) -> bool:
        """Record a new file; False when it was already known (its first record stays)."""
        return bool(
            await txn.execute(
                "INSERT INTO files (filehash, filename, filesize, datetime, version)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (filehash) DO NOTHING",
                (filehash, f"{filehash[:7]}_{safe_filename(name)}", size, when, FORMAT_VERSION),
            )
        )

    async def find(
        self, filehash: str, using: IDatabase | ITransaction | None = None
    ) -> FileRecord | None:
        """
        This node's record of its file: as published, if it is; else as it
        stands now. C{using}: a transaction to read in (else the database).
        """
        # One statement, read at one moment (the publisher may write the record between two
        # reads): the published record alone, else the file and its copies, a row a copy.
        # The second part's NOT EXISTS names no row of it: both databases test it once, before
        # reading files or uploads. A published file costs the pages of one row of one table,
        # from disk on a catalog larger than memory (README, "A catalog of millions of files").
        # chain_records holds files' records only (a manifest never enters chain_queue).
        rows = await (using or self._db).query(
            "SELECT record, NULL, NULL, NULL, NULL, NULL, NULL, NULL"
            " FROM chain_records WHERE filehash = ?"
            " UNION ALL"
            " SELECT NULL, f.filename, f.filesize, f.datetime, f.version, u.host_name, u.url,"
            " u.added FROM files f LEFT JOIN uploads u ON u.filehash = f.filehash"
            f" WHERE f.filehash = ? AND f.kind = '{FILE}'"
            " AND NOT EXISTS (SELECT 1 FROM chain_records WHERE filehash = ?)"
            " ORDER BY 8, 6",  # the copies by when they were made, then by host
            (filehash, filehash, filehash),
        )
        if not rows:
            return None
        published, filename, filesize, when, version, *_ = rows[0]
        if published is not None:
            return FileRecord.from_json(json.loads(published))
        uploads = tuple((host, url) for *_, host, url, _ in rows if host is not None)
        return FileRecord(filehash, filename, filesize, when, version, uploads)

    async def current(self, filehash: str) -> FileRecord | None:
        """The record as this node's tables have it now."""
        rows = await self._db.query(
            "SELECT filename, filesize, datetime, version FROM files WHERE filehash = ?",
            (filehash,),
        )
        return await self._with_hosts(filehash, *rows[0]) if rows else None

    async def current_many(self, filehashes: list[str]) -> list[FileRecord]:
        """L{current} of each of C{filehashes} this node has, in their order: a query a batch."""
        files: dict[str, tuple[str, int, int, str]] = {}
        hosts: dict[str, list[tuple[str, str]]] = {filehash: [] for filehash in filehashes}
        for start in range(0, len(filehashes), IN_BATCH):
            batch = tuple(filehashes[start : start + IN_BATCH])
            marks = ", ".join("?" * len(batch))
            rows = await self._db.query(
                "SELECT filehash, filename, filesize, datetime, version FROM files"
                f" WHERE filehash IN ({marks})",
                batch,
            )
            files.update((filehash, tuple(rest)) for filehash, *rest in rows)
            rows = await self._db.query(
                f"SELECT filehash, host_name, url FROM uploads WHERE filehash IN ({marks})"
                " ORDER BY added, host_name",
                batch,
            )
            for filehash, name, url in rows:
                hosts[filehash].append((name, url))
        return [
            FileRecord(filehash, *files[filehash], tuple(hosts[filehash]))
            for filehash in filehashes
            if filehash in files
        ]

    async def _with_hosts(
        self, filehash: str, filename: str, filesize: int, when: int, version: str
    ) -> FileRecord:
        return FileRecord(
            filehash, filename, filesize, when, version, await self.hosts_of(filehash)
        )

    async def hosts_of(self, filehash: str) -> tuple[tuple[str, str], ...]:
        rows = await self._db.query(
            "SELECT host_name, url FROM uploads WHERE filehash = ? ORDER BY added, host_name",
            (filehash,),
        )
        return tuple((name, url) for name, url in rows)

    async def holders_of(self, filehashes: list[str]) -> dict[str, set[str]]:
        """The names of this node's hosts that hold each of C{filehashes}."""
        holding: dict[str, set[str]] = {filehash: set() for filehash in filehashes}
        for start in range(0, len(filehashes), IN_BATCH):
            batch = tuple(filehashes[start : start + IN_BATCH])
            rows = await self._db.query(
                "SELECT filehash, host_name FROM uploads"
                f" WHERE filehash IN ({', '.join('?' * len(batch))})",
                batch,
            )
            for filehash, host_name in rows:
                holding[filehash].add(host_name)
        return holding

    @staticmethod
    async def add_manifest(txn: ITransaction, manifest: str, size: int, when: int) -> None:
        """A manifest's blob, to be replicated like a file's (once: it is named by its hash)."""
        await txn.execute(
            "INSERT INTO files (filehash, filename, filesize, datetime, version, kind)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (filehash) DO NOTHING",
            (manifest, "manifest", size, when, FORMAT_VERSION, MANIFEST),
        )

    @staticmethod
    async def add_upload(
        txn: ITransaction, filehash: str, host_name: str, url: str, when: float
    ) -> None:
        """A host of this node's holds the blob now, at C{url}."""
        await txn.execute(
            "INSERT INTO uploads (filehash, host_name, url, added) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (filehash, host_name) DO UPDATE SET url = excluded.url",
            (filehash, host_name, url, when),
        )

    async def holds_copies(self, host_name: str) -> bool:
        """Whether the records say C{host_name} holds any copy."""
        # The first name from C{host_name} on, in the index's order: with C{= ?}, PostgreSQL
        # expects a host's copies spread evenly over the table and reads it from its start,
        # past every copy of the hosts before it (migration 009).
        rows = await self._db.query(
            "SELECT host_name FROM uploads WHERE host_name >= ? ORDER BY host_name LIMIT 1",
            (host_name,),
        )
        return bool(rows) and rows[0][0] == host_name

    @staticmethod
    async def remove_upload(txn: ITransaction, filehash: str, host_name: str) -> None:
        """A host lost or spoiled its copy."""
        await txn.execute(
            "DELETE FROM uploads WHERE filehash = ? AND host_name = ?", (filehash, host_name)
        )

    @staticmethod
    async def published(txn: ITransaction, records: list[dict], txid: str) -> None:
        """
        This node's records went out in the batch C{txid}: C{find} answers
        them from now on. A statement per L{IN_BATCH} records: a manifest's
        tens of thousands, one statement each, would outlast a transaction's
        timeout on PostgreSQL.
        """
        await insert_rows(
            txn,
            "INSERT INTO chain_records (filehash, record, txid) VALUES {rows}"
            " ON CONFLICT (filehash) DO NOTHING",
            [(r["filehash"], json.dumps(r), txid) for r in records],
            IN_BATCH,
        )

    @staticmethod
    async def confirm(txn: ITransaction, filehash: str, txid: str, height: int) -> None:
        """This node's record of C{filehash}, read back from the chain at C{height}."""
        await txn.execute(
            "UPDATE chain_records SET height = ? WHERE filehash = ? AND txid = ?"
            " AND height IS NULL",
            (height, filehash, txid),
        )

    @staticmethod
    async def confirm_all(txn: ITransaction, filehashes: set[str], txid: str, height: int) -> None:
        """
        L{confirm} for each of C{filehashes} (a batch's, a manifest's) this node
        published in C{txid}: the records not read back yet are few (the
        index on height finds them), the records of a batch up to 50,000.
        """
        rows = await txn.query(
            "SELECT filehash FROM chain_records WHERE txid = ? AND height IS NULL", (txid,)
        )
        for (filehash,) in rows:  # none, but for this node's own batches
            if filehash in filehashes:
                await Catalog.confirm(txn, filehash, txid, height)

    @staticmethod
    async def unconfirm_above(txn: ITransaction, height: int) -> None:
        """The blocks above C{height} were replaced: records read there are on it no longer."""
        await txn.execute("UPDATE chain_records SET height = NULL WHERE height > ?", (height,))

    @staticmethod
    async def holders(txn: ITransaction, filehash: str) -> int:
        """How many of this node's hosts hold the blob."""
        rows = await txn.query("SELECT COUNT(*) FROM uploads WHERE filehash = ?", (filehash,))
        return int(rows[0][0])

    async def replicated(self, filehashes: list[str], copies: int) -> set[str]:
        """Those of C{filehashes} that at least C{copies} of this node's hosts hold."""
        return await matching(
            self._db,
            filehashes,
            "SELECT filehash FROM uploads WHERE filehash IN ({marks})"
            " GROUP BY filehash HAVING COUNT(*) >= ?",
            (copies,),
        )

    async def known(self, filehashes: list[str]) -> set[str]:
        """Those of C{filehashes} that are this node's files."""
        return await matching(
            self._db, filehashes, "SELECT filehash FROM files WHERE filehash IN ({marks})"
        )
