"""
Repair: hosts lose copies (a site expires old files, a bucket is emptied, a
disk is replaced). Each round checks a bounded sample of the stored copies,
those seen longest ago first, with C{exists()}. A copy its host says is gone
leaves C{uploads} and the blob goes back on the cloud queue, which puts the
number of copies back: from the cache (its SHA-256 checked first), or from
another host's copy (verified as it is fetched).
"""

from __future__ import annotations

from collections.abc import Sequence

from attrs import define, frozen
from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from metadisk.crypto import sha256_file
from metadisk.interfaces import IDatabase, IFileHost, ITransaction
from metadisk.store.blocking import RunBlocking
from metadisk.store.cache import BlobCache
from metadisk.store.cloudsync import CloudSync

PRESENT, MISSING, UNKNOWN = "present", "missing", "unknown"
# The copies seen longest ago, read in that order through uploads_check_due, stopping at the
# LIMIT. "host_name || ''" keeps the index on host_name out of it: with the statistics of
# SQLite's bounded ANALYZE (its first thousand entries, one host's) that index looks selective,
# and the plan read all the hosts' copies to sort them: 5 s a round at ten million files.
REPAIR_SAMPLE = (
    "SELECT filehash, host_name, url FROM uploads WHERE host_name || '' IN ({marks})"
    " ORDER BY COALESCE(checked, added) LIMIT ?"
)


@frozen
class RepairRound:
    checked: int
    missing: tuple[tuple[str, str], ...]  # (filehash, host name)
    unknown: int  # copies whose host could not answer


@define(kw_only=True)
class Repair:
    _db: IDatabase
    _sync: CloudSync
    _cache: BlobCache
    _hosts: Sequence[IFileHost]
    _clock: IReactorTime
    _run_blocking: RunBlocking
    sample: int = 20  # copies checked per round
    timeout: float = 120.0  # for one check

    log = Logger()

    async def run_once(self) -> RepairRound:
        """Check a sample of copies; drop and requeue those that are gone."""
        unhealthy = set(self._sync.unhealthy())
        # Only hosts of this node: rows may name hosts of other nodes (learned from
        # the chain) or hosts since removed from the configuration.
        names = [host.name for host in self._hosts if host.name not in unhealthy]
        if not names or self.sample <= 0:
            return RepairRound(0, (), 0)
        rows = await self._db.query(
            REPAIR_SAMPLE.format(marks=", ".join("?" * len(names))), (*names, self.sample)
        )
        outcomes = await DeferredList(
            [self._check(filehash, name, url) for filehash, name, url in rows],
            consumeErrors=True,
        )
        for ok, outcome in outcomes:
            if not ok:
                outcome.raiseException()  # cancelled (the service stops): write nothing
        now = self._clock.seconds()
        seen = []
        missing = []
        unknown = 0
        for (filehash, name, _), (_, outcome) in zip(rows, outcomes, strict=True):
            if outcome == MISSING:
                missing.append((filehash, name))
            else:
                # An unanswered check waits for its next turn like a good one, or
                # a dead host's copies would fill every sample.
                seen.append((now, filehash, name))
                unknown += outcome != PRESENT
        if seen:

            async def mark(txn: ITransaction) -> None:
                for row in seen:
                    await txn.execute(
                        "UPDATE uploads SET checked = ? WHERE filehash = ? AND host_name = ?", row
                    )

            await self._db.transaction(mark)
        for filehash, name in missing:
            await self._restore(filehash, name)
        if missing:
            self._sync.kick()
        if missing or unknown:
            self.log.info(
                "repair: {checked} copies checked, {missing} lost, {unknown} unanswered",
                checked=len(rows),
                missing=len(missing),
                unknown=unknown,
            )
        return RepairRound(len(rows), tuple(missing), unknown)

    def _check(self, filehash: str, name: str, url: str) -> Deferred[str]:
        host = next(host for host in self._hosts if host.name == name)

        async def check() -> str:
            try:
                there = await host.exists(filehash, url).addTimeout(self.timeout, self._clock)
            except CancelledError:
                raise
            except Exception as e:
                self._sync.metrics.host_failed(name, "check")
                self.log.warn(
                    "could not check {filehash} on {host}: {e}", filehash=filehash, host=name, e=e
                )
                return UNKNOWN
            return PRESENT if there else MISSING

        return Deferred.fromCoroutine(check())

    async def _restore(self, filehash: str, name: str) -> None:
        self.log.warn(
            "{host} lost its copy of {filehash}: restoring it", host=name, filehash=filehash
        )
        self._sync.metrics.host_repairs.labels(name).inc()
        await self._sync.forget(filehash, name)
        if filehash in self._cache:
            # The cache is the source of the new copy: make sure it is sound, or
            # let the queue fetch a verified one from another host instead.
            path = str(self._cache.path(filehash))
            try:
                actual = await self._run_blocking(sha256_file, path)
            except OSError:
                return  # evicted meanwhile: the queue fetches it back
            if actual != filehash:
                self.log.error("the cached blob {filehash} is corrupt", filehash=filehash)
                self._cache.discard(filehash)
