"""
Throttle accuracy and fairness against a real node, and its memory with a slow reader.

Starts the node (twistd) as a subprocess with an outgoing limit, runs N
concurrent downloads for a while, then one download read at 64 KiB/s while
sampling the node's RSS from /proc; restarts it with an incoming limit and
runs N concurrent uploads. Prints the aggregate rate as a ratio of the
limit (seen by the clients, and by the node's own meters), Jain's fairness
index over the transfers, and the node's RSS. Rates are measured after a
warm-up, once the sockets' kernel buffers are full, so they are what the
node lets through, not what the kernel soaks up.

    PYTHONPATH=. /tmp/venv/bin/python bench/throttle.py [--limit 4MiB] [--clients 8]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from _node import LISTENING, address_in_log
from attrs import define, field

MiB = 2**20
BLOCK = 64 * 1024
ROOT = Path(__file__).resolve().parent.parent


def jain(values: list[float]) -> float:
    squares = sum(v * v for v in values)
    return sum(values) ** 2 / (len(values) * squares) if squares else 0.0


@define
class Node:
    """The node under test, in its own process."""

    directory: Path
    port: int = 0  # chosen by the node at each start
    process: subprocess.Popen | None = None

    def start(self, rate_incoming: int, rate_outgoing: int) -> None:
        config = self.directory / "metadisk.toml"
        data = self.directory / "data"
        config.write_text(
            f"""
[node]
listen = "tcp:0:interface=127.0.0.1"
data_dir = "{data}"
[storage]
capacity = "4 GiB"
max_file_size = "256 MiB"
[bandwidth]
rate_incoming = {rate_incoming}
rate_outgoing = {rate_outgoing}
[accounts]
enabled = false
[replication]
copies = 1
[[hosts]]
name = "disk"
kind = "local"
path = "{self.directory / "host"}"
"""
        )
        twistd = Path(sys.executable).parent / "twistd"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        log = self.directory / "node.log"
        start = log.stat().st_size if log.exists() else 0  # each start appends to it
        self.process = subprocess.Popen(
            [str(twistd), "-n", "--pidfile=", "metadisk", "--config", str(config)],
            cwd=self.directory,
            env=env,
            stdout=open(log, "ab"),
            stderr=subprocess.STDOUT,
        )
        try:
            self.port = int(address_in_log(log, LISTENING, self.process, "the node", start=start))
        except RuntimeError as e:
            self.stop()
            raise SystemExit(str(e)) from None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                self.status()
                return
            except OSError:
                if self.process.poll() is not None:
                    log = self.directory / "node.log"
                    raise SystemExit(f"the node exited; see {log}") from None
                time.sleep(0.1)
        raise SystemExit("the node did not answer within 30 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def request(self, method: str, path: str, **kwargs: object) -> http.client.HTTPResponse:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        connection.request(method, path, **kwargs)
        return connection.getresponse()

    def status(self) -> dict:
        return json.loads(self.request("GET", "/api/status").read())

    def meter(self, direction: str) -> int:
        return self.status()["bandwidth"]["total"][direction]

    def rss(self) -> int:
        """Resident memory of the node, bytes."""
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")


def multipart_head(boundary: str) -> bytes:
    return (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="file"; filename="bench.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()


def upload_file(node: Node, size: int) -> dict:
    """Upload C{size} random bytes (streamed, never held whole); return filehash and key."""
    boundary = uuid.uuid4().hex
    head, tail = multipart_head(boundary), f"\r\n--{boundary}--\r\n".encode()

    def body() -> Iterator[bytes]:
        yield head
        for _ in range(size // MiB):
            yield os.urandom(MiB)
        yield tail

    response = node.request(
        "POST",
        "/api/upload",
        body=body(),
        headers={
            "Content-Type": f"multipart/form-data; boundary={boundary}",
            "Content-Length": str(len(head) + size // MiB * MiB + len(tail)),
        },
    )
    answer = json.loads(response.read())
    if response.status != 201:
        raise SystemExit(f"upload failed: {response.status} {answer}")
    return answer


@define(eq=False)
class Transfer(threading.Thread):
    """One client connection moving bytes until told to stop; C{moved} counts them."""

    node: Node
    payload: bytes  # what is sent first: the request head (and the multipart head)
    sending: bool  # True: keep sending body bytes (upload); False: keep reading (download)
    pace: float = 0.0  # bytes/s the client reads at; 0: as fast as it can
    moved: int = 0
    stop: threading.Event = field(factory=threading.Event)

    def __attrs_post_init__(self) -> None:
        threading.Thread.__init__(self, daemon=True)

    def run(self) -> None:
        sock = socket.create_connection(("127.0.0.1", self.node.port))
        # Small kernel buffers: the client feels the node's back-pressure at once.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BLOCK)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BLOCK)
        sock.settimeout(0.2)
        try:
            sock.sendall(self.payload)
            if self.sending:
                self._send(sock)
            else:
                self._receive(sock)
        finally:
            sock.close()

    def _send(self, sock: socket.socket) -> None:
        block = os.urandom(BLOCK)
        while not self.stop.is_set():
            try:
                self.moved += sock.send(block)
            except TimeoutError:
                continue

    def _receive(self, sock: socket.socket) -> None:
        buffer = bytearray(BLOCK)
        piece = BLOCK if not self.pace else max(1024, int(self.pace / 16))
        started = time.monotonic()
        while not self.stop.is_set():
            if self.pace:
                # Read no faster than the pace: sleep until this piece is due.
                due = started + self.moved / self.pace
                if due > time.monotonic():
                    time.sleep(min(0.1, due - time.monotonic()))
                    continue
            try:
                n = sock.recv_into(buffer, piece)
            except TimeoutError:
                continue
            if not n:
                return
            self.moved += n


def measure(node: Node, transfers: list[Transfer], direction: str, warmup: float, seconds: float):
    for transfer in transfers:
        transfer.start()
    time.sleep(warmup)
    start, meter0 = [t.moved for t in transfers], node.meter(direction)
    t0 = time.monotonic()
    time.sleep(seconds)
    end, meter1 = [t.moved for t in transfers], node.meter(direction)
    elapsed = time.monotonic() - t0
    for transfer in transfers:
        transfer.stop.set()
    for transfer in transfers:
        transfer.join(5)
    rates = [(b - a) / elapsed for a, b in zip(start, end, strict=True)]
    return rates, (meter1 - meter0) / elapsed


def report(what: str, limit: int, rates: list[float], node_rate: float, seconds: float) -> None:
    total = sum(rates)
    print(
        f"{what}: {len(rates)} clients x {seconds:.0f} s, limit {limit / MiB:.2f} MiB/s:"
        f" aggregate {total / MiB:.3f} MiB/s = {total / limit:.3f} x limit"
        f" (node's meters: {node_rate / limit:.3f} x),"
        f" Jain's fairness {jain(rates):.4f},"
        f" per client {min(rates) / 1024:.0f}-{max(rates) / 1024:.0f} KiB/s"
    )


def slow_reader(node: Node, path: str, pace: float, seconds: float, file_size: int) -> None:
    baseline = node.rss()
    reader = Transfer(node, download_head(path), sending=False, pace=pace)
    reader.start()
    peak, samples = baseline, []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        rss = node.rss()
        samples.append(rss)
        peak = max(peak, rss)
        time.sleep(0.1)
    reader.stop.set()
    reader.join(5)
    print(
        f"slow reader at {pace / 1024:.0f} KiB/s for {seconds:.0f} s"
        f" ({reader.moved / MiB:.2f} MiB read of a {file_size / MiB:.0f} MiB file):"
        f" node RSS {baseline / MiB:.1f} MiB before, peak {peak / MiB:.1f} MiB"
        f" (+{(peak - baseline) / MiB:.2f} MiB), {samples[-1] / MiB:.1f} MiB at the end"
    )


def download_head(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode()


def upload_head(size: int) -> bytes:
    boundary = uuid.uuid4().hex
    head = multipart_head(boundary)
    length = len(head) + size + len(f"\r\n--{boundary}--\r\n")
    return (
        f"POST /api/upload HTTP/1.1\r\nHost: bench\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode() + head


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=4 * MiB, help="bytes/s (default 4 MiB)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--file-size", type=int, default=64 * MiB)
    parser.add_argument("--slow-pace", type=float, default=64 * 1024, help="bytes/s")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="metadisk-bench-") as directory:
        node = Node(Path(directory))
        try:
            node.start(rate_incoming=0, rate_outgoing=args.limit)
            blob = upload_file(node, args.file_size)
            path = f"/api/download/{blob['filehash']}?key={blob['key']}"
            downloads = [
                Transfer(node, download_head(path), sending=False) for _ in range(args.clients)
            ]
            rates, node_rate = measure(node, downloads, "outgoing", args.warmup, args.seconds)
            report("downloads", args.limit, rates, node_rate, args.seconds)
            time.sleep(1)  # the aborted downloads end on the node
            slow_reader(node, path, args.slow_pace, args.seconds, args.file_size)
            node.stop()

            node.start(rate_incoming=args.limit, rate_outgoing=0)
            uploads = [
                Transfer(node, upload_head(args.file_size), sending=True)
                for _ in range(args.clients)
            ]
            rates, node_rate = measure(node, uploads, "incoming", args.warmup, args.seconds)
            report("uploads", args.limit, rates, node_rate, args.seconds)
        finally:
            node.stop()


if __name__ == "__main__":
    main()
