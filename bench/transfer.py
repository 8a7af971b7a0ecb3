"""
Transfer speed side by side, in one run on loopback: the node (limits off,
its three local-directory hosts) against `rclone serve webdav` (the baseline:
a Go server that only writes and reads files), the platform's ceiling in the
small and 1 MiB phases (bench/bare_twisted.py: twisted.web alone, writing each
upload durably and serving files with static.File: what any node on CPython
and Twisted spends at least) and, when it can be installed into its own
virtualenv, a Tahoe-LAFS introducer + storage node (another Twisted system
with convergent encryption, 1-of-1 shares: its fastest).

Each system gets the same client, curl: one large file up and down (the node's
with its key, then once more as the stored ciphertext), then many small files
up and down, one after the other on one kept-alive connection (one curl process
for the lot), then many small files by 16 clients at once (16 curl processes),
then 200 files of 1 MiB by one client. For the node it also prints the CPU
seconds it spent per 1,000 small uploads and downloads, and how fast its cloud
queue moved the small files to its three local hosts (and, in a phase of its
own, to three rclone WebDAV hosts) against how fast it accepted them: the
queue's length, counted while they come in, must not grow (a round in flight
holds some; a queue that drains slower than uploads come holds ever more). The
large download runs twice and the faster counts: the first also warms the
client's page cache (on a VM, memory the guest has not touched lately makes
writing a new file several times slower, whoever serves it).
Every round uses fresh content (convergent systems skip work on content they
have seen) and fresh servers, and the baseline and the node take turns at going
first; what was downloaded is checked against what was uploaded. Printed: MB/s
(10^6 bytes/s), files/s, each server's peak RSS, and the ratios node / baseline
and node / Tahoe-LAFS.

    python bench/transfer.py                  # 1 GiB, 1,000 x 10 KiB, Tahoe-LAFS if it installs
    python bench/transfer.py --quick          # 64 MiB, 200 x 10 KiB
    python bench/transfer.py --rounds 2       # best of 2 (a busy machine)
    python bench/transfer.py --no-tahoe --size-mib 256 --files 300
    python bench/transfer.py --database postgresql://127.0.0.1/test   # the node on PostgreSQL

Tahoe-LAFS is installed once with pip into --tahoe-venv (default
~/.cache/metadisk-bench/tahoe-venv); if that fails, the run says why and goes on.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from _node import (
    ROOT,
    Node,
    address_in_log,
    curl,
    curl_clients,
    fresh_database,
    peak_rss_mib,
    random_file,
    refresh,
    reset_peak,
    rss_mib,
    sha256_of,
    stop_process,
)

sys.path.insert(0, str(ROOT))

from tests.nodes import free_port

MB = 1e6
MiB = 2**20

# What the issues ask of the node (ratios from one run).
GOAL_PUT_VS_BASELINE = 1.0  # large files
GOAL_GET_VS_BASELINE = 0.9
GOAL_SMALL_PUT_VS_BASELINE = 0.5  # small files, one client and 16
GOAL_SMALL_GET_VS_BASELINE = 0.8
GOAL_VS_TAHOE = 2.0
GOAL_RSS_MIB = 100
CLIENTS = 16  # the concurrent phase
MEDIUM = 200, 1 << 20  # the 1 MiB phase: files, bytes each


@dataclass
class Replication:
    """How a node's cloud queue kept up with small uploads from CLIENTS clients."""

    accepted: float  # files/s the node took them at
    on_hosts: float  # blobs/s on their 3 hosts, from the first upload until the queue was empty
    peak: int  # the most blobs the queue held while they came in
    # Blobs/s the queue grew by while the uploads came in (least squares, from the first
    # second): about 0 when it drains as fast as uploads come, whatever a round in flight holds.
    growth: float

    def keeps_up(self) -> bool:
        return self.growth <= 0.05 * self.accepted

    def describe(self) -> str:
        return (
            f"taken at {self.accepted:.0f} files/s, on the hosts at {self.on_hosts:.0f} blobs/s "
            f"from the first upload until the queue was empty; the queue held {self.peak} at "
            f"most, and grew by {self.growth:.1f} blobs/s while they came in"
        )


class QueueWatch:
    """A node's cloud queue, counted every C{every} seconds in a thread while uploads stream in."""

    def __init__(self, node: Node, every: float = 0.2) -> None:
        self._node = node
        self._every = every
        self._stopped = threading.Event()
        self._samples: list[tuple[float, int]] = []  # (seconds from the start, blobs queued)
        self._start = time.perf_counter()
        self._streamed = 0.0
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stopped.wait(self._every):
            count = self._node.get("/api/status")["sync"]["cloud_queue"]["count"]
            self._samples.append((time.perf_counter() - self._start, count))

    def stop(self) -> None:
        """The uploads are in (or failed): no more counting."""
        self._streamed = time.perf_counter() - self._start
        self._stopped.set()
        self._thread.join()

    def replication(self, accepted: float, files: int) -> Replication:
        """Once the queue is empty: how it kept up with C{files} taken at C{accepted} files/s."""
        # After the first second: the first round's filling up is not growth.
        settled = [(t, n) for t, n in self._samples if t >= min(1.0, self._streamed / 2)]
        return Replication(
            accepted=accepted,
            on_hosts=files / (time.perf_counter() - self._start),
            peak=max((n for _, n in self._samples), default=0),
            growth=_slope(settled),
        )


def _slope(points: list[tuple[float, int]]) -> float:
    """The least-squares slope of C{points}; 0 with fewer than two."""
    if len(points) < 2:
        return 0.0
    mean_t = sum(t for t, _ in points) / len(points)
    mean_n = sum(n for _, n in points) / len(points)
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    return sum((t - mean_t) * (n - mean_n) for t, n in points) / spread if spread else 0.0


@dataclass
class Figures:
    """One system's results; with several rounds, the best of each (the highest peak RSS)."""

    put: float = 0.0  # MB/s
    get: float = 0.0
    get_ciphertext: float | None = None  # the node only: the blob as stored, no key
    small_put: float = 0.0  # files/s
    small_get: float = 0.0
    many_put: float = 0.0  # files/s, CLIENTS at once
    many_get: float = 0.0
    medium_put: float = 0.0  # files/s, the 1 MiB phase
    medium_get: float = 0.0
    rss_large: float = 0.0  # MiB
    rss_small: float = 0.0
    replication: float | None = None  # seconds until the large file was on all hosts
    # The node only: CPU seconds per 1,000 small files (one client), and its cloud queue in
    # the concurrent phase.
    cpu_put: float | None = None
    cpu_get: float | None = None
    queue: Replication | None = None
    rounds: list[dict] = field(default_factory=list)

    def merge(self, other: Figures) -> None:
        for name in ("put", "get", "small_put", "small_get", "many_put", "many_get"):
            setattr(self, name, max(getattr(self, name), getattr(other, name)))
        for name in ("medium_put", "medium_get"):
            value = getattr(other, name)
            if value is not None:
                setattr(self, name, max(getattr(self, name) or 0.0, value))
        for name in ("cpu_put", "cpu_get"):
            value = getattr(other, name)
            if value is not None:
                setattr(self, name, min(getattr(self, name) or 1e9, value))
        if other.get_ciphertext is not None:
            self.get_ciphertext = max(self.get_ciphertext or 0.0, other.get_ciphertext)
        if other.replication is not None:
            self.replication = min(self.replication or 1e9, other.replication)
        if other.queue is not None:
            # The round whose queue grew least: the best of the rounds, as for speeds.
            self.queue = min(filter(None, (self.queue, other.queue)), key=lambda q: q.growth)
        self.rss_large = max(self.rss_large, other.rss_large)
        self.rss_small = max(self.rss_small, other.rss_small)
        self.rounds.append(
            {
                k: v.__dict__ if isinstance(v, Replication) else v
                for k, v in other.__dict__.items()
                if k != "rounds" and v is not None
            }
        )


@dataclass
class Workload:
    large: Path
    large_size: int
    small: list[Path]
    small_size: int
    sink: str  # "file": downloads are written to disk and checked; "null": /dev/null
    work: Path
    many: list[Path] = field(default_factory=list)  # the concurrent phase's small files
    medium: list[Path] = field(default_factory=list)

    def out(self, name: str) -> Path:
        return Path(os.devnull) if self.sink == "null" else self.work / name


class System:
    """A server on loopback, driven by curl."""

    name = ""
    pid = 0
    large = True  # measured with the large file too

    def start(self, work: Path) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def put(self, path: Path) -> str:
        """Upload one file; return what L{get} needs to find it."""
        raise NotImplementedError

    def get_url(self, handle: str) -> str:
        raise NotImplementedError

    def put_options(self, path: Path) -> list[tuple[str, str]]:
        """curl's options to upload one file, for L{put_many}."""
        raise NotImplementedError

    def handle(self, path: Path, answer: str) -> str:
        """What L{get_url} needs, from the answer to an upload of C{path}."""
        return answer.strip()

    def put_many(self, paths: list[Path], work: Path, clients: int = 1) -> tuple[float, list[str]]:
        """Upload files, C{clients} at once, each on its connection; (seconds, handles)."""
        groups = [paths[i::clients] for i in range(clients)]
        seconds, outs = curl_clients(
            [[self.put_options(path) for path in group] for group in groups], work
        )
        handles = {}
        for group, out in zip(groups, outs, strict=True):
            answers = [line for line in out.splitlines() if line.strip()]
            if len(answers) != len(group):
                raise RuntimeError(f"{self.name}: {len(answers)} answers to {len(group)} PUTs")
            for path, answer in zip(group, answers, strict=True):
                handles[path] = self.handle(path, answer)
        return seconds, [handles[path] for path in paths]

    def get_many(self, handles: list[str], outs: list[Path], work: Path, clients: int = 1) -> float:
        """Download, C{clients} at once, each on its connection; the seconds it took."""
        pairs = list(zip(handles, outs, strict=True))
        groups = [pairs[i::clients] for i in range(clients)]
        seconds, _ = curl_clients(
            [[[("url", self.get_url(h)), ("output", str(o))] for h, o in g] for g in groups], work
        )
        return seconds

    def settle(self) -> float | None:
        """After uploads: wait for work the server does in the background; its seconds."""
        return None

    def cpu_seconds(self) -> float:
        """CPU time the server's process has used so far (user and system)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class FileServer(System):
    """A server of plain files: a PUT stores one under its name, a GET of that name reads it."""

    process: subprocess.Popen
    url: str

    def stop(self) -> None:
        if hasattr(self, "process"):
            stop_process(self.process)

    def put(self, path: Path) -> str:
        curl("-T", str(path), f"{self.url}/{path.name}")
        return path.name

    def get_url(self, handle: str) -> str:
        return f"{self.url}/{handle}"

    def put_options(self, path: Path) -> list[tuple[str, str]]:
        return [("upload-file", str(path)), ("url", f"{self.url}/{path.name}")]

    def handle(self, path: Path, answer: str) -> str:
        return path.name


class Rclone(FileServer):
    name = "rclone"

    def start(self, work: Path) -> None:
        self.root = work / "rclone"
        self.root.mkdir()
        log = work / "rclone.log"
        self.process = subprocess.Popen(
            # Port 0: rclone picks a free port and says which in its log.
            ["rclone", "serve", "webdav", str(self.root), "--addr", "127.0.0.1:0"],
            env={**os.environ, "RCLONE_CONFIG": str(work / "rclone.conf")},
            stdout=subprocess.DEVNULL,
            stderr=open(log, "w"),
        )
        self.pid = self.process.pid
        self.url = address_in_log(
            log, r"started on \[?(http://[0-9.]+:[0-9]+)", self.process, "rclone serve webdav"
        )


class BareTwisted(FileServer):
    """bench/bare_twisted.py: the platform's ceiling, for the small and 1 MiB phases."""

    name = "twisted.web"
    large = False

    def start(self, work: Path) -> None:
        self.root = work / "bare"
        self.root.mkdir()
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("bare_twisted.py")), str(self.root)],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.pid = self.process.pid
        assert self.process.stdout is not None
        self.url = f"http://127.0.0.1:{int(self.process.stdout.readline())}"


class MetaDisk(System):
    name = "node"

    def __init__(
        self,
        accounts: bool,
        capacity: int,
        max_file_size: int,
        database: str | None = None,
        hosts: str = "",
        root: Path = ROOT,
    ) -> None:
        self.accounts = accounts
        self.capacity = capacity
        self.max_file_size = max_file_size
        self.database = database
        self.hosts = hosts  # [[hosts]] tables; "": three local directories
        self.root = root  # the checkout whose node runs (bench/side_by_side.py: another one)

    def start(self, work: Path) -> None:
        database = ""
        if self.database:
            url, self.drop = fresh_database(self.database)
            database = f'[database]\nurl = "{url}"\n'
        self.node = Node(
            work,
            f"""
[node]
max_connections_per_address = 1000
[storage]
capacity = {self.capacity}
max_file_size = {self.max_file_size}
[accounts]
enabled = {"true" if self.accounts else "false"}
{database}{self.hosts}""",
            root=self.root,
        )
        self.pid = self.node.pid
        self.idle_rss = rss_mib(self.pid)
        self.query = ""
        if self.accounts:
            self.query = f"token={self.node.funded_token(2**53)}"
        self.keys: dict[str, str] = {}

    def stop(self) -> None:
        if hasattr(self, "node"):
            self.node.stop()
            del self.node
        if hasattr(self, "drop"):
            self.drop()
            del self.drop

    def _remember(self, answer: str) -> str:
        result = json.loads(answer)
        self.keys[result["filehash"]] = result["key"]
        return result["filehash"]

    def put(self, path: Path) -> str:
        _, out = curl("-F", f"file=@{path}", f"{self.node.url}/api/upload?{self.query}")
        return self._remember(out)

    def get_url(self, handle: str, key: bool = True) -> str:
        query = "&".join(q for q in (self.query, key and f"key={self.keys[handle]}") if q)
        return f"{self.node.url}/api/download/{handle}?{query}"

    def put_options(self, path: Path) -> list[tuple[str, str]]:
        return [("form", f"file=@{path}"), ("url", f"{self.node.url}/api/upload?{self.query}")]

    def handle(self, path: Path, answer: str) -> str:
        return self._remember(answer)

    def settle(self) -> float:
        return self.node.wait_replicated()

    def put_watched(self, paths: list[Path], work: Path) -> tuple[Replication, list[str]]:
        """L{put_many} by CLIENTS clients, its cloud queue watched; (how it kept up, handles)."""
        watch = QueueWatch(self.node)
        try:
            seconds, handles = self.put_many(paths, work, CLIENTS)
        finally:
            watch.stop()
        self.settle()
        return watch.replication(len(paths) / seconds, len(paths)), handles


class Tahoe(System):
    name = "tahoe"

    def __init__(self, venv: Path) -> None:
        self.tahoe = str(venv / "bin" / "tahoe")
        self.processes: list[subprocess.Popen] = []

    def _run(self, *args: str) -> None:
        subprocess.run([self.tahoe, *args], check=True, capture_output=True, cwd=self.work)

    def _daemon(self, directory: Path) -> subprocess.Popen:
        process = subprocess.Popen(
            [self.tahoe, "run", "--allow-stdin-close", str(directory)],
            cwd=self.work,
            stdin=subprocess.DEVNULL,
            stdout=open(directory.with_suffix(".log"), "w"),
            stderr=subprocess.STDOUT,
        )
        self.processes.append(process)
        return process

    def start(self, work: Path) -> None:
        self.work = work
        introducer, node = work / "tahoe-introducer", work / "tahoe-node"
        p1, p2, p3 = free_port(), free_port(), free_port()
        self._run(
            "create-introducer",
            f"--port=tcp:{p1}:interface=127.0.0.1",
            f"--location=tcp:127.0.0.1:{p1}",
            str(introducer),
        )
        intro = self._daemon(introducer)
        furl = introducer / "private" / "introducer.furl"
        deadline = time.monotonic() + 60
        while not furl.exists():
            if intro.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Tahoe-LAFS introducer did not start: {introducer}.log")
            time.sleep(0.1)
        self._run(
            "create-node",
            "--listen=tcp",
            f"--port=tcp:{p2}:interface=127.0.0.1",
            f"--location=tcp:127.0.0.1:{p2}",
            f"--webport=tcp:{p3}:interface=127.0.0.1",
            f"--introducer={furl.read_text().strip()}",
            "--shares-needed=1",
            "--shares-happy=1",
            "--shares-total=1",
            str(node),
        )
        process = self._daemon(node)
        self.pid = process.pid
        self.url = f"http://127.0.0.1:{p3}"
        while not self._connected():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Tahoe-LAFS node did not connect: {node}.log")
            time.sleep(0.2)

    def _connected(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/?t=json", timeout=5) as response:
                servers = json.load(response).get("servers", [])
        except OSError:
            return False
        return any(s.get("connection_status", "").lower().startswith("connected") for s in servers)

    def stop(self) -> None:
        for process in reversed(self.processes):
            stop_process(process)
        self.processes = []

    def put(self, path: Path) -> str:
        _, cap = curl("-T", str(path), f"{self.url}/uri")
        return cap.strip()

    def get_url(self, handle: str) -> str:
        return f"{self.url}/uri/{handle}"

    def put_options(self, path: Path) -> list[tuple[str, str]]:
        return [("upload-file", str(path)), ("url", f"{self.url}/uri")]


def tahoe_venv(venv: Path, log: Callable[[str], None]) -> tuple[Path | None, str]:
    """Tahoe-LAFS in its own virtualenv, installed once: (venv, version), or (None, why not)."""
    tahoe = venv / "bin" / "tahoe"
    if not tahoe.exists():
        log(f"installing Tahoe-LAFS into {venv} (once) ...")
        step = f"python -m venv {venv}"
        try:
            subprocess.run(
                [sys.executable, "-m", "venv", "--clear", str(venv)],
                check=True,
                capture_output=True,
                text=True,
            )
            step = "pip install tahoe-lafs"
            subprocess.run(
                [str(venv / "bin" / "pip"), "install", "-q", "tahoe-lafs"],
                check=True,
                capture_output=True,
                text=True,
                timeout=1800,
            )
        except subprocess.CalledProcessError as e:
            lines = [line for line in (e.stderr or e.stdout or "").splitlines() if line.strip()]
            errors = [line for line in lines if "ERROR" in line] or lines
            return None, f"{step} failed: {errors[-1] if errors else e}"
        except (OSError, subprocess.TimeoutExpired) as e:
            return None, f"cannot install Tahoe-LAFS: {e}"
    try:
        version = (
            subprocess.run([str(tahoe), "--version"], check=True, capture_output=True, text=True)
            .stdout.split()[0]
            .removeprefix("tahoe-lafs/")
        )
    except (OSError, subprocess.CalledProcessError, IndexError) as e:
        return None, f"{tahoe} does not run: {e}"
    return venv, version


def replication_to_rclone(args: argparse.Namespace, work: Path, files: list[Path]) -> Replication:
    """
    A node whose hosts are three `rclone serve webdav` remotes: small files
    uploaded by CLIENTS clients; how its cloud queue kept up.
    """
    servers = []
    hosts = ""
    try:
        for i in range(3):
            root = work / f"webdav{i}"
            root.mkdir()
            server = Rclone()
            server.start(root)
            servers.append(server)
            # The folder in the URL, not in the remote's path: rclone's WebDAV backend then sends
            # no MKCOL of it before each PUT (README, "File hosts and repair").
            (server.root / "blobs").mkdir()
            remote = f":webdav,url='{server.url}/blobs':"
            hosts += f'[[hosts]]\nname = "dav{i}"\nkind = "rclone"\nremote = "{remote}"\n'
        node = MetaDisk(
            args.accounts, capacity=2**31, max_file_size=2**20, database=args.database, hosts=hosts
        )
        for path in files:
            refresh(path)
        node.start(work)
        try:
            replication, _ = node.put_watched(files, work)
            return replication
        finally:
            node.stop()
    finally:
        for server in servers:
            server.stop()


def check(system: System, load: Workload, sources: list[Path], copies: list[Path]) -> None:
    """What came back is what went up (downloads written to files)."""
    if load.sink == "file":
        for source, copy in zip(sources, copies, strict=True):
            if source.read_bytes() != copy.read_bytes():
                raise RuntimeError(f"{system.name}: {source.name} came back different")
            copy.unlink()


def large_phase(
    system: System, load: Workload, figures: Figures, log: Callable[[str], None]
) -> None:
    """The large file: up, (the node's replication), down."""
    start = time.perf_counter()
    handle = system.put(load.large)
    figures.put = load.large_size / (time.perf_counter() - start) / MB
    log(f"  {system.name}: PUT {figures.put:.1f} MB/s")
    figures.replication = system.settle()
    out = load.out("large.out")
    expected = sha256_of(load.large)
    # Twice, the best counts: the first GET also warms the client's page cache. (On a VM,
    # a page the guest has not used lately costs the client many times an ordinary write.)
    for _ in range(2):
        seconds, _ = curl("-o", str(out), system.get_url(handle))
        figures.get = max(figures.get, load.large_size / seconds / MB)
        log(f"  {system.name}: GET {load.large_size / seconds / MB:.1f} MB/s")
        if load.sink == "file":
            if sha256_of(out) != expected:
                raise RuntimeError(f"{system.name}: the large file came back different")
            out.unlink()
    if isinstance(system, MetaDisk):
        seconds, _ = curl("-o", str(out), system.get_url(handle, key=False))
        figures.get_ciphertext = load.large_size / seconds / MB
        log(f"  {system.name}: GET ciphertext {figures.get_ciphertext:.1f} MB/s")
        if load.sink == "file":
            if sha256_of(out) != handle:
                raise RuntimeError("node: the blob does not hash to its filehash")
            out.unlink()
    figures.rss_large = peak_rss_mib(system.pid)


def measure(system: System, load: Workload, log: Callable[[str], None]) -> Figures:
    figures = Figures()
    refresh(load.large)
    for path in [*load.small, *load.many, *load.medium]:
        refresh(path)
    try:
        system.start(load.work)
        pid = system.pid
        reset_peak(pid)
        if system.large:
            large_phase(system, load, figures, log)

        # The small files: all up, then all down, one client.
        reset_peak(pid)
        cpu = system.cpu_seconds()
        seconds, handles = system.put_many(load.small, load.work)
        figures.small_put = len(load.small) / seconds
        if isinstance(system, (MetaDisk, BareTwisted)):
            figures.cpu_put = (system.cpu_seconds() - cpu) * 1000 / len(load.small)
        system.settle()
        cpu = system.cpu_seconds()
        outs = [load.out(f"small-{i:05d}.out") for i in range(len(handles))]
        figures.small_get = len(handles) / system.get_many(handles, outs, load.work)
        if isinstance(system, (MetaDisk, BareTwisted)):
            figures.cpu_get = (system.cpu_seconds() - cpu) * 1000 / len(handles)
        figures.rss_small = peak_rss_mib(pid)
        log(f"  {system.name}: small PUT {figures.small_put:.0f}/s, GET {figures.small_get:.0f}/s")
        check(system, load, load.small, outs)

        if isinstance(system, Tahoe):
            return figures  # the peer of the first two phases only: it takes minutes more
        # Many small files from CLIENTS clients at once; for the node, how its cloud queue
        # kept up with them.
        if isinstance(system, MetaDisk):
            figures.queue, handles = system.put_watched(load.many, load.work)
            figures.many_put = figures.queue.accepted
        else:
            seconds, handles = system.put_many(load.many, load.work, CLIENTS)
            figures.many_put = len(load.many) / seconds
        outs = [load.out(f"many-{i:05d}.out") for i in range(len(handles))]
        figures.many_get = len(handles) / system.get_many(handles, outs, load.work, CLIENTS)
        log(
            f"  {system.name}: {CLIENTS} clients PUT {figures.many_put:.0f}/s, GET "
            f"{figures.many_get:.0f}/s"
        )
        check(system, load, load.many, outs)

        # 1 MiB files, one client.
        seconds, handles = system.put_many(load.medium, load.work)
        figures.medium_put = len(load.medium) / seconds
        system.settle()
        outs = [load.out(f"medium-{i:05d}.out") for i in range(len(handles))]
        figures.medium_get = len(handles) / system.get_many(handles, outs, load.work)
        log(
            f"  {system.name}: 1 MiB PUT {figures.medium_put:.0f}/s, GET {figures.medium_get:.0f}/s"
        )
        check(system, load, load.medium, outs)
    finally:
        system.stop()
    return figures


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a and b else "-"


def report(results: dict[str, Figures], args: argparse.Namespace, context: dict) -> int:
    base, node, tahoe = results["rclone"], results["node"], results.get("tahoe")
    bare = results["twisted.web"]
    size = f"{args.size_mib} MiB" if args.size_mib % 1024 else f"{args.size_mib // 1024} GiB"
    print()
    print(
        f"Transfers on loopback with curl {context['curl']}; MB = 10^6 bytes; best of "
        f"{args.rounds} round{'s' if args.rounds > 1 else ''}; downloads to "
        f"{'disk and checked' if args.sink == 'file' else '/dev/null'}, best of 2 GETs"
    )
    print(
        f"baseline: rclone serve webdav ({context['rclone']}); node: MetaDisk, limits off, "
        f"3 local-directory hosts, accounts {'on' if args.accounts else 'off'}"
    )
    print(f"tahoe:    {context['tahoe']}")
    print(f"machine:  {os.cpu_count()} cores, load average {context['load']} at start")
    print()
    columns = ["rclone", "node", "tahoe", "node/rclone", "node/tahoe"]
    print(f"{'':32}" + "".join(f"{c:>12}" for c in columns))

    def row(label: str, values: list[float | None], fmt: str, with_ratios: bool = True) -> None:
        cells = [format(v, fmt) if v is not None else "-" for v in values]
        if with_ratios:
            cells += [ratio(values[1], values[0]), ratio(values[1], values[2])]
        else:
            cells += ["", ""]
        print(f"{label:32}" + "".join(f"{c:>12}" for c in cells))

    def of(f: Figures | None, name: str) -> float | None:
        return getattr(f, name) if f is not None else None

    row(f"{size} upload, MB/s", [base.put, node.put, of(tahoe, "put")], ".1f")
    row(f"{size} download, MB/s", [base.get, node.get, of(tahoe, "get")], ".1f")
    row(f"{size} download ciphertext, MB/s", [base.get, node.get_ciphertext, None], ".1f")
    row(
        f"{args.files} x {args.file_kib} KiB upload, files/s",
        [base.small_put, node.small_put, of(tahoe, "small_put")],
        ".0f",
    )
    row(
        f"{args.files} x {args.file_kib} KiB download, files/s",
        [base.small_get, node.small_get, of(tahoe, "small_get")],
        ".0f",
    )
    row(
        f"{args.many} x {args.file_kib} KiB upload, {CLIENTS} clients, files/s",
        [base.many_put, node.many_put, None],
        ".0f",
    )
    row(
        f"{args.many} x {args.file_kib} KiB download, {CLIENTS} clients, files/s",
        [base.many_get, node.many_get, None],
        ".0f",
    )
    row(
        f"{MEDIUM[0]} x 1 MiB upload, files/s",
        [base.medium_put, node.medium_put, None],
        ".0f",
    )
    row(
        f"{MEDIUM[0]} x 1 MiB download, files/s",
        [base.medium_get, node.medium_get, None],
        ".0f",
    )
    row(
        f"peak RSS, {size} phase, MiB",
        [base.rss_large, node.rss_large, of(tahoe, "rss_large")],
        ".1f",
        False,
    )
    row(
        "peak RSS, small files, MiB",
        [base.rss_small, node.rss_small, of(tahoe, "rss_small")],
        ".1f",
        False,
    )
    print()
    print(
        f"node: idle RSS {context['idle_rss']:.1f} MiB; the {size} file was on its 3 hosts "
        f"{node.replication:.1f} s after the upload's answer (waited for before the download)"
    )
    print(
        f"node: CPU seconds per 1,000 x {args.file_kib} KiB (one client): uploads "
        f"{node.cpu_put:.2f}, downloads {node.cpu_get:.2f}"
    )
    local, remote = node.queue, context["rclone_hosts"]
    assert local is not None
    print(f"node, {CLIENTS} clients' small uploads to 3 local hosts: {local.describe()}")
    print(f"node, the same to 3 rclone WebDAV hosts ({args.files} files): {remote.describe()}")
    print()
    print(
        "the platform's ceiling: twisted.web alone (bench/bare_twisted.py: a PUT's body written "
        "and fsynced, GETs by static.File; no encryption, database, accounts, hosts or log)"
    )
    print(f"{'':48}{'twisted.web':>12}{'/ rclone':>12}{'node / it':>12}")
    for label, name in (
        ("small upload, one client, files/s", "small_put"),
        ("small download, one client, files/s", "small_get"),
        (f"small upload, {CLIENTS} clients, files/s", "many_put"),
        (f"small download, {CLIENTS} clients, files/s", "many_get"),
        ("1 MiB upload, files/s", "medium_put"),
        ("1 MiB download, files/s", "medium_get"),
    ):
        value = getattr(bare, name)
        print(
            f"{label:48}{value:>12.0f}{ratio(value, getattr(base, name)):>12}"
            f"{ratio(getattr(node, name), value):>12}"
        )
    print(
        f"twisted.web: CPU seconds per 1,000 x {args.file_kib} KiB (one client): uploads "
        f"{bare.cpu_put:.2f}, downloads {bare.cpu_get:.2f}"
    )
    database = "PostgreSQL (" + args.database + ")" if args.database else "SQLite"
    print(f"node database: {database}")
    if args.rounds > 1:
        for name, figures in results.items():
            for i, r in enumerate(figures.rounds, 1):
                shown = ", ".join(f"{k} {v:.1f}" for k, v in r.items() if isinstance(v, float))
                print(f"  round {i} {name}: {shown}")

    checks = [
        (f"upload >= {GOAL_PUT_VS_BASELINE}x rclone", node.put / base.put >= GOAL_PUT_VS_BASELINE),
        (
            f"download >= {GOAL_GET_VS_BASELINE}x rclone",
            node.get / base.get >= GOAL_GET_VS_BASELINE,
        ),
        (f"peak RSS <= {GOAL_RSS_MIB} MiB", node.rss_large <= GOAL_RSS_MIB),
        (
            f"small upload >= {GOAL_SMALL_PUT_VS_BASELINE}x rclone",
            node.small_put / base.small_put >= GOAL_SMALL_PUT_VS_BASELINE,
        ),
        (
            f"small download >= {GOAL_SMALL_GET_VS_BASELINE}x rclone",
            node.small_get / base.small_get >= GOAL_SMALL_GET_VS_BASELINE,
        ),
        (
            f"{CLIENTS} clients upload >= {GOAL_SMALL_PUT_VS_BASELINE}x rclone",
            node.many_put / base.many_put >= GOAL_SMALL_PUT_VS_BASELINE,
        ),
        (
            f"{CLIENTS} clients download >= {GOAL_SMALL_GET_VS_BASELINE}x rclone",
            node.many_get / base.many_get >= GOAL_SMALL_GET_VS_BASELINE,
        ),
        ("replication keeps up (local hosts)", local.keeps_up()),
        ("replication keeps up (rclone hosts)", remote.keeps_up()),
    ]
    if tahoe is not None:
        checks += [
            (f"upload >= {GOAL_VS_TAHOE}x Tahoe-LAFS", node.put / tahoe.put >= GOAL_VS_TAHOE),
            (f"download >= {GOAL_VS_TAHOE}x Tahoe-LAFS", node.get / tahoe.get >= GOAL_VS_TAHOE),
        ]
    if tahoe is None:
        checks.append(("the goals against Tahoe-LAFS", None))
    words = {True: "met", False: "MISSED", None: "not checked (no Tahoe-LAFS)"}
    print("goals: " + "; ".join(f"{text}: {words[ok]}" for text, ok in checks))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, help="the large file (1024; --quick: 64)")
    parser.add_argument("--files", type=int, help="how many small files (1000; --quick: 200)")
    parser.add_argument("--file-kib", type=int, default=10, help="size of each small file (10)")
    parser.add_argument("--quick", action="store_true", help="64 MiB and 200 small files")
    parser.add_argument("--rounds", type=int, default=1, help="best of N rounds (1)")
    parser.add_argument("--no-tahoe", dest="tahoe", action="store_false", help="skip Tahoe-LAFS")
    parser.add_argument(
        "--tahoe-venv",
        type=Path,
        default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        / "metadisk-bench"
        / "tahoe-venv",
        help="virtualenv of Tahoe-LAFS, made with pip on first use",
    )
    parser.add_argument(
        "--no-accounts",
        dest="accounts",
        action="store_false",
        help="run the node with accounts off (by default uploads and downloads carry a token)",
    )
    parser.add_argument(
        "--sink",
        choices=["file", "null"],
        default="file",
        help="where curl writes downloads: a file, checked afterwards (default), or /dev/null",
    )
    parser.add_argument("--workdir", type=Path, help="where the files go (default: a temp dir)")
    parser.add_argument(
        "--many", type=int, default=4000, help=f"small files of the {CLIENTS}-client phase (4000)"
    )
    parser.add_argument(
        "--database",
        help="the node's database server, e.g. postgresql://127.0.0.1/test: each node start"
        " gets a database of its own there (default: SQLite in its data dir)",
    )
    args = parser.parse_args()
    args.size_mib = args.size_mib or (64 if args.quick else 1024)
    args.files = args.files or (200 if args.quick else 1000)
    for tool in ("curl", "rclone"):
        if shutil.which(tool) is None:
            raise SystemExit(f"bench/transfer.py needs {tool}: apt-get install {tool}")

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    context = {
        "curl": subprocess.run(
            ["curl", "--version"], capture_output=True, text=True
        ).stdout.split()[1],
        "rclone": subprocess.run(["rclone", "version"], capture_output=True, text=True)
        .stdout.split("\n")[0]
        .strip(),
        "load": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
    }
    systems: list[System] = [Rclone()]
    size = args.size_mib * MiB
    small_size = args.file_kib * 1024
    capacity = 2 * (size + (args.files + args.many) * small_size + MEDIUM[0] * MEDIUM[1])
    node = MetaDisk(
        args.accounts,
        capacity=capacity + 2**30,
        max_file_size=max(size, small_size, MEDIUM[1]),
        database=args.database,
    )
    systems += [node, BareTwisted()]
    if args.tahoe:
        venv, version = tahoe_venv(args.tahoe_venv, log)
        if venv is None:
            context["tahoe"] = f"skipped: {version}"
        else:
            context["tahoe"] = f"Tahoe-LAFS {version} (introducer + storage node, 1-of-1 shares)"
            systems.append(Tahoe(venv))
    else:
        context["tahoe"] = "skipped (--no-tahoe)"

    results = {s.name: Figures() for s in systems}
    with tempfile.TemporaryDirectory(prefix="metadisk-transfer-", dir=args.workdir) as tmp:
        work = Path(tmp)
        log(f"writing {args.size_mib} MiB and {args.files} x {args.file_kib} KiB of random data")
        large = work / "large.bin"
        random_file(large, size)
        small_dir = work / "small"
        small_dir.mkdir()
        small = [small_dir / f"f{i:05d}.bin" for i in range(args.files)]
        many = [small_dir / f"m{i:05d}.bin" for i in range(args.many)]
        for path in [*small, *many]:
            path.write_bytes(os.urandom(small_size))
        medium = [small_dir / f"medium{i:03d}.bin" for i in range(MEDIUM[0])]
        for path in medium:
            random_file(path, MEDIUM[1])
        for round_number in range(1, args.rounds + 1):
            # The baseline and the node take turns at going first: on a VM, who writes into
            # memory that was just freed (and not newly handed over by the host) runs faster.
            order = list(systems)
            if round_number % 2 == 0:
                order[0], order[1] = order[1], order[0]
            for system in order:
                log(f"round {round_number}: {system.name}")
                run = work / f"{system.name}-{round_number}"
                run.mkdir()
                load = Workload(large, size, small, small_size, args.sink, run, many, medium)
                try:
                    figures = measure(system, load, log)
                except RuntimeError as e:
                    if system.name != "tahoe":
                        raise
                    log(f"Tahoe-LAFS failed: {e}")
                    context["tahoe"] = f"failed: {e}"
                    systems.remove(system)
                    del results["tahoe"]
                    continue
                finally:
                    shutil.rmtree(run, ignore_errors=True)  # blobs, copies, downloads
                if isinstance(system, MetaDisk):
                    context["idle_rss"] = system.idle_rss
                results[system.name].merge(figures)
        log("replication to 3 rclone WebDAV hosts")
        run = work / "replication"
        run.mkdir()
        try:
            context["rclone_hosts"] = replication_to_rclone(args, run, many[: args.files])
        finally:
            shutil.rmtree(run, ignore_errors=True)
    return report(results, args, context)


if __name__ == "__main__":
    sys.exit(main())
