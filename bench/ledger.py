"""
Ledger charges per second, on SQLite and on PostgreSQL, through one node
process and through two sharing the database.

Each run starts real node processes (C{twistd -n metadisk}), then keeps
C{--concurrency} HTTP clients busy, spread over the nodes, charging one token
(or C{--tokens} of them: one token is one row every charge must lock in turn):

- withdraw: C{POST /accounts/token/withdraw} of 1 byte, one atomic
  C{UPDATE ... WHERE balance >= n};
- download: C{GET /api/download} of a small cached file, a transfer's charge:
  a reservation (UPDATE + INSERT) and its settlement (DELETE), two
  transactions, plus the file itself.

The token's final balance is checked against the charges made: a figure
only counts if the ledger is exact. The client runs on the same machine and
takes its share of the CPU.

    PYTHONPATH=. /tmp/venv/bin/python bench/ledger.py [--withdraws 2000] [--downloads 1000]
        [--concurrency 32] [--tokens 1]
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from treq.client import HTTPClient
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater, react
from twisted.web.client import Agent, HTTPConnectionPool

from tests.nodes import Client, NodeProcess, node_toml, start_node_process
from tests.pg import ADMIN_URL, admin, database_url
from tests.support import json_of, upload

BACKENDS = ("sqlite", "postgresql")
NODE_COUNTS = (1, 2)
FILE_SIZE = 1024


async def start_nodes(
    reactor: Any, base: Path, count: int, url: str, http: HTTPClient
) -> list[NodeProcess]:
    hosts = [base / "hosts" / f"local{i}" for i in (1, 2, 3)]
    secret = secrets.token_urlsafe(24)
    starting = []
    for i in range(count):
        directory = base / f"node{i}"
        config = node_toml(
            directory / "data",
            secret=secret,
            database_url=url,
            hosts=hosts,
            node={"max_connections_per_address": 1000000},  # every client is 127.0.0.1
        )
        starting.append(
            Deferred.fromCoroutine(start_node_process(reactor, directory, config, secret, http))
        )
    return await gatherResults(starting, consumeErrors=True)


async def hammer(concurrency: int, total: int, charge: Callable[[int], Awaitable[None]]) -> float:
    """C{total} charges by C{concurrency} workers; charges per second."""
    remaining = total

    async def worker(i: int) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await charge(i)

    started = time.perf_counter()
    await gatherResults([Deferred.fromCoroutine(worker(i)) for i in range(concurrency)])
    return total / (time.perf_counter() - started)


async def run(reactor: Any, backend: str, count: int, args: argparse.Namespace) -> dict[str, float]:
    base = Path(tempfile.mkdtemp(prefix="metadisk-bench-"))
    name = f"metadisk_bench_{os.getpid()}_{secrets.token_hex(4)}"
    if backend == "sqlite":
        url = f"sqlite:///{base / 'ledger.sqlite'}"
    else:
        admin(f'CREATE DATABASE "{name}"')
        url = database_url(name)
    pool = HTTPConnectionPool(reactor)
    pool.maxPersistentPerHost = args.concurrency
    http = HTTPClient(Agent(reactor, pool=pool))
    nodes: list[NodeProcess] = []
    try:
        nodes = await start_nodes(reactor, base, count, url, http)
        clients = [Client(node) for node in nodes]
        tokens = [await clients[0].new_token() for _ in range(args.tokens)]
        for token in tokens:
            assert await clients[0].deposit(token, 10**12) == (200, {"status": "ok"})
        budget = 10**12 * args.tokens
        token = tokens[0]

        # A small file every node has in its cache (a cached download costs its size).
        data = os.urandom(FILE_SIZE)
        response = await upload(nodes[0], data, token)
        assert response.code == 201, response.code
        stored = await json_of(response)
        budget -= 4 * FILE_SIZE
        download_path = f"/api/download/{stored['filehash']}"
        params = [{"key": stored["key"], "token": t} for t in tokens]
        for node in nodes[1:]:
            await on_hosts(reactor, clients[0], stored["filehash"])
            got = await node.http.get(node.url + download_path, params=params[0])
            assert await got.content() == data
            budget -= 2 * FILE_SIZE  # fetched from a host the first time

        async def withdraw(i: int) -> None:
            answer = await clients[i % count].withdraw(tokens[i % args.tokens], 1)
            assert answer == (200, {"status": "ok"}), answer

        async def download(i: int) -> None:
            node = nodes[i % count]
            got = await node.http.get(node.url + download_path, params=params[i % args.tokens])
            assert got.code == 200 and await got.content() == data, got.code

        await hammer(args.concurrency, 200, withdraw)  # warm-up
        figures = {
            "withdraw": await hammer(args.concurrency, args.withdraws, withdraw),
            "download": await hammer(args.concurrency, args.downloads, download),
        }
        expected = budget - 200 - args.withdraws - args.downloads * FILE_SIZE
        balance = sum([await clients[-1].balance(t) for t in tokens])
        assert balance == expected, f"balance {balance}, expected {expected}"
        return figures
    finally:
        for node in nodes:
            await node.stop()
        await pool.closeCachedConnections()
        if backend == "postgresql":
            admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        shutil.rmtree(base, ignore_errors=True)


async def on_hosts(reactor: Any, client: Client, filehash: str, copies: int = 3) -> None:
    """Wait (at most a minute) until the file is on its hosts: another node can fetch it."""
    for _ in range(1200):
        _, record = await client.call("GET", f"/api/find/{filehash}")
        if len(record.get("uploads", ())) >= copies:
            return
        await deferLater(reactor, 0.05, lambda: None)
    raise RuntimeError(f"{filehash} never reached its hosts")


async def main(reactor: Any, argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--withdraws", type=int, default=2000)
    parser.add_argument("--downloads", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=1, help="tokens the charges are spread over")
    args = parser.parse_args(argv)
    backends = list(BACKENDS)
    try:
        admin("SELECT 1")
    except Exception as e:
        print(f"PostgreSQL not reachable at {ADMIN_URL} ({e}); SQLite only", file=sys.stderr)
        backends.remove("postgresql")
    results: dict[tuple[str, int], dict[str, float]] = {}
    for backend in backends:
        for count in NODE_COUNTS:
            results[backend, count] = await run(reactor, backend, count, args)
            print(f"  {backend}, {count} node(s): {results[backend, count]}", file=sys.stderr)
    print(
        f"\nLedger charges per second: HTTP, {args.concurrency} concurrent clients,"
        f" {args.tokens} token(s);"
        f" {args.withdraws} withdraws, {args.downloads} downloads of {FILE_SIZE} B"
    )
    print(f"{'':12}{'withdraw (1 UPDATE)':>26}{'download (reserve+settle)':>30}")
    print(f"{'backend':12}{'1 node':>13}{'2 nodes':>13}{'1 node':>15}{'2 nodes':>15}")
    for backend in backends:
        row = f"{backend:12}"
        for kind, width in (("withdraw", 13), ("download", 15)):
            for count in NODE_COUNTS:
                row += f"{results[backend, count][kind]:>{width}.0f}"
        print(row)


if __name__ == "__main__":
    react(lambda reactor: Deferred.fromCoroutine(main(reactor, sys.argv[1:])))
