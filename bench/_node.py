"""
What the benchmarks share: a node in a child process, its memory, curl
transfers, and finding where a server told to listen on port 0 listens.

L{Node} is not the tests' L{tests.nodes.NodeProcess}, on purpose: the
benchmarks drive the node with blocking tools (curl, wrk, C{subprocess.run},
C{urllib}) and time them with C{time.perf_counter}, with no reactor in the
driver; a NodeProcess needs a running reactor (its output and its exit come
through a ProcessProtocol), and running one here would put the node's
supervision on the thread that does the timing. Servers listen on port 0
and say which port they got (L{address_in_log}); where one must be told its
port beforehand (Tahoe-LAFS in transfer.py), the port comes from the tests'
L{tests.nodes.free_port}.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHUNK = 1 << 20
LISTENING = r"starting on (\d+)"  # what twistd logs when the node's port listens


def address_in_log(
    log: Path,
    pattern: str,
    process: subprocess.Popen,
    what: str,
    seconds: float = 30,
    start: int = 0,
) -> str:
    """
    Wait until C{process} writes a line matching C{pattern} to C{log} (past
    byte C{start}): a server told to listen on port 0 says there which port
    it got. Return the pattern's first group; fail if the process ends first
    or C{seconds} pass.
    """
    deadline = time.monotonic() + seconds
    while True:
        try:
            with open(log, "rb") as f:
                f.seek(start)
                match = re.search(pattern.encode(), f.read())
        except FileNotFoundError:
            match = None
        if match:
            return match.group(1).decode()
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not say where it listens; see {log}")
        time.sleep(0.05)


def random_file(path: Path, size: int) -> None:
    """Fresh random data: convergent systems skip work on content they have seen."""
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(CHUNK, left)
            f.write(os.urandom(n))
            left -= n


def refresh(path: Path) -> None:
    """
    Make a file new content again, cheaply: its first 32 bytes become random.
    Its hash, hence a convergent key and every ciphertext byte, change.
    """
    with open(path, "r+b") as f:
        f.write(os.urandom(min(32, path.stat().st_size)))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest()


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident set (VmHWM), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def reset_peak(pid: int) -> None:
    """Start VmHWM afresh (Linux >= 4.0), so each phase reports its own peak."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def stop_process(process: subprocess.Popen, seconds: float = 30) -> None:
    """SIGTERM a child we started, then SIGKILL it if it lingers."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(seconds)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


class Node:
    """A MetaDisk node run by twistd in a child process, on the port it chose."""

    def __init__(
        self,
        workdir: Path,
        toml: str = "",
        listen_options: str = "",
        root: Path = ROOT,
        seconds: float = 30,
    ) -> None:
        """
        Start the node of the checkout at C{root} (another one: a baseline) on
        C{workdir}, waiting C{seconds} at most until it listens.
        """
        self.data = workdir / "node"
        config = workdir / "metadisk.toml"
        config.write_text(toml)
        log = workdir / "node.log"
        start = log.stat().st_size if log.exists() else 0  # twistd appends to its log
        env = {**os.environ, "PYTHONPATH": str(root)}
        began = time.perf_counter()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from twisted.scripts.twistd import run; run()",
                "--nodaemon",
                "--pidfile=",
                "--logfile",
                str(log),
                "metadisk",
                "--config",
                str(config),
                "--listen",
                f"tcp:0:interface=127.0.0.1{listen_options}",
                "--data-dir",
                str(self.data),
            ],
            env=env,
            cwd=workdir,
        )
        try:
            self.port = int(
                address_in_log(log, LISTENING, self.process, "the node", seconds, start=start)
            )
        except RuntimeError:
            self.stop()
            raise
        self.listened_after = time.perf_counter() - began  # seconds from its start
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                self.get("/api/status")
                break
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"the node did not start; see {workdir}/node.log") from None
                time.sleep(0.05)
        secret = self.data / "secret_key"
        self.secret = secret.read_text().strip() if secret.exists() else ""

    @property
    def pid(self) -> int:
        return self.process.pid

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return json.load(response)

    def post(self, path: str, body: dict | None = None, secret: bool = False) -> dict:
        request = urllib.request.Request(
            self.url + path,
            data=json.dumps(body or {}).encode(),
            headers={"Content-Type": "application/json"}
            | ({"Authentication": self.secret} if secret else {}),
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    def funded_token(self, amount: int) -> str:
        token = self.post("/accounts/token/new")["token"]
        self.post(f"/accounts/token/deposit/{token}", {"bytes": amount}, secret=True)
        return token

    def wait_replicated(self, seconds: float = 600) -> float:
        """Wait until the cloud queue is empty (every blob on its hosts); return the wait."""
        start = time.monotonic()
        while self.get("/api/status")["sync"]["cloud_queue"]["count"]:
            if time.monotonic() - start > seconds:
                raise RuntimeError(f"replication did not finish in {seconds:.0f} s")
            time.sleep(0.1)
        return time.monotonic() - start

    def stop(self, seconds: float = 30) -> None:
        stop_process(self.process, seconds)


def upload_body(data: bytes, token: str) -> tuple[bytes, dict]:
    """A C{POST /api/upload} body of C{data} paid by C{token}, and its headers."""
    boundary = secrets.token_hex(16)
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="token"\r\n\r\n{token}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="f.bin"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def _need_curl() -> None:
    if shutil.which("curl") is None:
        raise SystemExit("these benchmarks use curl: apt-get install curl")


def curl(*args: str) -> tuple[float, str]:
    """Run curl; return (seconds, its stdout)."""
    _need_curl()
    start = time.perf_counter()
    result = subprocess.run(["curl", "-sSf", *args], capture_output=True, text=True, check=True)
    return time.perf_counter() - start, result.stdout


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def curl_many(transfers: Iterable[Sequence[tuple[str, str]]], workdir: Path) -> tuple[float, str]:
    """
    Many transfers by one curl process, one after the other on one kept-alive
    connection (a config file with C{next} between them), so that what is
    measured is the server, not the start of a thousand processes. Each
    transfer is a list of (curl long option, value); a newline follows
    each answer on stdout. Return (seconds, stdout).
    """
    seconds, [out] = curl_clients([list(transfers)], workdir)
    return seconds, out


def curl_clients(
    clients: Sequence[Sequence[Sequence[tuple[str, str]]]], workdir: Path
) -> tuple[float, list[str]]:
    """
    Several clients at once, each a curl process doing its transfers one after
    the other on its own kept-alive connection (as L{curl_many}). Return the
    seconds from the first start to the last end, and each client's stdout.
    """
    _need_curl()
    configs = []
    for n, transfers in enumerate(clients):
        config = workdir / f"curl-batch-{n}.conf"
        with open(config, "w") as f:
            f.write("silent\nshow-error\n")
            for i, options in enumerate(transfers):
                # After "next" only the global options (silent, show-error) still hold.
                f.write('next\nfail\nwrite-out = "\\n"\n' if i else 'fail\nwrite-out = "\\n"\n')
                for name, value in options:
                    f.write(f"{name} = {_quoted(value)}\n")
        configs.append(config)
    start = time.perf_counter()
    processes = [
        subprocess.Popen(
            ["curl", "-K", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for config in configs
    ]
    outputs = [process.communicate() for process in processes]
    seconds = time.perf_counter() - start
    for config in configs:
        config.unlink()
    for process, (_, err) in zip(processes, outputs, strict=True):
        if process.returncode:
            raise RuntimeError(f"curl failed ({process.returncode}): {err.strip()[-500:]}")
    return seconds, [out for out, _ in outputs]


def token_hex() -> str:
    return secrets.token_hex(4)


def fresh_database(server: str) -> tuple[str, Callable[[], None]]:
    """
    A new PostgreSQL database on the server of C{server} (a postgresql:// URL
    naming any database there): its URL, and what drops it.
    """
    import psycopg2  # only for --database runs

    name = f"metadisk_bench_{token_hex()}"
    parts = urllib.parse.urlsplit(server)

    def admin(sql: str) -> None:
        connection = psycopg2.connect(server)
        connection.autocommit = True
        try:
            connection.cursor().execute(sql)
        finally:
            connection.close()

    admin(f"CREATE DATABASE {name}")
    url = urllib.parse.urlunsplit(parts._replace(path=f"/{name}"))
    return url, lambda: admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
