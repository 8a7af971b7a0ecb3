"""
Every statement the node issues at start, per request or per round is
planned with an index on the tables that grow with the catalog (files,
uploads, chain_records, chain_queue), never a scan of them: a status call on
a node of ten million files must cost what it costs on a node of a thousand.

The statements are the real ones: a node runs on a database of a catalog
built as a year-old node has it (L{tests.catalogs}), through a database
wrapper that records what it is asked, while it starts (its recovery, the
checks of its hosts, its loops' first rounds), then one upload, find, download,
status, metrics scrape, cloud-sync round, repair round, chain publish round
(a v0.3 manifest), chain-reader round and manifest-lane round go through the
real code. Each statement is then
planned (C{EXPLAIN QUERY PLAN} on SQLite, C{EXPLAIN (FORMAT JSON)} on
PostgreSQL) with the parameters it was run with. The planners see the
statistics they would in production: SQLite's, which the node makes at start
(L{IDatabase.optimize}); PostgreSQL's, made here by ANALYZE as autovacuum
would after a bulk insert.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from attrs import define, field
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase
from zope.interface import implementer

import metadisk.node
from metadisk.chain import codec
from metadisk.db import open_database
from metadisk.interfaces import IDatabase, ITransaction
from metadisk.store.catalog import Catalog
from metadisk.store.hosts.local import MARKER
from metadisk.store.repair import REPAIR_SAMPLE
from metadisk.tap import STATISTICS_INTERVAL
from tests.catalogs import BATCH, FIRST_HEIGHT, build, filehash, record_of
from tests.fakes.florincoind import FakeFlorincoind
from tests.fakes.manifest_server import ManifestServer
from tests.pg import create_database
from tests.support import (
    eventually,
    funded_token,
    json_of,
    local_host,
    start_node,
    test_config,
    upload,
)

T = TypeVar("T")

PUBLISHED_ONCE_HOSTS_HOLD_IT = 0  # the first round stores the manifest and waits for its hosts
FILES = 20_000  # enough that a scan costs more than an index to either planner
# The tables that grow with the catalog: a plan may reach them only through an index.
GROWING = frozenset({"files", "uploads", "chain_records", "chain_queue"})
_NOT_PLANNED = ("PRAGMA", "ANALYZE", "BEGIN", "SELECT pg_advisory")

Seen = list[tuple[str, tuple]]


@implementer(ITransaction)
@define
class _RecordingTransaction:
    _txn: ITransaction
    _seen: Seen

    def query(self, sql: str, params: tuple = ()) -> Deferred[list[tuple]]:
        self._seen.append((sql, tuple(params)))
        return self._txn.query(sql, params)

    def execute(self, sql: str, params: tuple = ()) -> Deferred[int]:
        self._seen.append((sql, tuple(params)))
        return self._txn.execute(sql, params)


@implementer(IDatabase)
@define
class RecordingDatabase:
    """An L{IDatabase} that notes each statement it is asked to run, with its parameters."""

    _db: IDatabase
    seen: Seen = field(factory=list)

    @property
    def dialect(self) -> str:
        return self._db.dialect

    def query(self, sql: str, params: tuple = ()) -> Deferred[list[tuple]]:
        self.seen.append((sql, tuple(params)))
        return self._db.query(sql, params)

    def execute(self, sql: str, params: tuple = ()) -> Deferred[int]:
        self.seen.append((sql, tuple(params)))
        return self._db.execute(sql, params)

    def transaction(
        self, work: Callable[[ITransaction], Awaitable[T]], *, brief: bool = False
    ) -> Deferred[T]:
        return self._db.transaction(
            lambda txn: work(_RecordingTransaction(txn, self.seen)), brief=brief
        )

    def read(
        self, work: Callable[[ITransaction], Awaitable[T]], *, brief: bool = False
    ) -> Deferred[T]:
        return self._db.read(lambda txn: work(_RecordingTransaction(txn, self.seen)), brief=brief)

    def optimize(self) -> Deferred[None]:
        return self._db.optimize()

    def close(self) -> Deferred[None]:
        return self._db.close()


_SQLITE_SCAN = re.compile(r"SCAN (?:TABLE )?(\w+)(?: AS (\w+))?(.*)")
_ALIAS = re.compile(r"\b(?:FROM|JOIN|UPDATE|INTO)\s+(\w+)(?:\s+(?:AS\s+)?(\w+))?", re.I)
_KEYWORDS = {"where", "on", "set", "join", "left", "order", "group", "limit", "values", "select"}


def _tables(sql: str) -> dict[str, str]:
    """Names a statement gives its tables (aliases and the tables' own), to the tables."""
    names = {}
    for table, alias in _ALIAS.findall(sql):
        names[table] = table
        if alias and alias.lower() not in _KEYWORDS:
            names[alias] = table
    return names


async def scans(db: IDatabase, sql: str, params: tuple) -> list[str]:
    """
    The lines of C{sql}'s plan that read a growing table whole: a scan of
    the table, or of an index without a condition on it (an index read in
    order is fine under a LIMIT: it stops early).
    """
    if db.dialect == "sqlite":
        plan = [row[-1] for row in await db.query("EXPLAIN QUERY PLAN " + sql, params)]
        names = _tables(sql)
        limited = re.search(r"\bLIMIT\b", sql, re.I) is not None
        bad = []
        for line in plan:
            match = _SQLITE_SCAN.match(line)
            if match and names.get(match.group(1), match.group(1)) in GROWING:
                if not (limited and "USING" in match.group(3)):
                    bad.append(line)
        return bad
    [(document,)] = await db.query("EXPLAIN (FORMAT JSON) " + sql, params)
    bad = []

    def walk(node: dict[str, Any], limited: bool) -> None:
        kind, table = node.get("Node Type", ""), node.get("Relation Name")
        whole = kind == "Seq Scan" or (
            kind in ("Index Scan", "Index Only Scan") and "Index Cond" not in node and not limited
        )
        if whole and table in GROWING:
            bad.append(f"{kind} on {table} (rows {node.get('Plan Rows')})")
        for child in node.get("Plans", ()):
            walk(child, limited or kind == "Limit")

    walk(document[0]["Plan"], False)
    return bad


class QueryPlansMixin:
    """Subclasses give C{fresh_url()}: a new, empty database of the test's own."""

    def fresh_url(self) -> str:
        raise NotImplementedError

    async def test_a_scan_is_seen(self) -> None:
        """The check itself: a statement that reads every file is caught, an indexed one is not."""
        db = await open_database(self.fresh_url(), reactor)
        self.addCleanup(db.close)
        await build(db, FILES)
        await analyze(db)
        self.assertTrue(await scans(db, "SELECT COUNT(*), SUM(filesize) FROM files", ()))
        self.assertTrue(await scans(db, "UPDATE uploads SET checked = ? WHERE url = ?", (1.0, "x")))
        self.assertEqual(
            await scans(db, "SELECT filename FROM files f WHERE f.filehash = ?", (filehash(5),)),
            [],
        )

    async def test_no_statement_scans_the_catalog(self) -> None:
        url = self.fresh_url()
        db = await open_database(url, reactor)
        await build(db, FILES)
        # The reader starts at the fake chain's tip (its blocks' hashes are not the built ones).
        await db.execute("DELETE FROM chain_blocks")
        await analyze(db)
        await db.close()

        fake = FakeFlorincoind()
        # The chain goes on from where the built catalog's records were read.
        tip = FIRST_HEIGHT + FILES // BATCH
        fake.mine(tip)
        port, chain_url = fake.listen(reactor)
        self.addCleanup(port.stopListening)
        base = Path(self.mktemp()).resolve()
        manifests = ManifestServer(self)
        config = test_config(
            base,
            database={"url": url},
            # The rounds are driven by the test, one each, after the loops' first rounds at
            # start.
            replication={"repair_interval": 3600.0},
            chain={
                "kind": "florincoin",
                "url": chain_url,
                "poll_interval": 3600.0,
                "start_height": tip,
                # This node's records go out in a manifest (its hosts give public URLs),
                # and a stranger's manifest is fetched from loopback.
                "records_per_manifest": 1,
                "fetch_allowed_networks": ["127.0.0.0/8"],
            },
            hosts=[
                {
                    **local_host(name, base / "hosts" / name),
                    "public_url": f"http://127.0.0.1:9/{name}",  # port 9: nobody answers
                }
                for name in ("local1", "local2", "local3")
            ],
        )
        for host in config.effective_hosts:
            # The catalog puts copies there: an unmarked folder would be an unmounted disk.
            Path(host.path).mkdir(parents=True)
            (Path(host.path) / MARKER).write_text("built\n")
        recording: list[RecordingDatabase] = []

        async def open_recorded(url: str, reactor: Any) -> IDatabase:
            recording.append(RecordingDatabase(await open_database(url, reactor)))
            return recording[0]

        self.patch(metadisk.node, "open_database", open_recorded)
        node = await start_node(self, config)
        token = await funded_token(node)
        db = recording[0]
        await eventually(lambda: not node.node.chain.reading.busy, 10)
        await eventually(lambda: not node.node.chain.publishing.busy, 10)

        # One of each request and round, through the real code.
        data = os.urandom(10_240)
        response = await upload(node, data, token)
        self.assertEqual(response.code, 201)
        uploaded = await json_of(response)
        await node.node.sync.idle()  # the upload's cloud-sync round
        await node.node.sync.kick()  # and one with nothing to do
        found = await json_of(await node.http.get(f"{node.url}/api/find/{uploaded['filehash']}"))
        self.assertEqual(found["filehash"], uploaded["filehash"])
        built = await json_of(await node.http.get(f"{node.url}/api/find/{filehash(7)}"))
        self.assertEqual(built, record_of(7))
        response = await node.http.get(
            f"{node.url}/api/download/{uploaded['filehash']}?key={uploaded['key']}&token={token}"
        )
        self.assertEqual(await response.content(), data)
        status = await json_of(await node.http.get(f"{node.url}/api/status"))
        self.assertEqual(status["sync"]["cloud_queue"], {"count": 0, "size": 0})
        await (await node.http.get(f"{node.url}/metrics")).content()
        # The built copies are not on the hosts: repair finds them gone and requeues them,
        # and cloud sync tries to restore them (more statements of both rounds).
        repaired = await node.node.repair.run_once()
        self.assertEqual(repaired.checked, 20)
        await node.node.sync.idle()
        # The upload's record goes out in a manifest, announced once the hosts hold it.
        publisher = node.node.chain.publisher
        self.assertEqual(await publisher.publish_once(), PUBLISHED_ONCE_HOSTS_HOLD_IT)
        await node.node.sync.idle()
        self.assertEqual(await publisher.publish_once(), 1)
        fake.publish([record_of(FILES + 1)])  # someone else's record, in the same block
        stranger = codec.manifest_bytes([record_of(FILES + 2), record_of(FILES + 3)])
        manifests.files["m"] = stranger
        fake.announce(
            codec.Announcement(
                hashlib.sha256(stranger).hexdigest(),
                2,
                len(stranger),
                (("web", manifests.url("m")),),
            )
        )
        fake.mine()
        self.assertGreaterEqual(await node.node.chain.reader.read_once(), 1)
        # The lane's round: the stranger's manifest kept, this node's own retried (port 9).
        await node.node.chain.lane.fetch_due()
        status = await json_of(await node.http.get(f"{node.url}/api/status"))
        self.assertEqual(status["sync"]["manifests"], {"pending": 1, "records": 2})
        # A reorganisation: the reader unreads the replaced block, then reads the new ones.
        fake.reorganise(1)
        self.assertGreaterEqual(await node.node.chain.reader.read_once(), 1)
        unconfirmed = "UPDATE chain_records SET height = NULL WHERE height > ?"
        self.assertIn(unconfirmed, [sql for sql, _ in db.seen])
        status = await json_of(await node.http.get(f"{node.url}/api/status"))
        self.assertEqual(status["sync"]["blockchain_queue"], {"count": 0, "size": 0})

        statements = {sql: params for sql, params in db.seen if not sql.startswith(_NOT_PLANNED)}
        self.assertGreater(len(statements), 30)
        for table in ("chain_manifests", "chain_announcements", "claims"):
            self.assertTrue([sql for sql in statements if table in sql], table)
        scanning = {}
        for sql, params in statements.items():
            found_scans = await scans(db, sql, params)
            if found_scans:
                scanning[sql] = found_scans
        self.assertEqual(scanning, {}, "statements that scan a table of the catalog")


async def analyze(db: IDatabase) -> None:
    """What the planner knows of a freshly built catalog: the node's own at start on SQLite."""
    if db.dialect == "postgresql":
        await db.execute("ANALYZE")  # autovacuum's, after a bulk insert


class SQLiteQueryPlansTests(QueryPlansMixin, TestCase):
    def fresh_url(self) -> str:
        base = Path(self.mktemp()).resolve()
        base.mkdir(parents=True)
        return f"sqlite:///{base / 'node.sqlite'}"

    async def test_repair_reads_in_order_with_the_statistics_of_ten_million_files(self) -> None:
        """
        SQLite's bounded ANALYZE samples an index's first thousand entries, all
        one host's: at ten million files it says a host has 1,001 copies, and
        the index on host_name looked selective for repair's sample, whose plan
        then read every copy to sort them. With those statistics (as a node of
        ten million files has them), the sample is read in order and stops.
        """
        db = await open_database(self.fresh_url(), reactor)
        self.addCleanup(db.close)
        await build(db, 100)
        await db.execute("DELETE FROM sqlite_stat1 WHERE tbl = 'uploads'")
        for index, stat in (
            ("uploads_host", "25825800 1001"),
            ("uploads_check_due", "18924000 3"),
            ("sqlite_autoindex_uploads_1", "36338050 3 1"),
        ):
            await db.execute(
                "INSERT INTO sqlite_stat1 (tbl, idx, stat) VALUES ('uploads', ?, ?)", (index, stat)
            )
        await db.execute("ANALYZE sqlite_schema")  # the planner reads the statistics again
        sql = REPAIR_SAMPLE.format(marks="?, ?, ?")
        plan = await db.query("EXPLAIN QUERY PLAN " + sql, ("local1", "local2", "local3", 20))
        self.assertEqual([row[-1] for row in plan], ["SCAN uploads USING INDEX uploads_check_due"])


class PostgresQueryPlansTests(QueryPlansMixin, TestCase):
    def fresh_url(self) -> str:
        return create_database(self)

    async def test_find_of_a_published_file_reads_its_record_only(self) -> None:
        """
        Find of a published file reads no row of files or uploads, only its
        record: on a catalog larger than memory each table's pages of a random
        file are reads from disk. (PostgreSQL says which parts of a plan ran;
        SQLite's EXPLAIN does not.)
        """
        db = await open_database(self.fresh_url(), reactor)
        self.addCleanup(db.close)
        await build(db, FILES)
        await analyze(db)
        recording = RecordingDatabase(db)
        self.assertEqual((await Catalog(recording).find(filehash(7))).to_json(), record_of(7))
        [(sql, params)] = recording.seen
        [(document,)] = await db.query("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, params)
        read = set()

        def walk(node: dict[str, Any]) -> None:
            if node.get("Relation Name") and node["Actual Loops"]:
                read.add(node["Relation Name"])
            for child in node.get("Plans", ()):
                walk(child)

        walk(document[0]["Plan"])
        self.assertEqual(read, {"chain_records"})


class StatisticsLoopTests(TestCase):
    async def test_statistics_kept_current(self) -> None:
        """The node refreshes its database's statistics hourly, one of its loops."""
        node = await start_node(self)
        loop = node.service.getServiceNamed("statistics")
        self.assertEqual(loop.interval, STATISTICS_INTERVAL)
        await loop.run()
        self.assertIsNone(loop.error)
