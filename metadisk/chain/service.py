"""
Chain sync as a service: the reader and the publisher each in their own loop
(one slow or failing never holds up the other), the wallet for the status,
and what C{/api/status} says of all of it.

A loop catches its own errors (one uncaught failure would stop it for good)
and keeps the last one for the status; stopping the service cancels the
round in flight, whose RPC calls all have timeouts anyway.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from twisted.application import service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from metadisk.chain import make_chain
from metadisk.chain.publisher import Publisher
from metadisk.chain.queue import ChainQueue
from metadisk.chain.reader import Reader
from metadisk.chain.rpc import ChainError
from metadisk.config import ChainConfig
from metadisk.interfaces import IChain, IDatabase
from metadisk.store.catalog import Catalog

DISABLED = {"balance": 0, "address": None, "coin": "none", "block": 0}


class _Loop:
    """Calls C{work} every C{interval} seconds, one round at a time, never dying of an error."""

    log = Logger()

    def __init__(
        self,
        name: str,
        work: Callable[[], Awaitable[Any]],
        clock: IReactorTime,
        interval: float,
    ) -> None:
        self.name = name
        self.error: str | None = None
        self._work = work
        self._interval = interval
        self._call = LoopingCall(self.run)
        self._call.clock = clock
        self._running: Deferred[None] | None = None

    @property
    def running(self) -> bool:
        return self._call.running

    def start(self) -> None:
        self._call.start(self._interval, now=True)

    def stop(self) -> None:
        if self._call.running:
            self._call.stop()
        if self._running is not None:
            self._running.cancel()

    def run(self) -> Deferred[None]:
        """One round now; it never fails, its error (or None) is kept in C{error}."""
        d = Deferred.fromCoroutine(self._guarded())
        self._running = None if d.called else d
        return d

    async def _guarded(self) -> None:
        try:
            await self._work()
        except CancelledError:
            return  # stopping
        except ChainError as e:
            self.error = str(e)
            self.log.warn("chain {name}: {e}", name=self.name, e=self.error)
        except Exception as e:
            self.error = f"{type(e).__name__}: {e}"
            self.log.failure("chain {name} failed", name=self.name)
        else:
            self.error = None
        finally:
            self._running = None


class ChainService(service.Service):
    """The chain's loops, and the C{datacoin} object of C{/api/status}."""

    def __init__(
        self,
        chain: IChain,
        reader: Reader,
        publisher: Publisher,
        queue: ChainQueue,
        clock: IReactorTime,
        interval: float,
    ) -> None:
        self.chain = chain
        self.reader = reader
        self.publisher = publisher
        self._queue = queue
        self._clock = clock
        self._balance = 0.0
        self._address: str | None = None
        self.reading = _Loop("reader", self._read, clock, interval)
        self.publishing = _Loop("publisher", publisher.publish_once, clock, interval)
        self._loops = [self.reading, self.publishing]

    async def _read(self) -> None:
        await self.reader.read_once()
        self._balance, self._address = await self.chain.wallet()

    def startService(self) -> None:
        super().startService()
        for loop in self._loops:
            loop.start()

    def stopService(self) -> None:
        super().stopService()
        for loop in self._loops:
            loop.stop()

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
        }


def disabled_status(queue: ChainQueue, clock: IReactorTime) -> Callable[[], Awaitable[dict]]:
    """The status without a chain: nothing to say but the queue that waits for one."""

    async def status() -> dict[str, Any]:
        count, size = await queue.pending(clock.seconds())
        return {**DISABLED, "queue": {"count": count, "size": size}}

    return status


def chain_sync(
    config: ChainConfig,
    db: IDatabase,
    catalog: Catalog,
    clock: IReactorTime,
    http: Any,
    node_id: str,
) -> tuple[ChainService | None, Callable[[], Awaitable[dict]]]:
    """The chain service the config asks for (None when disabled) and the status to serve."""
    queue = ChainQueue(db, config.publish_wait)
    if config.kind == "none":
        return None, disabled_status(queue, clock)
    chain = make_chain(config, http, clock)
    reader = Reader(
        db, chain, clock, config.start_height, config.min_confirmations, config.rescan_depth
    )
    publisher = Publisher(db, chain, catalog, queue, clock, node_id, 2 * config.timeout)
    chain_service = ChainService(chain, reader, publisher, queue, clock, config.poll_interval)
    return chain_service, chain_service.status
