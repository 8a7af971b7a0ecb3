"""
The `metadisk` command-line client, driven against a live node: its main
runs in a thread (it is blocking) while the node runs on the reactor, and
once as a real process.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

from attrs import define
from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SynchronousTestCase, TestCase

from metadisk.client import command, download, errors
from metadisk.crypto import DEFAULT_CONVERGENCE_SECRET, convergent_key, ctr_cipher
from tests.fakes.cutting_proxy import CuttingProxy
from tests.nodes import free_port
from tests.support import RunningNode, funded_token, start_node, test_config

REPO = Path(__file__).resolve().parent.parent
CLI_TIMEOUT = 60  # seconds; the CLI's own network timeout is shorter


class TerminalStream(io.StringIO):
    """A stderr that says it is a terminal, so that progress bars are drawn."""

    def isatty(self) -> bool:
        return True


@define
class Ran:
    code: int
    stdout: bytes
    stderr: str

    @property
    def text(self) -> str:
        return self.stdout.decode("utf-8")

    def json(self) -> Any:
        return json.loads(self.stdout)


async def metadisk(*argv: str, env: dict[str, str] | None = None, tty: bool = False) -> Ran:
    """Run the CLI's main in a thread, as `metadisk ARGV...` would."""
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    err = TerminalStream() if tty else io.StringIO()

    def call() -> int:
        try:
            return command.run(list(argv), stdout=out, stderr=err, environ=env or {})
        finally:
            out.flush()

    d = deferToThread(call)
    code = await d.addTimeout(CLI_TIMEOUT, reactor)
    return Ran(code, out.buffer.getvalue(), err.getvalue())


def expected_upload(data: bytes) -> tuple[str, str]:
    """(filehash, key) of C{data} under the default convergence secret."""
    key = convergent_key(DEFAULT_CONVERGENCE_SECRET, hashlib.sha256(data).hexdigest())
    return hashlib.sha256(ctr_cipher(key).encrypt(data)).hexdigest(), key.hex()


class CLITestCase(TestCase):
    async def start(self, **changes: Any) -> RunningNode:
        base = Path(self.mktemp()).resolve()
        self.work = base / "work"
        self.work.mkdir(parents=True)
        return await start_node(self, test_config(base, **changes) if changes else None)

    def write(self, name: str, data: bytes) -> Path:
        path = self.work / name
        path.write_bytes(data)
        return path

    async def balance(self, node: RunningNode, token: str) -> int:
        return await node.node.ledger.balance(token)

    async def uploaded(self, node: RunningNode, token: str, data: bytes) -> tuple[str, str]:
        ran = await metadisk(
            "upload", str(self.write("f.bin", data)), "--node", node.url, "--token", token, "--json"
        )
        self.assertEqual(ran.code, 0, ran.stderr)
        answer = ran.json()
        return answer["filehash"], answer["key"]


class TransferTests(CLITestCase):
    async def test_upload_find_download_verified(self) -> None:
        node = await self.start()
        token = await funded_token(node)
        data = os.urandom(300_000)
        source = self.write("report.pdf", data)
        ran = await metadisk("upload", str(source), "--node", node.url, "--token", token)
        self.assertEqual(ran.code, 0, ran.stderr)
        filehash, key = expected_upload(data)
        self.assertIn(f"filehash {filehash}", ran.text)
        self.assertIn(f"key      {key}", ran.text)

        ran = await metadisk("--node", node.url, "--json", "find", filehash)
        self.assertEqual(ran.code, 0, ran.stderr)
        self.assertEqual(ran.json()["filename"], f"{filehash[:7]}_report.pdf")
        self.assertEqual(ran.json()["filesize"], len(data))

        out = self.work / "back"
        out.mkdir()
        ran = await metadisk(
            "download",
            filehash,
            "--key",
            key,
            "-o",
            str(out),
            env={"METADISK_NODE": node.url, "METADISK_TOKEN": token},
        )
        self.assertEqual(ran.code, 0, ran.stderr)
        # The name the file was uploaded under, without the node's hash prefix.
        self.assertEqual((out / "report.pdf").read_bytes(), data)
        self.assertFalse((out / "report.pdf.part").exists())
        self.assertIn("verified: re-encrypting it with the key gives the filehash", ran.text)
        self.assertEqual(await self.balance(node, token), 10**9 - 5 * len(data))

    async def test_download_to_stdout_and_ciphertext(self) -> None:
        node = await self.start()
        token = await funded_token(node)
        data = b"plain words\n" * 1000
        filehash, key = await self.uploaded(node, token, data)
        ran = await metadisk(
            "download", filehash, "--key", key, "-o", "-", "--node", node.url, "--token", token
        )
        self.assertEqual(ran.code, 0, ran.stderr)
        self.assertEqual(ran.stdout, data)
        self.assertIn("verified", ran.stderr)
        # Without the key: the encrypted blob, verified by its SHA-256 alone.
        out = self.work / "blob"
        ran = await metadisk(
            "download", filehash, "-o", str(out), "--node", node.url, "--token", token, "--json"
        )
        self.assertEqual(ran.code, 0, ran.stderr)
        self.assertEqual(hashlib.sha256(out.read_bytes()).hexdigest(), filehash)
        self.assertEqual(ran.json()["verified"], True)

    async def test_non_ascii_name_and_no_overwrite(self) -> None:
        node = await self.start()
        token = await funded_token(node)
        self.write("héllo wörld.txt", b"hello")
        ran = await metadisk(
            "upload", str(self.work / "héllo wörld.txt"), "--node", node.url, "--token", token
        )
        self.assertEqual(ran.code, 0, ran.stderr)
        filehash, key = expected_upload(b"hello")
        out = self.work / "down"
        out.mkdir()
        args = ("download", filehash, "--key", key, "-o", str(out), "--node", node.url)
        ran = await metadisk(*args, "--token", token)
        self.assertEqual(ran.code, 0, ran.stderr)
        self.assertEqual((out / "héllo wörld.txt").read_bytes(), b"hello")
        ran = await metadisk(*args, "--token", token)
        self.assertEqual(ran.code, errors.EXIT_FAILED)
        self.assertIn("exists (use --force", ran.stderr)
        ran = await metadisk(*args, "--token", token, "--force")
        self.assertEqual(ran.code, 0, ran.stderr)

    async def test_progress_bars_show_speed_and_time_left(self) -> None:
        node = await self.start()
        token = await funded_token(node)
        source = self.write("f.bin", os.urandom(600_000))
        ran = await metadisk("upload", str(source), "--node", node.url, "--token", token, tty=True)
        self.assertEqual(ran.code, 0, ran.stderr)
        self.assertIn("B/s", ran.stderr)  # speed
        self.assertRegex(ran.stderr, r"\d\d:\d\d<\d\d:\d\d")  # elapsed<left
        self.assertNotIn("B/s", ran.text)  # bars never go to stdout
        quiet = await metadisk(
            "upload", str(source), "--node", node.url, "--token", token, "--no-progress", tty=True
        )
        self.assertEqual(quiet.code, 0, quiet.stderr)
        self.assertEqual(quiet.stderr, "")


class ResumeTests(CLITestCase):
    async def test_resumes_from_what_an_earlier_run_left(self) -> None:
        node = await self.start()
        token = await funded_token(node)
        data = os.urandom(500_000)
        filehash, key = await self.uploaded(node, token, data)
        before = await self.balance(node, token)
        target = self.work / "out.bin"
        Path(str(target) + ".part").write_bytes(data[:200_000])
        ran = await metadisk(
            "download", filehash, "--key", key, "-o", str(target), "--node", node.url,
            "--token", token, "--json",
        )  # fmt: skip
        self.assertEqual(ran.code, 0, ran.stderr)
        self.assertIn("resuming", ran.stderr)
        self.assertEqual(ran.json()["resumed_from"], 200_000)
        self.assertEqual(target.read_bytes(), data)
        # A Range request: only the missing bytes were paid for.
        self.assertEqual(before - await self.balance(node, token), 300_000)

    async def test_a_cut_connection_is_resumed_with_a_range(self) -> None:
        node = await self.start()
        token = await funded_token(node)
        data = os.urandom(1_000_000)
        filehash, key = await self.uploaded(node, token, data)
        proxy = await CuttingProxy.start(
            self, node.port, cut_after=200_000, starts=b"GET /api/download/", cut_answer=True
        )
        target = self.work / "out.bin"
        ran = await metadisk(
            "download", filehash, "--key", key, "-o", str(target), "--node", proxy.url,
            "--token", token,
        )  # fmt: skip
        self.assertEqual(ran.code, 0, ran.stderr)
        self.assertEqual(proxy.cuts, 1)
        self.assertIn("connection lost at", ran.stderr)
        self.assertIn("verified", ran.text)
        self.assertEqual(target.read_bytes(), data)
        ranges = [r for r in proxy.requests if r.startswith(b"GET ") and b"Range: bytes=" in r]
        self.assertEqual(len(ranges), 1)
        start = int(ranges[0].split(b"Range: bytes=")[1].split(b"-")[0])
        self.assertTrue(0 < start < len(data), start)

    async def test_interrupted_run_exits_and_the_same_command_resumes(self) -> None:
        node = await self.start()
        token = await funded_token(node)
        data = os.urandom(1_000_000)
        filehash, key = await self.uploaded(node, token, data)
        proxy = await CuttingProxy.start(
            self, node.port, cut_after=300_000, starts=b"GET /api/download/", cut_answer=True
        )
        target = self.work / "out.bin"
        args = ("download", filehash, "--key", key, "-o", str(target), "--token", token)
        ran = await metadisk(*args, "--node", proxy.url, "--retries", "0")
        self.assertEqual(ran.code, errors.EXIT_UNREACHABLE)
        self.assertIn("run the same command again to resume", ran.stderr)
        self.assertEqual(len(ran.stderr.strip().splitlines()), 1)
        part = Path(str(target) + ".part")
        kept = part.stat().st_size
        self.assertTrue(0 < kept < len(data), kept)
        ran = await metadisk(*args, "--node", node.url)
        self.assertEqual(ran.code, 0, ran.stderr)
        self.assertIn(f"resuming {part} at {kept} of {len(data)} bytes", ran.stderr)
        self.assertEqual(target.read_bytes(), data)

    async def test_a_corrupt_partial_file_fails_verification(self) -> None:
        node = await self.start()
        token = await funded_token(node)
        data = os.urandom(100_000)
        filehash, key = await self.uploaded(node, token, data)
        target = self.work / "out.bin"
        part = Path(str(target) + ".part")
        part.write_bytes(b"\0" * 50_000)
        ran = await metadisk(
            "download", filehash, "--key", key, "-o", str(target), "--node", node.url,
            "--token", token,
        )  # fmt: skip
        self.assertEqual(ran.code, errors.EXIT_UNVERIFIED)
        self.assertIn("verification failed", ran.stderr)
        self.assertFalse(part.exists())
        self.assertFalse(target.exists())


class AccountTests(CLITestCase):
    async def test_token_commands(self) -> None:
        node = await self.start()
        ran = await metadisk("token", "new", "--node", node.url)
        self.assertEqual(ran.code, 0, ran.stderr)
        token = ran.text.strip()
        self.assertRegex(token, r"^[A-Za-z0-9]{16}$")
        env = {"METADISK_NODE": node.url, "METADISK_TOKEN": token}
        ran = await metadisk("token", "balance", "--json", env=env)
        self.assertEqual(ran.json(), {"balance": 0})

        await node.node.ledger.add_promocode("WELCOME", 5000)
        ran = await metadisk("token", "redeem", "WELCOME", env=env)
        self.assertEqual(ran.code, 0, ran.stderr)
        ran = await metadisk("token", "balance", token, "--node", node.url)
        self.assertEqual(ran.text.strip(), "5000 bytes (4.9 KiB)")
        ran = await metadisk("token", "redeem", "WELCOME", env=env)
        self.assertEqual(ran.code, errors.EXIT_FAILED)
        self.assertIn("redeemed already", ran.stderr)

        await node.node.ledger.set_price(10**9, 7)
        ran = await metadisk("--json", "token", "prices", env=env)
        self.assertIn({"amount": 10**9, "cost": 7}, ran.json()["prices"])

        ran = await metadisk("token", "balance", "A" * 16, "--node", node.url)
        self.assertEqual((ran.code, ran.stderr), (1, "metadisk: token balance: unknown token\n"))

    async def test_status(self) -> None:
        node = await self.start()
        ran = await metadisk("status", "--json", "--node", node.url)
        self.assertEqual(ran.code, 0, ran.stderr)
        self.assertEqual(ran.json()["storage"]["capacity"], 64 * 2**20)
        ran = await metadisk("status", "--node", node.url)
        self.assertIn("storage           0 B used of 64.0 MiB", ran.text)
        self.assertIn("cloud queue       0 files", ran.text)

    async def test_accounts_disabled(self) -> None:
        node = await self.start(accounts={"enabled": False})
        ran = await metadisk("token", "new", "--node", node.url)
        self.assertEqual(ran.code, errors.EXIT_FAILED)
        self.assertIn("this node has no accounts", ran.stderr)
        # Transfers are free: no token needed.
        filehash, key = await self.uploaded(node, "", b"free")
        ran = await metadisk("download", filehash, "--key", key, "-o", "-", "--node", node.url)
        self.assertEqual((ran.code, ran.stdout), (0, b"free"))


class ErrorTests(CLITestCase):
    async def test_the_node_refuses_an_upload_before_its_body(self) -> None:
        node = await self.start()
        poor = await funded_token(node, 100)
        ran = await metadisk(
            "upload", str(self.write("a", b"x" * 1000)), "--node", node.url, "--token", poor
        )
        self.assertEqual(ran.code, errors.EXIT_FAILED)
        self.assertEqual(
            ran.stderr,
            "metadisk: upload: balance-insufficient (HTTP 402): the token has too little credit\n",
        )
        big = self.work / "big"
        with open(big, "wb") as f:
            f.truncate(17 * 2**20)  # over the test node's 16 MiB
        ran = await metadisk("upload", str(big), "--node", node.url, "--token", poor)
        self.assertEqual(ran.code, errors.EXIT_FAILED)
        self.assertIn("file-too-large (HTTP 413)", ran.stderr)

    async def test_node_errors_are_one_line(self) -> None:
        node = await self.start()
        unknown = "0" * 64
        ran = await metadisk("find", unknown, "--node", node.url)
        not_found = "(HTTP 404): this node knows no file with this filehash\n"
        self.assertEqual((ran.code, ran.stderr), (1, f"metadisk: find: File not found {not_found}"))
        ran = await metadisk("--json", "find", unknown, "--node", node.url)
        self.assertEqual(ran.json()["node"]["status"], 404)
        self.assertEqual(ran.json()["exit_code"], 1)
        ran = await metadisk("download", unknown, "--key", "1" * 64, "--node", node.url)
        self.assertEqual(ran.stderr, f"metadisk: download: file-not-found {not_found}")
        token = await funded_token(node)
        filehash, key = await self.uploaded(node, token, b"abc")
        ran = await metadisk("download", filehash, "--key", key, "-o", "-", "--node", node.url)
        self.assertEqual(ran.code, errors.EXIT_FAILED)
        self.assertIn("token-required (HTTP 401): pass --token or set METADISK_TOKEN", ran.stderr)

    async def test_unreachable_node(self) -> None:
        ran = await metadisk("status", "--node", f"http://127.0.0.1:{free_port()}")
        self.assertEqual(ran.code, errors.EXIT_UNREACHABLE)
        self.assertRegex(
            ran.stderr, r"^metadisk: cannot reach the node at http://127\.0\.0\.1:\d+: "
        )
        self.assertEqual(len(ran.stderr.splitlines()), 1)

    async def test_usage_errors(self) -> None:
        for argv, fragment in [
            (["find", "xyz"], "FILEHASH must be 64 hexadecimal digits"),
            (["frob"], "invalid choice: 'frob'"),
            (["download", "0" * 64, "--key", "short"], "--key must be 64 hexadecimal digits"),
            (["status", "--node", "ftp://x"], "--node: expected http://HOST[:PORT]"),
            (["token", "balance"], "no token: pass --token or set METADISK_TOKEN"),
            (["upload", "/nonexistent/file"], "cannot read /nonexistent/file"),
        ]:
            ran = await metadisk(*argv)
            self.assertIn(ran.code, (errors.EXIT_USAGE, errors.EXIT_FAILED), argv)
            self.assertIn(fragment, ran.stderr)
            self.assertEqual(len(ran.stderr.splitlines()), 1, ran.stderr)


class ProcessTests(CLITestCase):
    async def test_console_script_as_a_process(self) -> None:
        node = await self.start()
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        d = getProcessOutputAndValue(
            sys.executable,
            ["-m", "metadisk.client", "status", "--node", node.url, "--json"],
            env=env,
            path=str(self.work),
        )
        out, err, code = await d.addTimeout(CLI_TIMEOUT, reactor)
        self.assertEqual(code, 0, err)
        self.assertIn("bandwidth", json.loads(out))
        d = getProcessOutputAndValue(
            sys.executable, ["-m", "metadisk.client", "find", "nothex"], env=env
        )
        out, err, code = await d.addTimeout(CLI_TIMEOUT, reactor)
        self.assertEqual((code, out), (2, b""))
        self.assertEqual(len(err.splitlines()), 1)


class UnitTests(SynchronousTestCase):
    def test_entry_point_and_dependencies(self) -> None:
        project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
        self.assertEqual(project["scripts"]["metadisk"], "metadisk.client.command:main")
        names = " ".join(project["dependencies"])
        requirements = (REPO / "requirements.txt").read_text()
        for package in ("tqdm", "prometheus-client"):
            self.assertIn(package, names)
            self.assertRegex(requirements, rf"(?m)^{package}==")

    def test_the_client_imports_nothing_of_the_node(self) -> None:
        # It runs where no node does: of metadisk, only the package and crypto (to verify).
        code = "import sys, metadisk.client.command; print(' '.join(sys.modules))"
        ran = subprocess.run(
            [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
        )
        modules = set(ran.stdout.split())
        ours = {m for m in modules if m.split(".")[0] == "metadisk"}
        node = {m for m in ours if not m.startswith("metadisk.client")}
        self.assertEqual(node, {"metadisk", "metadisk.crypto"})
        self.assertFalse(modules & {"klein", "treq", "werkzeug"}, modules)

    def test_global_options_before_or_after_the_command(self) -> None:
        for argv in (
            ["--node", "http://n:1", "--json", "token", "balance", "T"],
            ["token", "--node", "http://n:1", "balance", "T", "--json"],
            ["token", "balance", "--json", "T", "--node", "http://n:1"],
        ):
            args = command.parser().parse_args(argv)
            self.assertEqual((args.node, args.json, args.balance_token), ("http://n:1", True, "T"))
        args = command.parser().parse_args(["status"])
        self.assertFalse(hasattr(args, "node"))  # then METADISK_NODE or the default

    def test_verifier_reencrypts_to_the_filehash(self) -> None:
        data = os.urandom(100_003)
        filehash, key = expected_upload(data)
        verifier = download.Verifier(bytes.fromhex(key))
        for i in range(0, len(data), 7_777):  # any chunking, as it arrives
            verifier.update(data[i : i + 7_777])
        self.assertEqual(verifier.hexdigest(), filehash)

    def test_file_name_from_content_disposition(self) -> None:
        filehash = "abcdef0" + "1" * 57
        key = b"k" * 32
        header = (
            "attachment; filename=\"abcdef0_h_llo.txt\"; filename*=UTF-8''abcdef0_h%C3%A9llo.txt"
        )
        self.assertEqual(download._filename(header, filehash, key), "héllo.txt")
        self.assertEqual(download._filename('attachment; filename="../../x"', filehash, key), "x")
        self.assertEqual(download._filename("attachment", filehash, key), filehash)
        self.assertEqual(download._filename(header, filehash, None), f"{filehash}.encrypted")

    def test_node_error_line(self) -> None:
        e = errors.node_error(
            "download", 503, b'{"error": "transfer-limit-reached"}', {"Retry-After": "60"}
        )
        self.assertEqual(
            str(e),
            "download: transfer-limit-reached (HTTP 503): the node's monthly transfer cap is"
            " reached; retry in 60 s",
        )
        self.assertEqual(
            str(errors.node_error("find", 502, b"<html>", {})), "find: Bad Gateway (HTTP 502)"
        )


# A proxy that cuts a download short, as a flaky network would.
