"""
Several nodes, one ledger: two real node processes share one PostgreSQL
database; hundreds of concurrent deposits, withdraws, uploads and downloads
through both end in exactly the expected balances. And the cloud queue: a
job is taken by exactly one node.
"""

from __future__ import annotations

import os
import random
import secrets
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from attrs import define, field
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from zope.interface import implementer

from metadisk.db import open_database
from metadisk.interfaces import IDatabase, IFileHost, ITransaction
from metadisk.store.blocking import in_caller
from metadisk.store.cache import BlobCache
from metadisk.store.catalog import Catalog
from metadisk.store.cloudsync import CloudSync
from metadisk.store.hosts import Stored, store_each
from tests.nodes import Client, NodeProcess, node_toml, start_node_process
from tests.pg import admin, create_database, require_postgres
from tests.support import eventually, json_of, upload

OK = (200, {"status": "ok"})
INSUFFICIENT = (402, {"status": "balance-insufficient"})


def http_client(case: TestCase) -> HTTPClient:
    pool = HTTPConnectionPool(reactor)
    pool.maxPersistentPerHost = 16
    case.addCleanup(pool.closeCachedConnections)
    return HTTPClient(Agent(reactor, pool=pool))


async def start_nodes(case: TestCase, count: int, database_url: str) -> list[NodeProcess]:
    """C{count} node processes on one database and one set of hosts, started together."""
    base = Path(case.mktemp()).resolve()
    hosts = [base / "hosts" / f"local{i}" for i in (1, 2, 3)]
    secret = secrets.token_urlsafe(24)
    http = http_client(case)
    starting = []
    for i in range(count):
        directory = base / f"node{i}"
        config = node_toml(
            directory / "data",
            secret=secret,
            database_url=database_url,
            hosts=hosts,
            node={"max_connections_per_address": 1000},  # 127.0.0.1 plays every client
        )
        starting.append(
            Deferred.fromCoroutine(start_node_process(reactor, directory, config, secret, http))
        )
    nodes = await gatherResults(starting, consumeErrors=True)
    for node in nodes:
        case.addCleanup(lambda node=node: Deferred.fromCoroutine(node.stop()))
    return nodes


@define
class Expected:
    """What each token's balance must end at."""

    balances: Counter[str] = field(factory=Counter)

    def add(self, token: str, amount: int) -> None:
        self.balances[token] += amount


class TwoNodeProcessesTests(TestCase):
    timeout = 240  # two processes and a few hundred requests on a shared machine

    def setUp(self) -> None:
        require_postgres()

    async def test_one_ledger_exact_under_concurrency(self) -> None:
        url = create_database(self)
        nodes = await start_nodes(self, 2, url)
        clients = [Client(node) for node in nodes]
        a, b = clients
        rng = random.Random(2)

        # Two tokens, each used through both nodes.
        tokens = [await a.new_token(), await b.new_token()]
        for token in tokens:
            self.assertEqual(await b.deposit(token, 10**9), OK)

        # Files to download: uploaded through one node, copied to the shared hosts, then
        # fetched once through the other, so that both caches hold every one of them.
        seeds: list[tuple[dict[str, Any], bytes]] = []
        for i in range(6):
            data = os.urandom(rng.randrange(2_000, 20_000))
            response = await upload(nodes[i % 2], data, tokens[0], name=f"seed{i}.bin")
            self.assertEqual(response.code, 201)
            seeds.append((await json_of(response), data))

        async def replicated() -> bool:
            for result, _ in seeds:
                code, record = await a.call("GET", f"/api/find/{result['filehash']}")
                if code != 200 or len(record["uploads"]) < 3:
                    return False
            return True

        await eventually(replicated, 20)
        for i, (result, data) in enumerate(seeds):
            other = nodes[(i + 1) % 2]
            fetched = await other.http.get(
                other.url + f"/api/download/{result['filehash']}",
                params={"key": result["key"], "token": tokens[0]},
            )
            self.assertEqual(await fetched.content(), data)

        expected = Expected()
        for token in tokens:
            expected.add(token, await a.balance(token))

        # The storm: all at once, through both nodes, on both tokens.
        calls: list[Deferred[Any]] = []

        def fire(coroutine: Any, check: Any) -> None:
            calls.append(Deferred.fromCoroutine(coroutine).addCallback(check))

        def ok(answer: Any) -> None:
            self.assertEqual(answer, OK)

        for i in range(240):
            client, node = clients[i % 2], nodes[i % 2]
            token = tokens[rng.randrange(2)]
            kind = i % 8
            if kind in (0, 1):
                amount = rng.randrange(1, 10**6)
                fire(client.deposit(token, amount), ok)
                expected.add(token, amount)
            elif kind in (2, 3):
                amount = rng.randrange(1, 10**6)
                fire(client.withdraw(token, amount), ok)
                expected.add(token, -amount)
            elif kind == 4:
                data = os.urandom(rng.randrange(1, 16_000))
                fire(upload(node, data, token), self._created)
                expected.add(token, -4 * len(data))
            elif kind in (5, 6):
                result, data = rng.choice(seeds)
                fire(self._download(node, result, token), self._same(data))
                expected.add(token, -len(data))
            else:
                result, data = rng.choice(seeds)
                first = rng.randrange(len(data))
                last = rng.randrange(first, len(data))
                fire(
                    self._download(node, result, token, f"bytes={first}-{last}"),
                    self._same(data[first : last + 1], 206),
                )
                expected.add(token, -(last - first + 1))
        await gatherResults(calls, consumeErrors=True)

        for client in clients:
            for token in tokens:
                self.assertEqual(await client.balance(token), expected.balances[token])

        async def settled() -> bool:
            return admin("SELECT COUNT(*) FROM reservations", url=url) == [(0,)]

        await eventually(settled)

        # Contested: far more withdraws than the balance allows, through both nodes.
        scarce = await a.new_token()
        self.assertEqual(await b.deposit(scarce, 1000), OK)
        answers = await gatherResults(
            [Deferred.fromCoroutine(clients[i % 2].withdraw(scarce, 37)) for i in range(100)]
        )
        self.assertEqual(answers.count(OK), 1000 // 37)
        self.assertEqual(answers.count(INSUFFICIENT), 100 - 1000 // 37)
        self.assertEqual(await a.balance(scarce), 1000 % 37)
        self.assertEqual(await b.balance(scarce), 1000 % 37)

    @staticmethod
    async def _download(
        node: NodeProcess, result: dict[str, Any], token: str, byte_range: str | None = None
    ) -> tuple[int, bytes]:
        headers = {b"Range": [byte_range.encode()]} if byte_range else {}
        response = await node.http.get(
            node.url + f"/api/download/{result['filehash']}",
            params={"key": result["key"], "token": token},
            headers=headers,
        )
        return response.code, await response.content()

    def _same(self, data: bytes, code: int = 200) -> Any:
        def check(answer: tuple[int, bytes]) -> None:
            self.assertEqual(answer, (code, data))

        return check

    def _created(self, response: Any) -> None:
        self.assertEqual(response.code, 201)


@implementer(IFileHost)
@define
class CountingHost:
    """A host that keeps nothing and counts what it was asked to store."""

    name: str
    stored: Counter[str] = field(factory=Counter)

    def store(self, filehash: str, path: str) -> Deferred[str]:
        self.stored[filehash] += 1
        return succeed(f"memory://{self.name}/{filehash}")

    def store_all(self, blobs: Sequence[tuple[str, str]]) -> Deferred[list[Stored]]:
        return Deferred.fromCoroutine(store_each(self, blobs))

    def fetch(self, filehash: str, url: str, destination: str, size: int) -> Deferred[None]:
        raise NotImplementedError

    def exists(self, filehash: str, url: str) -> Deferred[bool]:
        return succeed(True)


class SharedCloudQueueTests(TestCase):
    """Two nodes' cloud sync on one database: each queued blob is copied by one node only."""

    def setUp(self) -> None:
        require_postgres()

    async def test_each_job_taken_by_one_node(self) -> None:
        url = create_database(self)
        hosts = [CountingHost(f"h{i}") for i in range(3)]
        filehashes = [secrets.token_hex(32) for _ in range(40)]
        syncs: list[CloudSync] = []
        dbs: list[IDatabase] = []
        for name in ("node-a", "node-b"):
            db = await open_database(url, reactor)
            self.addCleanup(db.close)
            # Each node's cache holds every blob (both received every file).
            root = Path(self.mktemp())
            root.mkdir()
            for filehash in filehashes:
                (root / filehash).write_bytes(b"x")
            cache = BlobCache(
                root=root,
                capacity=2**20,
                evictable=lambda hashes: succeed(set()),
                clock=Clock(),
                run_blocking=in_caller,
            )
            cache.load()
            sync = CloudSync(
                db=db,
                catalog=Catalog(db),
                cache=cache,
                hosts=hosts,
                clock=reactor,
                run_blocking=in_caller,
                node_id=name,
                copies=3,
            )
            syncs.append(sync)
            dbs.append(db)

        async def record(txn: ITransaction, filehash: str, sync: CloudSync) -> None:
            await txn.execute(
                "INSERT INTO files (filehash, filename, filesize, datetime)"
                " VALUES (?, 'f', 1, 0) ON CONFLICT (filehash) DO NOTHING",
                (filehash,),
            )
            await sync.queue.add(txn, filehash)

        # Both nodes receive every file, at the same moment.
        await gatherResults(
            [
                db.transaction(lambda txn, f=f, s=sync: record(txn, f, s))
                for f in filehashes
                for db, sync in zip(dbs, syncs, strict=True)
            ]
        )
        owners = await dbs[0].query("SELECT node_id, COUNT(*) FROM cloud_queue GROUP BY node_id")
        self.assertEqual(sum(n for _, n in owners), 40)

        async def drain(sync: CloudSync) -> None:
            while await sync.run_once():
                pass

        await gatherResults([Deferred.fromCoroutine(drain(s)) for s in syncs])
        for host in hosts:
            self.assertEqual(host.stored, Counter(dict.fromkeys(filehashes, 1)))
        self.assertEqual(await dbs[1].query("SELECT COUNT(*) FROM cloud_queue"), [(0,)])
        self.assertEqual(
            await dbs[1].query("SELECT COUNT(*) FROM uploads"), [(3 * len(filehashes),)]
        )
