"""
Requests per second and latency of the node's read API under concurrency:
`GET /api/find/<filehash>` (one database read) and `GET /api/status`
(meters, cache, queues), each for a fixed time under 50 concurrent clients
on kept-alive connections. The load comes from a second process: `wrk`
(Debian package `wrk`) when it is installed, else a small asyncio client
(`--tool python`), so that the node's one reactor thread is all it measures.

    python bench/api.py [--clients 50] [--seconds 10] [--tool auto|wrk|python]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _node import Node, curl, peak_rss_mib, reset_peak, rss_mib

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _ms(text: str) -> float:
    """wrk's latency ("850.00us", "1.20ms", "2.01s") in milliseconds."""
    match = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(f"unexpected latency {text!r}")
    value, unit = float(match.group(1)), match.group(2)
    return value * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def run_wrk(url: str, clients: int, seconds: float, threads: int) -> dict:
    result = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{clients}", f"-d{seconds}s", "--latency", url],
        capture_output=True,
        text=True,
        check=True,
    )
    out = result.stdout
    figures: dict = {
        "requests": int(re.search(r"(\d+) requests in", out).group(1)),
        "rps": float(re.search(r"Requests/sec:\s*([0-9.]+)", out).group(1)),
        "errors": 0,
    }
    for p in ("50", "90", "99"):
        figures[f"p{p}"] = _ms(re.search(rf"^\s*{p}%\s+(\S+)", out, re.M).group(1))
    if match := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        figures["errors"] += int(match.group(1))
    if match := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    ):
        figures["errors"] += sum(int(n) for n in match.groups())
    return figures


# The fallback load generator: run as a child process (--generate), one asyncio loop,
# each client a kept-alive HTTP/1.1 connection sending one request after the other.


async def _client(host: str, port: int, path: str, deadline: float, latencies: list, errors: list):
    reader, writer = await asyncio.open_connection(host, port)
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    try:
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            await reader.readexactly(int(length.group(1)) if length else 0)
            latencies.append(time.perf_counter() - start)
            if not head.startswith(b"HTTP/1.1 2"):
                errors.append(head.split(b"\r\n", 1)[0])
    finally:
        writer.close()


async def _generate(url: str, clients: int, seconds: float) -> dict:
    match = re.fullmatch(r"http://([^:/]+):(\d+)(/.*)", url)
    host, port, path = match.group(1), int(match.group(2)), match.group(3)
    latencies: list[float] = []
    errors: list[bytes] = []
    start = time.perf_counter()
    await asyncio.gather(
        *(_client(host, port, path, start + seconds, latencies, errors) for _ in range(clients))
    )
    elapsed = time.perf_counter() - start
    latencies.sort()

    def at(p: float) -> float:
        return 1000 * latencies[min(len(latencies) - 1, int(p * len(latencies)))]

    return {
        "requests": len(latencies),
        "rps": len(latencies) / elapsed,
        "p50": at(0.50),
        "p90": at(0.90),
        "p99": at(0.99),
        "errors": len(errors),
    }


def run_python(url: str, clients: int, seconds: float) -> dict:
    result = subprocess.run(
        [
            sys.executable,
            __file__,
            "--generate",
            url,
            "--clients",
            str(clients),
            "--seconds",
            str(seconds),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--threads", type=int, default=2, help="wrk's threads (2)")
    parser.add_argument("--tool", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--generate", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate:
        print(json.dumps(asyncio.run(_generate(args.generate, args.clients, args.seconds))))
        return 0
    tool = args.tool
    if tool == "auto":
        tool = "wrk" if shutil.which("wrk") else "python"
    elif tool == "wrk" and shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk (or use --tool python)")

    with tempfile.TemporaryDirectory(prefix="metadisk-api-") as tmp:
        work = Path(tmp)
        node = Node(
            work,
            # Every client is 127.0.0.1: no per-address limit on connections.
            "[node]\nmax_connections_per_address = 1000000\n"
            '[storage]\ncapacity = "1 GiB"\nmax_file_size = "1 MiB"\n',
        )
        try:
            token = node.funded_token(2**40)
            filehash = ""
            for i in range(20):  # a catalog with a few files in it
                sample = work / f"sample{i}.bin"
                sample.write_bytes(os.urandom(4096 + i))
                _, out = curl(
                    "-F", f"token={token}", "-F", f"file=@{sample}", node.url + "/api/upload"
                )
                filehash = json.loads(out)["filehash"]
            node.wait_replicated()
            pid = node.pid
            print(f"node: MetaDisk, SQLite, accounts on, 20 files; idle RSS {rss_mib(pid):.1f} MiB")
            print(
                f"load: {args.clients} concurrent clients (kept-alive connections), "
                f"{args.seconds:g} s per route, from a second process: "
                + (f"wrk -t{args.threads}" if tool == "wrk" else "python asyncio client")
            )
            print(
                f"machine: {os.cpu_count()} cores, load average "
                f"{' '.join(Path('/proc/loadavg').read_text().split()[:3])}"
            )
            print()
            print(
                f"{'route':28}{'req/s':>10}{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}"
                f"{'errors':>8}{'CPU s':>8}{'peak RSS':>10}"
            )
            for route in (f"/api/find/{filehash}", "/api/status"):
                url = node.url + route
                # A short warm-up: connections, caches, the database's pages.
                if tool == "wrk":
                    run_wrk(url, args.clients, 1, args.threads)
                else:
                    run_python(url, args.clients, 1)
                reset_peak(pid)
                cpu = cpu_seconds(pid)
                if tool == "wrk":
                    figures = run_wrk(url, args.clients, args.seconds, args.threads)
                else:
                    figures = run_python(url, args.clients, args.seconds)
                cpu = cpu_seconds(pid) - cpu
                name = "/api/find/<filehash>" if "find" in route else route
                print(
                    f"{name:28}{figures['rps']:>10.0f}{figures['p50']:>10.2f}"
                    f"{figures['p90']:>10.2f}{figures['p99']:>10.2f}{figures['errors']:>8}"
                    f"{cpu:>8.1f}{peak_rss_mib(pid):>9.1f}M"
                )
        finally:
            node.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
