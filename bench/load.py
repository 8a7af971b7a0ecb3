"""
Load: concurrent clients mixing uploads, downloads, finds, status and token
operations against one node (a child process) for a fixed time. Prints
requests/s, answers by status, latency percentiles per operation and the
node's RSS over the run. Every answer is checked against the OpenAPI
document; the run fails (exit 1) on an undocumented answer or a 5xx.

    python bench/load.py [--clients 200] [--seconds 60]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _node import ROOT, Node, rss_mib

sys.path.insert(0, str(ROOT))

from treq.client import HTTPClient
from twisted.internet import defer, task
from twisted.web.client import Agent, HTTPConnectionPool

from tests.support import multipart
from tests.test_openapi import CONTRACT

MIX = {  # operation: weight
    "upload": 15,
    "download": 20,
    "download-range": 5,
    "head": 5,
    "find": 15,
    "status": 5,
    "token-new": 4,
    "balance": 10,
    "deposit": 5,
    "withdraw": 5,
    "redeem": 3,
    "prices": 3,
    "missing": 5,  # a documented error on purpose: an unknown file
}
TOKENS = 50
CREDIT = 10**15


class Load:
    def __init__(self, node: Node, http: HTTPClient, deadline: float) -> None:
        self.node = node
        self.http = http
        self.deadline = deadline
        self.tokens: list[str] = []
        self.files: list[dict[str, str]] = []
        self.latencies: dict[str, list[float]] = collections.defaultdict(list)
        self.statuses: collections.Counter[tuple[str, int]] = collections.Counter()
        self.undocumented: collections.Counter[str] = collections.Counter()
        self.failures: collections.Counter[str] = collections.Counter()  # no answer at all

    async def request(self, op: str, method: str, path: str, **kwargs: Any) -> tuple[int, bytes]:
        started = time.perf_counter()
        try:
            response = await self.http.request(method, self.node.url + path, **kwargs)
            body = await response.content()
        except Exception as e:
            reasons = [r.getErrorMessage() for r in getattr(e, "reasons", ())]
            self.failures[f"{op}: {type(e).__name__} {reasons or e}"] += 1
            return 0, b""
        self.latencies[op].append(time.perf_counter() - started)
        self.statuses[(op, response.code)] += 1
        headers = {
            name.decode(): values[-1].decode("latin-1")
            for name, values in response.headers.getAllRawHeaders()
        }
        if isinstance(response.length, int):
            headers["Content-Length"] = str(response.length)
        try:
            CONTRACT.check(method, path, response.code, headers, body)
        except AssertionError as e:
            self.undocumented[str(e)[:300]] += 1
        return response.code, body

    async def upload(self, data: bytes, token: str, name: str = "load.bin") -> None:
        content_type, body = multipart(("token", None, token.encode()), ("file", name, data))
        code, answer = await self.request(
            "upload", "POST", "/api/upload", data=body, headers={"Content-Type": content_type}
        )
        if code == 201 and len(self.files) < 5000:
            self.files.append(json.loads(answer))

    async def one(self, rng: random.Random) -> None:
        op = rng.choices(list(MIX), weights=list(MIX.values()))[0]
        token = rng.choice(self.tokens)
        secret = {"Authentication": self.node.secret}
        file = rng.choice(self.files)
        if op == "upload":
            if rng.random() < 0.1:  # the same content again: deduplicated
                data = rng.choice([b"popular %d" % i for i in range(10)])
            else:
                data = os.urandom(rng.randint(1, 64 * 1024))
            await self.upload(data, token)
        elif op == "download":
            key = {"key": file["key"]} if rng.random() < 0.8 else {}
            path = f"/api/download/{file['filehash']}"
            await self.request(op, "GET", path, params={"token": token, **key})
        elif op == "download-range":
            first = rng.randint(0, 2000)
            await self.request(
                op,
                "GET",
                f"/api/download/{file['filehash']}",
                params={"token": token, "key": file["key"]},
                headers={"Range": f"bytes={first}-{first + rng.randint(0, 4000)}"},
            )
        elif op == "head":
            await self.request(op, "HEAD", f"/api/download/{file['filehash']}")
        elif op == "find":
            await self.request(op, "GET", f"/api/find/{file['filehash']}")
        elif op == "status":
            await self.request(op, "GET", "/api/status")
        elif op == "token-new":
            await self.request(op, "POST", "/accounts/token/new")
        elif op == "balance":
            await self.request(op, "GET", f"/accounts/token/balance/{token}")
        elif op == "deposit":
            path = f"/accounts/token/deposit/{token}"
            await self.request(op, "POST", path, json={"bytes": 10**6}, headers=secret)
        elif op == "withdraw":  # now and then more than the balance: a documented 402
            amount = 10**6 if rng.random() < 0.9 else 2**53
            path = f"/accounts/token/withdraw/{token}"
            await self.request(op, "POST", path, data={"bytes": str(amount)}, headers=secret)
        elif op == "redeem":  # each token may redeem it once: then a documented 403
            path = f"/accounts/token/redeem/{token}"
            await self.request(op, "POST", path, json={"promocode": "LOAD"})
        elif op == "prices":
            await self.request(op, "GET", "/accounts/token/prices")
        elif op == "missing":
            await self.request(op, "GET", f"/api/find/{os.urandom(32).hex()}")

    async def client(self, seed: int) -> None:
        rng = random.Random(seed)
        while time.monotonic() < self.deadline:
            await self.one(rng)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))] if ordered else 0.0


async def run(reactor: Any, args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="metadisk-load-") as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        node = Node(
            workdir,
            """
[node]
max_connections_per_address = 1000000
[storage]
capacity = "4 GiB"
max_file_size = "1 MiB"
[accounts]
guess_limit = 1000000
""",  # every client is 127.0.0.1: no per-address limit
            # Twisted listens with a backlog of 50: a burst of 200 new connections overflows it.
            listen_options=f":backlog={args.backlog}" if args.backlog else "",
        )
        try:
            pool = HTTPConnectionPool(reactor)
            pool.maxPersistentPerHost = args.clients
            http = HTTPClient(Agent(reactor, pool=pool))
            load = Load(node, http, 0)
            load.tokens = [node.funded_token(CREDIT) for _ in range(TOKENS)]
            await _promocode(node)
            for i in range(20):
                await load.upload(os.urandom(8192 + i), load.tokens[0])
            pid = node.process.pid
            rss = [(0.0, rss_mib(pid))]
            started = time.monotonic()
            load.deadline = started + args.seconds

            def sample() -> None:
                rss.append((time.monotonic() - started, rss_mib(pid)))

            sampler = task.LoopingCall(sample)
            sampler.start(10, now=False)
            await defer.gatherResults(
                [defer.Deferred.fromCoroutine(load.client(i)) for i in range(args.clients)]
            )
            sampler.stop()
            elapsed = time.monotonic() - started
            sample()
            await pool.closeCachedConnections()
            return report(load, elapsed, rss, args)
        finally:
            node.stop()


async def _promocode(node: Node) -> None:
    """A promocode for the redeem operations, added with the admin command."""
    admin = [sys.executable, "-m", "metadisk.admin", "--data-dir", str(node.data)]
    subprocess.run(
        [*admin, "promocode", "add", "LOAD", "1000"],
        check=True,
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=node.data.parent,
    )


def report(load: Load, elapsed: float, rss: list[tuple[float, float]], args: Any) -> int:
    total = sum(load.statuses.values())
    print(
        f"{args.clients} clients, {elapsed:.1f} s, listen backlog {args.backlog or 50}: "
        f"{total} requests, {total / elapsed:.0f} req/s"
    )
    by_status = collections.Counter()
    for (_, status), n in load.statuses.items():
        by_status[status] += n
    print("answers by status: " + ", ".join(f"{s}: {n}" for s, n in sorted(by_status.items())))
    print(f"{'operation':<16}{'count':>8}{'p50 ms':>9}{'p99 ms':>9}  non-2xx")
    everything: list[float] = []
    for op in MIX:
        values = load.latencies.get(op, [])
        everything += values
        errors = {s: n for (o, s), n in load.statuses.items() if o == op and not 200 <= s < 300}
        print(
            f"{op:<16}{len(values):>8}{percentile(values, 0.5) * 1000:>9.1f}"
            f"{percentile(values, 0.99) * 1000:>9.1f}  {errors or ''}"
        )
    print(f"{'all':<16}{len(everything):>8}{percentile(everything, 0.5) * 1000:>9.1f}"
          f"{percentile(everything, 0.99) * 1000:>9.1f}")  # fmt: skip
    print("node RSS MiB: " + ", ".join(f"{t:.0f}s {m:.1f}" for t, m in rss))
    print(f"node RSS start {rss[0][1]:.1f} MiB, end {rss[-1][1]:.1f} MiB")
    server_errors = sum(n for s, n in by_status.items() if s >= 500)
    print(f"undocumented answers: {sum(load.undocumented.values())}; 5xx: {server_errors}; "
          f"requests with no answer: {sum(load.failures.values())}")  # fmt: skip
    for text, n in load.undocumented.most_common(10):
        print(f"  {n} x {text}")
    for text, n in load.failures.most_common(10):
        print(f"  {n} x {text}")
    return 1 if load.undocumented or server_errors or load.failures else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--workdir", help="keep the node's data and log here")
    parser.add_argument(
        "--backlog", type=int, default=1024, help="the node's listen backlog; 0: Twisted's 50"
    )
    args = parser.parse_args()

    async def entry(reactor: Any) -> None:
        code = await run(reactor, args)
        if code:
            raise SystemExit(code)

    task.react(lambda reactor: defer.Deferred.fromCoroutine(entry(reactor)))


if __name__ == "__main__":
    main()
