"""
Replication that heals itself. Unit tests drive CloudSync and Repair with a
Clock on a L{tests.fakes.grid.Grid}, hosts wrapped in L{FaultyHost} (break /
hang / corrupt / lose), plus a plowshare host whose process hangs on a fake
IReactorProcess; an integration test runs a node on four real `rclone serve
webdav` remotes.
"""

from __future__ import annotations

import hashlib
import os
import signal
from pathlib import Path
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from metadisk.periodic import Periodic
from metadisk.store import cloudsync
from metadisk.store.blocking import in_caller
from metadisk.store.catalog import Catalog
from metadisk.store.claims import ClaimFetcher, Claims
from metadisk.store.cloudsync import FAILURES_BEFORE_UNHEALTHY, GATHER, NoCopyAvailable
from metadisk.store.files import FileStore
from metadisk.store.hosts import SLOWEST_RATE
from metadisk.store.hosts.plowshare import PlowshareHost
from metadisk.store.hosts.process import ProcessRunner
from metadisk.store.hosts.url import URLHost
from tests.fakes import FakeProcessReactor, WebDAVServer, require_tool
from tests.fakes.grid import Grid
from tests.support import eventually, json_of, multipart, start_node, test_config


class ReplicationTests(TestCase):
    async def test_upload_ends_on_three_hosts(self) -> None:
        grid = await Grid.create(self)
        filehash = await grid.add(b"hello" * 1000)
        self.assertEqual(await grid.sync.queue.pending(), (1, 5000))
        self.assertEqual(await grid.sync.run_once(), 1)
        self.assertEqual(await grid.holders(filehash), ["h0", "h1", "h2"])
        for name in ("h0", "h1", "h2"):
            self.assertEqual(grid.copy_on(name, filehash).read_bytes(), b"hello" * 1000)
        self.assertEqual(await grid.queued(), [])
        self.assertEqual(await grid.sync.queue.pending(), (0, 0))

    async def test_a_round_is_one_job_a_host(self) -> None:
        """Many blobs due: each host gets them all in one store_all, not one call a blob."""
        grid = await Grid.create(self)
        blobs = [await grid.add(b"blob %d" % i) for i in range(20)]
        self.assertEqual(await grid.sync.run_once(), 20)
        for name in ("h0", "h1", "h2"):
            self.assertEqual(grid.host(name).calls, ["store"])
        for filehash in blobs:
            self.assertEqual(await grid.holders(filehash), ["h0", "h1", "h2"])
        self.assertEqual(await grid.queued(), [])

    async def test_uploads_gather_into_one_round(self) -> None:
        """An upload asks for a round soon: those that come meanwhile join it, one job a host."""
        grid = await Grid.create(self)
        blobs = [await grid.add(b"one"), await grid.add(b"two")]
        grid.sync.soon()
        grid.sync.soon()  # the second upload joins the round the first asked for
        self.assertEqual(len(grid.clock.getDelayedCalls()), 1)
        self.assertEqual(grid.host("h0").calls, [])
        grid.clock.advance(GATHER)
        await grid.sync.idle()
        self.assertEqual(grid.host("h0").calls, ["store"])
        for filehash in blobs:
            self.assertEqual(await grid.holders(filehash), ["h0", "h1", "h2"])
        # Someone waiting for it need not wait for the others.
        third = await grid.add(b"three")
        grid.sync.soon()
        await grid.sync.idle()
        self.assertEqual(await grid.holders(third), ["h0", "h1", "h2"])
        self.assertEqual(grid.clock.getDelayedCalls(), [])

    async def test_a_full_round_is_followed_at_once(self) -> None:
        """
        More due than a round takes (uploads faster than the hosts): the rounds
        follow one another until the queue is empty, not one a tick.
        """
        self.patch(cloudsync, "BATCH", 4)
        grid = await Grid.create(self)
        blobs = [await grid.add(b"blob %d" % i) for i in range(10)]
        await grid.sync.kick()  # the clock never moves: no interval is waited for
        self.assertEqual(grid.host("h0").calls, ["store"] * 3)
        for filehash in blobs:
            self.assertEqual(await grid.holders(filehash), ["h0", "h1", "h2"])
        self.assertEqual(await grid.queued(), [])

    async def test_one_host_dead_three_copies_on_the_others(self) -> None:
        grid = await Grid.create(self, hosts=4)
        grid.host("h0").broken = True
        filehash = await grid.add(b"data")
        await grid.sync.run_once()
        self.assertEqual(await grid.holders(filehash), ["h1", "h2", "h3"])
        self.assertEqual(await grid.queued(), [])

    async def test_partial_success_recorded_and_finished_later(self) -> None:
        grid = await Grid.create(self)
        grid.host("h2").broken = True
        filehash = await grid.add(b"partial")
        await grid.sync.run_once()
        # What did succeed is recorded at once: find lists it, a restart keeps it.
        self.assertEqual(await grid.holders(filehash), ["h0", "h1"])
        self.assertEqual(await grid.queued(), [(filehash, 1)])
        [(error,)] = await grid.db.query("SELECT last_error FROM cloud_queue")
        self.assertIn("h2: h2 is broken", error)
        self.assertEqual(await grid.sync.queue.pending(), (1, 7))
        # Not due yet: the blob waits for its backoff.
        self.assertEqual(await grid.sync.run_once(), 0)
        grid.host("h2").broken = False
        grid.clock.advance(2)
        await grid.sync.run_once()
        self.assertEqual(await grid.holders(filehash), ["h0", "h1", "h2"])
        self.assertEqual(await grid.queued(), [])
        # Only the missing copy was made the second time.
        self.assertEqual(grid.host("h0").calls, ["store"])

    async def test_unhealthy_host_retried_with_backoff(self) -> None:
        grid = await Grid.create(self)
        h2 = grid.host("h2")
        h2.broken = True
        filehash = await grid.add(b"backoff")
        for _ in range(FAILURES_BEFORE_UNHEALTHY):
            await grid.sync.queue.resume()  # the blob due again at once, whatever its backoff
            await grid.sync.run_once()
        self.assertEqual(h2.calls, ["store"] * FAILURES_BEFORE_UNHEALTHY)
        self.assertEqual(grid.sync.unhealthy(), ["h2"])
        # While it backs off, it is not asked at all.
        grid.clock.advance(7)
        await grid.sync.queue.resume()
        await grid.sync.run_once()
        self.assertEqual(len(h2.calls), FAILURES_BEFORE_UNHEALTHY)
        # Its backoff over, it is tried again; it has recovered.
        h2.broken = False
        grid.clock.advance(1)
        await grid.sync.queue.resume()
        await grid.sync.run_once()
        self.assertEqual(len(h2.calls), FAILURES_BEFORE_UNHEALTHY + 1)
        self.assertEqual(grid.sync.unhealthy(), [])
        self.assertEqual(await grid.holders(filehash), ["h0", "h1", "h2"])

    async def test_hanging_host_times_out(self) -> None:
        """A host call that never answers is cancelled at CloudSync's timeout."""
        grid = await Grid.create(self, hosts=4)
        grid.host("h1").hanging = True
        filehash = await grid.add(b"hang")
        done = Deferred.fromCoroutine(grid.sync.run_once())
        await eventually(lambda: grid.host("h1").hung)
        self.assertNoResult(done)
        grid.clock.advance(grid.sync.timeout + 1)
        await done
        self.assertTrue(grid.host("h1").hung[0].called)  # cancelled, not left dangling
        self.assertEqual(await grid.holders(filehash), ["h0", "h2", "h3"])

    async def test_stop_cancels_a_restore_in_flight(self) -> None:
        """A round fetching a lost copy's blob back from a host is cut short the same."""
        grid = await Grid.create(self)
        filehash = await grid.add(b"restore me")
        await grid.sync.run_once()
        grid.cache.discard(filehash)
        await grid.sync.forget(filehash, "h0")  # repair found h0's copy gone
        for name in ("h1", "h2"):
            grid.host(name).hanging = True
        grid.sync.kick()
        await eventually(lambda: grid.host("h1").hung or grid.host("h2").hung)
        stopped = Deferred.fromCoroutine(grid.sync.stop())
        await eventually(lambda: stopped.called)
        self.assertEqual(await grid.queued(), [(filehash, 0)])
        self.assertEqual(os.listdir(grid.cache.partial(filehash).parent), [])  # no restore left
        for name in ("h1", "h2"):
            self.assertIsNone(
                grid.sync.metrics.registry.get_sample_value(
                    "metadisk_host_failures_total", {"host": name, "operation": "fetch"}
                )
            )

    async def test_idle_waits_for_rounds_asked_for_meanwhile(self) -> None:
        """
        An upload during a round asks for another; idle() waits for it too,
        and once stopped, the sync runs no more rounds.
        """
        grid = await Grid.create(self)
        grid.host("h0").hanging = True  # holds the first round
        first = await grid.add(b"first")
        grid.sync.kick()
        await eventually(lambda: grid.host("h0").hung)
        second = await grid.add(b"second")  # after the round read the queue
        grid.sync.kick()
        grid.host("h0").hanging = False
        grid.clock.advance(grid.sync.timeout + 1)  # the first round's store on h0 fails
        await grid.sync.idle()
        self.assertEqual(await grid.holders(first), ["h1", "h2"])
        self.assertEqual(await grid.holders(second), ["h0", "h1", "h2"])

        await grid.sync.stop()
        third = await grid.add(b"third")
        await grid.sync.kick()
        self.assertEqual(await grid.holders(third), [])

    async def test_stop_cancels_the_copies_in_flight(self) -> None:
        """
        Stopping does not wait for a copy that may take hours: it is cancelled,
        the blobs of the round stay queued as they were (with the copies made
        on the other hosts), the host is not blamed, and no other round starts.
        """
        grid = await Grid.create(self)
        grid.host("h0").hanging = True
        first = await grid.add(b"first")
        second = await grid.add(b"second")
        grid.sync.kick()
        await eventually(lambda: grid.host("h0").hung)
        stopped = Deferred.fromCoroutine(grid.sync.stop())
        await eventually(lambda: stopped.called)  # no clock advance: no timeout waited for
        self.assertTrue(grid.host("h0").hung[0].called)
        self.assertEqual(await grid.holders(first), ["h1", "h2"])
        self.assertEqual(await grid.holders(second), ["h1", "h2"])  # one round, one job a host
        self.assertEqual(await grid.queued(), sorted([(first, 0), (second, 0)]))
        self.assertEqual(
            grid.sync.metrics.registry.get_sample_value(
                "metadisk_host_failures_total", {"host": "h0", "operation": "store"}
            ),
            None,
        )

    async def test_big_blob_gets_time_by_its_size(self) -> None:
        """
        A transfer's timeout grows with the blob: a big blob on a slow host is
        not cut off at the base timeout, a hung one still is, later.
        """
        grid = await Grid.create(self, hosts=3)
        grid.host("h1").hanging = True
        content = os.urandom(3 * SLOWEST_RATE)
        filehash = await grid.add(content)
        done = Deferred.fromCoroutine(grid.sync.run_once())
        await eventually(lambda: grid.host("h1").hung)
        grid.clock.advance(grid.sync.timeout)
        self.assertNoResult(done)
        self.assertFalse(grid.host("h1").hung[0].called)
        grid.clock.advance(3)
        await done
        self.assertTrue(grid.host("h1").hung[0].called)
        self.assertEqual(await grid.holders(filehash), ["h0", "h2"])

        # A fetch the same: the record's size sets its timeout.
        grid.cache.discard(filehash)
        for name in ("h0", "h2"):
            grid.host(name).hanging = True
        destination = grid.base / "fetched"
        fetched = Deferred.fromCoroutine(grid.sync.fetch(filehash, destination, len(content)))

        def tried() -> int:
            return len(grid.host("h0").hung) + len(grid.host("h2").hung)

        await eventually(lambda: tried() == 1)
        grid.clock.advance(grid.sync.timeout + 2.9)
        self.assertEqual(tried(), 1)  # the first host still has time
        grid.clock.advance(0.2)
        await eventually(lambda: tried() == 2)
        grid.clock.advance(grid.sync.timeout + 3)
        await self.assertFailure(fetched, NoCopyAvailable)

    async def test_hanging_process_killed_at_its_timeout(self) -> None:
        """A plowup that hangs: its process group is killed at the runner's timeout."""
        processes = FakeProcessReactor()
        runner = ProcessRunner(
            reactor=processes,
            clock=Clock(),
            timeout=30,
            env={"PATH": os.environ["PATH"]},
            killpg=processes.killpg,
        )
        plow = PlowshareHost(name="plow", site="rghost", runner=runner, run_blocking=in_caller)
        grid = await Grid.create(self, hosts=3, extra=[plow])
        runner._clock = grid.clock  # the grid's clock drives everything
        self.patch(ProcessRunner, "_spawn", _spawn_found)
        filehash = await grid.add(b"plowed")
        done = Deferred.fromCoroutine(grid.sync.run_once())
        await eventually(lambda: processes.processes)
        [process] = processes.processes
        self.assertEqual(process.command[1:3], ["plowup", "rghost"])
        grid.clock.advance(29)
        self.assertNoResult(done)
        grid.clock.advance(1.001)  # 30 s, and the microseconds that 6 bytes are allowed
        self.assertEqual(processes.killed, [(process.pid, signal.SIGTERM)])
        grid.clock.advance(runner.kill_grace)
        self.assertEqual(processes.killed[-1], (process.pid, signal.SIGKILL))
        await done
        self.assertEqual(await grid.holders(filehash), ["h0", "h1", "h2"])
        self.assertEqual(runner.running, 0)


def _spawn_found(self: ProcessRunner, child: Any, tool: Any, args: Any, cwd: Any) -> Any:
    """ProcessRunner._spawn for a tool that is not installed here: pretend it is."""
    argv = ["python", "-I", "-S", "-c", "...", f"/usr/bin/{tool.command}", tool.command, *args]
    return self._reactor.spawnProcess(child, "python", argv, env={}, path=cwd)


class FetchTests(TestCase):
    async def stored(self, grid: Grid, content: bytes) -> str:
        filehash = await grid.add(content)
        await grid.sync.run_once()
        grid.cache.discard(filehash)  # evicted: downloads must come from the hosts
        return filehash

    def file_store(self, grid: Grid) -> FileStore:
        incoming = grid.base / "incoming-files"
        incoming.mkdir()
        claims = Claims(grid.db)
        urls = ClaimFetcher(
            claims=claims,
            urls=URLHost(None, 0, grid.clock),
            clock=grid.clock,
            run_blocking=in_caller,
            largest=0,
        )
        return FileStore(
            db=grid.db,
            catalog=grid.catalog,
            claims=claims,
            cache=grid.cache,
            sync=grid.sync,
            claim_fetcher=urls,
            clock=grid.clock,
            run_blocking=in_caller,
            convergence_secret=b"s",
            incoming=incoming,
        )

    async def test_a_reader_leaving_does_not_cancel_a_shared_fetch(self) -> None:
        grid = await Grid.create(self)
        content = os.urandom(5000)
        filehash = await self.stored(grid, content)
        record = await grid.catalog.find(filehash)
        store = self.file_store(grid)
        first_host = grid.host(record.uploads[0][0])
        first_host.hanging = True
        leaving = Deferred.fromCoroutine(store.open_blob(record))
        staying = Deferred.fromCoroutine(store.open_blob(record))
        await eventually(lambda: first_host.hung)
        leaving.cancel()
        self.failureResultOf(leaving, CancelledError)
        self.assertFalse(first_host.hung[0].called)  # the fetch goes on for the other reader
        grid.clock.advance(grid.sync.timeout + 1)  # the first host never answers: the next one
        with await staying as blob:
            self.assertEqual(blob.read(), content)
        self.assertIn(filehash, grid.cache)

    async def test_stop_cancels_the_fetches_in_flight(self) -> None:
        grid = await Grid.create(self)
        filehash = await self.stored(grid, b"never mind")
        record = await grid.catalog.find(filehash)
        store = self.file_store(grid)
        for name in ("h0", "h1", "h2"):
            grid.host(name).hanging = True
        reading = Deferred.fromCoroutine(store.open_blob(record))
        await eventually(lambda: grid.host(record.uploads[0][0]).hung)
        await store.stop()  # no clock advance: nothing waits for a timeout
        self.failureResultOf(reading, CancelledError)
        self.assertEqual(sum(len(grid.host(n).hung) for n in ("h0", "h1", "h2")), 1)  # no next
        self.assertEqual(os.listdir(store.incoming), [])
        self.assertIsNone(
            grid.sync.metrics.registry.get_sample_value(
                "metadisk_host_failures_total",
                {"host": record.uploads[0][0], "operation": "fetch"},
            )
        )
        # The room set aside for it is given back: the whole cache can be allocated.
        grid.cache.release(await grid.cache.allocate(grid.cache.capacity))

    async def test_corrupted_copy_detected_and_file_served_intact(self) -> None:
        grid = await Grid.create(self)
        content = os.urandom(50_000)
        filehash = await self.stored(grid, content)
        grid.host("h0").corrupt = True
        destination = grid.base / "fetched"
        await grid.sync.fetch(filehash, destination, len(content))
        self.assertEqual(destination.read_bytes(), content)
        self.assertEqual(grid.host("h1").calls[-1], "fetch")
        # The bad copy is dropped and queued to be put back (from a good copy).
        self.assertEqual(await grid.holders(filehash), ["h1", "h2"])
        self.assertEqual([h for h, _ in await grid.queued()], [filehash])
        grid.host("h0").corrupt = False
        grid.copy_on("h0", filehash).write_bytes(b"rotten")
        await grid.sync.run_once()
        self.assertEqual(await grid.holders(filehash), ["h0", "h1", "h2"])
        self.assertEqual(grid.copy_on("h0", filehash).read_bytes(), content)

    async def test_lost_and_broken_copies_skipped(self) -> None:
        grid = await Grid.create(self)
        filehash = await self.stored(grid, b"skip me")
        grid.copy_on("h0", filehash).unlink()
        grid.host("h1").broken = True
        destination = grid.base / "fetched"
        await grid.sync.fetch(filehash, destination, len(b"skip me"))
        self.assertEqual(destination.read_bytes(), b"skip me")
        # A failed delivery says nothing sure about the copy: it stays listed.
        self.assertEqual(await grid.holders(filehash), ["h0", "h1", "h2"])

    async def test_no_good_copy(self) -> None:
        grid = await Grid.create(self)
        filehash = await self.stored(grid, b"doomed")
        for name in ("h0", "h1", "h2"):
            grid.host(name).corrupt = True
        destination = grid.base / "fetched"
        with self.assertRaises(NoCopyAvailable):
            await grid.sync.fetch(filehash, destination, len(b"doomed"))
        self.assertFalse(destination.exists())


class RepairTests(TestCase):
    async def replicated(self, grid: Grid, content: bytes) -> str:
        filehash = await grid.add(content)
        await grid.sync.run_once()
        self.assertEqual(len(await grid.holders(filehash)), 3)
        return filehash

    async def test_deleted_copy_restored_from_the_cache(self) -> None:
        grid = await Grid.create(self)
        filehash = await self.replicated(grid, b"keep me" * 100)
        grid.copy_on("h1", filehash).unlink()
        result = await grid.repair.run_once()
        self.assertEqual(result.missing, ((filehash, "h1"),))
        self.assertEqual(result.checked, 3)
        await grid.sync.idle()  # repair kicked the queue
        self.assertEqual(await grid.holders(filehash), ["h0", "h1", "h2"])
        self.assertEqual(grid.copy_on("h1", filehash).read_bytes(), b"keep me" * 100)
        self.assertEqual(await grid.queued(), [])

    async def test_deleted_copy_restored_from_another_host(self) -> None:
        """The blob left the cache long ago: a verified copy comes from another host."""
        grid = await Grid.create(self)
        content = os.urandom(10_000)
        filehash = await self.replicated(grid, content)
        grid.cache.discard(filehash)
        grid.copy_on("h2", filehash).unlink()
        grid.host("h0").corrupt = True  # the first source is bad: the next one is used
        await grid.repair.run_once()
        await grid.sync.idle()
        self.assertEqual(grid.copy_on("h2", filehash).read_bytes(), content)
        # h0's corrupt delivery was noticed on the way: it got a good copy back too.
        self.assertEqual(grid.host("h0").calls.count("store"), 2)
        self.assertEqual(await grid.holders(filehash), ["h0", "h1", "h2"])
        self.assertEqual(await grid.queued(), [])
        self.assertIn(filehash, grid.cache)

    async def test_corrupt_cache_is_not_a_source(self) -> None:
        grid = await Grid.create(self)
        content = b"cached" * 1000
        filehash = await self.replicated(grid, content)
        grid.cache.path(filehash).write_bytes(b"bit rot" * 1000)
        grid.copy_on("h0", filehash).unlink()
        await grid.repair.run_once()
        await grid.sync.idle()
        self.assertEqual(grid.copy_on("h0", filehash).read_bytes(), content)

    async def test_unreachable_host_keeps_its_copies(self) -> None:
        """A host that cannot answer loses nothing: only 'gone' is acted on."""
        grid = await Grid.create(self)
        filehash = await self.replicated(grid, b"patience")
        grid.host("h1").broken = True
        result = await grid.repair.run_once()
        self.assertEqual((result.missing, result.unknown), ((), 1))
        self.assertEqual(await grid.holders(filehash), ["h0", "h1", "h2"])
        self.assertEqual(await grid.queued(), [])

    async def test_sample_bounded_and_rotating(self) -> None:
        grid = await Grid.create(self)
        for i in range(5):
            await grid.add(b"blob %d" % i)
        await grid.sync.run_once()
        grid.repair.sample = 4
        seen: set[tuple[str, str]] = set()
        for _ in range(4):
            grid.clock.advance(1)
            before = {name: len(grid.host(name).calls) for name in ("h0", "h1", "h2")}
            result = await grid.repair.run_once()
            self.assertEqual(result.checked, 4)
            after = sum(len(grid.host(n).calls) - before[n] for n in before)
            self.assertEqual(after, 4)
            rows = await grid.db.query(
                "SELECT filehash, host_name FROM uploads WHERE checked = ?", (grid.clock.seconds(),)
            )
            seen.update(rows)
        self.assertEqual(len(seen), 15)  # every copy had its turn, none twice before that

    async def test_skips_foreign_and_unhealthy_hosts(self) -> None:
        grid = await Grid.create(self)
        filehash = await self.replicated(grid, b"mine")
        await grid.db.transaction(
            lambda txn: Catalog.add_upload(txn, filehash, "elsewhere", "http://x.example/1", 0)
        )
        grid.host("h2").broken = True
        for attempt in range(FAILURES_BEFORE_UNHEALTHY):
            await grid.add(b"other %d" % attempt)
            await grid.sync.run_once()  # a round with a blob new to h2: it fails
        self.assertEqual(grid.sync.unhealthy(), ["h2"])
        calls = len(grid.host("h2").calls)
        result = await grid.repair.run_once()
        self.assertEqual(len(grid.host("h2").calls), calls)
        self.assertEqual(result.missing, ())
        self.assertIn("elsewhere", await grid.holders(filehash))

    async def test_service_runs_rounds_and_stops_a_hanging_one(self) -> None:
        grid = await Grid.create(self)
        await self.replicated(grid, b"loop")
        h0 = grid.host("h0")
        service = Periodic("repair", grid.repair.run_once, 60, grid.clock, now=False)
        service.startService()
        grid.clock.advance(60)
        await eventually(lambda: h0.calls.count("exists") == 1)
        await eventually(lambda: not service.busy)  # the next is timed from its end
        # A round that fails does not end the loop.
        grid.repair._db = None
        grid.clock.advance(60)
        self.assertEqual(len(self.flushLoggedErrors(AttributeError)), 1)
        grid.repair._db = grid.db
        grid.clock.advance(60)
        await eventually(lambda: h0.calls.count("exists") == 2)
        await eventually(lambda: not service.busy)
        # Stopping cancels a round in flight: its hanging check is not waited for.
        grid.host("h1").hanging = True
        grid.clock.advance(60)
        await eventually(lambda: grid.host("h1").hung)
        await service.stopService()
        self.assertTrue(grid.host("h1").hung[0].called)
        self.assertFalse(service.running)
        self.assertEqual(grid.clock.getDelayedCalls(), [])


class NodeOnRcloneTests(TestCase):
    """A node on four real WebDAV remotes: upload, dead remote, corruption, loss, repair."""

    timeout = 120

    async def setUp(self) -> None:
        require_tool("rclone")
        base = Path(self.mktemp()).resolve()
        self.servers = [WebDAVServer(base / f"remote{i}") for i in range(4)]
        for server in self.servers:
            await server.start()
            self.addCleanup(server.stop)
        hosts = [
            {"name": f"dav{i}", "kind": "rclone", "remote": server.remote()}
            for i, server in enumerate(self.servers)
        ]
        config = test_config(base, hosts=hosts, accounts={"enabled": False})
        self.patch(os, "environ", {**os.environ, "RCLONE_CONFIG": os.devnull})
        self.running = await start_node(self, config)

    def copy(self, i: int, filehash: str) -> Path:
        return self.servers[i].root / "blobs" / filehash

    async def upload(self, data: bytes) -> tuple[str, str]:
        content_type, body = multipart(("file", "f.bin", data))
        response = await self.running.http.post(
            self.running.url + "/api/upload", data=body, headers={b"Content-Type": [content_type]}
        )
        self.assertEqual(response.code, 201)
        answer = await json_of(response)
        return answer["filehash"], answer["key"]

    async def hosts_of(self, filehash: str) -> list[str]:
        record = await json_of(
            await self.running.http.get(f"{self.running.url}/api/find/{filehash}")
        )
        return sorted(upload["host_name"] for upload in record["uploads"])

    async def until_hosts(self, filehash: str, expected: list[str]) -> None:
        async def listed() -> bool:
            return await self.hosts_of(filehash) == expected

        try:
            await eventually(listed, 30)
        except AssertionError:
            self.assertEqual(await self.hosts_of(filehash), expected)  # says how they differ

    async def test_heals(self) -> None:
        node = self.running.node
        # One remote is dead: the upload still ends on three hosts.
        await self.servers[3].stop()
        data = os.urandom(200_000)
        filehash, key = await self.upload(data)
        await self.until_hosts(filehash, ["dav0", "dav1", "dav2"])
        ciphertext = self.copy(0, filehash).read_bytes()
        self.assertEqual(hashlib.sha256(ciphertext).hexdigest(), filehash)

        # A copy corrupted on a remote's disk: detected, skipped, the file served intact.
        self.copy(0, filehash).write_bytes(
            bytes(b ^ 0x55 for b in ciphertext[:100]) + ciphertext[100:]
        )
        node.store.cache.discard(filehash)
        response = await self.running.http.get(
            f"{self.running.url}/api/download/{filehash}?key={key}"
        )
        self.assertEqual(response.code, 200)
        self.assertEqual(await response.content(), data)
        # …and the corrupt copy is replaced by a good one (on a live host).
        await eventually(lambda: self.copy(0, filehash).read_bytes() == ciphertext, 30)
        await self.until_hosts(filehash, ["dav0", "dav1", "dav2"])

        # A copy deleted from a remote: repair finds it gone and puts it back.
        self.copy(1, filehash).unlink()
        result = await node.repair.run_once()
        self.assertIn((filehash, "dav1"), result.missing)
        # Listed once rclone is done (the WebDAV server writes the file as it comes in).
        await self.until_hosts(filehash, ["dav0", "dav1", "dav2"])
        self.assertEqual(self.copy(1, filehash).read_bytes(), ciphertext)

    async def test_partial_success_finished_when_a_remote_returns(self) -> None:
        await self.servers[2].stop()
        await self.servers[3].stop()
        filehash, _ = await self.upload(b"two of three, then three")
        await self.until_hosts(filehash, ["dav0", "dav1"])
        status = await json_of(await self.running.http.get(self.running.url + "/api/status"))
        self.assertEqual(status["sync"]["cloud_queue"]["count"], 1)
        await self.servers[2].start()  # back, at the same address
        await self.until_hosts(filehash, ["dav0", "dav1", "dav2"])
        status = await json_of(await self.running.http.get(self.running.url + "/api/status"))
        self.assertEqual(status["sync"]["cloud_queue"], {"count": 0, "size": 0})
