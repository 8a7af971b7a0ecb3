"""
The chain at scale: node A publishes N records on C{litecoind -regtest},
node B (its own database, the same chain) follows. Printed side by side for
C{[chain] format = "0.2"} and C{"auto"}: transactions, bytes on the chain,
fees paid, and seconds from the last record queued to B finding all of them.

Both nodes are real processes (C{twistd -n metadisk}) polling every second;
the driver mines a block every C{--block-seconds} while the mempool holds
anything (litecoind's regtest has about 280 blocks to give: see MWEB_HEIGHT). The
records are written straight into A's database (as the catalog writes an
upload: a C{files} row, its copies in C{uploads}, a C{chain_queue} row), each
with three WebDAV URLs like the typical record of docs/protocol.md 5.8; no
blob is made (repair is off: A's host holds none of them). A's one host is a
local folder served by C{python -m http.server}: its public URL is where B
fetches the manifest. The wallet's coins are split first, so that sends
spend confirmed coins, not a chain of unconfirmed change.

    PYTHONPATH=. .venv/bin/python bench/chain.py [--records 10000] [--formats 0.2,auto]
        [--block-seconds 10] [--patience 60] [--keep]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path

from bench._node import ROOT, Node, stop_process
from tests.nodes import free_port

USER, PASSWORD = "metadisk", "bench-password"
# Confirmed coins the wallet starts with, so that sends spend them rather than a chain of
# unconfirmed change (25 deep at most); more make fundrawtransaction slow.
COINS = 50
# Litecoin's regtest activates MWEB at block 432, and litecoind 0.21 then fails to mine a block
# without MWEB transactions (bad-txns-vin-empty): the bench stays below.
MWEB_HEIGHT = 432


class Warming(Exception):
    """litecoind answers -28: still starting."""


class Litecoind:
    """A C{litecoind -regtest} child process and its RPC, blocking."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("litecoind")
        if binary is None:
            raise SystemExit("bench/chain.py needs litecoind on the PATH")
        self.port = free_port()
        datadir = workdir / "litecoind"
        datadir.mkdir()
        self.process = subprocess.Popen(
            [
                binary,
                "-regtest",
                f"-datadir={datadir}",
                f"-rpcport={self.port}",
                f"-rpcuser={USER}",
                f"-rpcpassword={PASSWORD}",
                "-fallbackfee=0.001",
                "-datacarriersize=100000",
                "-listen=0",
                "-rpcthreads=16",
                "-rpcworkqueue=256",
                "-printtoconsole=0",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            self._prepare()
        except BaseException:
            stop_process(self.process)
            raise

    def _prepare(self) -> None:
        """Wait for the RPC, then a wallet with COINS confirmed coins."""
        deadline = time.monotonic() + 60
        while True:
            try:
                self.call("getblockcount")
                break
            except (OSError, Warming):
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError("litecoind did not answer") from None
                time.sleep(0.1)
        self.call("createwallet", "w")
        self.address = self.call("getnewaddress")
        self.mine(150)  # 50 mature coinbases of 50 LTC
        outputs = {self.call("getnewaddress"): 40.0 for _ in range(COINS)}
        self.call("sendmany", "", outputs)
        self.mine(1)

    @property
    def url(self) -> str:
        return f"http://{USER}:{PASSWORD}@127.0.0.1:{self.port}/"

    def call(self, method: str, *params: object) -> object:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/",
            data=json.dumps({"id": 1, "method": method, "params": list(params)}).encode(),
            headers={
                "Authorization": "Basic "
                + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode(),
                "Content-Type": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                answer = json.load(response)
        except urllib.error.HTTPError as e:
            answer = json.load(e)
        if answer.get("error"):
            if answer["error"].get("code") == -28:
                raise Warming(answer["error"]["message"])
            raise RuntimeError(f"{method}: {answer['error']}")
        return answer["result"]

    def mine(self, n: int = 1) -> None:
        self.call("generatetoaddress", n, self.address)

    def stop(self) -> None:
        try:
            self.call("stop")
            self.process.wait(30)
        except Exception:
            stop_process(self.process)


def node_toml(data: Path, host: Path, public_url: str, chain: str, fmt: str, start: int) -> str:
    return f"""
[node]
data_dir = "{data}"

[replication]
copies = 1
repair_sample = 0

[chain]
kind = "litecoin"
url = "{chain}"
poll_interval = 1.0
min_confirmations = 1
start_height = {start}
format = "{fmt}"
fetch_allowed_networks = ["127.0.0.0/8"]

[[hosts]]
name = "local1"
kind = "local"
path = "{host}"
public_url = "{public_url}"
"""


def queue_records(database: Path, public_url: str, count: int) -> list[str]:
    """N records as uploads leave them, in one transaction of A's database."""
    now = time.time()
    hashes = [secrets.token_hex(32) for _ in range(count)]
    connection = sqlite3.connect(database, timeout=60)
    with connection:
        for i, h in enumerate(hashes):
            connection.execute(
                "INSERT INTO files (filehash, filename, filesize, datetime, version)"
                " VALUES (?, ?, ?, ?, '0.2')",
                (h, f"{h[:7]}_report-{i:05d}.pdf", 1_048_576 + i, int(now)),
            )
            for n, url in enumerate(
                (
                    f"{public_url}/{h}",
                    f"https://dav2.example.net/metadisk/{h}",
                    f"https://metadisk-eu.s3.eu-west-1.amazonaws.com/blobs/{h}",
                )
            ):
                connection.execute(
                    "INSERT INTO uploads (filehash, host_name, url, added) VALUES (?, ?, ?, ?)",
                    (h, ("local1", "dav2", "s3")[n], url, now + n),
                )
            connection.execute(
                "INSERT INTO chain_queue (filehash, enqueued, state) VALUES (?, ?, 'waiting')",
                (h, now),
            )
    connection.close()
    return hashes


def scalar(database: Path, sql: str) -> int:
    connection = sqlite3.connect(database, timeout=60)
    try:
        return int(connection.execute(sql).fetchone()[0] or 0)
    finally:
        connection.close()


def run(
    fmt: str, count: int, litecoind: Litecoind, workdir: Path, patience: float, every: float
) -> dict:
    base = workdir / fmt
    (base / "a-host").mkdir(parents=True)
    (base / "b-host").mkdir(parents=True)
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "http.server",
            str(port),
            "--bind",
            "127.0.0.1",
            "--directory",
            str(base / "a-host"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    public_url = f"http://127.0.0.1:{port}"
    with ExitStack() as stack:
        stack.callback(stop_process, server)
        start = int(litecoind.call("getblockcount")) + 1  # what the nodes read: new blocks only
        (base / "a").mkdir()
        (base / "b").mkdir()
        a_toml = node_toml(
            base / "a" / "node", base / "a-host", public_url, litecoind.url, fmt, start
        )
        stack.callback(Node(base / "a", a_toml).stop)
        b_toml = node_toml(base / "b" / "node", base / "b-host", "", litecoind.url, "0.2", start)
        stack.callback(Node(base / "b", b_toml).stop)
        a_db = base / "a" / "node" / "metadisk.sqlite"
        b_db = base / "b" / "node" / "metadisk.sqlite"
        queue_records(a_db, public_url, count)
        queued = time.monotonic()
        published_at = found_at = None
        blocks = blocks_published = 0
        last_progress = queued
        found = 0
        mined = queued
        while True:
            time.sleep(0.5)
            now = time.monotonic()
            if now - mined >= every and litecoind.call("getmempoolinfo")["size"]:
                if int(litecoind.call("getblockcount")) + 1 >= MWEB_HEIGHT:
                    raise RuntimeError("out of blocks before MWEB: run fewer records")
                litecoind.mine(1)
                blocks += 1
                mined = now
            if published_at is None and not scalar(
                a_db, "SELECT COUNT(*) FROM chain_queue WHERE state <> 'published'"
            ):
                published_at, blocks_published = now, blocks
                last_progress = now
            seen = scalar(b_db, "SELECT COUNT(DISTINCT filehash) FROM chain_claims")
            if seen > found:
                found, last_progress = seen, now
            if found >= count:
                found_at = now
                break
            if published_at is not None and now - last_progress > patience:
                break  # B found no more for a while: what it has is the answer
        txids = [
            txid
            for (txid,) in sqlite3.connect(a_db).execute(
                "SELECT txid FROM chain_entries WHERE state = 'sent'"
            )
        ]
        size = fees = 0.0
        for txid in txids:
            tx = litecoind.call("gettransaction", txid)
            size += len(tx["hex"]) // 2
            fees += -float(tx.get("fee", 0.0))
        manifests = scalar(a_db, "SELECT COUNT(*) FROM chain_manifests")
        manifest_bytes = scalar(a_db, "SELECT SUM(size) FROM chain_manifests")
        return {
            "records": count,
            "transactions": len(txids),
            "records / transaction": count / max(1, len(txids)),
            "manifests": manifests,
            "manifest bytes (hosts)": manifest_bytes,
            "bytes on the chain": int(size),
            "bytes / record": size / count,
            "fees paid (LTC)": fees,
            "blocks mined": blocks,
            "blocks, A published to B": blocks - blocks_published,
            "s, queued to A published": None if published_at is None else published_at - queued,
            "s, queued to B found all": None if found_at is None else found_at - queued,
            "B found": found,
        }


def cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.4f}" if value < 10 else f"{value:,.1f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--formats", default="0.2,auto")
    parser.add_argument("--patience", type=float, default=60.0, help="seconds B may find nothing")
    parser.add_argument("--block-seconds", type=float, default=10.0, help="between blocks")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    options = parser.parse_args()
    # SIGTERM unwinds like an error: the nodes, the web server and litecoind are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    workdir = Path(tempfile.mkdtemp(prefix="metadisk-chain-bench-"))
    os.environ["PYTHONPATH"] = str(ROOT)
    litecoind = Litecoind(workdir)
    results = {}
    try:
        for fmt in options.formats.split(","):
            results[fmt] = run(
                fmt, options.records, litecoind, workdir, options.patience, options.block_seconds
            )
            print(f"format {fmt}: {json.dumps(results[fmt])}", flush=True)
    finally:
        litecoind.stop()
        if not options.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"work directory: {workdir}")
    formats = list(results)
    print()
    print(f"{'':28}" + "".join(f"{'format ' + f:>16}" for f in formats))
    for key in next(iter(results.values())):
        print(f"{key:28}" + "".join(f"{cell(results[f][key]):>16}" for f in formats))


if __name__ == "__main__":
    main()
