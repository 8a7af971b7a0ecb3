"""
A node with millions of files (issue 19): does every per-request and
per-round cost stay flat as the catalog grows?

For each size (files in the catalog) a database is built through the node's
own schema as a year-old node has it (tests/catalogs.py: each file with a
copy on each of 3 local hosts, published in batches, read back from the
chain as claims), then:

- the real node is started on it (twistd in a child process, as bench/_node.py
  does): the time from its start until it listens, and its idle RSS;
- p50/p99 of C{GET /api/status}, C{GET /api/find/<hash>} (random files of the
  catalog), a 10 KiB upload and a cached download, one request at a time on
  one kept-alive connection;
- in a child process, in-process against the same database: repair rounds
  (the real L{Repair} over hosts that hold every copy) and chain-reader rounds
  (the real L{Reader} and florincoin adapter on tests/fakes/florincoind.py),
  each of one block carrying a batch of 100 records, and the reader's share
  of its round spent waiting for the database (the rest is its RPC calls to
  the fake chain, and their decoding).

Usage::

    python bench/scale.py [--sizes 1000,100000,1000000]
                          [--database postgresql://root@127.0.0.1:5432/test]
                          [--requests 200] [--cache-blobs 10000,100000]
                          [--keep FOLDER]

C{--database} names a PostgreSQL server (any database on it): each size gets a
database of its own there, dropped at the end. Without it, SQLite in the
node's data directory.

C{--keep FOLDER} keeps each size's catalog instead (FOLDER/<size>-<backend>:
the work folder, and catalog.json naming the PostgreSQL database), and a run
given the same folder measures a catalog kept there as is, without building it:
ten million files are built once per backend and measured many times, each time
finding other random files (the last run's are in the page cache). Each run
adds its uploads and the reader's records to the kept catalog (a few hundred
rows). Drop a kept PostgreSQL database with C{DROP DATABASE} and remove the
folder when done.

The cache phase: bench/scale_cache.py, when present, provides
C{cache_phase(work, toml, files, blobs, log) -> dict[str, str]}: given the
size's work directory, the node's config (TOML text, database included) and
the catalog's size, it fills the node's cache with C{blobs} blobs, measures
what it will, and returns columns for the table; it is run for each of
C{--cache-blobs}.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from random import Random

from _node import ROOT, Node, fresh_database, rss_mib, upload_body

sys.path.insert(0, str(ROOT))

from tests.catalogs import build, filehash

HOSTS = ("local1", "local2", "local3")
UPLOAD_SIZE = 10 * 1024
ROUNDS = 5  # repair and reader rounds measured per size
RECORDS = 100  # in the reader's block


def percentiles(samples: list[float]) -> tuple[float, float]:
    """(p50, p99) in milliseconds."""
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return statistics.median(ordered) * 1000, p99 * 1000


def config_toml(work: Path, url: str) -> str:
    hosts = "".join(
        f'[[hosts]]\nname = "{name}"\nkind = "local"\npath = "{work / "hosts" / name}"\n\n'
        for name in HOSTS
    )
    return (
        f'[database]\nurl = "{url}"\n\n'
        '[storage]\ncapacity = "10 GiB"\n\n'
        # Repair is measured on its own (the built copies are not on the hosts): not in the node.
        "[replication]\nrepair_interval = 86400\n\n"
        f"{hosts}"
    )


def mark_hosts(work: Path) -> None:
    """The catalog puts copies on the hosts: their folders are marked, or taken for unmounted."""
    from metadisk.store.hosts.local import MARKER

    for name in HOSTS:
        folder = work / "hosts" / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / MARKER).write_text("built by bench/scale.py\n")


class Client:
    """One kept-alive connection to the node, timing each request."""

    def __init__(self, port: int) -> None:
        self._connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict | None = None
    ) -> tuple[float, int, bytes]:
        start = time.perf_counter()
        self._connection.request(method, path, body=body, headers=headers or {})
        response = self._connection.getresponse()
        data = response.read()
        return time.perf_counter() - start, response.status, data

    def close(self) -> None:
        self._connection.close()


def requests(node: Node, files: int, n: int, seed: int) -> dict[str, tuple[float, float]]:
    client = Client(node.port)
    rng = Random(seed)
    token = node.funded_token(10**12)
    figures: dict[str, list[float]] = {"status": [], "find": [], "upload": [], "download": []}
    uploaded: list[tuple[str, str]] = []
    for _ in range(n):
        seconds, code, _ = client.request("GET", "/api/status")
        assert code == 200, code
        figures["status"].append(seconds)
        seconds, code, _ = client.request("GET", f"/api/find/{filehash(rng.randrange(files))}")
        assert code == 200, code
        figures["find"].append(seconds)
        body, headers = upload_body(os.urandom(UPLOAD_SIZE), token)
        seconds, code, answer = client.request("POST", "/api/upload", body, headers)
        assert code == 201, (code, answer)
        figures["upload"].append(seconds)
        reply = json.loads(answer)
        uploaded.append((reply["filehash"], reply["key"]))
    for filehash_, key in uploaded:
        seconds, code, data = client.request(
            "GET", f"/api/download/{filehash_}?key={key}&token={token}"
        )
        assert code == 200 and len(data) == UPLOAD_SIZE, code
        figures["download"].append(seconds)
    client.close()
    return {name: percentiles(samples) for name, samples in figures.items()}


def child(mode: str, url: str, files: int) -> None:
    """The phases that run in a process of their own, on a reactor: build, rounds."""
    from twisted.internet import defer, task

    async def main(reactor: object) -> None:
        from metadisk.db import open_database

        db = await open_database(url, reactor)
        try:
            if mode == "build":
                await build(db, files, HOSTS)
            else:
                print(json.dumps(await rounds(db, reactor, files)))
        finally:
            await db.close()

    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))


async def rounds(db: object, reactor: object, files: int) -> dict[str, float]:
    """p50 (ms) of repair rounds and of reader rounds of one block of RECORDS records."""
    from attrs import define
    from twisted.internet.defer import succeed
    from zope.interface import implementer

    from metadisk.chain.florincoin import Florincoin
    from metadisk.chain.reader import Reader
    from metadisk.chain.rpc import JSONRPCClient
    from metadisk.interfaces import IFileHost
    from metadisk.metrics import Metrics
    from metadisk.store.repair import Repair
    from tests.fakes.florincoind import FakeFlorincoind

    @implementer(IFileHost)
    @define
    class Holding:
        """A host that holds every copy: repair's round is its database work and its checks."""

        name: str

        def exists(self, filehash: str, url: str) -> object:
            return succeed(True)

    @define
    class Sync:
        metrics: Metrics

        def unhealthy(self) -> list[str]:
            return []

    hosts = [Holding(name) for name in HOSTS]
    repair = Repair(
        db=db,
        sync=Sync(Metrics()),
        cache=None,
        hosts=hosts,
        clock=reactor,
        run_blocking=None,
        sample=20,
    )
    repair_times = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        done = await repair.run_once()
        repair_times.append(time.perf_counter() - start)
        assert done.checked == 20 and not done.missing, done

    from treq.client import HTTPClient
    from twisted.web.client import Agent

    fake = FakeFlorincoind()
    # A chain of the same height whatever the catalog: the fake looks blocks up one by one,
    # and a taller chain would time the fake, not the node.
    fake.mine(1000)
    port, chain_url = fake.listen(reactor)
    rpc = JSONRPCClient.from_url(chain_url, HTTPClient(Agent(reactor)), reactor, 30.0)
    tip = len(fake.blocks) - 1
    await db.execute("DELETE FROM chain_blocks")  # its hashes are not the fake chain's
    timed = Timed(db)
    reader = Reader(db=timed, chain=Florincoin(rpc), clock=reactor, start_height=tip + 1)
    read_times = []
    db_times = []
    for n in range(ROUNDS):
        fake.publish(
            [
                {
                    "datetime": "1700000000",
                    "filehash": uuid.uuid4().hex * 2,
                    "filename": f"theirs{n}-{i}.bin",
                    "filesize": UPLOAD_SIZE,
                    "uploads": [{"host_name": "elsewhere", "url": "https://example.com/x"}],
                    "version": "0.2",
                }
                for i in range(RECORDS)
            ]
        )
        fake.mine()
        start, timed.seconds = time.perf_counter(), 0.0
        read = await reader.read_once()
        read_times.append(time.perf_counter() - start)
        db_times.append(timed.seconds)
        assert read == 1, read
    await port.stopListening()
    return {
        "repair": statistics.median(repair_times) * 1000,
        "reader": statistics.median(read_times) * 1000,
        "reader db": statistics.median(db_times) * 1000,
    }


class Timed:
    """
    The database as the reader sees it, adding up the time until each of its
    calls fires: the reader awaits them one at a time, so their sum is its
    round's share that is the node's database; the rest is the RPC calls to
    the fake chain and their decoding.
    """

    def __init__(self, db: object) -> None:
        self._db = db
        self.dialect = db.dialect
        self.seconds = 0.0

    def _timed(self, call: Callable[[], object]) -> object:
        start = time.perf_counter()

        def done(result: object) -> object:
            self.seconds += time.perf_counter() - start
            return result

        return call().addBoth(done)

    def query(self, sql: str, params: tuple = ()) -> object:
        return self._timed(lambda: self._db.query(sql, params))

    def execute(self, sql: str, params: tuple = ()) -> object:
        return self._timed(lambda: self._db.execute(sql, params))

    def transaction(self, work: Callable, *, brief: bool = False) -> object:
        return self._timed(lambda: self._db.transaction(work, brief=brief))


def run_child(mode: str, url: str, files: int) -> str:
    result = subprocess.run(
        [sys.executable, __file__, "--child", mode, url, str(files)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    if result.returncode:
        raise RuntimeError(f"{mode} failed: {result.stderr[-2000:]}")
    return result.stdout


def measure(
    files: int,
    server: str | None,
    n: int,
    cache_blobs: list[int],
    log: Callable[[str], None],
    keep: Path | None = None,
) -> dict[str, str]:
    kept = Kept(keep, files, server) if keep else None
    if kept and kept.built is not None:
        work, url, built = kept.work, kept.url, kept.built
        # Other files than the last run's: those it found are still in the page cache.
        seed = random.SystemRandom().randrange(2**32)
        log(f"{files} files: the catalog kept in {work} (built in {built:.0f} s); seed {seed}")
        return measure_built(work, url, files, built, n, cache_blobs, log, seed)
    if kept:
        subprocess.run(["rm", "-rf", str(kept.work)], check=True)  # a build cut short
        kept.work.mkdir(parents=True)
    work = kept.work if kept else Path(tempfile.mkdtemp(prefix=f"metadisk-scale-{files}-"))
    drop = None
    if server:
        url, drop = fresh_database(server)
        # The build's own connections: no foreign-key triggers row by row, no time limit.
        build_url = f"{url}?query_timeout=86400&options=-csession_replication_role%3Dreplica"
    else:
        (work / "node").mkdir()
        url = build_url = f"sqlite:///{work / 'node' / 'metadisk.sqlite'}"
    try:
        start = time.monotonic()
        run_child("build", build_url, files)
        built = time.monotonic() - start
        if server:
            run_psql_vacuum(url)
        log(f"{files} files built in {built:.0f} s")
        mark_hosts(work)
        if kept:
            kept.record(url, built)
            drop = None
        return measure_built(work, url, files, built, n, cache_blobs, log, files)
    finally:
        if drop is not None:
            drop()
        if not kept:
            subprocess.run(["rm", "-rf", str(work)], check=False)


class Kept:
    """
    A catalog kept between runs (--keep): the work directory of one size and
    backend, and the database's URL and build time once built (catalog.json).
    """

    def __init__(self, folder: Path, files: int, server: str | None) -> None:
        self.work = folder / f"{files}-{'postgresql' if server else 'sqlite'}"
        self._file = self.work / "catalog.json"
        self.url: str = ""
        self.built: float | None = None
        if self._file.exists():
            kept = json.loads(self._file.read_text())
            self.url, self.built = kept["url"], kept["built"]

    def record(self, url: str, built: float) -> None:
        """Written last, when the catalog is whole: a build cut short is built again."""
        self._file.write_text(json.dumps({"url": url, "built": built}) + "\n")


def measure_built(
    work: Path,
    url: str,
    files: int,
    built: float,
    n: int,
    cache_blobs: list[int],
    log: Callable[[str], None],
    seed: int,
) -> dict[str, str]:
    """Start the node on a built catalog and measure it, finding the files C{seed} picks."""
    toml = config_toml(work, url)
    start = time.monotonic()
    node = Node(work, toml)
    started = time.monotonic() - start
    try:
        time.sleep(2)
        rss = rss_mib(node.pid)
        figures = requests(node, files, n, seed)
    finally:
        node.stop()
    timed = json.loads(run_child("rounds", url, files))
    row = {
        "files": f"{files:,}",
        "build s": f"{built:.0f}",
        "start s": f"{started:.2f}",
        "RSS MiB": f"{rss:.0f}",
        **{f"{name} p50/p99 ms": f"{p50:.1f} / {p99:.1f}" for name, (p50, p99) in figures.items()},
        "repair ms": f"{timed['repair']:.1f}",
        "reader ms": f"{timed['reader']:.1f}",
        "reader's db ms": f"{timed['reader db']:.1f}",
    }
    if cache_blobs:
        from scale_cache import cache_phase  # bench/scale_cache.py

        for blobs in cache_blobs:
            row.update(cache_phase(work, toml, files, blobs, log))
    return row


def run_psql_vacuum(url: str) -> None:
    """
    What autovacuum does after a bulk load, done before measuring: statistics,
    and the visibility map and hint bits, which the first reads of freshly
    loaded rows would otherwise write (a settled node's database has them).
    """
    import psycopg2

    connection = psycopg2.connect(url)
    connection.autocommit = True
    try:
        connection.cursor().execute("VACUUM (ANALYZE, FREEZE)")
    finally:
        connection.close()


def table(rows: list[dict[str, str]]) -> str:
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row.get(c, "") for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,100000,1000000")
    parser.add_argument("--database", help="a postgresql:// URL of a server (default: SQLite)")
    parser.add_argument("--requests", type=int, default=200, help="of each kind, per size")
    parser.add_argument("--cache-blobs", default="", help="sizes of the cache phase, if any")
    parser.add_argument(
        "--keep",
        type=Path,
        help="a folder where each size's catalog is kept after the run (its work folder,"
        " and its PostgreSQL database, named in catalog.json), and found and measured"
        " as is, without building, by the next run given the same folder",
    )
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    cache_blobs = [int(s) for s in args.cache_blobs.split(",") if s]
    rows = []
    for files in sizes:
        rows.append(measure(files, args.database, args.requests, cache_blobs, print, args.keep))
        print(table(rows[-1:]), flush=True)
    backend = "PostgreSQL" if args.database else "SQLite"
    print(f"\n{backend}, {args.requests} requests of each kind per size\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
