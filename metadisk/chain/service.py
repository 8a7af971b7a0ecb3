"""
Chain sync as a service: the reader, the publisher and the manifest lane
each in their own loop (one slow or failing never holds up another), the
wallet for the status, and what C{/api/status} says of all of it.

Each loop is a L{Periodic}: it survives its errors and keeps the last one
for the status; stopping cancels the round in flight, whose RPC calls all
have timeouts anyway.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from twisted.application import service
from twisted.internet.interfaces import IReactorTime

from metadisk.chain import make_chain
from metadisk.chain.manifest_lane import Announcements, ManifestLane
from metadisk.chain.manifests import ManifestStore
from metadisk.chain.publisher import Publisher
from metadisk.chain.queue import ChainQueue
from metadisk.chain.reader import Reader
from metadisk.chain.rpc import ChainError
from metadisk.config import ChainConfig
from metadisk.interfaces import IChain, IDatabase
from metadisk.periodic import Periodic
from metadisk.store.catalog import Catalog

DISABLED = {"balance": 0, "address": None, "coin": "none", "block": 0}


class ChainService(service.MultiService):
    """The chain's three loops, and the C{datacoin} object of C{/api/status}."""

    def __init__(
        self,
        chain: IChain,
        reader: Reader,
        publisher: Publisher,
        queue: ChainQueue,
        clock: IReactorTime,
        interval: float,
        lane: ManifestLane,
    ) -> None:
        super().__init__()
        self.chain = chain
        self.reader = reader
        self.publisher = publisher
        self._queue = queue
        self.lane = lane
        self._announcements = lane.announcements
        self._clock = clock
        self._balance = 0.0
        self._address: str | None = None
        # Each in its own loop: one slow or failing never holds up the other.
        self.reading = Periodic("chain reader", self._read, interval, clock, expected=(ChainError,))
        self.publishing = Periodic(
            "chain publisher", publisher.publish_once, interval, clock, expected=(ChainError,)
        )
        # Manifests come from strangers' URLs, slow or dead: never in the reader's way.
        self.fetching = Periodic("manifest lane", lane.fetch_due, interval, clock)
        self._loops = [self.reading, self.publishing, self.fetching]
        for loop in self._loops:
            loop.setServiceParent(self)

    async def _read(self) -> None:
        announced = self.reader.announced
        await self.reader.read_once()
        if self.reader.announced > announced:
            # Their manifests are fetched now, not a poll later.
            self.fetching.poke()
        self._balance, self._address = await self.chain.wallet()

    async def status(self) -> dict[str, Any]:
        """Never waits for the chain: what the loops saw last, and the queue from the database."""
        count, size = await self._queue.pending(self._clock.seconds())
        errors = [f"{loop.name}: {loop.error}" for loop in self._loops if loop.error]
        return {
            "balance": self._balance,
            "address": self._address,
            "coin": self.chain.coin,
            "block": await self.reader.height() or 0,
            "error": "; ".join(errors) or None,
            "queue": {"count": count, "size": size},
            "manifests": await manifests_status(self._announcements),
        }


async def manifests_status(announcements: Announcements) -> dict[str, int]:
    """C{/api/status}'s C{sync.manifests}: manifests not fetched yet, records read from them."""
    pending, records = await announcements.counts()
    return {"pending": pending, "records": records}


def disabled_status(
    queue: ChainQueue, announcements: Announcements
) -> Callable[[], Awaitable[dict]]:
    """
    The status without a chain: the queue that waits for one, where every
    record recorded waits (counted, not due ones looked for among all the
    files: none ever leaves), and what was read from manifests before.
    """

    async def status() -> dict[str, Any]:
        count, size = await queue.waiting()
        return {
            **DISABLED,
            "queue": {"count": count, "size": size},
            "manifests": await manifests_status(announcements),
        }

    return status


def chain_sync(
    config: ChainConfig,
    db: IDatabase,
    catalog: Catalog,
    queue: ChainQueue,
    clock: IReactorTime,
    http: Any,
    node_id: str,
    lane: ManifestLane,
    manifests: ManifestStore | None = None,
) -> tuple[ChainService | None, Callable[[], Awaitable[dict]]]:
    """
    The chain service the config asks for (None when disabled) and the status
    to serve. C{lane}: the manifests this node reads; C{manifests}: where those
    it publishes go (None: every record inline).
    """
    if config.kind == "none":
        return None, disabled_status(queue, lane.announcements)
    chain = make_chain(config, http, clock)
    reader = Reader(
        db=db,
        chain=chain,
        clock=clock,
        start_height=config.start_height,
        min_confirmations=config.min_confirmations,
        rescan_depth=config.rescan_depth,
    )
    publisher = Publisher(
        db=db,
        chain=chain,
        catalog=catalog,
        queue=queue,
        clock=clock,
        node_id=node_id,
        recover_after=2 * config.timeout,
        manifests=manifests,
        make_manifests=config.format == "auto",
        records_per_manifest=config.records_per_manifest,
        manifest_wait=config.manifest_wait,
        manifest_max_records=config.manifest_max_records,
    )
    chain_service = ChainService(chain, reader, publisher, queue, clock, config.poll_interval, lane)
    return chain_service, chain_service.status
