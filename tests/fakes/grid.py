"""
A whole grid of fault-injecting hosts over one database and one cache, for
the store's tests: L{Grid}.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from metadisk.db import open_database
from metadisk.interfaces import ITransaction
from metadisk.store.blocking import in_caller
from metadisk.store.cache import BlobCache
from metadisk.store.catalog import Catalog
from metadisk.store.cloudsync import CloudSync
from metadisk.store.hosts.local import LocalDirectoryHost
from metadisk.store.repair import Repair
from metadisk.store.shards import sharded
from tests.fakes import FaultyHost


class Grid:
    """
    A node's store without the node, in one process (Tahoe-LAFS's
    C{NoNetworkGrid}): one SQLite database, one blob cache, hosts behind
    L{FaultyHost}, and the L{CloudSync} and L{Repair} that work on them, all
    on one L{Clock} (advanced to 1,000,000 at the start) and with blocking
    work run in the caller. Timeouts and backoffs wait for the test to
    advance C{grid.clock}; the database is real (SQLite, queries in a
    thread), so a test that needs a call to have reached a host waits for it
    with L{tests.support.eventually}.

    Faults are injected host by host: C{grid.host("h1").broken = True}
    (every call fails), C{.hanging} (no call answers until cancelled: see
    C{.hung}), C{.corrupt} (fetches deliver flipped bytes);
    C{grid.copy_on("h0", filehash).unlink()} loses a copy behind the
    catalog's back. Each host records its calls (C{.calls}).

    Make one with C{await Grid.create(case)}: hosts C{h0}, C{h1}, … are local
    directories under the test's temporary directory; C{extra} hosts (a
    plowshare host on a fake process reactor, say) come first. C{add()} puts
    a blob where an upload leaves it (cache, catalog, queue).
    """

    def __init__(self, case: TestCase, base: Path, db: Any, hosts: list[Any], copies: int):
        self.case = case
        self.base = base
        self.db = db
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.catalog = Catalog(db)
        self.cache = BlobCache(
            root=base / "cache",
            capacity=64 * 2**20,
            evictable=lambda fhs: self.catalog.replicated(fhs, copies),
            clock=Clock(),  # its own: the index's batches are no round of the sync's
            run_blocking=in_caller,
        )
        self.cache.load()
        self.hosts = hosts
        self.sync = CloudSync(
            db=db,
            catalog=self.catalog,
            cache=self.cache,
            hosts=hosts,
            clock=self.clock,
            run_blocking=in_caller,
            node_id="node1",
            copies=copies,
        )
        self.repair = Repair(
            db=db,
            sync=self.sync,
            cache=self.cache,
            hosts=hosts,
            clock=self.clock,
            run_blocking=in_caller,
            sample=100,
        )

    @classmethod
    async def create(
        cls, case: TestCase, hosts: int = 3, copies: int = 3, extra: list[Any] = ()
    ) -> Grid:
        """C{hosts} local hosts (C{h0}, …) after C{extra}; each blob wants C{copies} copies."""
        base = Path(case.mktemp()).resolve()
        base.mkdir()
        db = await open_database(f"sqlite:///{base / 'db.sqlite'}", reactor)
        case.addCleanup(db.close)
        faulty = [
            FaultyHost(
                LocalDirectoryHost(name=f"h{i}", root=base / f"h{i}", run_blocking=in_caller)
            )
            for i in range(hosts)
        ]
        return cls(case, base, db, [*extra, *faulty], copies)

    def host(self, name: str) -> Any:
        """The host called C{name} (a L{FaultyHost}, unless one of C{extra})."""
        return next(h for h in self.hosts if h.name == name)

    async def add(self, content: bytes) -> str:
        """A blob in the cache, recorded and queued, as an upload leaves it."""
        filehash = hashlib.sha256(content).hexdigest()
        source = self.base / "incoming"
        source.write_bytes(content)
        self.cache.add(filehash, source, await self.cache.allocate(len(content)))

        async def record(txn: ITransaction) -> None:
            await self.catalog.add_file(txn, filehash, "a.txt", len(content), 1)
            await self.sync.queue.add(txn, filehash)

        await self.db.transaction(record)
        return filehash

    async def holders(self, filehash: str) -> list[str]:
        """The hosts the catalog lists for C{filehash}, by name."""
        return sorted(name for name, _ in await self.catalog.hosts_of(filehash))

    async def queued(self) -> list[tuple[str, int]]:
        """The cloud queue: (filehash, attempts), by filehash."""
        return await self.db.query("SELECT filehash, attempts FROM cloud_queue ORDER BY filehash")

    def copy_on(self, name: str, filehash: str) -> Path:
        """Where the local host C{name} keeps its copy of C{filehash}."""
        return sharded(self.base / name, filehash)
