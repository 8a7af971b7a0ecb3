"""
Resumable uploads (tus) against plain uploads (POST /api/upload) on the same
node, and what resuming costs. Prints figures:

  - throughput and the node's peak RSS of a whole-file upload, plain and tus
    (one PATCH, streamed by curl), alternated so that both see the same machine;
  - a tus upload cut at half way: what the node kept, how soon it said so,
    the time to send the rest, the bytes sent twice;
  - the node killed (SIGKILL) at half way (sent over --kill-after seconds) and
    restarted: the offset it kept (a long body is synced every 30 s), how long
    it took to answer again, the rest, and the file downloaded identical.

    python bench/resumable.py [--size-mib 1024] [--rounds 2] [--kill-after 45]
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from _node import (
    CHUNK,
    Node,
    curl,
    peak_rss_mib,
    random_file,
    refresh,
    reset_peak,
    rss_mib,
    sha256_of,
)

TUS = ["-H", "Tus-Resumable: 1.0.0"]


def create(node: Node, size: int, token: str) -> str:
    """A new tus upload; its path."""
    request = urllib.request.Request(
        node.url + f"/api/tus/?token={token}",
        method="POST",
        headers={"Tus-Resumable": "1.0.0", "Upload-Length": str(size)},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.headers["Location"]


def offset_of(node: Node, path: str) -> int:
    request = urllib.request.Request(
        node.url + path, method="HEAD", headers={"Tus-Resumable": "1.0.0"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return int(response.headers["Upload-Offset"])


def patch(node: Node, path: str, source: Path, offset: int) -> tuple[float, dict[str, str]]:
    """The file from C{offset} in one PATCH, streamed by curl; (seconds, answer's headers)."""
    part = source
    if offset:
        part = source.with_suffix(".rest")
        with open(source, "rb") as f, open(part, "wb") as out:
            f.seek(offset)
            while chunk := f.read(CHUNK):
                out.write(chunk)
    seconds, out = curl(
        "-X", "PATCH", "-T", str(part), *TUS,
        "-H", "Content-Type: application/offset+octet-stream",
        "-H", f"Upload-Offset: {offset}", "-D", "-", "-o", "/dev/null", node.url + path,
    )  # fmt: skip
    if part != source:
        part.unlink()
    headers = {}
    for line in out.splitlines()[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return seconds, headers


def send_part(
    node: Node, path: str, source: Path, size: int, stop_at: int, seconds: float = 0
) -> socket.socket:
    """
    A PATCH of the whole file whose body stops at C{stop_at}, spread over
    C{seconds} (0: as fast as it goes); the socket, still open.
    """
    sock = socket.create_connection(("127.0.0.1", node.port))
    sock.sendall(
        (
            f"PATCH {path} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n"
            f"Content-Type: application/offset+octet-stream\r\nUpload-Offset: 0\r\n"
            f"Content-Length: {size}\r\n\r\n"
        ).encode()
    )
    start = time.monotonic()
    with open(source, "rb") as f:
        sent = 0
        while sent < stop_at:
            chunk = f.read(min(CHUNK, stop_at - sent))
            sock.sendall(chunk)
            sent += len(chunk)
            ahead = start + seconds * sent / stop_at - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
    return sock


def plain_round(node: Node, source: Path, size: int, token: str) -> tuple[float, float]:
    refresh(source)
    reset_peak(node.pid)
    seconds, _ = curl("-F", f"token={token}", "-F", f"file=@{source}", node.url + "/api/upload")
    peak = peak_rss_mib(node.pid)
    node.wait_replicated()
    return size / seconds / 1e6, peak


def tus_round(node: Node, source: Path, size: int, token: str) -> tuple[float, float]:
    refresh(source)
    reset_peak(node.pid)
    start = time.perf_counter()
    path = create(node, size, token)
    _, headers = patch(node, path, source, 0)
    seconds = time.perf_counter() - start
    peak = peak_rss_mib(node.pid)
    assert "metadisk-filehash" in headers, headers
    node.wait_replicated()
    return size / seconds / 1e6, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--kill-after", type=float, default=45.0, help="seconds to send half the file, then SIGKILL"
    )
    args = parser.parse_args()
    size = args.size_mib * 2**20
    half = size // 2
    with tempfile.TemporaryDirectory(prefix="metadisk-bench-") as tmp:
        work = Path(tmp)
        source = work / "source.bin"
        random_file(source, size)
        toml = f"[storage]\ncapacity = {6 * size + 2**30}\nmax_file_size = {size}\n"
        node = Node(work, toml)
        try:
            idle = rss_mib(node.pid)
            token = node.funded_token(100 * size)
            print(f"file {args.size_mib} MiB; node RSS idle {idle:.1f} MiB")
            for i in range(args.rounds):
                rate, peak = plain_round(node, source, size, token)
                print(
                    f"round {i + 1}  POST /api/upload {rate:7.1f} MB/s   peak RSS {peak:6.1f} MiB"
                )
                rate, peak = tus_round(node, source, size, token)
                print(
                    f"round {i + 1}  tus (1 PATCH)    {rate:7.1f} MB/s   peak RSS {peak:6.1f} MiB"
                )

            # A cut at half way: the client goes away; the node keeps what arrived.
            refresh(source)
            path = create(node, size, token)
            sock = send_part(node, path, source, size, half)
            partial = node.data / "resumable" / path.rsplit("/", 1)[1]
            while partial.stat().st_size < half:  # all sent bytes are in: the cut loses none
                time.sleep(0.005)
            cut = time.perf_counter()
            sock.close()
            # The node has it all once HEAD says so.
            deadline = time.monotonic() + 60
            while (kept := offset_of(node, path)) < half and time.monotonic() < deadline:
                time.sleep(0.005)
            said = time.perf_counter() - cut
            seconds, headers = patch(node, path, source, kept)
            print(
                f"cut at {half} bytes: node kept {kept} ({half - kept} lost), said so in"
                f" {said * 1000:.0f} ms; the rest ({size - kept} bytes) in {seconds:.1f} s,"
                f" {(size - kept) / seconds / 1e6:.1f} MB/s; bytes sent twice: {half - kept}"
            )
            node.wait_replicated()

            # SIGKILL at half way, sent over 45 s: a crash keeps what was synced (every 30 s).
            refresh(source)
            expected = sha256_of(source)
            path = create(node, size, token)
            sock = send_part(node, path, source, size, half, seconds=args.kill_after)
            partial = node.data / "resumable" / path.rsplit("/", 1)[1]
            while partial.stat().st_size < half:
                time.sleep(0.01)
            node.process.send_signal(signal.SIGKILL)
            node.process.wait(30)
            sock.close()
            on_disk = partial.stat().st_size
            restart = time.perf_counter()
            node = Node(work, toml)
            answered = time.perf_counter() - restart
            kept = offset_of(node, path)
            seconds, headers = patch(node, path, source, kept)
            filehash, key = headers["metadisk-filehash"], headers["metadisk-key"]
            print(
                f"SIGKILL with {on_disk} bytes in the partial file: after a restart"
                f" ({answered:.1f} s to answer) the offset is {kept}"
                f" ({on_disk - kept} bytes not yet synced were dropped);"
                f" the rest in {seconds:.1f} s"
            )
            target = work / "download.bin"
            curl("-o", str(target), f"{node.url}/api/download/{filehash}?key={key}&token={token}")
            digest = sha256_of(target)
            print(f"downloaded after the restart: identical {digest == expected}")
            balance = json.loads(curl(f"{node.url}/accounts/token/balance/{token}")[1])["balance"]
            uploads = 2 * args.rounds + 2
            print(
                f"token balance {balance}; expected with {uploads} uploads charged 4 x size once"
                f" each and one download: {100 * size - uploads * 4 * size - size}"
            )
        finally:
            node.stop()
            subprocess.run(["sync"], check=False)


if __name__ == "__main__":
    main()
