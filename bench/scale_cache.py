"""
A node with a large cache: how long it takes to listen, how much memory it
keeps idle, and what a cached download and a 10 KiB upload cost, with
10^4, 10^5, 10^6 small blobs in its cache (issue 19).

Each size gets a fresh data directory, filled fast and directly: the node is
started once empty (its database made), stopped, then given N blobs of
BLOB_SIZE bytes, each with its row in C{files}, written in the layout of the
tree under test (shard folders and the cache's index if the tree has
C{metadisk/store/cacheindex.py}; the flat folder otherwise, its LRU order
in mtimes). Then the real node (twistd) starts on it:

- start: from the process's start until it listens (python's own start
  included, about 0.5 s on an empty node);
- idle RSS: once the node's background work on the cache is done (the new
  code logs "cache checked"), after SETTLE seconds;
- p50/p99 of a cached download (a random cached blob, raw: no key) and of
  a 10 KiB upload, one connection kept alive, one request at a time.

    .venv/bin/python -m bench.scale_cache --sizes 10000,100000,1000000
    .venv/bin/python -m bench.scale_cache --sizes 10000 --tree /tmp/cache-before

C{--tree}: run the node of another checkout (a baseline: C{git worktree add
/tmp/cache-before main}); the bench itself is this one's. L{cache_table} is
that table; L{cache_phase} is the same measure on the node bench/scale.py
built (its catalog in SQLite or PostgreSQL), for its C{--cache-blobs}.
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import re
import secrets
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

try:
    from bench._node import ROOT, Node, address_in_log, rss_mib, upload_body
except ImportError:  # imported by bench/scale.py, run as a script: bench/ is on the path
    from _node import ROOT, Node, address_in_log, rss_mib, upload_body

BLOB_SIZE = 1024
SAMPLES = 300  # requests timed of each kind
SETTLE = 3.0  # seconds of quiet before the idle RSS is read
TOML = """
[storage]
capacity = "1 TiB"
"""


def _start(tree: Path, work: Path) -> Node:
    """Start the node of C{tree} on C{work} (its config written there)."""
    return Node(work, (work / "metadisk.toml").read_text(), root=tree, seconds=3600)


def _record(work: Path, filehashes: list[str], now: int) -> None:
    """The blobs' rows in C{files}: in the database the node's config names, else its SQLite."""
    toml = (work / "metadisk.toml").read_text()
    named = re.search(r'^url\s*=\s*"(postgres(?:ql)?://[^"]+)"', toml, re.MULTILINE)
    rows = [(f, f"{f[:7]}_blob.bin", BLOB_SIZE, now) for f in filehashes]
    if named:
        import psycopg2
        from psycopg2.extras import execute_values

        connection = psycopg2.connect(named.group(1).split("?")[0])
        with connection, connection.cursor() as cursor:
            execute_values(
                cursor,
                "INSERT INTO files (filehash, filename, filesize, datetime) VALUES %s",
                rows,
                page_size=10_000,
            )
        connection.close()
        return
    db = sqlite3.connect(work / "node" / "metadisk.sqlite")
    with db:
        db.executemany(
            "INSERT INTO files (filehash, filename, filesize, datetime) VALUES (?, ?, ?, ?)", rows
        )
    db.close()


def _fill(work: Path, n: int, sharded_layout: bool) -> list[str]:
    """N cached blobs and their records, written directly; their filehashes."""
    blobs = work / "node" / "blobs"
    now = int(time.time())
    filehashes = sorted(secrets.token_hex(32) for _ in range(n))
    content = os.urandom(BLOB_SIZE)
    _record(work, filehashes, now)
    order = list(range(n))
    random.shuffle(order)  # a use order unlike the name order
    if sharded_layout:
        if str(ROOT) not in sys.path:
            sys.path.insert(0, str(ROOT))  # imported by bench/scale.py, run as a script
        from metadisk.store.cacheindex import CacheIndex

        for i in range(256):
            (blobs / f"{i:02x}").mkdir(exist_ok=True)
        for filehash in filehashes:
            with open(blobs / filehash[:2] / filehash, "wb") as f:
                f.write(content)
        for name in os.listdir(blobs):
            if name.startswith("index.sqlite"):
                (blobs / name).unlink()
        index = CacheIndex.open(blobs / "index.sqlite")
        db = index._db
        db.execute("BEGIN")
        db.executemany(
            "INSERT INTO blobs VALUES (?, ?, ?)",
            ((f, BLOB_SIZE, now * 1_000_000 + order[i]) for i, f in enumerate(filehashes)),
        )
        db.execute("COMMIT")
        index.mark(clean=True, sharded=True)
        index.close()
    else:
        for i, filehash in enumerate(filehashes):
            path = blobs / filehash
            with open(path, "wb") as f:
                f.write(content)
            os.utime(path, (now - n + order[i], now - n + order[i]))
    return filehashes


def _timed(connection: http.client.HTTPConnection, *request: object, **kw: object) -> float:
    start = time.perf_counter()
    connection.request(*request, **kw)
    response = connection.getresponse()
    response.read()
    seconds = time.perf_counter() - start
    if response.status not in (200, 201):
        raise RuntimeError(f"{request[:2]}: {response.status}")
    return seconds


def _token(port: int, secret: str) -> str:
    import json

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request("POST", "/accounts/token/new", body=b"{}")
    token = json.load(connection.getresponse())["token"]
    connection.request(
        "POST",
        f"/accounts/token/deposit/{token}",
        body=json.dumps({"bytes": 10**12}).encode(),
        headers={"Content-Type": "application/json", "Authentication": secret},
    )
    connection.getresponse().read()
    connection.close()
    return token


def _percentiles(seconds: list[float]) -> str:
    q = statistics.quantiles(seconds, n=100)
    return f"{q[49] * 1000:.1f} / {q[98] * 1000:.1f}"


def _settle(log: Path, since: int, new_layout: bool, process: subprocess.Popen) -> None:
    """
    Wait for the node's background work on its cache to end (its log from byte
    C{since}: a log of earlier starts holds their lines), then a quiet moment.
    """
    if new_layout:
        address_in_log(log, r"(cache checked)", process, "the cache check", 3600, since)
    time.sleep(SETTLE)


def _measure(tree: Path, work: Path, filehashes: list[str], new_layout: bool) -> dict:
    """Start the node of C{tree} on C{work} (its cache filled) and measure it; then stop it."""
    subprocess.run(["sync"], check=True)
    log = work / "node.log"
    since = log.stat().st_size if log.exists() else 0
    node = _start(tree, work)
    try:
        _settle(log, since, new_layout, node.process)
        idle = rss_mib(node.pid)
        token = _token(node.port, node.secret)
        connection = http.client.HTTPConnection("127.0.0.1", node.port, timeout=60)
        downloads = [
            _timed(connection, "GET", f"/api/download/{f}?token={token}")
            for f in random.sample(filehashes, min(SAMPLES, len(filehashes)))
        ]
        uploads = []
        for _ in range(SAMPLES):
            body, headers = upload_body(os.urandom(10 * 1024), token)
            uploads.append(_timed(connection, "POST", "/api/upload", body=body, headers=headers))
        connection.close()
    finally:
        node.stop(120)
    return {
        "start": node.listened_after,
        "idle_rss": idle,
        "download": _percentiles(downloads),
        "upload": _percentiles(uploads),
    }


def cache_phase(
    work: Path, toml: str, files: int, blobs: int, log: Callable[[str], None]
) -> dict[str, str]:
    """
    For bench/scale.py: the node of C{work} (its catalog of C{files} built,
    stopped), its cache filled with C{blobs} blobs (what an earlier phase
    left there removed first); the columns of its figures.
    """
    os.umask(0o077)
    (work / "metadisk.toml").write_text(toml)
    cache = work / "node" / "blobs"
    if cache.exists():
        shutil.rmtree(cache)
    cache.mkdir()
    began = time.perf_counter()
    filehashes = _fill(work, blobs, sharded_layout=True)
    log(f"{blobs} cached blobs written in {time.perf_counter() - began:.0f} s")
    figures = _measure(ROOT, work, filehashes, new_layout=True)
    return {
        f"{blobs:,} cached: start s": f"{figures['start']:.2f}",
        f"{blobs:,} cached: RSS MiB": f"{figures['idle_rss']:.0f}",
        f"{blobs:,} cached: download p50/p99 ms": figures["download"],
        f"{blobs:,} cached: upload p50/p99 ms": figures["upload"],
    }


def cache_table(sizes: list[int], tree: Path = ROOT, keep: bool = False) -> list[dict]:
    """For each size, fill a fresh node's cache, start it and measure; print and return the rows."""
    new_layout = (tree / "metadisk" / "store" / "cacheindex.py").exists()
    os.umask(0o077)  # the blobs as the node writes them: its own alone (else it tightens them)
    rows = []
    print(f"tree {tree} ({'sharded, indexed' if new_layout else 'flat'} cache)", flush=True)
    print(
        f"{'blobs':>9} {'fill s':>7} {'start s':>8} {'idle RSS MiB':>13} "
        f"{'download p50/p99 ms':>20} {'10 KiB upload p50/p99 ms':>25}",
        flush=True,
    )
    for n in sizes:
        work = Path(tempfile.mkdtemp(prefix=f"scale-cache-{n}-"))
        try:
            (work / "metadisk.toml").write_text(TOML)
            _start(tree, work).stop()
            began = time.perf_counter()
            filehashes = _fill(work, n, new_layout)
            fill = time.perf_counter() - began
            row = {"blobs": n, "fill": fill, **_measure(tree, work, filehashes, new_layout)}
            rows.append(row)
            print(
                f"{n:>9} {fill:>7.1f} {row['start']:>8.2f} {row['idle_rss']:>13.1f} "
                f"{row['download']:>20} {row['upload']:>25}",
                flush=True,
            )
        finally:
            if keep:
                print(f"  kept {work}")
            else:
                subprocess.run(["rm", "-rf", str(work)], check=False)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--tree", type=Path, default=ROOT, help="the checkout whose node runs")
    parser.add_argument("--keep", action="store_true", help="keep the data directories")
    args = parser.parse_args()
    cache_table([int(s) for s in args.sizes.split(",")], args.tree.resolve(), args.keep)


if __name__ == "__main__":
    main()
