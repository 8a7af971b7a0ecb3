"""
Stand-ins for the tests: here, for hosts and replication, a fake
IReactorProcess, a real `rclone serve webdav` on loopback, the fake plowshare
tools on PATH (fakeplow.py) and a host wrapper that breaks, hangs and
corrupts on command; in L{tests.fakes.grid}, a whole grid of those hosts over
one database and cache; in L{tests.fakes.florincoind}, an in-process
florincoind for the chain's tests.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from attrs import define, field
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import IProcessTransport, IReactorProcess
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest
from zope.interface import implementer

from metadisk.interfaces import IFileHost
from metadisk.store.hosts import HostError, Stored
from metadisk.store.hosts.process import ProcessResult

FAKES = Path(__file__).resolve().parent


def require_tool(name: str) -> str:
    """The tool's path; a test without it fails under CI=true and is skipped elsewhere."""
    path = shutil.which(name)
    if path is None:
        message = (
            f"{name} is not installed (Debian package {name!r}; scripts/run-tests installs it)"
        )
        if os.environ.get("CI") == "true":
            raise AssertionError(message)
        raise SkipTest(message)
    return path


def plowshare_env(root: Path) -> dict[str, str]:
    """An environment whose plowup/plowdown/plowprobe are the fakes, keeping sites in C{root}."""
    root.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PATH"] = f"{FAKES}{os.pathsep}{env.get('PATH', os.defpath)}"
    env["FAKE_PLOWSHARE_ROOT"] = str(root)
    return env


def set_plowshare_mode(root: Path, module: str, mode: str) -> None:
    """Make a fake site misbehave (see fakeplow.py); "" makes it behave again."""
    (root / f"{module}.mode").write_text(mode + "\n")


def hung_pids(root: Path) -> list[int]:
    """Pids (tool and its child) of the fake tools that were told to hang."""
    try:
        text = (root / "hung.pids").read_text()
    except FileNotFoundError:
        return []
    return [int(pid) for pid in text.split()]


def is_gone(pid: int) -> bool:
    """Dead or a zombie (in a container nobody may reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False


class _Server(ProcessProtocol):
    def __init__(self) -> None:
        self.log = bytearray()
        self.address: Deferred[str] = Deferred()
        self.ended: Deferred[None] = Deferred()

    def errReceived(self, data: bytes) -> None:
        self.log += data
        match = re.search(rb"started on \[?(https?://[0-9.]+:[0-9]+)/?\]?", bytes(self.log))
        if match and not self.address.called:
            self.address.callback(match.group(1).decode())

    outReceived = errReceived

    def processEnded(self, reason: Failure) -> None:
        if not self.address.called:
            self.address.errback(RuntimeError(f"rclone serve ended: {bytes(self.log)!r}"))
        self.ended.callback(None)


@define
class WebDAVServer:
    """A real `rclone serve webdav DIR` on a free loopback port."""

    root: Path
    url: str = ""
    _protocol: _Server | None = None
    _process: Any = None

    async def start(self) -> None:
        rclone = require_tool("rclone")
        self.root.mkdir(parents=True, exist_ok=True)
        # Port 0: rclone picks a free port and says which in its log.
        address = self.url.removeprefix("http://") or "127.0.0.1:0"
        self._protocol = _Server()
        self._process = reactor.spawnProcess(
            self._protocol,
            rclone,
            # No directory cache: a file deleted or changed on disk shows at once.
            [rclone, "serve", "webdav", str(self.root), "--addr", address, "--dir-cache-time=0s"],
            env={**os.environ, "RCLONE_CONFIG": os.devnull},
        )
        self.url = await self._protocol.address.addTimeout(15, reactor)

    def remote(self, path: str = "blobs") -> str:
        return f":webdav,url='{self.url}':{path}"

    @property
    def running(self) -> bool:
        return self._protocol is not None and not self._protocol.ended.called

    async def stop(self) -> None:
        if not self.running:
            return
        assert self._protocol is not None
        try:
            self._process.signalProcess("KILL")
        except ProcessExitedAlready:
            pass
        await self._protocol.ended.addTimeout(10, reactor)


@implementer(IProcessTransport)
class FakeProcess:
    """A child that exists only in the test: it says and ends what the test tells it."""

    def __init__(
        self, protocol: ProcessProtocol, executable: str, args: list[str], env: Any, path: Any
    ) -> None:
        self.protocol = protocol
        self.executable = executable
        self.args = list(args)
        self.env = env
        self.path = path
        self.pid = FakeProcessReactor.next_pid = FakeProcessReactor.next_pid + 1
        self.signals: list[Any] = []
        self.stdin_closed = False
        self.lost = False
        self.ended = False

    @property
    def command(self) -> list[str]:
        """The tool's argv, after the runner's process-group wrapper."""
        return self.args[self.args.index("-c") + 2 :]

    def closeStdin(self) -> None:
        self.stdin_closed = True

    def signalProcess(self, signalID: Any) -> None:
        if self.ended:
            raise ProcessExitedAlready()
        self.signals.append(signalID)

    def loseConnection(self) -> None:
        self.lost = True

    def say(self, stdout: bytes = b"", stderr: bytes = b"") -> None:
        if stdout:
            self.protocol.outReceived(stdout)
        if stderr:
            self.protocol.errReceived(stderr)

    def exit(self, code: int = 0) -> None:
        self.ended = True
        reason = ProcessDone(0) if code == 0 else ProcessTerminated(exitCode=code)
        self.protocol.processEnded(Failure(reason))

    def die(self, signum: int = signal.SIGKILL) -> None:
        self.ended = True
        self.protocol.processEnded(Failure(ProcessTerminated(signal=signum)))


@implementer(IReactorProcess)
class FakeProcessReactor:
    """An IReactorProcess whose children are L{FakeProcess}es (MemoryReactor has none)."""

    next_pid = 40000

    def __init__(self) -> None:
        self.processes: list[FakeProcess] = []
        self.killed: list[tuple[int, int]] = []  # (process group, signal) from the runner
        self.deadly = {signal.SIGKILL}  # signals the fake children die of

    def killpg(self, pgid: int, signum: int) -> None:
        self.killed.append((pgid, signum))
        for process in self.processes:
            if process.pid == pgid and not process.ended and signum in self.deadly:
                process.die(signum)

    def spawnProcess(
        self,
        processProtocol: ProcessProtocol,
        executable: str,
        args: Any = (),
        env: Any = None,
        path: Any = None,
        uid: Any = None,
        gid: Any = None,
        usePTY: Any = False,
        childFDs: Any = None,
    ) -> FakeProcess:
        process = FakeProcess(processProtocol, executable, list(args), env, path)
        self.processes.append(process)
        processProtocol.makeConnection(process)
        return process

    @property
    def alive(self) -> list[FakeProcess]:
        return [p for p in self.processes if not p.ended]


class RecordingRunner:
    """
    A host's process runner that runs nothing: it records each call (action,
    arguments, timeout) and answers it with what C{answer} gives.
    """

    timeout = 300.0  # the base the hosts scale their transfer timeouts from

    def __init__(
        self,
        answer: Callable[[], Deferred[ProcessResult]] = lambda: succeed(ProcessResult(0, b"", "")),
    ) -> None:
        self._answer = answer
        self.calls: list[tuple[str | None, tuple[str, ...], float | None]] = []

    def run(
        self,
        tool: Any,
        args: Any,
        *,
        action: str | None = None,
        timeout: float | None = None,
        **_: Any,
    ) -> Deferred[ProcessResult]:
        self.calls.append((action, tuple(args), timeout))
        return self._answer()


@implementer(IFileHost)
@define
class FaultyHost:
    """
    Wraps a host and misbehaves on command (Tahoe's NoNetworkGrid style):
    C{broken} fails every call, C{hanging} never answers (until cancelled;
    the calls held are in C{hung}), C{corrupt} delivers flipped bytes. A
    whole grid of them: L{tests.fakes.grid.Grid}.
    """

    inner: Any
    broken: bool = False
    hanging: bool = False
    corrupt: bool = False
    calls: list[str] = field(factory=list)
    hung: list[Deferred[Any]] = field(factory=list)

    @property
    def name(self) -> str:
        return self.inner.name

    def _misbehave(self, call: str) -> Deferred[Any] | None:
        self.calls.append(call)
        if self.broken:
            return fail(HostError(f"{self.name} is broken"))
        if self.hanging:
            d: Deferred[Any] = Deferred()
            self.hung.append(d)
            return d
        return None

    def store(self, filehash: str, path: str) -> Deferred[str]:
        return self._misbehave("store") or self.inner.store(filehash, path)

    def store_all(self, blobs: Sequence[tuple[str, str]]) -> Deferred[list[Stored]]:
        return self._misbehave("store") or self.inner.store_all(blobs)  # one job, one call

    def fetch(self, filehash: str, url: str, destination: str, size: int) -> Deferred[None]:
        d = self._misbehave("fetch") or self.inner.fetch(filehash, url, destination, size)
        if self.corrupt:

            def flip(result: None) -> None:
                with open(destination, "r+b") as f:
                    first = f.read(1)
                    f.seek(0)
                    f.write(bytes([(first[0] if first else 0) ^ 0xFF]))
                return result

            d.addCallback(flip)
        return d

    def exists(self, filehash: str, url: str) -> Deferred[bool]:
        return self._misbehave("exists") or self.inner.exists(filehash, url)
