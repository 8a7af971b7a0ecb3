"""
The database layer: one behaviour suite run on SQLite and on PostgreSQL, and
what only PostgreSQL has to do (reconnect, time out, cope with several nodes).
"""

from __future__ import annotations

import json
import socket
import sqlite3
import threading
from collections.abc import Awaitable, Callable
from contextlib import closing
from functools import partial
from pathlib import Path
from typing import Any

import psycopg2
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, DeferredList, gatherResults
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from txpostgres import txpostgres
from zope.interface.verify import verifyObject

import metadisk.db.migrate
import metadisk.db.sqlite
from metadisk.db import DatabaseUnavailable, open_database
from metadisk.db.migrate import migrate, migrations
from metadisk.db.postgres import (
    CONNECT_TIMEOUT,
    QUERY_TIMEOUT,
    RECONNECT_MAX_DELAY,
    PostgresDatabase,
    PostgresSettings,
    _Connection,
    translate,
)
from metadisk.interfaces import IDatabase, ITransaction
from metadisk.store.catalog import Catalog
from tests.pg import (
    admin,
    create_database,
    database_name,
    require_postgres,
    terminate_connections,
)
from tests.support import eventually

SCRATCH = "CREATE TABLE scratch (k TEXT PRIMARY KEY, n BIGINT, x DOUBLE PRECISION, t TEXT)"


class Refused(Exception):
    """Raised by a transaction's work to make it roll back."""


class DatabaseTestsMixin:
    """
    What every L{IDatabase} does. Subclasses give C{fresh_url()}: the URL of
    a new, empty database of the test's own.
    """

    def fresh_url(self) -> str:
        raise NotImplementedError

    async def open(self, url: str | None = None) -> IDatabase:
        db = await open_database(url or self.fresh_url(), reactor)
        self.addCleanup(db.close)
        return db

    async def scratch(self) -> IDatabase:
        db = await self.open()
        await db.execute(SCRATCH)
        return db

    async def test_provides_interface(self) -> None:
        db = await self.open()
        self.assertTrue(verifyObject(IDatabase, db))
        self.assertIn(db.dialect, ("sqlite", "postgresql"))

    async def test_migrated_once(self) -> None:
        """The schema is there after opening; migrating again changes nothing."""
        db = await self.open()
        versions = [(version,) for version, _ in migrations()]
        applied = "SELECT version FROM schema_version ORDER BY version"
        self.assertEqual(await db.query(applied), versions)
        self.assertEqual(await migrate(db), versions[-1][0])
        self.assertEqual(await db.query(applied), versions)
        self.assertEqual(await db.query("SELECT COUNT(*) FROM prices"), [(3,)])

    async def test_nodes_starting_together_migrate_once(self) -> None:
        """Several nodes opening one new database at the same moment: one migrates, none fails."""
        url = self.fresh_url()
        opened = await gatherResults(
            [Deferred.fromCoroutine(open_database(url, reactor)) for _ in range(4)]
        )
        for db in opened:
            self.addCleanup(db.close)
        self.assertEqual(
            await opened[0].query("SELECT COUNT(*) FROM schema_version"), [(len(migrations()),)]
        )
        self.assertEqual(await opened[3].query("SELECT COUNT(*) FROM prices"), [(3,)])

    async def test_what_the_chain_said_becomes_claims(self) -> None:
        """
        Migration 004: files an older node took from the chain into its own
        tables become claims; a file of its own that a stranger's record had
        marked as on the chain gets its own record published after all.
        """
        url = self.fresh_url()
        old = await open_database(url, reactor, version=3)
        theirs, ours, batch = "a" * 64, "b" * 64, "c" * 64
        record = json.dumps({"filehash": theirs, "filesize": 5, "uploads": []})
        for sql, params in (
            ("INSERT INTO files VALUES (?, 'aaaaaaa_x', 5, 1, '0.2')", (theirs,)),
            ("INSERT INTO files VALUES (?, 'bbbbbbb_y', 7, 1, '0.2')", (ours,)),
            ("INSERT INTO uploads VALUES (?, 'local1', 'x', 1, NULL)", (theirs,)),
            ("INSERT INTO uploads VALUES (?, 'local1', 'file:///y', 1, NULL)", (ours,)),
            ("INSERT INTO cloud_queue VALUES (?, 'n', 0, 0, NULL)", (theirs,)),
            ("INSERT INTO chain_queue VALUES (?, 1, 'on-chain', NULL)", (ours,)),
            ("INSERT INTO chain_records VALUES (?, ?, ?, 9)", (theirs, record, batch)),
            ("INSERT INTO chain_records VALUES (?, '{}', ?, 9)", (ours, batch)),
        ):
            await old.execute(sql, params)
        await old.close()
        db = await self.open(url)
        self.assertEqual(
            await db.query(
                "SELECT txid, idx, filehash, height, filesize, record FROM chain_claims"
            ),
            [(batch, 0, theirs, 9, 5, record)],
        )
        self.assertEqual(await db.query("SELECT filehash FROM files"), [(ours,)])
        self.assertEqual(await db.query("SELECT filehash FROM uploads"), [(ours,)])
        self.assertEqual(await db.query("SELECT filehash FROM cloud_queue"), [])
        self.assertEqual(await db.query("SELECT filehash FROM chain_records"), [])
        self.assertEqual(await db.query("SELECT state FROM chain_queue"), [("waiting",)])

    async def test_queued_files_keep_their_size(self) -> None:
        """
        Migration 006: the files queued for the hosts and the chain when it
        runs keep their sizes in their queue rows, which the status sums.
        """
        url = self.fresh_url()
        old = await open_database(url, reactor, version=5)
        one, two = "a" * 64, "b" * 64
        for sql, params in (
            ("INSERT INTO files VALUES (?, 'aaaaaaa_x', 5, 1, '0.2')", (one,)),
            ("INSERT INTO files VALUES (?, 'bbbbbbb_y', 7, 1, '0.2')", (two,)),
            ("INSERT INTO cloud_queue VALUES (?, 'n', 0, 0, NULL)", (one,)),
            ("INSERT INTO chain_queue VALUES (?, 1, 'waiting', NULL)", (one,)),
            ("INSERT INTO chain_queue VALUES (?, 1, 'published', 'x')", (two,)),
        ):
            await old.execute(sql, params)
        await old.close()
        db = await self.open(url)
        self.assertEqual(await db.query("SELECT filehash, filesize FROM cloud_queue"), [(one, 5)])
        self.assertEqual(
            await db.query("SELECT filehash, filesize FROM chain_queue ORDER BY filehash"),
            [(one, 5), (two, 7)],
        )

    async def test_which_hosts_hold_copies(self) -> None:
        """
        A host holds copies if a row of uploads names it exactly: not a host
        whose name begins another's, nor one the rows never name.
        """
        db = await self.open()
        catalog = Catalog(db)

        async def record(txn: ITransaction) -> None:
            await catalog.add_file(txn, "a" * 64, "x", 5, 1)
            for host in ("local1", "local3"):
                await Catalog.add_upload(txn, "a" * 64, host, "", 1.0)

        await db.transaction(record)
        held = {h: await catalog.holds_copies(h) for h in ("local", "local1", "local2", "local3")}
        self.assertEqual(held, {"local": False, "local1": True, "local2": False, "local3": True})
        self.assertFalse(await catalog.holds_copies("local4"))

    async def test_optimize_changes_nothing_but_statistics(self) -> None:
        """At open and after, as often as the node likes: the rows are as they were."""
        db = await self.scratch()
        await db.execute("INSERT INTO scratch (k, n) VALUES ('a', 1)")
        await db.optimize()
        await db.optimize()
        self.assertEqual(await db.query("SELECT k, n FROM scratch"), [("a", 1)])

    async def test_types_round_trip(self) -> None:
        db = await self.scratch()
        await db.execute(
            "INSERT INTO scratch (k, n, x, t) VALUES (?, ?, ?, ?)",
            ("a", 2**62, 0.25, "ünïcödé ✓ 'quoted' %s ?"),
        )
        await db.execute("INSERT INTO scratch (k, n, x, t) VALUES (?, ?, ?, ?)", ("b", -1, 0, None))
        rows = await db.query("SELECT k, n, x, t FROM scratch ORDER BY k")
        self.assertEqual(
            rows, [("a", 2**62, 0.25, "ünïcödé ✓ 'quoted' %s ?"), ("b", -1, 0.0, None)]
        )
        self.assertIs(type(rows[0][1]), int)
        self.assertIs(type(rows[1][2]), float)
        self.assertIsInstance(rows, list)
        self.assertIsInstance(rows[0], tuple)

    async def test_execute_counts_changed_rows(self) -> None:
        db = await self.scratch()
        for k in "abc":
            self.assertEqual(
                await db.execute("INSERT INTO scratch (k, n) VALUES (?, ?)", (k, 1)), 1
            )
        self.assertEqual(await db.execute("UPDATE scratch SET n = n + 1 WHERE k <> ?", ("a",)), 2)
        self.assertEqual(await db.execute("DELETE FROM scratch WHERE k = ?", ("zz",)), 0)
        conflict = "INSERT INTO scratch (k, n) VALUES (?, 0) ON CONFLICT (k) DO NOTHING"
        self.assertEqual(await db.execute(conflict, ("a",)), 0)
        self.assertEqual(await db.execute(conflict, ("d",)), 1)
        upsert = (
            "INSERT INTO scratch (k, n) VALUES (?, ?)"
            " ON CONFLICT (k) DO UPDATE SET n = scratch.n + excluded.n"
        )
        await db.execute(upsert, ("a", 10))
        self.assertEqual(await db.query("SELECT n FROM scratch WHERE k = 'a'"), [(11,)])

    async def test_placeholders_literals_and_percent(self) -> None:
        """C{?} is a parameter outside quotes only; C{%} is never special."""
        db = await self.scratch()
        await db.execute("INSERT INTO scratch (k, t) VALUES ('it''s ?', ?)", ("50% off",))
        rows = await db.query(
            "SELECT k, t, t LIKE '50%', t LIKE ? FROM scratch WHERE t = ?", ("%off", "50% off")
        )
        self.assertEqual(rows, [("it's ?", "50% off", True, True)])
        self.assertEqual(await db.query("SELECT '100%'"), [("100%",)])

    async def test_transaction_commits_and_returns(self) -> None:
        db = await self.scratch()

        async def work(txn: ITransaction) -> str:
            await txn.execute("INSERT INTO scratch (k, n) VALUES (?, ?)", ("a", 1))
            changed = await txn.execute("UPDATE scratch SET n = n + 1 WHERE k = ?", ("a",))
            # A transaction sees its own writes.
            rows = await txn.query("SELECT n FROM scratch WHERE k = ?", ("a",))
            return f"{changed}:{rows[0][0]}"

        self.assertEqual(await db.transaction(work), "1:2")
        self.assertEqual(await db.query("SELECT k, n FROM scratch"), [("a", 2)])

    async def test_transaction_rolls_back_on_error(self) -> None:
        """The exception of the work comes out as it is; none of its writes stay."""
        db = await self.scratch()
        await db.execute("INSERT INTO scratch (k, n) VALUES ('kept', 1)")

        async def work(txn: ITransaction) -> None:
            await txn.execute("INSERT INTO scratch (k, n) VALUES ('lost', 1)")
            await txn.execute("UPDATE scratch SET n = 99 WHERE k = 'kept'")
            raise Refused()

        with self.assertRaises(Refused):
            await db.transaction(work)
        self.assertEqual(await db.query("SELECT k, n FROM scratch"), [("kept", 1)])

    async def test_brief_transactions_commit_roll_back_and_add_up(self) -> None:
        """A brief transaction is a transaction: its work, all or nothing, exact under load."""
        db = await self.scratch()
        await db.execute("INSERT INTO scratch (k, n) VALUES ('c', 0)")

        async def bump(txn: ITransaction) -> int:
            await txn.execute("UPDATE scratch SET n = n + 1 WHERE k = 'c'")
            return (await txn.query("SELECT n FROM scratch WHERE k = 'c'"))[0][0]

        async def refused(txn: ITransaction) -> None:
            await txn.execute("UPDATE scratch SET n = n + 1000 WHERE k = 'c'")
            raise Refused()

        calls = [db.transaction(bump, brief=True) for _ in range(60)]
        calls += [db.transaction(bump) for _ in range(20)]  # the others, in between
        calls += [db.transaction(bump, brief=True) for _ in range(60)]
        seen = await gatherResults(calls)
        self.assertEqual(sorted(seen), list(range(1, 141)))
        with self.assertRaises(Refused):
            await db.transaction(refused, brief=True)
        self.assertEqual(await db.query("SELECT n FROM scratch"), [(140,)])

    async def test_reads_see_what_was_committed(self) -> None:
        """A read, brief or not, fires with what its work returned from one snapshot."""
        db = await self.scratch()
        await db.execute("INSERT INTO scratch (k, n) VALUES ('a', 1), ('b', 2)")

        async def both(txn: ITransaction) -> list[tuple]:
            return [
                *(await txn.query("SELECT n FROM scratch WHERE k = 'a'")),
                *(await txn.query("SELECT n FROM scratch WHERE k = 'b'")),
            ]

        self.assertEqual(await db.read(both), [(1,), (2,)])
        self.assertEqual(await db.read(both, brief=True), [(1,), (2,)])
        await db.transaction(insert("c"), brief=True)
        rows = await db.read(lambda txn: txn.query("SELECT COUNT(*) FROM scratch"), brief=True)
        self.assertEqual(rows, [(3,)])

        async def refused(txn: ITransaction) -> None:
            await txn.query("SELECT 1")
            raise Refused()

        with self.assertRaises(Refused):
            await db.read(refused, brief=True)
        self.assertEqual(await db.read(both, brief=True), [(1,), (2,)])  # usable after

    async def test_statements_started_together_in_a_transaction(self) -> None:
        """A transaction's statements run one at a time, even when not awaited one by one."""
        db = await self.scratch()

        async def work(txn: ITransaction) -> list[Any]:
            inserts = [
                txn.execute("INSERT INTO scratch (k, n) VALUES (?, ?)", (str(i), i))
                for i in range(10)
            ]
            counts = await gatherResults([*inserts, txn.query("SELECT COUNT(*) FROM scratch")])
            return counts

        results = await db.transaction(work)
        self.assertEqual(results[:10], [1] * 10)
        self.assertEqual(await db.query("SELECT SUM(n) FROM scratch"), [(45,)])

    async def test_errors_are_not_unavailability(self) -> None:
        """A bad statement fails as itself, and the database is as usable as before."""
        db = await self.scratch()
        await db.execute("INSERT INTO scratch (k) VALUES ('a')")
        for attempt in (
            db.query("SELEKT 1"),
            db.execute("INSERT INTO scratch (k) VALUES ('a')"),
            db.query("SELECT nope FROM scratch"),
        ):
            failure = await DeferredList([attempt], consumeErrors=True)
            ok, result = failure[0]
            self.assertFalse(ok)
            self.assertNotIsInstance(result.value, DatabaseUnavailable)

        async def work(txn: ITransaction) -> None:
            await txn.execute("INSERT INTO scratch (k) VALUES ('b')")
            await txn.execute("INSERT INTO scratch (k) VALUES ('a')")

        with self.assertRaises(Exception) as raised:
            await db.transaction(work)
        self.assertNotIsInstance(raised.exception, DatabaseUnavailable)
        # Every connection still works, and the failed transaction left nothing.
        results = await gatherResults([db.query("SELECT COUNT(*) FROM scratch") for _ in range(20)])
        self.assertEqual(results, [[(1,)]] * 20)

    async def test_concurrent_updates_are_exact(self) -> None:
        """Single-statement updates from many callers at once lose nothing."""
        db = await self.scratch()
        await db.execute("INSERT INTO scratch (k, n) VALUES ('c', 0)")
        bump = "UPDATE scratch SET n = n + ? WHERE k = 'c'"

        async def bump_twice(txn: ITransaction) -> None:
            await txn.execute(bump, (1,))
            await txn.execute(bump, (2,))

        calls = [db.execute(bump, (1,)) for _ in range(150)]
        calls += [db.transaction(bump_twice) for _ in range(50)]
        await gatherResults(calls)
        self.assertEqual(await db.query("SELECT n FROM scratch WHERE k = 'c'"), [(300,)])

    async def test_conditional_decrement_never_below_zero(self) -> None:
        """The ledger's pattern: C{... WHERE n >= ?} from many callers at once."""
        db = await self.scratch()
        await db.execute("INSERT INTO scratch (k, n) VALUES ('c', 100)")
        take = "UPDATE scratch SET n = n - ? WHERE k = 'c' AND n >= ?"
        changed = await gatherResults([db.execute(take, (7, 7)) for _ in range(40)])
        self.assertEqual(sum(changed), 100 // 7)
        self.assertEqual(await db.query("SELECT n FROM scratch WHERE k = 'c'"), [(100 % 7,)])

    async def test_carried_out_when_the_caller_stops_waiting(self) -> None:
        """
        Cancelling the wait does not cancel the statement: a download settles its
        charge in a C{finally} that a client going away cancels.
        """
        db = await self.scratch()
        calls = [
            db.execute("INSERT INTO scratch (k, n) VALUES (?, ?)", (str(i), i)) for i in range(30)
        ]
        for call in calls:
            call.cancel()
            call.addErrback(lambda failure: failure.trap(CancelledError))

        async def all_there() -> bool:
            return await db.query("SELECT COUNT(*) FROM scratch") == [(30,)]

        await eventually(all_there)

    async def test_busy_is_not_unavailable(self) -> None:
        """Far more callers than connections: they wait their turn, none is refused."""
        db = await self.scratch()

        async def work(txn: ITransaction, i: int) -> int:
            await txn.execute("INSERT INTO scratch (k, n) VALUES (?, ?)", (str(i), i))
            return (await txn.query("SELECT n FROM scratch WHERE k = ?", (str(i),)))[0][0]

        results = await gatherResults(
            [db.transaction(lambda txn, i=i: work(txn, i)) for i in range(120)]
        )
        self.assertEqual(results, list(range(120)))


class SQLiteDatabaseTests(DatabaseTestsMixin, TestCase):
    def fresh_url(self) -> str:
        return f"sqlite:///{Path(self.mktemp()).resolve()}"

    async def test_statistics_when_opened(self) -> None:
        """
        SQLite gathers no statistics by itself: opening the database makes
        them, of every table, so that the first status call of a node that
        grew since its last start is planned from the catalog as it is.
        """
        url = self.fresh_url()
        db = await open_database(url, reactor)
        await db.execute(
            "INSERT INTO files (filehash, filename, filesize, datetime)"
            " WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 999)"
            " SELECT printf('%064x', i), 'f', 1, 1 FROM n"
        )
        await db.close()
        db = await self.open(url)
        [(stat,)] = await db.query(
            "SELECT stat FROM sqlite_stat1 WHERE idx LIKE 'sqlite_autoindex_files%'"
        )
        self.assertEqual(stat.split()[0], "1000")

    async def test_a_brief_transaction_commits_in_the_call(self) -> None:
        """No hop to the database's thread: the answer is there when the call returns."""
        db = await self.scratch()
        done = db.transaction(insert("a"), brief=True)
        self.assertEqual(self.successResultOf(done), 1)
        # Committed: the thread's connection sees it.
        self.assertEqual(await db.query("SELECT k FROM scratch"), [("a",)])

    async def test_brief_waits_in_the_thread_while_another_writes(self) -> None:
        """
        The lock held elsewhere (another node on the same file): a brief
        transaction does not wait for it in the reactor's thread, and is
        carried out once the lock is free.
        """
        url = self.fresh_url()
        db = await self.open(url)
        await db.execute(SCRATCH)
        other = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        self.addCleanup(other.close)
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT INTO scratch (k) VALUES ('first')")
        done = db.transaction(insert("second"), brief=True)
        self.assertNoResult(done)
        other.execute("COMMIT")
        self.assertEqual(await done, 1)
        self.assertEqual(
            await db.query("SELECT k FROM scratch ORDER BY rowid"), [("first",), ("second",)]
        )

    async def test_a_brief_read_waits_for_no_write(self) -> None:
        """
        Not for SQLite's write lock, held elsewhere (another node on the
        file), nor for the writes queued for the thread: a brief read is done
        in the call, and sees what was committed.
        """
        url = self.fresh_url()
        db = await self.open(url)
        await db.execute(SCRATCH)
        await db.execute("INSERT INTO scratch (k) VALUES ('committed')")
        other = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        self.addCleanup(other.close)
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT INTO scratch (k) VALUES ('not yet')")
        queued = db.transaction(insert("queued"))
        rows = db.read(lambda txn: txn.query("SELECT k FROM scratch"), brief=True)
        self.assertEqual(self.successResultOf(rows), [("committed",)])
        other.execute("COMMIT")
        await queued

    async def test_brief_keeps_its_turn_behind_the_threads_writes(self) -> None:
        """Sent after a write to the thread, a brief transaction comes after it, not before."""
        db = await self.scratch()
        first = db.transaction(insert("first"))
        second = db.transaction(insert("second"), brief=True)
        self.assertNoResult(second)
        await gatherResults([first, second])
        self.assertEqual(
            await db.query("SELECT k FROM scratch ORDER BY rowid"), [("first",), ("second",)]
        )
        # Once the thread is done, brief ones run in the call again.
        self.successResultOf(db.transaction(insert("third"), brief=True))

    async def test_brief_ones_that_waited_for_the_thread_run_here(self) -> None:
        """
        Brief transactions asked for while a write is in the thread wait for
        it, then run in the reactor's thread, in order: one hop to the thread
        does not send every brief one after it there too.
        """
        db = await self.scratch()
        in_reactor: list[bool] = []

        async def recorded(txn: ITransaction, key: str) -> None:
            in_reactor.append(threading.current_thread() is threading.main_thread())
            await insert(key)(txn)

        first = db.transaction(insert("first"))
        after = [db.transaction(partial(recorded, key=str(i)), brief=True) for i in range(5)]
        await gatherResults([first, *after])
        self.assertEqual(in_reactor, [True] * 5)
        rows = await db.query("SELECT k FROM scratch ORDER BY rowid")
        self.assertEqual(rows, [("first",), *[(str(i),) for i in range(5)]])

    async def test_writes_waiting_at_close_fail(self) -> None:
        """Closed with writes still waiting their turn: they fail, none is left hanging."""
        db = await open_database(self.fresh_url(), reactor)  # closed here, not at cleanup
        await db.execute(SCRATCH)
        first = db.transaction(insert("first"))
        waiting = db.transaction(insert("second"), brief=True)
        await db.close()
        self.failureResultOf(waiting, DatabaseUnavailable)
        await first

    async def test_a_failed_brief_transaction_leaves_the_connection_usable(self) -> None:
        db = await self.scratch()
        self.successResultOf(db.transaction(insert("a"), brief=True))
        failed = db.transaction(insert("a"), brief=True)  # the same key again
        self.failureResultOf(failed, sqlite3.IntegrityError)
        self.successResultOf(db.transaction(insert("b"), brief=True))
        self.assertEqual(await db.query("SELECT k FROM scratch ORDER BY k"), [("a",), ("b",)])

    async def test_brief_commits_are_checkpointed_in_the_thread(self) -> None:
        """
        The reactor's connection never checkpoints (a checkpoint syncs the
        files); the thread checkpoints after every CHECKPOINT_EVERY of its
        commits, so the write-ahead log is reused instead of growing.
        """
        self.patch(metadisk.db.sqlite, "CHECKPOINT_EVERY", 8)
        url = self.fresh_url()
        db = await self.open(url)
        await db.execute(SCRATCH)
        wal = Path(url.removeprefix("sqlite:///") + "-wal")
        big = "x" * 20_000  # a few pages a commit

        async def rounds(first: int) -> int:
            for i in range(first, first + 8):
                self.successResultOf(db.transaction(insert(str(i), big), brief=True))
            await db.query("SELECT 1")  # behind the checkpoint, in the thread
            return wal.stat().st_size

        after_one = await rounds(0)
        after_four = [await rounds(8 * i) for i in range(1, 4)][-1]
        self.assertEqual(after_four, after_one)
        self.assertEqual(await db.query("SELECT COUNT(*) FROM scratch"), [(32,)])


def insert(key: str, text: str = "") -> Callable[[ITransaction], Awaitable[int]]:
    """A transaction's work: one row of scratch."""

    async def work(txn: ITransaction) -> int:
        return await txn.execute("INSERT INTO scratch (k, t) VALUES (?, ?)", (key, text))

    return work


class PostgresDatabaseTests(DatabaseTestsMixin, TestCase):
    def fresh_url(self) -> str:
        # A small pool, so that "busy" really means waiting for a connection.
        return create_database(self, pool_size=3)

    async def test_a_migration_may_outlast_the_query_timeout(self) -> None:
        """
        A migration may build an index over millions of rows: it is not given
        up after the query timeout of the node's statements, which still holds.
        """
        slow = (max(n for n, _ in migrations()) + 1, "SELECT pg_sleep(0.5)")
        self.patch(metadisk.db.migrate, "migrations", lambda: [*migrations(), slow])
        db = await self.open(create_database(self, query_timeout=0.1))
        self.assertEqual(await db.query("SELECT MAX(version) FROM schema_version"), [(slow[0],)])
        with self.assertRaises(DatabaseUnavailable):
            await db.query("SELECT pg_sleep(0.5)")


class TranslateTests(SynchronousTestCase):
    def test_placeholders(self) -> None:
        self.assertEqual(translate("SELECT ? WHERE a = ?"), "SELECT %s WHERE a = %s")

    def test_quoted_and_commented_text_is_kept(self) -> None:
        self.assertEqual(
            translate("SELECT '?', 'it''s ?', \"we?ird\", ? -- what?\n/* or? */"),
            "SELECT '?', 'it''s ?', \"we?ird\", %s -- what?\n/* or? */",
        )

    def test_percent_is_doubled_everywhere(self) -> None:
        self.assertEqual(translate("SELECT '5%', a % 2, ?"), "SELECT '5%%', a %% 2, %s")


class SettingsTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        settings = PostgresSettings.from_url("postgresql://u@h:5432/db")
        self.assertEqual(settings.dsn, "postgresql://u@h:5432/db?application_name=metadisk")
        self.assertEqual(
            (settings.pool_size, settings.connect_timeout, settings.query_timeout),
            (8, CONNECT_TIMEOUT, QUERY_TIMEOUT),
        )

    def test_our_options_are_taken_out(self) -> None:
        settings = PostgresSettings.from_url(
            "postgres://u@h/db?sslmode=disable&pool_size=3&query_timeout=2.5"
            "&connect_timeout=1&application_name=n1"
        )
        self.assertEqual(settings.dsn, "postgres://u@h/db?sslmode=disable&application_name=n1")
        self.assertEqual(
            (settings.pool_size, settings.connect_timeout, settings.query_timeout), (3, 1.0, 2.5)
        )

    def test_bad_options(self) -> None:
        for query in ("pool_size=x", "pool_size=0", "query_timeout=-1"):
            with self.assertRaises(ValueError):
                PostgresSettings.from_url(f"postgresql://u@h/db?{query}")


async def until_answering(db: IDatabase, calls: int = 1) -> None:
    """
    Wait (bounded) until C{calls} statements at once all succeed; meanwhile
    a call may only fail with L{DatabaseUnavailable}.
    """

    async def answering() -> bool:
        results = await DeferredList(
            [db.query("SELECT 1") for _ in range(calls)], consumeErrors=True
        )
        for ok, result in results:
            if not ok:
                result.trap(DatabaseUnavailable)
        return all(ok for ok, _ in results)

    await eventually(answering)


class PostgresOutageTests(TestCase):
    """PostgreSQL goes away under the node; calls fail fast, the pool comes back by itself."""

    def setUp(self) -> None:
        require_postgres()

    async def test_statement_in_flight_when_its_connection_is_cut(self) -> None:
        url = create_database(self, pool_size=2)
        db = await open_database(url, reactor)
        self.addCleanup(db.close)
        sleeping = db.query("SELECT pg_sleep(60)")
        pids = await until_backends(url, 2, active=1)
        self.assertEqual(len(pids), 2)
        terminate_connections(url)
        # Without the cut it would run for a minute; with it, it fails at once.
        with self.assertRaises(DatabaseUnavailable):
            await sleeping.addTimeout(10, reactor)
        await until_answering(db, calls=2)
        self.flushLoggedErrors(psycopg2.InterfaceError)

    async def test_cut_in_the_middle_of_a_transaction(self) -> None:
        url = create_database(self, pool_size=1)
        db = await open_database(url, reactor)
        self.addCleanup(db.close)

        async def work(txn: ITransaction) -> None:
            await txn.execute("INSERT INTO tokens (token, balance, created) VALUES ('t', 5, 0)")
            terminate_connections(url)
            await txn.query("SELECT 1")

        with self.assertRaises(DatabaseUnavailable):
            await db.transaction(work)
        await until_answering(db)
        self.assertEqual(await db.query("SELECT COUNT(*) FROM tokens"), [(0,)])
        # txpostgres logs the rollback it could not send on a lost connection.
        self.flushLoggedErrors(psycopg2.InterfaceError)

    async def test_idle_connections_cut(self) -> None:
        """All connections cut while idle: calls fail fast or succeed, then all succeed."""
        url = create_database(self, pool_size=3)
        db = await open_database(url, reactor)
        self.addCleanup(db.close)
        self.assertEqual(terminate_connections(url), 3)
        await until_answering(db, calls=3)

    async def test_statement_timeout_on_a_clock(self) -> None:
        """A statement that gets no answer fails when its time is up; the connection is remade."""
        url = create_database(self, pool_size=2)
        clock = Clock()
        db = await PostgresDatabase.open(url, reactor, clock)
        self.addCleanup(db.close)
        hung = db.query("SELECT pg_sleep(60)")
        clock.advance(QUERY_TIMEOUT - 0.1)
        self.assertNoResult(hung)
        clock.advance(0.1)
        self.failureResultOf(hung, DatabaseUnavailable)
        # The other connection answers meanwhile; the abandoned one comes back.
        self.assertEqual(await db.query("SELECT 1"), [(1,)])
        clock.advance(RECONNECT_MAX_DELAY)
        await until_answering(db, calls=2)
        self.flushLoggedErrors(psycopg2.InterfaceError)

    async def test_calls_wait_for_a_live_connection(self) -> None:
        """One connection dead, the other busy: calls wait for the live one, none is refused."""
        url = create_database(self, pool_size=2)
        clock = Clock()  # the dead connection stays dead: its reconnection waits for this clock
        db = await PostgresDatabase.open(url, reactor, clock)
        self.addCleanup(db.close)
        hung = db.query("SELECT pg_sleep(60)")
        clock.advance(QUERY_TIMEOUT)
        self.failureResultOf(hung, DatabaseUnavailable)
        results = await gatherResults([db.query("SELECT ?", (i,)) for i in range(20)])
        self.assertEqual(results, [[(i,)] for i in range(20)])
        self.flushLoggedErrors(psycopg2.InterfaceError)

    async def test_refusal_comes_on_a_later_turn(self) -> None:
        """
        With every connection dead, a call fails at once, yet not within the call:
        callers written against adbapi count on that (a loop that awaits its own
        round would otherwise spin).
        """
        url = create_database(self, pool_size=1)
        clock = Clock()  # reconnections wait for this clock, which stays still
        db = await PostgresDatabase.open(url, reactor, clock)
        self.addCleanup(db.close)
        hung = db.query("SELECT pg_sleep(60)")
        clock.advance(QUERY_TIMEOUT)
        self.failureResultOf(hung, DatabaseUnavailable)
        refused = db.query("SELECT 1")
        self.assertNoResult(refused)
        with self.assertRaises(DatabaseUnavailable):
            await refused

    async def test_connect_timeout_on_a_clock(self) -> None:
        """A server that accepts the connection and never answers."""
        with closing(socket.socket()) as silent:
            silent.bind(("127.0.0.1", 0))
            silent.listen(8)
            port = silent.getsockname()[1]
            clock = Clock()
            opening = Deferred.fromCoroutine(
                PostgresDatabase.open(
                    f"postgresql://x@127.0.0.1:{port}/x?pool_size=2", reactor, clock
                )
            )
            clock.advance(CONNECT_TIMEOUT - 0.1)
            self.assertNoResult(opening)
            clock.advance(0.1)
            failure = self.failureResultOf(opening, DatabaseUnavailable)
            self.assertIn("no connection within", failure.getErrorMessage())

    def test_an_attempt_that_ends_after_its_cancellation(self) -> None:
        """The cancellation answers at once; the attempt's own end, later, is let go."""
        attempt: Deferred[Any] = Deferred()
        self.patch(txpostgres.Connection, "connect", lambda self, *a, **kw: attempt)
        connection = _Connection(reactor, Clock(), CONNECT_TIMEOUT, lambda: None)
        connecting = connection.connect("dbname=x")
        connecting.cancel()
        self.failureResultOf(connecting, CancelledError)
        attempt.errback(psycopg2.OperationalError("closed"))
        self.assertIsNone(self.successResultOf(attempt))  # not an AlreadyCalledError

    async def test_nothing_listening(self) -> None:
        with closing(socket.socket()) as unused:
            unused.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
            port = unused.getsockname()[1]
            with self.assertRaises(DatabaseUnavailable):
                await open_database(f"postgresql://x@127.0.0.1:{port}/x", reactor)


async def until_backends(url: str, count: int, active: int) -> list[int]:
    """The node's backends, once there are C{count} of which C{active} run a statement."""
    found: list[int] = []

    async def ready() -> bool:
        rows = admin(
            "SELECT pid, state FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (database_name(url),),
        )
        found[:] = [pid for pid, _ in rows]
        return len(rows) == count and sum(state == "active" for _, state in rows) == active

    await eventually(ready)
    return found
