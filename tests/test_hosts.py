"""
One behaviour suite (L{FileHostTestsMixin}) for every kind of file host:
a local directory, a real `rclone serve webdav`, and plowshare (the fake
plowup/plowdown/plowprobe of tests/fakes, which behave and fail like the real ones).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from attrs import define
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import fail
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from zope.interface.verify import verifyObject

from metadisk.config import HostConfig
from metadisk.interfaces import IFileHost
from metadisk.store.blocking import in_caller
from metadisk.store.hosts import SLOWEST_RATE, HostError, Stored, local, make_host
from metadisk.store.hosts.local import MARKER, LocalDirectoryHost
from metadisk.store.hosts.plowshare import PlowshareHost
from metadisk.store.hosts.process import ProcessFailed, ProcessRunner, ProcessTimedOut
from metadisk.store.hosts.rclone import MIN_RUN, RcloneHost, object_url, public_location
from metadisk.store.shards import sharded
from tests.fakes import (
    RecordingRunner,
    WebDAVServer,
    hung_pids,
    is_gone,
    plowshare_env,
    require_tool,
    set_plowshare_mode,
)
from tests.fakes.refusing_proxy import HANG, RefusingProxy, Rule, always, first
from tests.support import eventually

HANG_TIMEOUT = 1.5  # seconds a hanging tool gets before it is killed
BLOB_SIZE = 256 * 1024  # bytes of a test blob, unless a test says otherwise


def host_config(name: str, kind: str, setting: str) -> HostConfig:
    """A C{[[hosts]]} entry of C{kind} whose one setting is C{setting}."""
    key = {"local": "path", "rclone": "remote", "plowshare": "site"}[kind]
    return HostConfig(name=name, kind=kind, **{key: setting})


def make_blob(folder: Path, size: int, seed: bytes = b"") -> tuple[str, Path, bytes]:
    """(filehash, path, content) of a blob of C{size} bytes."""
    content = (hashlib.sha256(seed + size.to_bytes(8, "big")).digest() * (size // 32 + 1))[:size]
    content = os.urandom(16) + content[16:] if size >= 16 else content
    filehash = hashlib.sha256(content).hexdigest()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / filehash
    path.write_bytes(content)
    return filehash, path, content


class FileHostTestsMixin:
    """
    What every L{IFileHost} does. The test case sets C{self.host} and a
    C{self.work} folder and implements C{lose}, C{break_host} and
    C{hang_host} (the last two may skip where a host cannot be broken so).
    """

    host: Any
    work: Path
    timeout = 60

    async def lose(self, filehash: str, url: str) -> None:
        raise NotImplementedError

    async def break_host(self) -> None:
        raise NotImplementedError

    async def hang_host(self) -> None:
        raise NotImplementedError

    def blob(self, size: int = BLOB_SIZE, seed: bytes = b"") -> tuple[str, Path, bytes]:
        return make_blob(self.work / "blobs", size, seed)

    def test_provides_interface(self) -> None:
        verifyObject(IFileHost, self.host)
        self.assertIsInstance(self.host.name, str)

    async def test_store_all(self) -> None:
        """Several blobs as one job: each as store() would leave it; a bad one fails alone."""
        blobs = [self.blob(seed=b"%d" % i) for i in range(3)]
        missing = self.work / "blobs" / "gone"
        given = [(filehash, str(path)) for filehash, path, _ in blobs]
        given.insert(1, ("not a filehash", str(blobs[0][1])))
        given.append(("ab" * 32, str(missing)))  # a blob whose file is not there
        results = await self.host.store_all(given)
        self.assertEqual(len(results), len(given))
        self.assertIsInstance(results[1], HostError)
        self.assertIsInstance(results[-1], HostError)
        stored = [results[0], *results[2:-1]]
        for (filehash, _, content), url in zip(blobs, stored, strict=True):
            self.assertIsInstance(url, str)
            self.assertIs(await self.host.exists(filehash, url), True)
            destination = self.work / f"fetched-{filehash}"
            await self.host.fetch(filehash, url, str(destination), BLOB_SIZE)
            self.assertEqual(destination.read_bytes(), content)
        self.assertEqual(await self.host.store_all([]), [])

    async def test_round_trip(self) -> None:
        """A stored blob exists and comes back byte for byte."""
        filehash, path, content = self.blob()
        url = await self.host.store(filehash, str(path))
        self.assertIsInstance(url, str)
        self.assertTrue(url)
        self.assertIs(await self.host.exists(filehash, url), True)
        destination = self.work / "fetched"
        await self.host.fetch(filehash, url, str(destination), BLOB_SIZE)
        self.assertEqual(destination.read_bytes(), content)

    async def test_blobs_kept_apart(self) -> None:
        first, first_path, first_content = self.blob(1000, b"a")
        second, second_path, second_content = self.blob(3000, b"b")
        first_url = await self.host.store(first, str(first_path))
        second_url = await self.host.store(second, str(second_path))
        await self.host.fetch(second, second_url, str(self.work / "2"), 3000)
        await self.host.fetch(first, first_url, str(self.work / "1"), 1000)
        self.assertEqual((self.work / "1").read_bytes(), first_content)
        self.assertEqual((self.work / "2").read_bytes(), second_content)

    async def test_store_again(self) -> None:
        """Storing a blob twice (a retry, a repair) works and leaves a good copy."""
        filehash, path, content = self.blob()
        await self.host.store(filehash, str(path))
        url = await self.host.store(filehash, str(path))
        await self.host.fetch(filehash, url, str(self.work / "fetched"), BLOB_SIZE)
        self.assertEqual((self.work / "fetched").read_bytes(), content)

    async def test_fetch_replaces_destination(self) -> None:
        filehash, path, content = self.blob()
        url = await self.host.store(filehash, str(path))
        destination = self.work / "fetched"
        destination.write_bytes(b"left over from an earlier try" * 100000)
        await self.host.fetch(filehash, url, str(destination), BLOB_SIZE)
        self.assertEqual(destination.read_bytes(), content)

    async def test_lost_copy(self) -> None:
        """A copy deleted behind the host's back: exists says False, fetch fails cleanly."""
        filehash, path, _ = self.blob()
        url = await self.host.store(filehash, str(path))
        await self.lose(filehash, url)
        self.assertIs(await self.host.exists(filehash, url), False)
        folder = self.work / "down"
        folder.mkdir()
        with self.assertRaises(HostError):
            await self.host.fetch(filehash, url, str(folder / "fetched"), BLOB_SIZE)
        self.assertEqual(os.listdir(folder), [])  # no partial file, no temporary left

    async def test_not_a_filehash(self) -> None:
        """Only filehashes become object names: nothing else reaches a path or a command."""
        _, path, _ = self.blob()
        for bad in ("../../etc/passwd", "-rf", "A" * 64 + "/x", ""):
            with self.assertRaises(HostError):
                await self.host.store(bad, str(path))
            with self.assertRaises(HostError):
                await self.host.exists(bad, "http://example.net/1")
            with self.assertRaises(HostError):
                await self.host.fetch(bad, "http://example.net/1", str(self.work / "x"), BLOB_SIZE)

    async def test_unreachable_is_an_error_not_a_missing_copy(self) -> None:
        """A host that cannot be reached fails every call; exists never answers False."""
        filehash, path, _ = self.blob()
        url = await self.host.store(filehash, str(path))
        await self.break_host()
        with self.assertRaises(HostError):
            await self.host.exists(filehash, url)
        with self.assertRaises(HostError):
            await self.host.store(filehash, str(path))
        folder = self.work / "down"
        folder.mkdir()
        with self.assertRaises(HostError):
            await self.host.fetch(filehash, url, str(folder / "fetched"), BLOB_SIZE)
        self.assertEqual(os.listdir(folder), [])

    async def test_hanging_tool_killed(self) -> None:
        """A host that never answers: the call fails at the runner's timeout."""
        filehash, path, _ = self.blob()
        url = await self.host.store(filehash, str(path))
        await self.hang_host()
        started = reactor.seconds()
        with self.assertRaises(ProcessTimedOut):
            await self.host.exists(filehash, url)
        self.assertLess(reactor.seconds() - started, HANG_TIMEOUT + 5)
        # The killed tool is reaped and its slot given back.
        await eventually(lambda: self.host._runner.running == 0, 10)


class LocalDirectoryHostTests(FileHostTestsMixin, TestCase):
    def setUp(self) -> None:
        self.work = Path(self.mktemp()).resolve()
        self.root = self.work / "host"
        self.host = LocalDirectoryHost(
            name="local1",
            root=self.root,
            run_blocking=in_caller,
            public_url="https://files.example/metadisk/",
        )

    async def lose(self, filehash: str, url: str) -> None:
        sharded(self.root, filehash).unlink()

    async def break_host(self) -> None:
        # Its disk unmounted: what is left is the mount point, an empty folder.
        self.root.rename(self.work / "disk")
        self.root.mkdir()

    async def hang_host(self) -> None:
        raise SkipTest("a local directory runs no process")

    async def test_a_copy_has_a_public_url_or_none(self) -> None:
        """Never the folder's own path: a record goes on a public chain."""
        filehash, path, _ = self.blob()
        url = await self.host.store(filehash, str(path))
        self.assertEqual(url, f"https://files.example/metadisk/{filehash[:2]}/{filehash}")
        unserved = LocalDirectoryHost(
            name="local2", root=self.work / "unserved", run_blocking=in_caller
        )
        self.assertEqual(await unserved.store(filehash, str(path)), "")
        self.assertIs(await unserved.exists(filehash, ""), True)

    async def test_claim(self) -> None:
        """
        At start a folder becomes the host's (its marker written) unless it
        holds none of the copies the records put there: an unmounted disk.
        """
        self.assertTrue(await self.host.claim(holds_copies=False))  # new: made and marked
        self.assertTrue((self.root / MARKER).is_file())
        filehash, path, _ = self.blob()
        url = await self.host.store(filehash, str(path))
        self.assertTrue(await self.host.claim(holds_copies=True))

        await self.break_host()
        self.assertFalse(await self.host.claim(holds_copies=True))
        with self.assertRaises(HostError):
            await self.host.store(filehash, str(path))
        self.assertEqual(os.listdir(self.root), [])  # nothing written on the mount point

        # Mounted again: the copies are there as they were.
        self.root.rmdir()
        (self.work / "disk").rename(self.root)
        self.assertTrue(await self.host.claim(holds_copies=True))
        self.assertIs(await self.host.exists(filehash, url), True)

        # A folder of blobs from before markers is taken as it is.
        (self.root / MARKER).unlink()
        self.assertTrue(await self.host.claim(holds_copies=True))
        self.assertTrue((self.root / MARKER).is_file())

    def flat_folder(self, n: int) -> list[tuple[str, bytes]]:
        """A host folder of the flat layout (a node from before shards), marked."""
        self.root.mkdir(parents=True)
        (self.root / MARKER).write_text("MetaDisk blobs of host local1; do not delete.\n")
        blobs = []
        for i in range(n):
            filehash, _, content = make_blob(self.root, 100 + i, seed=b"flat")
            blobs.append((filehash, content))
        return blobs

    async def found(self, filehash: str, content: bytes) -> None:
        self.assertIs(await self.host.exists(filehash, ""), True)
        back = self.work / "back"
        await self.host.fetch(filehash, "", str(back), len(content))
        self.assertEqual(back.read_bytes(), content)

    async def test_flat_folder_moved_into_shards(self) -> None:
        """
        An old folder: its copies are found where they are, then moved into
        their shards (in batches), the marker left at the folder's root.
        """
        self.patch(local, "MOVE_BATCH", 2)
        blobs = self.flat_folder(5)
        self.assertTrue(await self.host.claim(holds_copies=True))
        for filehash, content in blobs:
            await self.found(filehash, content)
        self.assertEqual(await self.host.move_flat(), 5)
        for filehash, content in blobs:
            self.assertTrue(sharded(self.root, filehash).is_file())
            self.assertFalse((self.root / filehash).exists())
            await self.found(filehash, content)
        self.assertTrue((self.root / MARKER).is_file())
        self.assertEqual(await self.host.move_flat(), 0)  # nothing left: a look at the root
        # Marked and sharded: a start on it takes it as its own.
        (self.root / MARKER).unlink()
        self.assertTrue(await self.host.claim(holds_copies=True))

    async def test_crash_mid_move(self) -> None:
        """
        A crash while moving: a copy in its shard only, one still flat, one
        in both places (a copy stored again before it moved). Each is found;
        the next move finishes, each copy in one place, whole.
        """
        blobs = self.flat_folder(3)
        [moved, _, both] = [filehash for filehash, _ in blobs]
        for filehash in (moved, both):
            sharded(self.root, filehash).parent.mkdir(exist_ok=True)
            shutil.copy(self.root / filehash, sharded(self.root, filehash))
        (self.root / moved).unlink()
        for filehash, content in blobs:
            await self.found(filehash, content)
        self.assertEqual(await self.host.move_flat(), 2)
        for filehash, content in blobs:
            self.assertFalse((self.root / filehash).exists())
            self.assertEqual(sharded(self.root, filehash).read_bytes(), content)

    async def test_a_copy_moved_while_it_is_looked_for(self) -> None:
        """
        The move renames a flat copy into its shard between the host's look at
        the shard and its look at the flat place: the copy is still there, to
        repair's question and to a fetch (a copy said gone would be forgotten).
        """
        [(filehash, content)] = self.flat_folder(1)
        self.assertTrue(await self.host.claim(holds_copies=True))
        flat_place = local.flat

        looks: list[Path] = []

        @define
        class MovedAfterFirstLook:
            """The flat place, its copy renamed into the shard once it has been seen there."""

            place: Path

            def is_file(self) -> bool:
                looks.append(self.place)
                if len(looks) == 2 and self.place.is_file():
                    sharded(self.place.parent, self.place.name).parent.mkdir(exist_ok=True)
                    os.rename(self.place, sharded(self.place.parent, self.place.name))
                return self.place.is_file()

        self.patch(local, "flat", lambda root, name: MovedAfterFirstLook(flat_place(root, name)))
        self.assertTrue(await self.host.exists(filehash, ""))
        # Flat again; this time the move comes between finding it and reading it.
        if sharded(self.root, filehash).is_file():
            os.rename(sharded(self.root, filehash), self.root / filehash)
        self.patch(local, "flat", flat_place)
        copy = local._copy

        def copy_moved_meanwhile(source: Path, destination: Path) -> None:
            if source.is_file() and source == flat_place(self.root, filehash):
                sharded(self.root, filehash).parent.mkdir(exist_ok=True)
                os.rename(source, sharded(self.root, filehash))
            copy(source, destination)

        self.patch(local, "_copy", copy_moved_meanwhile)
        destination = Path(self.mktemp())
        await self.host.fetch(filehash, "", str(destination), len(content))
        self.assertEqual(destination.read_bytes(), content)

    async def test_unmarked_flat_folder_not_moved(self) -> None:
        """A folder the host cannot call its own (no marker) is not touched."""
        [(filehash, _)] = self.flat_folder(1)
        (self.root / MARKER).unlink()
        self.assertEqual(await self.host.move_flat(), 0)
        self.assertTrue((self.root / filehash).is_file())

    async def test_stored_in_shards(self) -> None:
        filehash, path, content = self.blob()
        await self.host.store(filehash, str(path))
        self.assertEqual(sharded(self.root, filehash).read_bytes(), content)
        self.assertEqual(sorted(os.listdir(self.root)), sorted([MARKER, filehash[:2]]))

    async def test_folder_inside_an_unmounted_disk(self) -> None:
        """A host folder below the mount point is gone with the disk: not made again."""
        mount = self.work / "mnt"
        host = LocalDirectoryHost(name="local2", root=mount / "metadisk", run_blocking=in_caller)
        self.assertTrue(await host.claim(holds_copies=False))
        filehash, path, _ = self.blob()
        url = await host.store(filehash, str(path))
        mount.rename(self.work / "disk")
        mount.mkdir()  # unmounted
        self.assertFalse(await host.claim(holds_copies=True))
        self.assertEqual(os.listdir(mount), [])
        with self.assertRaises(HostError):
            await host.exists(filehash, url)
        with self.assertRaises(HostError):
            await host.store(filehash, str(path))
        self.assertEqual(os.listdir(mount), [])

    async def test_unmarked_folder_still_serves_its_copies(self) -> None:
        """
        A folder of blobs the node cannot mark (read-only, say) serves and
        confirms the copies it has; it never says one is gone.
        """
        filehash, path, content = self.blob()
        url = await self.host.store(filehash, str(path))
        (self.root / MARKER).unlink()
        (self.root / MARKER).mkdir()  # a marker that cannot be written
        self.assertFalse(await self.host.claim(holds_copies=True))
        self.assertIs(await self.host.exists(filehash, url), True)
        await self.host.fetch(filehash, url, str(self.work / "back"), len(content))
        self.assertEqual((self.work / "back").read_bytes(), content)
        other, _, _ = self.blob(seed=b"other")
        with self.assertRaises(HostError):
            await self.host.exists(other, url)
        with self.assertRaises(HostError):
            await self.host.store(filehash, str(path))

    async def test_unusable_folder(self) -> None:
        """A path that cannot be the folder (a file there) is refused, and taken once fixed."""
        self.work.mkdir(parents=True)
        self.root.write_bytes(b"not a folder")
        self.assertFalse(await self.host.claim(holds_copies=False))
        filehash, path, _ = self.blob()
        with self.assertRaises(HostError):
            await self.host.store(filehash, str(path))
        self.root.unlink()
        url = await self.host.store(filehash, str(path))
        self.assertIs(await self.host.exists(filehash, url), True)


class RcloneHostTests(FileHostTestsMixin, TestCase):
    """Against a real `rclone serve webdav` on loopback."""

    async def setUp(self) -> None:
        require_tool("rclone")
        self.work = Path(self.mktemp()).resolve()
        self.server = WebDAVServer(self.work / "served")
        await self.server.start()
        self.addCleanup(self.server.stop)
        self.env = {**os.environ, "RCLONE_CONFIG": os.devnull}
        self.host = self.rclone(self.remote_at(self.server.url))

    def remote_at(self, url: str) -> str:
        """This case's remote on the WebDAV server at C{url}: the folder in the remote's path."""
        return f":webdav,url='{url}':blobs"

    def rclone(self, remote: str, timeout: float = 30.0) -> RcloneHost:
        runner = ProcessRunner(reactor=reactor, clock=reactor, timeout=timeout, env=self.env)
        return RcloneHost(name="webdav1", remote=remote, runner=runner, run_blocking=in_caller)

    async def lose(self, filehash: str, url: str) -> None:
        (self.server.root / "blobs" / filehash).unlink()

    async def test_store_all_is_few_runs(self) -> None:
        """
        Many blobs, a few rclone processes: a process a blob is most of a small
        blob's cost, and one process waits on its backend's pacer, so a large
        batch is split over the processes the runner allows, answers in order.
        """
        runs = self.count_runs(self.host)
        for count, expected in [(5, 1), (2 * MIN_RUN + 1, 2)]:
            del runs[:]
            blobs = [self.blob(seed=b"%d-%d" % (count, i)) for i in range(count)]
            urls = await self.host.store_all([(filehash, str(path)) for filehash, path, _ in blobs])
            self.assertEqual([args[0] for args in runs], ["copy"] * expected)
            for (filehash, _, content), url in zip(blobs, urls, strict=True):
                self.assertEqual((self.server.root / "blobs" / filehash).read_bytes(), content)
                self.assertEqual(url, object_url(self.server.remote(), filehash))

    def count_runs(self, host: RcloneHost) -> list[tuple[str, ...]]:
        """The arguments of each rclone run C{host} makes from now on."""
        runs: list[tuple[str, ...]] = []
        runner = host._runner

        class Counting:
            timeout = runner.timeout
            max_processes = runner.max_processes

            @property
            def running(self) -> int:
                return runner.running

            def run(self, tool: Any, args: tuple[str, ...], **options: Any) -> Any:
                runs.append(args)
                return runner.run(tool, args, **options)

        host._runner = Counting()
        return runs

    async def store_through(
        self, rule: Rule, blobs: list[tuple[str, Path, bytes]], timeout: float = 30.0
    ) -> tuple[list[Stored], list[str]]:
        """
        C{blobs} stored in one store_all through a proxy that refuses what
        C{rule} says: what it gave for each, and the actions of its runs.
        """
        self.proxy = await RefusingProxy.start(self, self.server.url, rule)
        host = self.through = self.rclone(self.remote_at(self.proxy.url), timeout)
        runs = self.count_runs(host)
        stored = await host.store_all([(filehash, str(path)) for filehash, path, _ in blobs])
        return stored, [args[0] for args in runs]

    def assert_stored(self, blob: tuple[str, Path, bytes], url: Stored) -> None:
        filehash, _, content = blob
        self.assertEqual((self.server.root / "blobs" / filehash).read_bytes(), content)
        self.assertEqual(url, f"{self.proxy.url}/blobs/{filehash}")

    async def test_refused_for_a_moment(self) -> None:
        """
        A request the remote refuses for a moment (423 Locked: what rclone
        serve webdav answers to two MKCOLs of one folder at once, which
        parallel runs send) is retried within the run, as rclone retries such
        answers: the batch still takes one run, not one more a blob.
        """
        blobs = [self.blob(seed=b"%d" % i) for i in range(5)]
        # The first MKCOL, or the first PUT where there is none (the folder in the URL).
        stored, runs = await self.store_through(first((b"MKCOL", b"PUT"), 423), blobs)
        self.assertEqual([status for _, _, status in self.proxy.refused], [423])
        self.assertEqual(runs, ["copy"])
        for blob, url in zip(blobs, stored, strict=True):
            self.assert_stored(blob, url)

    async def test_failed_run_retries_only_what_it_did_not_copy(self) -> None:
        """
        A run that fails for one blob (a 403 is not retried) copied the
        others: only that one is tried again, alone, and its second try is
        its answer.
        """
        blobs = [self.blob(seed=b"%d" % i) for i in range(5)]
        stored, runs = await self.store_through(first((b"PUT",), 403), blobs)
        self.assertEqual([status for _, _, status in self.proxy.refused], [403])
        self.assertEqual(runs, ["copy", "copyto"])
        for blob, url in zip(blobs, stored, strict=True):
            self.assert_stored(blob, url)

    async def test_failed_run_answers_for_each_blob(self) -> None:
        """A blob the remote always refuses fails alone; the run's others are stored."""
        blobs = [self.blob(seed=b"%d" % i) for i in range(5)]
        refused = blobs[2][0]
        stored, runs = await self.store_through(always(b"PUT", refused, 403), blobs)
        self.assertEqual(runs, ["copy", "copyto"])
        self.assertIsInstance(stored[2], HostError)
        self.assertIn("403", str(stored[2]))
        self.assertFalse((self.server.root / "blobs" / refused).exists())
        for i in (0, 1, 3, 4):
            self.assert_stored(blobs[i], stored[i])

    async def test_killed_run_keeps_what_it_copied(self) -> None:
        """
        A run cut short by its timeout: the blobs its log says it copied stay
        copied (no second run), the rest are tried alone.
        """
        blobs = [self.blob(size=1024, seed=b"%d" % i) for i in range(5)]
        hung = blobs[2][0]
        stored, runs = await self.store_through(always(b"PUT", hung, HANG), blobs, HANG_TIMEOUT)
        self.assertEqual(runs, ["copy", "copyto"])
        self.assertIsInstance(stored[2], ProcessTimedOut)
        for i in (0, 1, 3, 4):
            self.assert_stored(blobs[i], stored[i])
        # The killed runs are reaped and their slots given back.
        await eventually(lambda: self.through._runner.running == 0, 10)

    async def break_host(self) -> None:
        await self.server.stop()

    async def hang_host(self) -> None:
        # A server that accepts connections and never says a word.
        accepted: list[Protocol] = []

        class Silent(Protocol):
            def connectionMade(self) -> None:
                accepted.append(self)

        port = reactor.listenTCP(0, Factory.forProtocol(Silent), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.addCleanup(lambda: [p.transport.abortConnection() for p in accepted])
        silent = f":webdav,url='http://127.0.0.1:{port.getHost().port}':blobs"
        self.host = self.rclone(silent, timeout=HANG_TIMEOUT)

    async def test_published_url_reads_the_blob(self) -> None:
        """A WebDAV remote's copy is published as its HTTP URL: other nodes can read it."""
        filehash, path, content = self.blob()
        url = await self.host.store(filehash, str(path))
        self.assertEqual(url, f"{self.server.url}/blobs/{filehash}")
        http = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
        response = await http.get(url)
        self.assertEqual((response.code, await response.content()), (200, content))

    async def test_errors_hide_connection_parameters(self) -> None:
        """Connection-string parameters (credentials) stay out of URLs and error messages."""
        remote = f":webdav,url='{self.server.url}',user=alice,pass=c2VjcmV0:blobs"
        host = self.rclone(remote)
        filehash, path, _ = self.blob()
        await self.server.stop()
        with self.assertRaises(HostError) as caught:
            await host.store(filehash, str(path))
        self.assertNotIn("alice", str(caught.exception))
        self.assertNotIn("c2VjcmV0", str(caught.exception))
        self.assertIn(":webdav:blobs", str(caught.exception))

    async def test_dead_remote_fails_fast(self) -> None:
        filehash, path, _ = self.blob()
        await self.server.stop()
        started = reactor.seconds()
        with self.assertRaises(ProcessFailed):
            await self.host.store(filehash, str(path))
        self.assertLess(reactor.seconds() - started, 10)

    async def test_named_by_filehash(self) -> None:
        """One object per blob, its name the filehash, its content the raw ciphertext."""
        filehash, path, content = self.blob()
        await self.host.store(filehash, str(path))
        self.assertEqual((self.server.root / "blobs" / filehash).read_bytes(), content)
        self.assertEqual(os.listdir(self.server.root / "blobs"), [filehash])

    def test_public_location(self) -> None:
        h = "ab" * 32
        self.assertEqual(
            public_location(":s3,access_key_id=AK,secret_access_key='S:K':bucket/p"), ":s3:bucket/p"
        )
        self.assertEqual(public_location("mys3:bucket/prefix"), "mys3:bucket/prefix")
        self.assertEqual(public_location("/srv/blobs"), "/srv/blobs")
        self.assertEqual(object_url(":s3,secret_access_key=SK:bucket", h), f":s3:bucket/{h}")
        self.assertEqual(object_url("mys3:bucket/p", h), f"mys3:bucket/p/{h}")
        self.assertEqual(
            object_url(":webdav,url='https://u:pw@dav.example/dav/',pass=x:a/b", h),
            f"https://dav.example/dav/a/b/{h}",
        )


class RcloneFolderInURLTests(RcloneHostTests):
    """
    The same, the folder named in the WebDAV URL rather than in the remote's
    path (README: rclone then sends no MKCOL of it before each PUT); the
    folder is there beforehand, as it must be.
    """

    async def setUp(self) -> None:
        await super().setUp()
        (self.server.root / "blobs").mkdir()

    def remote_at(self, url: str) -> str:
        return f":webdav,url='{url}/blobs':"

    async def test_no_folder_made_before_each_blob(self) -> None:
        seen: list[bytes] = []

        def record(method: bytes, path: bytes) -> None:
            seen.append(method)

        blobs = [self.blob(seed=b"%d" % i) for i in range(5)]
        stored, runs = await self.store_through(record, blobs)
        self.assertEqual((runs, seen.count(b"PUT"), seen.count(b"MKCOL")), (["copy"], 5, 0))
        for blob, url in zip(blobs, stored, strict=True):
            self.assert_stored(blob, url)


class PlowshareHostTests(FileHostTestsMixin, TestCase):
    """Against the fake plowshare tools: the same arguments, output and exit codes."""

    def setUp(self) -> None:
        require_tool("python3")  # the fakes' interpreter
        self.work = Path(self.mktemp()).resolve()
        self.sites = self.work / "sites"
        self.env = plowshare_env(self.sites)
        self.host = self.plowshare("rghost")
        # plowdown's folders are temporary: none is left behind, whatever happened.
        scratch = self.work / "tmp"
        scratch.mkdir()
        self.patch(tempfile, "tempdir", str(scratch))
        self.addCleanup(lambda: self.assertEqual(os.listdir(scratch), []))

    def plowshare(self, site: str, timeout: float = 30.0) -> PlowshareHost:
        runner = ProcessRunner(
            reactor=reactor, clock=reactor, timeout=timeout, kill_grace=2, env=self.env
        )
        return PlowshareHost(name="plow1", site=site, runner=runner, run_blocking=in_caller)

    def mode(self, mode: str) -> None:
        set_plowshare_mode(self.sites, "rghost", mode)

    async def lose(self, filehash: str, url: str) -> None:
        shutil.rmtree(self.sites / "rghost" / url.rsplit("/", 1)[1])

    async def break_host(self) -> None:
        self.mode("network")

    async def hang_host(self) -> None:
        self.mode("hang")
        self.host = self.plowshare("rghost", timeout=HANG_TIMEOUT)

    async def test_hanging_tool_killed(self) -> None:
        await super().test_hanging_tool_killed()
        # plowshare runs curl under bash: the tool and its child are both gone.
        pids = hung_pids(self.sites)
        self.assertEqual(len(pids), 2)
        await eventually(lambda: all(is_gone(pid) for pid in pids), 10)

    async def test_url_from_last_token(self) -> None:
        """plowup prints '#DEL <link>' first and the download link last."""
        filehash, path, _ = self.blob()
        url = await self.host.store(filehash, str(path))
        self.assertRegex(url, r"^http://rghost\.example\.net/[0-9a-f]+$")
        # Stored under the filehash as its name: plowup was given FILE:filehash.
        [stored] = (self.sites / "rghost" / url.rsplit("/", 1)[1]).iterdir()
        self.assertEqual(stored.name, filehash)

    async def test_garbage_output(self) -> None:
        """A site answering an error page with exit 0: no link, so no copy."""
        filehash, path, _ = self.blob()
        url = await self.host.store(filehash, str(path))
        self.mode("garbage")
        with self.assertRaises(HostError) as caught:
            await self.host.store(filehash, str(path))
        self.assertIn("no link", str(caught.exception))
        with self.assertRaises(HostError):
            await self.host.exists(filehash, url)  # an answer without the link is no answer
        folder = self.work / "down"
        folder.mkdir()
        with self.assertRaises(HostError):
            await self.host.fetch(filehash, url, str(folder / "fetched"), BLOB_SIZE)
        self.assertEqual(os.listdir(folder), [])

    async def test_partial_download(self) -> None:
        filehash, path, _ = self.blob()
        url = await self.host.store(filehash, str(path))
        self.mode("plowdown=partial")
        folder = self.work / "down"
        folder.mkdir()
        with self.assertRaises(ProcessFailed) as caught:
            await self.host.fetch(filehash, url, str(folder / "fetched"), BLOB_SIZE)
        self.assertEqual(caught.exception.code, 3)
        self.assertIn("exit 3 (network error)", str(caught.exception))
        self.assertIn("transfer closed", str(caught.exception))
        self.assertEqual(os.listdir(folder), [])

    async def test_truncated_download_is_delivered_for_verification(self) -> None:
        """A lying site (exit 0, half a file): the host hands it over, the hash check catches it."""
        filehash, path, content = self.blob()
        url = await self.host.store(filehash, str(path))
        self.mode("plowdown=truncated")
        await self.host.fetch(filehash, url, str(self.work / "fetched"), BLOB_SIZE)
        self.assertEqual((self.work / "fetched").read_bytes(), content[: len(content) // 2])

    async def test_exit_codes_explained(self) -> None:
        filehash, path, _ = self.blob()
        with self.assertRaises(ProcessFailed) as caught:
            await self.plowshare("nosuchsite").store(filehash, str(path))
        self.assertIn("exit 2 (no module for this site or link)", str(caught.exception))
        self.assertIn("unsupported module (nosuchsite)", str(caught.exception))
        self.mode("captcha")
        with self.assertRaises(ProcessFailed) as caught:
            await self.host.store(filehash, str(path))
        self.assertIn("exit 7 (captcha not solved)", str(caught.exception))

    async def test_empty_blob_refused(self) -> None:
        """plowup skips an empty file and says nothing on stdout: that is no copy."""
        filehash, path, _ = self.blob(0)
        with self.assertRaises(HostError) as caught:
            await self.host.store(filehash, str(path))
        self.assertIn("filesize is null", str(caught.exception))

    async def test_links_checked(self) -> None:
        """A URL is handed to plowdown/plowprobe only if it is a plain link."""
        filehash, _, _ = self.blob()
        for bad in ("-o/etc", "/etc/passwd", "http://x y", "file:///etc/passwd"):
            with self.assertRaises(HostError):
                await self.host.exists(filehash, bad)
            with self.assertRaises(HostError):
                await self.host.fetch(filehash, bad, str(self.work / "x"), BLOB_SIZE)


class MakeHostTests(TestCase):
    def test_kinds(self) -> None:
        root = Path(self.mktemp()).resolve()
        kinds = {
            "local": (str(root), LocalDirectoryHost),
            "rclone": (":webdav,url='http://127.0.0.1:1':b", RcloneHost),
            "plowshare": ("rghost", PlowshareHost),
        }
        for kind, (setting, cls) in kinds.items():
            host = make_host(host_config(f"h-{kind}", kind, setting), reactor, in_caller)
            self.assertIsInstance(host, cls)
            self.assertEqual(host.name, f"h-{kind}")
            verifyObject(IFileHost, host)
        with self.assertRaises(ValueError):
            HostConfig(name="x", kind="ftp")

    def test_settings_never_become_options(self) -> None:
        for kind, setting in (
            ("plowshare", "-o/etc"),
            ("plowshare", "rg host"),
            ("rclone", "--config=x"),
        ):
            with self.assertRaises(ValueError):
                make_host(host_config("x", kind, setting), reactor, in_caller)


class TransferTimeoutTests(TestCase):
    """A tool gets the runner's timeout, and the time to move the blob at the slowest rate."""

    async def check(self, host: Any, runner: RecordingRunner, actions: list[str]) -> None:
        size = 5 * SLOWEST_RATE
        filehash, path, _ = make_blob(Path(self.mktemp()).resolve(), size, b"")
        for call in (
            host.store(filehash, str(path)),
            host.fetch(filehash, "https://example.net/x", str(path) + ".back", size),
            host.exists(filehash, "https://example.net/x"),
        ):
            await self.assertFailure(call, HostError)
        self.assertEqual(
            [(action, timeout) for action, _, timeout in runner.calls],
            [(actions[0], 305.0), (actions[1], 305.0), (actions[2], host.check_timeout)],
        )
        with self.assertRaises(HostError):  # a blob that is not there has no size
            await host.store(filehash, str(path) + ".missing")

    async def test_rclone(self) -> None:
        runner = RecordingRunner(lambda: fail(HostError("recorded")))
        host = RcloneHost(
            name="r",
            remote=":webdav,url='http://127.0.0.1:1':b",
            runner=runner,
            run_blocking=in_caller,
        )
        await self.check(host, runner, ["rclone copyto", "rclone copyto", "rclone lsjson"])

    async def test_plowshare(self) -> None:
        runner = RecordingRunner(lambda: fail(HostError("recorded")))
        host = PlowshareHost(name="p", site="rghost", runner=runner, run_blocking=in_caller)
        await self.check(host, runner, ["plowup rghost", "plowdown rghost", "plowprobe rghost"])
