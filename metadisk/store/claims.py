"""
Claims: what records read from the chain say about files this node never
received (table C{chain_claims}; docs/protocol.md, "Trust").

The chain is public, so a record is a stranger's claim, never a row of this
node's own: several may name one filehash, with any name, size, date, host
names and URLs. For a file known only from the chain, C{find} answers the
earliest claim (block height, then place in the block, then place in the
batch) that no verified blob has disproved. A blob whose SHA-256 is the
filehash is the file, whoever served it: once one is fetched, the claims of
another size are discarded (the ciphertext is as long as the plaintext).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from attrs import define, field, frozen
from twisted.internet.defer import CancelledError, DeferredSemaphore
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from metadisk.crypto import sha256_file
from metadisk.db import insert_rows, matching
from metadisk.interfaces import IDatabase, IFileHost, ITransaction
from metadisk.meters import INCOMING, Meters
from metadisk.metrics import Metrics
from metadisk.store.blocking import RunBlocking
from metadisk.store.catalog import FileRecord
from metadisk.store.cloudsync import NoCopyAvailable
from metadisk.store.hosts import SLOWEST_RATE, transfer_timeout

_ORDER = "ORDER BY height, position, idx"
MAX_CLAIMS = 8  # claims on one file whose URLs a download may try, earliest first…
MAX_URLS = 8  # …and their URLs, in all
URL_LANE = 4  # URL fetches at once, node-wide
URL_TIMEOUT = 60.0  # seconds for a URL to start and end, plus the time its bytes take
ROWS_PER_INSERT = 200  # claims of one INSERT: 1,400 values, well below SQLite's 32,766


@frozen
class Claim:
    """A record as read, and where: C{(height, position, index)} orders claims."""

    record: FileRecord
    # Of the first entry of the batch that carried it; for a manifest's record, the
    # announcement's id (<batch txid>/<n>, docs/protocol.md section 5.8).
    txid: str
    index: int  # its place in that batch, or in the manifest
    height: int
    position: int  # in the block, of the batch's last entry


@define
class Claims:
    _db: IDatabase

    @staticmethod
    async def add_all(txn: ITransaction, claims: Sequence[Claim]) -> None:
        """
        Keep claims read from the chain (a batch's, a manifest's: up to 50,000)
        in few statements, once each: read again, they change nothing. A
        statement a claim would outlast PostgreSQL's query timeout.
        """
        await insert_rows(
            txn,
            "INSERT INTO chain_claims (txid, idx, filehash, height, position, filesize, record)"
            " VALUES {rows} ON CONFLICT (txid, idx) DO NOTHING",
            [_row(claim) for claim in claims],
            ROWS_PER_INSERT,
        )

    @staticmethod
    async def forget_above(txn: ITransaction, height: int) -> None:
        """A reorganisation replaced the blocks above C{height}: what they said is unsaid."""
        await txn.execute("DELETE FROM chain_claims WHERE height > ?", (height,))

    async def earliest(
        self, filehash: str, using: IDatabase | ITransaction | None = None
    ) -> FileRecord | None:
        """The claim C{find} answers: the earliest one not disproved."""
        found = await self.standing(filehash, 1, using)
        return found[0] if found else None

    async def standing(
        self, filehash: str, limit: int, using: IDatabase | ITransaction | None = None
    ) -> list[FileRecord]:
        """Up to C{limit} claims not disproved, earliest first."""
        rows = await (using or self._db).query(
            f"SELECT record FROM chain_claims WHERE filehash = ? AND discarded = 0 {_ORDER}"
            " LIMIT ?",
            (filehash, limit),
        )
        return [FileRecord.from_json(json.loads(record)) for (record,) in rows]

    async def verified(self, filehash: str, size: int) -> int:
        """A blob of C{size} bytes hashed to C{filehash}: discard the claims of another size."""
        return await self._db.execute(
            "UPDATE chain_claims SET discarded = 1 WHERE filehash = ? AND filesize <> ?",
            (filehash, size),
        )

    async def known(self, filehashes: list[str]) -> set[str]:
        """Those of C{filehashes} that some claim names."""
        return await matching(
            self._db, filehashes, "SELECT filehash FROM chain_claims WHERE filehash IN ({marks})"
        )


def _row(claim: Claim) -> tuple:
    record = claim.record
    return (
        claim.txid,
        claim.index,
        record.filehash,
        claim.height,
        claim.position,
        record.filesize,
        json.dumps(record.to_json()),
    )


Pay = Callable[[int], Awaitable[None]]


@define(kw_only=True)
class ClaimFetcher:
    """
    The blob of a file known only from claims, fetched from their URLs:
    the earliest claim's first, then the next claims', at most C{max_urls}
    in all, each bounded by its claim's size and by time. The fetches run in
    their own lane (at most C{lane} at once, node-wide), apart from the
    replication to this node's hosts, which a claim never holds up. A file
    whose URLs all failed is tried again only when a reader asks again.
    """

    _claims: Claims
    _urls: IFileHost  # a URL host: http(s) to public addresses only
    _clock: IReactorTime
    _run_blocking: RunBlocking
    largest: int  # bytes: a claim of a larger blob than the cache holds is not tried
    _meters: Meters | None = None
    metrics: Metrics = field(factory=Metrics)
    max_claims: int = MAX_CLAIMS
    max_urls: int = MAX_URLS
    timeout: float = URL_TIMEOUT
    slowest_rate: float = SLOWEST_RATE
    _lane: DeferredSemaphore = field(factory=lambda: DeferredSemaphore(URL_LANE))

    log = Logger()

    async def fetch(self, filehash: str, destination: Path, pay: Pay) -> int:
        """
        Fetch the blob into C{destination}; fire with its size. C{pay(size)} is
        awaited before the URLs of a claim of C{size} bytes are tried (it may
        refuse, which ends the fetch). Raise L{NoCopyAvailable} if no URL
        served a blob whose SHA-256 is C{filehash}.
        """
        tried = 0
        for claim in await self._claims.standing(filehash, self.max_claims):
            urls = [url for _, url in claim.uploads if url.startswith(("http://", "https://"))]
            if not urls or tried >= self.max_urls or claim.filesize > self.largest:
                continue
            await pay(claim.filesize)
            for url in urls[: self.max_urls - tried]:
                tried += 1
                if await self._fetch_url(filehash, url, destination, claim.filesize):
                    size = destination.stat().st_size
                    disproved = await self._claims.verified(filehash, size)
                    if disproved:
                        self.log.info(
                            "{n} claims on {filehash} disproved by its blob",
                            n=disproved,
                            filehash=filehash,
                        )
                    return size
        destination.unlink(missing_ok=True)
        raise NoCopyAvailable(filehash)

    async def _fetch_url(self, filehash: str, url: str, destination: Path, size: int) -> bool:
        """Whether C{url} served the blob (its SHA-256 checked)."""
        timeout = transfer_timeout(self.timeout, size, self.slowest_rate)
        try:
            await self._lane.run(
                lambda: self._urls.fetch(filehash, url, str(destination), size).addTimeout(
                    timeout, self._clock
                )
            )
            if self._meters is not None:
                self._meters.record(INCOMING, destination.stat().st_size)
            actual = await self._run_blocking(sha256_file, str(destination))
        except CancelledError:
            raise  # the reader or the node stops
        except Exception as e:
            self.metrics.host_failed("url", "fetch")
            self.log.info(
                "{url} did not serve {filehash}: {e}", url=url[:100], filehash=filehash, e=e
            )
            return False
        if actual != filehash:
            self.metrics.host_failed("url", "corrupt")
            self.log.info(
                "{url} served a blob that is not {filehash}", url=url[:100], filehash=filehash
            )
            return False
        return True
