"""
A bounded schemathesis run against a live node: requests generated from the
OpenAPI document (examples, edge cases, random data and chains of linked
calls), checking that no answer is a 5xx and every answer fits the document.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from tests.support import funded_token, start_node, test_config

REPOSITORY = Path(__file__).resolve().parent.parent
MAX_EXAMPLES = 10  # per operation and phase: about 500 requests, 10 s on a quiet machine
RUN_TIMEOUT = 240  # seconds; the run is killed past this
CHECKS = ",".join(
    (
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        "ignored_auth",
    )
)


class _Collect(ProcessProtocol):
    """A child's output and exit code; killed (its process group) if it runs too long."""

    def __init__(self) -> None:
        self.output = bytearray()
        self.done: Deferred[int] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        code = 0 if reason.check(ProcessDone) else reason.value.exitCode
        self.done.callback(code if code is not None else -1)

    def kill(self) -> None:
        try:
            self.transport.signalProcess("KILL")
        except ProcessExitedAlready:
            pass


async def run_bounded(
    argv: list[str], cwd: Path, timeout: float, env: dict[str, str] | None = None
) -> tuple[int, str]:
    protocol = _Collect()
    reactor.spawnProcess(protocol, argv[0], argv, env={**os.environ, **(env or {})}, path=str(cwd))
    killer = reactor.callLater(timeout, protocol.kill)
    try:
        code = await protocol.done
    finally:
        if killer.active():
            killer.cancel()
    return code, protocol.output.decode("utf-8", "replace")


class SchemathesisTests(TestCase):
    timeout = RUN_TIMEOUT + 60

    async def test_no_server_errors_no_schema_breaks(self) -> None:
        base = Path(self.mktemp()).resolve()
        # Every request comes from one address: let it guess tokens without being shut out.
        config = test_config(
            base, accounts={"guess_limit": 10**6}, storage={"max_file_size": 2**20}
        )
        node = await start_node(self, config)
        # A token with credit, so uploads and downloads get past payment to the real work.
        token = await funded_token(node, 10**15)
        work = base / "schemathesis"
        work.mkdir()
        (work / "schemathesis.toml").write_text(f'[parameters]\n"query.token" = "{token}"\n')
        argv = [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "--config-file",
            str(work / "schemathesis.toml"),
            "run",
            node.url + "/api/openapi.json",
            "--checks",
            CHECKS,
            "--max-examples",
            str(MAX_EXAMPLES),
            # The same requests every run, so that CI is not a lottery; change it to explore.
            "--seed",
            "20261125",
            "--phases",
            "examples,coverage,fuzzing,stateful",
            "--request-timeout",
            "20",
            "--header",
            f"Authentication: {node.secret}",
            "--suppress-health-check",
            "all",
            "--warnings",
            "off",
            "--no-color",
        ]
        # Tus bodies (application/offset+octet-stream) are bytes: tests/schemathesis_hooks.py.
        hooks = {"SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks", "PYTHONPATH": str(REPOSITORY)}
        code, output = await run_bounded(argv, work, RUN_TIMEOUT, hooks)
        tail = output[-6000:]
        self.assertIn("Test cases:", output, tail)
        self.assertEqual(code, 0, tail)
        # The run really reached the node's logic: files went in.
        stored: Any = await node.node.db.query("SELECT COUNT(*) FROM files")
        self.assertGreater(stored[0][0], 0, tail)
