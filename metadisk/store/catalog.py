"""The catalog of files: what C{/api/find} returns, and which hosts hold each blob."""

from __future__ import annotations

import json
import re
import unicodedata

from attrs import define, frozen

from metadisk.interfaces import IDatabase, ITransaction

FORMAT_VERSION = "0.2"
MAX_NAME = 200


def safe_filename(name: str) -> str:
    """
    The uploaded name made safe: no path parts, no control characters, not
    empty, of bounded length.
    """
    name = re.split(r"[/\\]", name)[-1]
    name = "".join(c for c in name if unicodedata.category(c)[0] != "C")
    name = name.strip().lstrip(".")
    return name[:MAX_NAME] or "file"


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

    async def find(self, filehash: str) -> FileRecord | None:
        """The record on the chain, exactly as published, if there is one; else the current one."""
        # The file and its chain record in one statement: the chain's reader adds both
        # in one transaction, and two reads could see the file without its record.
        rows = await self._db.query(
            "SELECT r.record, f.filename, f.filesize, f.datetime, f.version FROM files f"
            " LEFT JOIN chain_records r ON r.filehash = f.filehash WHERE f.filehash = ?",
            (filehash,),
        )
        if not rows:
            return None
        published, *fields = rows[0]
        if published is not None:
            return FileRecord.from_json(json.loads(published))
        return await self._with_hosts(filehash, *fields)

    async def current(self, filehash: str) -> FileRecord | None:
        """The record as this node's tables have it now."""
        rows = await self._db.query(
            "SELECT filename, filesize, datetime, version FROM files WHERE filehash = ?",
            (filehash,),
        )
        return await self._with_hosts(filehash, *rows[0]) if rows else None

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

    async def add_upload(self, filehash: str, host_name: str, url: str, when: float) -> None:
        await self._db.execute(
            "INSERT INTO uploads (filehash, host_name, url, added) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (filehash, host_name) DO UPDATE SET url = excluded.url",
            (filehash, host_name, url, when),
        )

    async def holds_copies(self, host_name: str) -> bool:
        """Whether the records say C{host_name} holds any copy."""
        rows = await self._db.query(
            "SELECT 1 FROM uploads WHERE host_name = ? LIMIT 1", (host_name,)
        )
        return bool(rows)

    async def remove_upload(self, filehash: str, host_name: str) -> None:
        await self._db.execute(
            "DELETE FROM uploads WHERE filehash = ? AND host_name = ?", (filehash, host_name)
        )

    async def replicated(self, filehashes: list[str], copies: int) -> set[str]:
        """
        Those of C{filehashes} held by at least C{copies} hosts, or known from
        the chain and not waiting for hosts here (their blob is on the hosts
        the record names, whatever this node's C{copies}).
        """
        return await self._matching(
            filehashes,
            "SELECT filehash FROM uploads WHERE filehash IN ({marks})"
            " GROUP BY filehash HAVING COUNT(*) >= ?"
            " UNION SELECT r.filehash FROM chain_records r WHERE r.filehash IN ({marks})"
            " AND NOT EXISTS (SELECT 1 FROM cloud_queue q WHERE q.filehash = r.filehash)",
            (copies,),
            twice=True,
        )

    async def known(self, filehashes: list[str]) -> set[str]:
        """Those of C{filehashes} that have a record."""
        return await self._matching(
            filehashes, "SELECT filehash FROM files WHERE filehash IN ({marks})"
        )

    async def _matching(
        self, filehashes: list[str], sql: str, extra: tuple = (), twice: bool = False
    ) -> set[str]:
        found: set[str] = set()
        for start in range(0, len(filehashes), 500):
            batch = filehashes[start : start + 500]
            params = (*batch, *extra, *batch) if twice else (*batch, *extra)
            rows = await self._db.query(sql.format(marks=", ".join("?" * len(batch))), params)
            found.update(h for (h,) in rows)
        return found
