"""
Running a file host's command-line tool (rclone, plowshare) as a child
process: an argument list (never a shell), a timeout that kills the child's
whole process group, a bound on how many run at once for one host, stdout and
the tail of stderr captured, and exit codes turned into errors that say what
went wrong.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from attrs import define, field, frozen
from twisted.internet.defer import CancelledError, Deferred, DeferredSemaphore
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IDelayedCall, IReactorProcess, IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from metadisk.store.hosts import HostError

MAX_OUTPUT = 1 << 20  # stdout kept in memory; the tools print a URL, a name or a listing
STDERR_TAIL = 4096  # bytes of stderr kept, the end being where tools say why they failed
MESSAGE_TAIL = 600  # characters of that tail quoted in an error message

# The child makes itself the leader of a new process group before it execs the
# tool, so a timeout can kill the tool and everything it started (plowshare's
# bash runs curl). Neither spawnProcess nor posix_spawn offers setpgid.
_GROUP_LEADER = "import os, sys; os.setpgid(0, 0); os.execv(sys.argv[1], sys.argv[2:])"


class ToolNotFound(HostError):
    """The tool is not installed (not on PATH)."""


class ProcessFailed(HostError):
    """The tool ended with an exit code that means failure, or was killed by a signal."""

    def __init__(self, message: str, code: int | None, stderr: str) -> None:
        super().__init__(message)
        self.code = code
        self.stderr = stderr


class ProcessTimedOut(HostError):
    """The tool did not finish within its timeout; its process group was killed."""


@frozen
class Tool:
    """A command and what its exit codes mean."""

    command: str
    exit_codes: Mapping[int, str] = field(factory=dict)

    def meaning(self, code: int) -> str:
        return self.exit_codes.get(code, "failed")


@frozen
class ProcessResult:
    code: int
    stdout: bytes
    stderr: str  # the tail

    @property
    def text(self) -> str:
        return self.stdout.decode("utf-8", "replace")


def _tail(stderr: bytes | bytearray) -> str:
    text = " ".join(bytes(stderr).decode("utf-8", "replace").split())
    return text if len(text) <= MESSAGE_TAIL else "…" + text[-MESSAGE_TAIL:]


class _Child(ProcessProtocol):
    """Collects one child's output and reports how it ended."""

    def __init__(self, on_overflow: Callable[[], None]) -> None:
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.overflowed = False
        self.ended: Deferred[BaseException] = Deferred()
        self._on_overflow = on_overflow

    def connectionMade(self) -> None:
        # Nothing to say to the tool: a tool that asks (a password, a captcha) gets EOF.
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        if self.overflowed:
            return
        self.stdout += data
        if len(self.stdout) > MAX_OUTPUT:
            self.overflowed = True
            del self.stdout[MAX_OUTPUT:]
            self._on_overflow()

    def errReceived(self, data: bytes) -> None:
        self.stderr += data
        del self.stderr[:-STDERR_TAIL]

    def processEnded(self, reason: Failure) -> None:
        # The exception itself: a Failure given to callback() would run the errbacks.
        self.ended.callback(reason.value)


@define(kw_only=True)
class ProcessRunner:
    """
    Runs one host's tool. At most C{max_processes} children at once; more
    calls wait their turn (the caller's own timeout bounds that wait, and
    cancelling it leaves the queue). Each child gets C{timeout} seconds.
    """

    _reactor: IReactorProcess
    _clock: IReactorTime
    max_processes: int = 4
    timeout: float = 300.0
    kill_grace: float = 5.0  # from SIGTERM to SIGKILL, and from SIGKILL to giving up on it
    env: Mapping[str, str] | None = None  # None: this process's environment
    _killpg: Callable[[int, int], None] = os.killpg
    _slots: DeferredSemaphore = field(init=False)

    log = Logger()

    def __attrs_post_init__(self) -> None:
        self._slots = DeferredSemaphore(self.max_processes)

    @property
    def running(self) -> int:
        return self.max_processes - self._slots.tokens

    def run(
        self,
        tool: Tool,
        args: Sequence[str],
        *,
        action: str | None = None,
        timeout: float | None = None,
        ok_codes: Sequence[int] = (0,),
        cwd: str | None = None,
    ) -> Deferred[ProcessResult]:
        """
        Run C{tool} with C{args}; fire with its L{ProcessResult} when it exits
        with one of C{ok_codes}, else fail with a L{HostError}. C{action}
        names the call in errors (the arguments may hold secrets or be long).
        Cancelling the Deferred kills the child's process group.
        """
        run = _Run(
            self,
            tool,
            tuple(args),
            action or tool.command,
            self.timeout if timeout is None else timeout,
            frozenset(ok_codes),
            cwd,
        )
        return run.start()

    def _environment(self) -> dict[str, str]:
        return dict(os.environ if self.env is None else self.env)

    def _spawn(self, child: _Child, tool: Tool, args: tuple[str, ...], cwd: str | None) -> Any:
        env = self._environment()
        executable = shutil.which(tool.command, path=env.get("PATH", os.defpath))
        if executable is None:
            raise ToolNotFound(f"{tool.command} is not installed (not found on PATH)")
        argv = [sys.executable, "-I", "-S", "-c", _GROUP_LEADER, executable, tool.command, *args]
        return self._reactor.spawnProcess(child, sys.executable, argv, env=env, path=cwd)


@define(eq=False)
class _Run:
    """One call of L{ProcessRunner.run}, from waiting for a slot to the child's end."""

    _runner: ProcessRunner
    _tool: Tool
    _args: tuple[str, ...]
    _action: str
    _timeout: float
    _ok_codes: frozenset[int]
    _cwd: str | None
    _result: Deferred[ProcessResult] = field(init=False)
    _waiting: Deferred[Any] | None = None
    _child: _Child | None = None
    _transport: Any = None
    _timer: IDelayedCall | None = None
    _killer: IDelayedCall | None = None
    _holding: bool = False
    _exited: bool = False

    def start(self) -> Deferred[ProcessResult]:
        self._result = Deferred(self._cancel)
        self._waiting = self._runner._slots.acquire()
        self._waiting.addCallbacks(self._spawn, self._not_spawned)
        return self._result

    def _spawn(self, _: object) -> None:
        self._waiting = None
        self._holding = True
        self._child = _Child(self._overflowed)
        try:
            self._transport = self._runner._spawn(self._child, self._tool, self._args, self._cwd)
        except Exception as e:
            self._release()
            error = e if isinstance(e, HostError) else HostError(f"{self._action}: {e}")
            self._result.errback(error)
            return
        self._timer = self._runner._clock.callLater(self._timeout, self._expired)
        self._child.ended.addCallback(self._ended)

    def _not_spawned(self, failure: Failure) -> None:
        # Only a cancelled wait for a slot ends here; the result has already failed.
        failure.trap(CancelledError)

    def _cancel(self, _: Deferred[ProcessResult]) -> None:
        if self._waiting is not None:
            self._waiting.cancel()
        elif self._transport is not None and not self._result.called:
            self._stop_timer()
            self._result.errback(CancelledError(f"{self._action}: cancelled, killed"))
            self._kill()

    # Both answer first, then kill: the child's end must find the result already given.
    def _expired(self) -> None:
        self._timer = None
        tail = _tail(self._child.stderr) if self._child else ""
        self._result.errback(
            ProcessTimedOut(
                f"{self._action}: no answer after {self._timeout:g} s, killed"
                + (f": {tail}" if tail else "")
            )
        )
        self._kill()

    def _overflowed(self) -> None:
        self._stop_timer()
        self._result.errback(
            HostError(f"{self._action}: printed more than {MAX_OUTPUT} bytes, killed")
        )
        self._kill()

    def _kill(self) -> None:
        """SIGTERM to the whole group, SIGKILL if it lingers, then stop waiting for it."""
        if self._killer is not None or self._transport is None or self._exited:
            return
        self._signal(signal.SIGTERM)
        if self._exited:
            return
        clock = self._runner._clock

        def kill() -> None:
            self._killer = None
            self._signal(signal.SIGKILL)
            if not self._exited:
                self._killer = clock.callLater(self._runner.kill_grace, give_up)

        def give_up() -> None:
            # Something in the group escaped (a new session holding our pipes):
            # free the slot rather than block this host for good.
            self._killer = None
            self._runner.log.error(
                "{action}: pid {pid} did not end after SIGKILL", action=self._action, pid=self.pid
            )
            self._transport.loseConnection()
            self._release()

        self._killer = clock.callLater(self._runner.kill_grace, kill)

    @property
    def pid(self) -> int | None:
        return getattr(self._transport, "pid", None)

    def _signal(self, signum: int) -> None:
        pid = self.pid
        if pid is not None:
            try:
                self._runner._killpg(pid, signum)
            except (ProcessLookupError, PermissionError):
                pass  # gone already, or not yet its own group leader: signal it alone
        try:
            self._transport.signalProcess(signum)
        except (ProcessExitedAlready, OSError):
            pass

    def _stop_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _release(self) -> None:
        if self._holding:
            self._holding = False
            self._runner._slots.release()

    def _ended(self, reason: BaseException) -> None:
        self._exited = True
        self._stop_timer()
        if self._killer is not None and self._killer.active():
            self._killer.cancel()
        self._killer = None
        self._release()
        if self._result.called:
            return  # timed out, cancelled or overflowed: already answered
        child = self._child
        assert child is not None
        code = getattr(reason, "exitCode", None)
        stderr = _tail(child.stderr)
        if code is not None and code in self._ok_codes:
            self._result.callback(ProcessResult(code, bytes(child.stdout), stderr))
            return
        if code is None:
            how = f"killed by signal {getattr(reason, 'signal', None)}"
        else:
            how = f"exit {code} ({self._tool.meaning(code)})"
        message = f"{self._action}: {how}" + (f": {stderr}" if stderr else "")
        self._result.errback(ProcessFailed(message, code, stderr))
