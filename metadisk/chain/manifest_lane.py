"""
The manifest lane: v0.3 announcements read from the chain (docs/protocol.md,
section 5.8) wait here as pending rows (table C{chain_announcements}) until
their manifest is fetched from one of their URLs, checked and taken apart
into claims.

The lane is a loop of its own: a slow or dead URL never holds up reading
blocks or replication. It fetches at most L{LANE} manifests at once, over the
same open-network agent as claimed blobs (public addresses only unless
C{[chain] fetch_allowed_networks}, no redirects, headers and body on time),
never more than the announced size, into a file in the data directory; the
manifest is read and decoded in a thread (50,000 records of JSON would hold
the reactor).

What becomes of an announcement:
  - its manifest hashes and parses: each valid record becomes a claim where
    the announcement was confirmed (height, position, index in the manifest),
    the last of them in the transaction that marks it fetched;
  - a URL serves other bytes (another length or hash): that URL is not tried
    for it again; once none is left, it has failed;
  - the bytes hash but are no manifest (a bomb, a count other than
    announced, not JSON): it has failed, logged once, never fetched again;
  - no URL serves it: it stays pending, tried again after a backoff.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from attrs import define, field, frozen
from twisted.internet.defer import CancelledError, Deferred, DeferredSemaphore, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from metadisk.chain.codec import Announcement, CodecError, decode_manifest
from metadisk.interfaces import IDatabase, IFileHost, ITransaction
from metadisk.metrics import Metrics
from metadisk.periodic import backoff
from metadisk.store.blocking import RunBlocking
from metadisk.store.catalog import Catalog, FileRecord
from metadisk.store.claims import URL_TIMEOUT, Claim, Claims
from metadisk.store.hosts import SLOWEST_RATE, transfer_timeout

PENDING, FETCHED, FAILED = "pending", "fetched", "failed"
LANE = 2  # manifests fetched at once
PER_ROUND = 16  # due announcements a round takes
MAX_URLS = 4  # URLs of one announcement tried in a round
CLAIMS_PER_TRANSACTION = 10_000  # of a manifest's (about a second's work on PostgreSQL)
FIRST_RETRY = 30.0  # seconds before a manifest no URL served is tried again, doubling…
LONGEST_RETRY = 3600.0  # …up to this


class WrongBytes(Exception):
    """A URL served bytes that are not the announced manifest."""


class CutShort(Exception):
    """A URL's body ended before the announced size: tried again, like a URL that failed."""


@frozen
class Announced:
    """A row of C{chain_announcements}: an announcement, and where it was confirmed."""

    id: str  # <batch_id>/<n>: the txid of its manifest's claims
    batch_id: str
    announcement: Announcement
    height: int
    position: int
    attempts: int = 0


@define
class Announcements:
    """The table of announcements read and what became of their manifests."""

    _db: IDatabase
    claims_per_transaction: int = CLAIMS_PER_TRANSACTION

    @staticmethod
    async def add(txn: ITransaction, announced: Announced) -> None:
        """Keep an announcement read from the chain, pending (read again, it changes nothing)."""
        a = announced.announcement
        await txn.execute(
            "INSERT INTO chain_announcements (id, batch_id, manifest, size, records, uploads,"
            " height, position) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
            (
                announced.id,
                announced.batch_id,
                a.manifest,
                a.size,
                a.records,
                json.dumps([list(u) for u in a.uploads]),
                announced.height,
                announced.position,
            ),
        )

    @staticmethod
    async def forget_above(txn: ITransaction, height: int) -> None:
        """A reorganisation replaced the blocks above C{height}: their announcements are unsaid."""
        await txn.execute("DELETE FROM chain_announcements WHERE height > ?", (height,))

    async def due(self, now: float, limit: int) -> list[Announced]:
        """Pending announcements whose time has come, earliest on the chain first."""
        rows = await self._db.query(
            "SELECT id, batch_id, manifest, size, records, uploads, height, position, attempts"
            " FROM chain_announcements WHERE state = ? AND next_attempt <= ?"
            " ORDER BY height, position, id LIMIT ?",
            (PENDING, now, limit),
        )
        return [
            Announced(
                id,
                batch_id,
                Announcement(manifest, records, size, tuple(tuple(u) for u in json.loads(uploads))),
                height,
                position,
                attempts,
            )
            for id, batch_id, manifest, size, records, uploads, height, position, attempts in rows
        ]

    async def counts(self) -> tuple[int, int]:
        """Announcements pending, and records kept from the manifests fetched."""
        # One statement, so one snapshot: a manifest kept in between is never counted twice.
        [(pending, kept)] = await self._db.query(
            "SELECT (SELECT COUNT(*) FROM chain_announcements WHERE state = ?),"
            " (SELECT COALESCE(SUM(kept), 0) FROM chain_announcements WHERE state = ?)",
            (PENDING, FETCHED),
        )
        return int(pending), int(kept)

    async def keep(self, announced: Announced, records: list[FileRecord]) -> bool:
        """
        Its manifest's records become claims where it was confirmed, and it is
        fetched; False if it is no longer pending there (a reorganisation forgot
        it, or a node sharing the database was first).

        The last L{claims_per_transaction} claims are written in the transaction
        that marks it fetched, with this node's own records confirmed; those of
        a larger manifest before, that many a transaction, each while it is
        still pending there: 50,000 claims in one transaction would outlast
        PostgreSQL's query timeout. Cut short, it stays pending, and its claims
        are written again (once each) when it is fetched again.
        """
        claims = [
            Claim(record, announced.id, index, announced.height, announced.position)
            for index, record in enumerate(records)
        ]
        size = self.claims_per_transaction
        last = max(0, (len(claims) - 1) // size * size)
        for start in range(0, last, size):
            chunk = claims[start : start + size]
            if not await self._db.transaction(lambda txn, c=chunk: self._add(txn, announced, c)):
                return False

        async def keep(txn: ITransaction) -> bool:
            if not await self._settle(txn, announced, FETCHED, kept=len(records)):
                return False
            await Claims.add_all(txn, claims[last:])
            # This node's own records in the manifest are on the chain now.
            await Catalog.confirm_all(
                txn, {r.filehash for r in records}, announced.batch_id, announced.height
            )
            return True

        return bool(await self._db.transaction(keep))

    @staticmethod
    async def _add(txn: ITransaction, announced: Announced, claims: list[Claim]) -> bool:
        # A no-op update, to hold its row (PostgreSQL): a reorganisation that forgets it
        # waits for these claims, and then forgets them too.
        held = await txn.execute(
            "UPDATE chain_announcements SET attempts = attempts"
            " WHERE id = ? AND state = ? AND height = ? AND position = ?",
            (announced.id, PENDING, announced.height, announced.position),
        )
        if held:
            await Claims.add_all(txn, claims)
        return bool(held)

    async def fail(self, announced: Announced, why: str) -> bool:
        """Its manifest is not the one announced, or not a manifest: never fetched again."""
        return bool(
            await self._db.transaction(
                lambda txn: self._settle(txn, announced, FAILED, error=why[:500])
            )
        )

    async def retry(
        self, announced: Announced, uploads: tuple[tuple[str, str], ...], at: float, why: str
    ) -> None:
        """No URL served it: tried again at C{at}, from C{uploads} (those not found wrong)."""
        await self._db.execute(
            "UPDATE chain_announcements SET attempts = attempts + 1, next_attempt = ?,"
            " uploads = ?, last_error = ? WHERE id = ? AND state = ?",
            (at, json.dumps([list(u) for u in uploads]), why[:500], announced.id, PENDING),
        )

    @staticmethod
    async def _settle(
        txn: ITransaction, announced: Announced, state: str, kept: int = 0, error: str | None = None
    ) -> int:
        # The height and position too: forgotten and read again elsewhere, it is another claim.
        return await txn.execute(
            "UPDATE chain_announcements SET state = ?, kept = ?, last_error = ?"
            " WHERE id = ? AND state = ? AND height = ? AND position = ?",
            (state, kept, error, announced.id, PENDING, announced.height, announced.position),
        )


def read_manifest(path: str, announced: Announcement) -> tuple[list[FileRecord], list[str]]:
    """
    The records of the manifest fetched into C{path} (blocking: run in a
    thread); L{CutShort} if fewer bytes than announced arrived, L{WrongBytes}
    if they are not the announced bytes, L{CodecError} if those bytes are no
    manifest.
    """
    with open(path, "rb") as f:
        data = f.read(announced.size + 1)
    if len(data) < announced.size:
        # A body cut short (a connection lost where no Content-Length said the size):
        # the URL may serve it whole next time.
        raise CutShort(f"{len(data)} of the {announced.size} bytes of {announced.manifest}")
    if len(data) != announced.size or hashlib.sha256(data).hexdigest() != announced.manifest:
        raise WrongBytes(f"{len(data)} bytes that are not manifest {announced.manifest}")
    return decode_manifest(data, announced)


@define(kw_only=True)
class ManifestLane:
    """Fetches the manifests of pending announcements; L{fetch_due} is one round."""

    announcements: Announcements
    _urls: IFileHost  # a URL host: http(s) to public addresses only, no redirects
    _clock: IReactorTime
    _run_blocking: RunBlocking
    _directory: Path  # where a manifest is written while it is fetched and read
    metrics: Metrics = field(factory=Metrics)
    per_round: int = PER_ROUND
    max_urls: int = MAX_URLS
    timeout: float = URL_TIMEOUT
    slowest_rate: float = SLOWEST_RATE
    _lane: DeferredSemaphore = field(factory=lambda: DeferredSemaphore(LANE))

    log = Logger()

    async def fetch_due(self) -> int:
        """Fetch the due manifests (a bounded number); return how many were kept."""
        due = await self.announcements.due(self._clock.seconds(), self.per_round)
        kept = await gatherResults(
            [self._lane.run(lambda a=a: Deferred.fromCoroutine(self._fetch(a))) for a in due],
            consumeErrors=True,
        )
        pending, _ = await self.announcements.counts()
        self.metrics.manifests_pending.set(pending)
        return sum(kept)

    async def _fetch(self, announced: Announced) -> bool:
        """Try its URLs (a few) in turn; whether its manifest was kept."""
        a = announced.announcement
        path = self._directory / f"{announced.id.replace('/', '-')}.part"
        self._directory.mkdir(parents=True, exist_ok=True)
        left = [u for u in a.uploads if u[1].startswith(("http://", "https://"))]
        tried, wrong = left[: self.max_urls], set()
        why = "no http(s) URL"
        try:
            for upload in tried:
                url = upload[1]
                try:
                    await self._download(a, url, path)
                    records, problems = await self._run_blocking(read_manifest, str(path), a)
                except CancelledError:
                    raise  # the node stops
                except WrongBytes as e:
                    self.log.info(
                        "{url} did not serve manifest {m}: {e}", url=url[:100], m=a.manifest, e=e
                    )
                    wrong.add(upload)
                    why = f"{url[:100]}: {e}"
                    continue
                except CodecError as e:
                    # The bytes announced are no manifest: no URL will make them one.
                    return await self._failed(announced, str(e))
                except Exception as e:
                    self.log.info(
                        "{url} did not serve manifest {m}: {e}", url=url[:100], m=a.manifest, e=e
                    )
                    why = f"{url[:100]}: {e}"
                    continue
                return await self._keep(announced, records, problems)
        finally:
            path.unlink(missing_ok=True)
        # The URLs not tried this round go first next time.
        remaining = tuple(left[self.max_urls :]) + tuple(u for u in tried if u not in wrong)
        if not remaining:
            return await self._failed(announced, why)
        at = self._clock.seconds() + backoff(announced.attempts + 1, FIRST_RETRY, LONGEST_RETRY)
        await self.announcements.retry(announced, remaining, at, why)
        return False

    async def _download(self, a: Announcement, url: str, path: Path) -> None:
        timeout = transfer_timeout(self.timeout, a.size, self.slowest_rate)
        # The URL host cuts the body off past the announced size, which the codec
        # bounds by MAX_MANIFEST_SIZE.
        await self._urls.fetch(a.manifest, url, str(path), a.size).addTimeout(timeout, self._clock)

    async def _keep(
        self, announced: Announced, records: list[FileRecord], problems: list[str]
    ) -> bool:
        for problem in problems[:10]:
            self.log.info(
                "manifest {m}: skipped a record: {p}", m=announced.announcement.manifest, p=problem
            )
        if not await self.announcements.keep(announced, records):
            return False
        self.metrics.manifests.labels(FETCHED).inc()
        self.log.info(
            "manifest {m} (block {h}): {n} records read",
            m=announced.announcement.manifest,
            h=announced.height,
            n=len(records),
        )
        return True

    async def _failed(self, announced: Announced, why: str) -> bool:
        if await self.announcements.fail(announced, why):
            self.metrics.manifests.labels(FAILED).inc()
            # Logged once: a failed manifest is never fetched again.
            self.log.warn(
                "manifest {m} (block {h}) is not valid, and is ignored: {why}",
                m=announced.announcement.manifest,
                h=announced.height,
                why=why,
            )
        return False
