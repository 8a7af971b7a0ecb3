"""
Cloud sync: the persistent queue of blobs to copy to the hosts, and fetching
blobs back from them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from attrs import define, field
from twisted.internet.defer import CancelledError, Deferred, DeferredList, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from metadisk.crypto import sha256_file
from metadisk.interfaces import IDatabase, IFileHost, ITransaction
from metadisk.meters import INCOMING, OUTGOING, Meters
from metadisk.metrics import Metrics
from metadisk.periodic import backoff
from metadisk.store.blocking import RunBlocking
from metadisk.store.cache import BlobCache
from metadisk.store.catalog import Catalog
from metadisk.store.cloudqueue import CloudQueue
from metadisk.store.hosts import SLOWEST_RATE, HostError, Stored, transfer_timeout

T = TypeVar("T")

BATCH = 256  # blobs a round takes from the queue: one job per host for them all
GATHER = 0.05  # seconds an upload's round waits for the next uploads to join it
FAILURES_BEFORE_UNHEALTHY = 3


class NoCopyAvailable(Exception):
    """No host delivered a blob whose SHA-256 matches its filehash."""


@define
class HostHealth:
    """Consecutive failures of one host, and when to try it again."""

    failures: int = 0
    retry_at: float = 0.0

    def healthy(self, now: float) -> bool:
        return self.failures < FAILURES_BEFORE_UNHEALTHY or now >= self.retry_at

    def failed(self, now: float) -> None:
        self.failures += 1
        self.retry_at = now + backoff(self.failures)

    def succeeded(self) -> None:
        self.failures = 0


@define(kw_only=True)
class CloudSync:
    _db: IDatabase
    _catalog: Catalog
    _cache: BlobCache
    _hosts: Sequence[IFileHost]
    _clock: IReactorTime
    _run_blocking: RunBlocking
    _node_id: str
    copies: int
    timeout: float = 600.0  # for a host call, and the time its blob takes at slowest_rate
    slowest_rate: float = SLOWEST_RATE
    _health: dict[str, HostHealth] = field(factory=dict)
    _running: Deferred | None = None
    _soon: IDelayedCall | None = None  # the round asked for soon()
    _again: bool = False
    _stopping: bool = False
    _transfers: set[Deferred[Any]] = field(factory=set)  # the rounds' host transfers in flight
    _meters: Meters | None = None  # host transfers count in the node's bandwidth…
    _unmetered: frozenset[str] = frozenset()  # …but those of local directories cross no network
    metrics: Metrics = field(factory=Metrics)
    # Fetches from the URL of a host this node lacks (records learned from the chain).
    url_fetcher: IFileHost | None = None
    queue: CloudQueue = field(init=False)
    _by_name: dict[str, IFileHost] = field(init=False)

    log = Logger()

    def __attrs_post_init__(self) -> None:
        self._health = {host.name: HostHealth() for host in self._hosts}
        self._by_name = {host.name: host for host in self._hosts}
        self.queue = CloudQueue(self._db, self._clock, self._node_id)

    def host(self, name: str) -> IFileHost | None:
        return self._by_name.get(name)

    def unhealthy(self) -> list[str]:
        now = self._clock.seconds()
        return [name for name, h in self._health.items() if not h.healthy(now)]

    def kick(self) -> Deferred[None]:
        """
        Run a round now, and more while they take a full L{BATCH}; if one is
        running, run another right after it.
        """
        if self._stopping:
            return succeed(None)
        if self._running is not None:
            self._again = True
            return self._running
        running = Deferred.fromCoroutine(self._rounds())
        if not running.called:  # a round can end at once (e.g. the database refuses)
            self._running = running
        return running

    def soon(self) -> None:
        """
        Run a round in a moment: the uploads that come meanwhile join it, and
        many small files make a few jobs a host rather than one a file.
        """
        if self._stopping or self._soon is not None:
            return
        self._soon = self._clock.callLater(GATHER, self._gathered)

    def _gathered(self) -> None:
        self._soon = None
        self.kick()

    async def idle(self) -> None:
        """
        Wait for the round in progress, if any, those asked for meanwhile, and
        one asked for L{soon}, to end.
        """
        while self._running is not None or self._soon is not None:
            if self._running is None:
                assert self._soon is not None
                self._soon.cancel()
                self._gathered()  # no need to gather more: someone waits for it
            if self._running is not None:
                await self._running

    async def stop(self) -> None:
        """The node stops: cancel the rounds' host transfers in flight, start no other."""
        self._stopping = True
        self._again = False
        if self._soon is not None:
            self._soon.cancel()
            self._soon = None
        for transfer in list(self._transfers):
            transfer.cancel()  # the queue keeps their blobs for the next start
        await self.idle()

    async def _transfer(self, transfer: Deferred[T]) -> T:
        """Wait for a round's host transfer, which L{stop} may cancel."""
        self._transfers.add(transfer)
        try:
            return await transfer
        finally:
            self._transfers.discard(transfer)

    async def _rounds(self) -> None:
        try:
            while True:
                self._again = False
                tried = await self.run_once()
                # A full round most likely left more due (uploads faster than the hosts, a
                # restart's backlog): the next starts now, not at the next tick of the interval.
                if self._stopping or (not self._again and tried < BATCH):
                    return
        except Exception:
            # The loop must survive anything: the queue keeps the work.
            self.log.failure("cloud sync round failed")
        finally:
            self._running = None

    async def run_once(self) -> int:
        """
        Copy the blobs that are due to hosts until C{copies} hold each, as one
        job per host (L{IFileHost.store_all}: one tool run, one flush), and
        record the round in one transaction; a blob still short is due again
        after a backoff. Return how many blobs were tried.
        """
        due = dict(await self.queue.due(BATCH))
        if not due:
            return 0
        errors: dict[str, list[str]] = {filehash: [] for filehash in due}
        # Looked up in the thread pool: a stat each, which the reactor must not wait for.
        cached = await self._run_blocking(self._cache.locate, list(due))
        for filehash in due:
            if filehash not in cached and not self._stopping:
                # Repair found a copy lost and the cache has evicted the blob since:
                # restore it from a host that still holds a good copy.
                try:
                    cached[filehash] = await self._recache(filehash)
                except CancelledError:
                    return len(due)  # the node stops: the blobs stay queued as they were
                except Exception as e:
                    errors[filehash].append(f"no copy to restore from: {e!r}")
        # Read after any fetch: a corrupt copy met on the way no longer counts.
        holding = await self._catalog.holders_of(list(due))
        need = {filehash: self.copies - len(holding[filehash]) for filehash in due}
        tried: dict[str, set[str]] = {filehash: set() for filehash in due}
        made: list[tuple[str, str, str]] = []  # (filehash, host, url)
        while not self._stopping and (plan := self._plan(need, holding, tried, cached)):
            outcomes = await DeferredList(
                [
                    self._store_all(self._by_name[name], [(f, *cached[f]) for f in blobs])
                    for name, blobs in plan.items()
                ],
                consumeErrors=True,
            )
            for (name, filehashes), (ok, result) in zip(plan.items(), outcomes, strict=True):
                if not ok:
                    if result.check(CancelledError):
                        continue  # the node stops: no fault of the host's
                    result = [HostError(result.getErrorMessage())] * len(filehashes)
                for filehash, stored in zip(filehashes, result, strict=True):
                    if isinstance(stored, HostError):
                        errors[filehash].append(f"{name}: {stored}")
                    else:
                        made.append((filehash, name, stored))
                        holding[filehash].add(name)
                        need[filehash] -= 1
        await self._record(due, need, made, errors)
        return len(due)

    def _plan(
        self,
        need: dict[str, int],
        holding: dict[str, set[str]],
        tried: dict[str, set[str]],
        cached: dict[str, tuple[str, int]],
    ) -> dict[str, list[str]]:
        """
        The copies to try next, by host name: each blob that is short and
        in the cache goes to as many healthy hosts as it needs, among those
        that hold it not and have not failed it.
        """
        now = self._clock.seconds()
        healthy = [host for host in self._hosts if self._health[host.name].healthy(now)]
        plan: dict[str, list[str]] = {}
        for filehash, short in need.items():
            if short <= 0 or filehash not in cached:
                continue
            taken = holding[filehash] | tried[filehash]
            for host in [host for host in healthy if host.name not in taken][:short]:
                plan.setdefault(host.name, []).append(filehash)
                tried[filehash].add(host.name)
        return plan

    async def _record(
        self,
        due: dict[str, int],
        need: dict[str, int],
        made: list[tuple[str, str, str]],
        errors: dict[str, list[str]],
    ) -> None:
        """The copies made in a round, and what is left of the queue, in one transaction."""
        now = self._clock.seconds()
        short = {f: "; ".join(errors[f]) or "not enough healthy hosts" for f in due if need[f] > 0}

        async def record(txn: ITransaction) -> None:
            for filehash, host, url in made:
                await self._catalog.add_upload(txn, filehash, host, url, now)
            for filehash, attempts in due.items():
                if need[filehash] <= 0:
                    await self.queue.done(txn, filehash)
                elif not self._stopping:  # cut short is not failed: due again as it was
                    await self.queue.failed(txn, filehash, attempts + 1, short[filehash])

        await self._db.transaction(record)
        copied = len(due) - len(short)
        if short and not self._stopping:
            self.log.warn(
                "{n} of {due} blobs still short of {copies} copies: {errors}",
                n=len(short),
                due=len(due),
                copies=self.copies,
                errors="; ".join(f"{f}: {error}" for f, error in list(short.items())[:5]),
            )
        self.log.debug("{n} blobs on {copies} hosts", n=copied, copies=self.copies)

    async def _recache(self, filehash: str) -> tuple[str, int]:
        """Fetch a blob back into the cache (verified by L{fetch}); its path there, its size."""
        # current, not find: a manifest's blob (which find leaves out) is restored as well.
        record = await self._catalog.current(filehash)
        if record is None:
            raise NoCopyAvailable(filehash)
        allocation = await self._cache.allocate(record.filesize)
        # The cache clears it at start if a crash leaves it.
        partial = self._cache.partial(filehash)
        try:
            await self._transfer(
                Deferred.fromCoroutine(self.fetch(filehash, partial, record.filesize))
            )
        except BaseException:
            self._cache.release(allocation)
            partial.unlink(missing_ok=True)
            raise
        self._cache.add(filehash, partial, allocation)
        return str(self._cache.path(filehash)), record.filesize

    async def forget(self, filehash: str, host_name: str) -> None:
        """
        A host lost or spoiled its copy: drop it from C{uploads} and queue the
        blob to be copied again, in one transaction.
        """

        async def forget(txn: ITransaction) -> None:
            await self._catalog.remove_upload(txn, filehash, host_name)
            await self.queue.add(txn, filehash)

        await self._db.transaction(forget)

    def _store_all(
        self, host: IFileHost, blobs: list[tuple[str, str, int]]
    ) -> Deferred[list[Stored]]:
        """
        One host's share of a round, C{(filehash, path, size)} of each blob:
        one job, timed by its size.
        """

        async def store_all() -> list[Stored]:
            health = self._health[host.name]
            total = sum(size for _, _, size in blobs)
            try:
                results = await self._transfer(
                    host.store_all([(filehash, path) for filehash, path, _ in blobs]).addTimeout(
                        self._transfer_timeout(total), self._clock
                    )
                )
            except CancelledError:
                raise  # the node stops: no fault of the host's
            except Exception as e:
                health.failed(self._clock.seconds())
                self.metrics.host_failed(host.name, "store")
                self.log.warn("host {host} failed: {e}", host=host.name, e=e)
                raise
            failed = [result for result in results if isinstance(result, HostError)]
            if len(failed) < len(results):
                health.succeeded()
            elif failed:
                health.failed(self._clock.seconds())
            if failed:
                self.metrics.host_failed(host.name, "store", len(failed))
                self.log.warn(
                    "host {host}: {n} of {all} blobs not stored: {e}",
                    host=host.name,
                    n=len(failed),
                    all=len(results),
                    e=failed[0],
                )
            for (_, _, blob_size), result in zip(blobs, results, strict=True):
                if not isinstance(result, HostError):
                    self._count(host, OUTGOING, blob_size)
            return results

        return Deferred.fromCoroutine(store_all())

    def _transfer_timeout(self, size: int) -> float:
        return transfer_timeout(self.timeout, size, self.slowest_rate)

    def _count(self, host: IFileHost, direction: str, size: int) -> None:
        # Host tools report no progress: a host transfer counts when it is complete.
        if self._meters is not None and host.name not in self._unmetered:
            self._meters.record(direction, size)

    async def fetch(self, filehash: str, destination: Path, size: int) -> None:
        """
        Download the blob of C{size} bytes from the first host whose copy
        hashes to the filehash, into C{destination}; raise L{NoCopyAvailable}
        if none does.
        """
        for name, url in await self._catalog.hosts_of(filehash):
            web = url.startswith(("http://", "https://"))
            host = self.host(name) or (self.url_fetcher if web else None)
            if host is None:
                continue
            try:
                d = host.fetch(filehash, url, str(destination), size)
                await d.addTimeout(self._transfer_timeout(size), self._clock)
                # A corrupt copy came all the same.
                self._count(host, INCOMING, os.path.getsize(destination))
                actual = await self._run_blocking(sha256_file, str(destination))
            except CancelledError:
                raise  # the node stops: no fault of the host's, and no next host
            except Exception as e:
                self.metrics.host_failed(name, "fetch")
                self.log.warn(
                    "{host} could not deliver {filehash}: {e}", host=name, filehash=filehash, e=e
                )
                continue
            if actual == filehash:
                return
            self.metrics.host_failed(name, "corrupt")
            self.log.error(
                "{host} delivered a corrupt copy of {filehash} (SHA-256 {actual})",
                host=name,
                filehash=filehash,
                actual=actual,
            )
            if self.host(name) is not None:
                # One of ours: replication puts a good copy back there.
                try:
                    await self.forget(filehash, name)
                except CancelledError:
                    raise
                except Exception:
                    self.log.failure("could not drop the corrupt copy on {host}", host=name)
        if destination.exists():
            os.unlink(destination)
        raise NoCopyAvailable(filehash)
