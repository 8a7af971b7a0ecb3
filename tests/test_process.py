"""
The process runner: unit tests on a fake IReactorProcess and a Clock, then a
few real processes (a process group really killed at its timeout).
"""

from __future__ import annotations

import os
import signal
import stat
import sys
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from metadisk.store.hosts import HostError
from metadisk.store.hosts.process import (
    MAX_OUTPUT,
    ProcessFailed,
    ProcessRunner,
    ProcessTimedOut,
    Tool,
    ToolNotFound,
)
from tests.fakes import FakeProcessReactor, is_gone
from tests.support import eventually

TOOL = Tool("mytool", {3: "network error", 13: "link dead"})


def install_tool(case: TestCase, name: str, body: str) -> dict[str, str]:
    """An executable Python script named C{name}; the environment that finds it."""
    folder = Path(case.mktemp())
    folder.mkdir()
    script = folder / name
    script.write_text(f"#!{sys.executable}\n{body}")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return {**os.environ, "PATH": f"{folder}{os.pathsep}{os.environ.get('PATH', '')}"}


class FakeProcessTests(TestCase):
    def setUp(self) -> None:
        self.processes = FakeProcessReactor()
        self.clock = Clock()
        self.env = install_tool(self, "mytool", "")
        self.runner = ProcessRunner(
            reactor=self.processes,
            clock=self.clock,
            max_processes=2,
            timeout=30,
            kill_grace=5,
            env=self.env,
            killpg=self.processes.killpg,
        )

    def test_success(self) -> None:
        """The tool runs from an argument list, in its own process group, stdin closed."""
        d = self.runner.run(TOOL, ["up", "a file with spaces", "$(rm -rf /)"], cwd="/tmp")
        [process] = self.processes.processes
        self.assertEqual(process.command[1:], ["mytool", "up", "a file with spaces", "$(rm -rf /)"])
        self.assertTrue(process.command[0].endswith("/mytool"))
        self.assertIn("os.setpgid(0, 0)", process.args[process.args.index("-c") + 1])
        self.assertEqual(process.path, "/tmp")
        self.assertEqual(process.env["PATH"], self.env["PATH"])
        self.assertTrue(process.stdin_closed)
        process.say(b"http://example/1\n", b"notice\n")
        process.exit(0)
        result = self.successResultOf(d)
        self.assertEqual(
            (result.code, result.stdout, result.stderr), (0, b"http://example/1\n", "notice")
        )
        self.assertEqual(self.runner.running, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_exit_code_explained(self) -> None:
        """A failing exit names the action, what the code means, and the end of stderr."""
        d = self.runner.run(TOOL, ["up", "secret-argument"], action="mytool up")
        [process] = self.processes.processes
        process.say(stderr=b"x" * 10000 + b"\ncurl: (7) Failed to connect\n")
        process.exit(3)
        error = self.failureResultOf(d, ProcessFailed).value
        self.assertEqual(error.code, 3)
        self.assertIn("mytool up: exit 3 (network error): ", str(error))
        self.assertIn("curl: (7) Failed to connect", str(error))
        self.assertNotIn("secret-argument", str(error))
        self.assertLess(len(str(error)), 700)
        self.assertIsInstance(error, HostError)

    def test_unknown_code_and_signal(self) -> None:
        d1 = self.runner.run(TOOL, [])
        d2 = self.runner.run(TOOL, [])
        first, second = self.processes.processes
        first.exit(42)
        second.die(signal.SIGSEGV)
        self.assertIn("exit 42 (failed)", str(self.failureResultOf(d1, ProcessFailed).value))
        error = self.failureResultOf(d2, ProcessFailed).value
        self.assertIn(f"killed by signal {int(signal.SIGSEGV)}", str(error))
        self.assertIsNone(error.code)

    def test_ok_codes(self) -> None:
        """A code the caller expects (e.g. 'not found') is an answer, not an error."""
        d = self.runner.run(TOOL, [], ok_codes=(0, 13))
        self.processes.processes[0].exit(13)
        self.assertEqual(self.successResultOf(d).code, 13)

    def test_timeout_kills_the_group(self) -> None:
        """At its timeout: SIGTERM to the group, SIGKILL after the grace, slot freed at the end."""
        d = self.runner.run(TOOL, [], action="mytool hang")
        [process] = self.processes.processes
        process.say(stderr=b"waiting for the server\n")
        self.clock.advance(29.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        error = self.failureResultOf(d, ProcessTimedOut).value
        self.assertIn(
            "mytool hang: no answer after 30 s, killed: waiting for the server", str(error)
        )
        self.assertEqual(self.processes.killed, [(process.pid, signal.SIGTERM)])
        self.assertEqual(self.runner.running, 1)  # still there: the slot stays taken
        self.clock.advance(5)
        self.assertEqual(
            self.processes.killed,
            [(process.pid, signal.SIGTERM), (process.pid, signal.SIGKILL)],
        )
        self.assertTrue(process.ended)
        self.assertEqual(self.runner.running, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_term_is_enough(self) -> None:
        self.processes.deadly = {signal.SIGTERM, signal.SIGKILL}
        d = self.runner.run(TOOL, [])
        self.clock.advance(30)
        self.failureResultOf(d, ProcessTimedOut)
        self.assertEqual(self.processes.killed, [(self.processes.processes[0].pid, signal.SIGTERM)])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.runner.running, 0)

    def test_unkillable_frees_its_slot(self) -> None:
        """A group that outlives SIGKILL (escaped into its own session) does not block the host."""
        self.processes.deadly = set()
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        d = self.runner.run(TOOL, [])
        [process] = self.processes.processes
        self.clock.pump([30, 5])
        self.failureResultOf(d, ProcessTimedOut)
        self.assertEqual(self.runner.running, 1)
        self.clock.advance(5)
        self.assertTrue(process.lost)
        self.assertEqual(self.runner.running, 0)
        [event] = [e for e in logged if e["log_level"] == LogLevel.error]
        self.assertIn("did not end after SIGKILL", formatEvent(event))

    def test_cancel_kills(self) -> None:
        """Cancelling the Deferred (a caller's own timeout) kills the child."""
        d = self.runner.run(TOOL, [])
        [process] = self.processes.processes
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.processes.killed, [(process.pid, signal.SIGTERM)])
        self.clock.advance(5)
        self.assertTrue(process.ended)
        self.assertEqual(self.runner.running, 0)

    def test_timeout_with_addTimeout(self) -> None:
        d = self.runner.run(TOOL, []).addTimeout(10, self.clock)
        self.clock.advance(10)
        self.failureResultOf(d, TimeoutError)
        self.assertEqual(self.processes.killed[0][1], signal.SIGTERM)

    def test_bound_on_processes(self) -> None:
        """At most max_processes at once; the others wait, and may be cancelled while waiting."""
        first, second, third, fourth = (self.runner.run(TOOL, [str(i)]) for i in range(4))
        self.assertEqual(len(self.processes.processes), 2)
        third.cancel()
        self.failureResultOf(third, CancelledError)
        self.processes.processes[0].exit(0)
        self.successResultOf(first)
        self.assertEqual([p.command[-1] for p in self.processes.processes], ["0", "1", "3"])
        # The waiting time does not count against the child's own timeout.
        self.clock.advance(29)
        self.processes.processes[1].exit(0)
        self.processes.processes[2].exit(0)
        self.successResultOf(second)
        self.successResultOf(fourth)
        self.assertEqual(self.runner.running, 0)

    def test_tool_missing(self) -> None:
        runner = ProcessRunner(
            reactor=self.processes, clock=self.clock, env={"PATH": "/nonexistent"}
        )
        error = self.failureResultOf(runner.run(TOOL, []), ToolNotFound).value
        self.assertEqual(str(error), "mytool is not installed (not found on PATH)")
        self.assertEqual(runner.running, 0)

    def test_spawn_fails(self) -> None:
        def refuse(*args: object, **kwargs: object) -> None:
            raise OSError(24, "Too many open files")

        self.processes.spawnProcess = refuse  # type: ignore[method-assign]
        error = self.failureResultOf(self.runner.run(TOOL, [], action="mytool x"), HostError)
        self.assertIn("mytool x: [Errno 24] Too many open files", str(error.value))
        self.assertEqual(self.runner.running, 0)

    def test_endless_output_killed(self) -> None:
        """Garbage without end: the child is killed, memory stays bounded."""
        d = self.runner.run(TOOL, [])
        [process] = self.processes.processes
        chunk = b"garbage " * 8192
        for _ in range(MAX_OUTPUT // len(chunk) + 2):
            process.say(chunk)
        self.assertIn("printed more than", str(self.failureResultOf(d, HostError).value))
        self.assertEqual(self.processes.killed, [(process.pid, signal.SIGTERM)])
        self.assertLessEqual(len(process.protocol.stdout), MAX_OUTPUT)


class RealProcessTests(TestCase):
    """Real children on the real reactor, every wait bounded."""

    timeout = 30

    async def test_output_and_code(self) -> None:
        env = install_tool(
            self,
            "talker",
            "import os, sys\n"
            "print('group leader:', os.getpgid(0) == os.getpid(), sys.argv[1:])\n"
            "print('bad news', file=sys.stderr)\n"
            "sys.exit(int(sys.argv[1]))\n",
        )
        runner = ProcessRunner(reactor=reactor, clock=reactor, env=env, timeout=20)
        result = await runner.run(Tool("talker"), ["0", "two words"])
        self.assertEqual(result.text, "group leader: True ['0', 'two words']\n")
        self.assertEqual(result.stderr, "bad news")
        with self.assertRaises(ProcessFailed) as caught:
            await runner.run(Tool("talker", {5: "five"}), ["5"])
        self.assertIn("talker: exit 5 (five): bad news", str(caught.exception))

    async def test_hanging_group_killed_at_timeout(self) -> None:
        """A tool that hangs, with a child that hangs too: both are gone after the timeout."""
        folder = Path(self.mktemp())
        folder.mkdir()
        pids = folder / "pids"
        env = install_tool(
            self,
            "hanger",
            "import subprocess, sys, time\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
            f"open({str(pids)!r}, 'w').write(str(child.pid))\n"
            "time.sleep(600)\n",
        )
        runner = ProcessRunner(reactor=reactor, clock=reactor, env=env, timeout=1.5, kill_grace=2)
        d = runner.run(Tool("hanger"), [])
        await eventually(lambda: pids.exists() and pids.read_text(), 10)
        grandchild = int(pids.read_text())
        self.assertFalse(is_gone(grandchild))
        with self.assertRaises(ProcessTimedOut):
            await d
        await eventually(lambda: is_gone(grandchild) and runner.running == 0, 10)

    async def test_cancel_real(self) -> None:
        env = install_tool(self, "sleeper", "import time\ntime.sleep(600)\n")
        runner = ProcessRunner(reactor=reactor, clock=reactor, env=env, timeout=60)
        d = runner.run(Tool("sleeper"), [])
        waited: Deferred[None] = Deferred()
        reactor.callLater(0.3, waited.callback, None)
        await waited
        d.cancel()
        with self.assertRaises(CancelledError):
            await d
        await eventually(lambda: runner.running == 0, 10)
