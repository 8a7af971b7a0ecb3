"""What the benchmarks share: a node in a child process, its memory, curl transfers."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHUNK = 1 << 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def random_file(path: Path, size: int) -> None:
    """Fresh random data: convergent systems skip work on content they have seen."""
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(CHUNK, left)
            f.write(os.urandom(n))
            left -= n


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


class Node:
    """A MetaDisk node run by twistd in a child process, on a free port."""

    def __init__(self, workdir: Path, toml: str = "") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data = workdir / "node"
        config = workdir / "metadisk.toml"
        config.write_text(toml)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from twisted.scripts.twistd import run; run()",
                "--nodaemon",
                "--pidfile=",
                "--logfile",
                str(workdir / "node.log"),
                "metadisk",
                "--config",
                str(config),
                "--listen",
                f"tcp:{self.port}:interface=127.0.0.1",
                "--data-dir",
                str(self.data),
            ],
            env=env,
            cwd=workdir,
        )
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
        self.secret = (self.data / "secret_key").read_text().strip()

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

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def curl(*args: str) -> tuple[float, str]:
    """Run curl; return (seconds, its stdout)."""
    if shutil.which("curl") is None:
        raise SystemExit("these benchmarks use curl: apt-get install curl")
    start = time.perf_counter()
    result = subprocess.run(["curl", "-sSf", *args], capture_output=True, text=True, check=True)
    return time.perf_counter() - start, result.stdout


def token_hex() -> str:
    return secrets.token_hex(4)
