"""
The operator's admin command (C{python -m metadisk.admin}) on SQLite and on
PostgreSQL: each command and what it leaves in the node's database, each
error with its one line on standard error and exit status 1. In this
process (C{metadisk.admin.main}, its reactor the test's) and as a real
process.
"""

from __future__ import annotations

import io
import json
import os
import socket
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

from attrs import frozen
from twisted.internet import reactor, task
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from metadisk import admin
from metadisk.db import open_database
from metadisk.ledger import MAX_BALANCE, Ledger
from tests.pg import create_database

REPOSITORY = Path(__file__).resolve().parent.parent
UNKNOWN = "nosuchtoken00000"
BAD_AMOUNTS = ("0", "-1", "1.5", "1e3", "abc", "", " 1", str(2**53 + 1))


@frozen
class Ran:
    """What the shell would see: exit status, standard output, standard error."""

    status: int
    stdout: str
    stderr: str


def _status(code: Any, stderr: io.StringIO) -> int:
    """The exit status of C{SystemExit(code)}, and its message on stderr (as Python does)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    stderr.write(f"{code}\n")
    return 1


async def main_here(*argv: str) -> Ran:
    """
    C{admin.main(argv)} in this process: its C{task.react} runs the command
    on the reactor already running (trial's), and its exit is caught.
    """
    out, err = io.StringIO(), io.StringIO()
    started: list[Deferred[Any]] = []

    def react(main: Any, argv: Any = ()) -> None:
        started.append(ensureDeferred(main(reactor, *argv)))

    original = task.react
    task.react = react
    code: Any = None
    try:
        with redirect_stdout(out), redirect_stderr(err):
            try:
                admin.main(list(argv))
                await started[0]
            except SystemExit as e:
                code = e.code
    finally:
        task.react = original
    return Ran(_status(code, err), out.getvalue(), err.getvalue())


async def main_process(*argv: str) -> Ran:
    """C{python -m metadisk.admin ARGV...} in a child process."""
    env = {**os.environ, "PYTHONPATH": str(REPOSITORY)}
    out, err, status = await getProcessOutputAndValue(
        sys.executable, ["-m", "metadisk.admin", *argv], env=env, path=str(REPOSITORY)
    )
    return Ran(status, out.decode(), err.decode())


def failed(message: str) -> Ran:
    """An admin command that failed with C{message}."""
    return Ran(1, "", f"metadisk-admin: {message}\n")


class AdminTestsMixin:
    """
    Subclasses give C{database_url()}: the URL of a new, empty database of
    the test's own, or None for the node's default (SQLite in its data dir).
    """

    timeout = 120  # a few real processes on a busy machine

    def database_url(self) -> str | None:
        raise NotImplementedError

    def setUp(self) -> None:
        base = Path(self.mktemp()).resolve()
        base.mkdir()
        self.data_dir = base / "data"
        url = self.database_url()
        self.url = url or f"sqlite:///{self.data_dir / 'metadisk.sqlite'}"
        config = base / "metadisk.toml"
        config.write_text(f"[database]\nurl = {json.dumps(url)}\n" if url else "")
        self.options = ["--config", str(config), "--data-dir", str(self.data_dir)]

    async def admin(self, *argv: str) -> Ran:
        return await main_here(*self.options, *argv)

    async def ledger(self) -> Ledger:
        """The ledger of the database the node uses, opened apart from the admin command."""
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # as the node makes it
        db = await open_database(self.url, reactor)
        self.addCleanup(db.close)
        return Ledger(db, reactor, "test")

    async def new_token(self) -> str:
        ran = await self.admin("token", "new")
        self.assertEqual((ran.status, ran.stderr), (0, ""))
        return ran.stdout.strip()

    async def test_secret(self) -> None:
        """The secret key of the private API: made on first use, the same after."""
        ran = await self.admin("secret")
        secret = (self.data_dir / "secret_key").read_text().strip()
        self.assertGreaterEqual(len(secret), 40)
        self.assertEqual(ran, Ran(0, f"{secret}\n", ""))
        self.assertEqual(await self.admin("secret"), ran)

    async def test_token_new_and_balance(self) -> None:
        token = await self.new_token()
        self.assertRegex(token, r"^[A-Za-z0-9]{16}$")
        self.assertEqual(await self.admin("balance", token), Ran(0, "0\n", ""))
        self.assertNotEqual(await self.new_token(), token)
        self.assertEqual(await (await self.ledger()).balance(token), 0)

    async def test_deposit(self) -> None:
        token = await self.new_token()
        self.assertEqual(await self.admin("deposit", token, "100"), Ran(0, "balance 100\n", ""))
        self.assertEqual(await self.admin("deposit", token, "50"), Ran(0, "balance 150\n", ""))
        self.assertEqual(await self.admin("balance", token), Ran(0, "150\n", ""))
        self.assertEqual(await (await self.ledger()).balance(token), 150)
        most = str(2**53)
        self.assertEqual(
            await self.admin("deposit", token, most), Ran(0, f"balance {2**53 + 150}\n", "")
        )

    async def test_promocode_add(self) -> None:
        ran = await self.admin("promocode", "add", "WELCOME", "1000")
        self.assertEqual(ran, Ran(0, "promocode WELCOME is worth 1000 bytes\n", ""))
        # Added again: its worth is replaced, not a second code.
        ran = await self.admin("promocode", "add", "WELCOME", "2500")
        self.assertEqual(ran, Ran(0, "promocode WELCOME is worth 2500 bytes\n", ""))
        ledger = await self.ledger()
        token = await ledger.new_token()
        self.assertTrue(await ledger.redeem(token, "WELCOME"))
        self.assertEqual(await ledger.balance(token), 2500)

    async def test_price_set_and_remove(self) -> None:
        ledger = await self.ledger()
        seeded = await ledger.prices()  # the schema's own price list
        self.assertNotIn(1000, [price["amount"] for price in seeded])
        self.assertEqual(await self.admin("price", "set", "1000", "5"), Ran(0, "price set\n", ""))
        self.assertEqual(await self.admin("price", "set", "2000", "9"), Ran(0, "price set\n", ""))
        self.assertEqual(await self.admin("price", "set", "1000", "4"), Ran(0, "price set\n", ""))
        self.assertEqual(
            await ledger.prices(),
            [{"amount": 1000, "cost": 4}, {"amount": 2000, "cost": 9}, *seeded],
        )
        ran = await self.admin("price", "remove", "1000")
        self.assertEqual(ran, Ran(0, "price removed\n", ""))
        self.assertEqual(await ledger.prices(), [{"amount": 2000, "cost": 9}, *seeded])
        # Removing a price that is not there is no error.
        ran = await self.admin("price", "remove", "1000")
        self.assertEqual(ran, Ran(0, "price removed\n", ""))

    async def test_bad_amounts(self) -> None:
        """Each amount is a whole number from 1 to 2^53, or nothing is done."""
        token = await self.new_token()
        await self.admin("deposit", token, "10")
        ledger = await self.ledger()
        prices = await ledger.prices()
        for bad in BAD_AMOUNTS:
            must = f"must be a whole number from 1 to 2^53, got {bad!r}"
            self.assertEqual(await self.admin("deposit", token, bad), failed(f"BYTES {must}"))
            self.assertEqual(
                await self.admin("promocode", "add", "CODE", bad), failed(f"BYTES {must}")
            )
            self.assertEqual(await self.admin("price", "set", bad, "5"), failed(f"AMOUNT {must}"))
            self.assertEqual(await self.admin("price", "set", "1000", bad), failed(f"COST {must}"))
            self.assertEqual(await self.admin("price", "remove", bad), failed(f"AMOUNT {must}"))
        self.assertEqual(
            await self.admin("price", "set", "1000"), failed("price set needs AMOUNT and COST")
        )
        self.assertEqual(await ledger.balance(token), 10)
        self.assertEqual(await ledger.prices(), prices)
        self.assertFalse(await ledger.redeem(token, "CODE"))

    async def test_unknown_token(self) -> None:
        self.assertEqual(await self.admin("balance", UNKNOWN), failed("unknown token"))
        self.assertEqual(await self.admin("deposit", UNKNOWN, "5"), failed("unknown token"))
        self.assertIsNone(await (await self.ledger()).balance(UNKNOWN))

    async def test_deposit_past_the_cap(self) -> None:
        """No balance goes past 2^62: a deposit that would is refused whole."""
        token = await self.new_token()
        ledger = await self.ledger()
        await ledger.deposit(token, MAX_BALANCE - 10)
        past = failed("that would take the balance past 2^62")
        self.assertEqual(await self.admin("deposit", token, "11"), past)
        self.assertEqual(await ledger.balance(token), MAX_BALANCE - 10)
        ran = await self.admin("deposit", token, "10")
        self.assertEqual(ran, Ran(0, f"balance {MAX_BALANCE}\n", ""))
        self.assertEqual(await self.admin("deposit", token, "1"), past)

    async def test_as_a_process(self) -> None:
        """The exit status and the streams of the real command."""
        token = await self.new_token()
        ran = await main_process(*self.options, "deposit", token, "5")
        self.assertEqual(ran, Ran(0, "balance 5\n", ""))
        ran = await main_process(*self.options, "deposit", token, "0")
        self.assertEqual(ran, failed("BYTES must be a whole number from 1 to 2^53, got '0'"))
        self.assertEqual(await (await self.ledger()).balance(token), 5)


class SQLiteAdminTests(AdminTestsMixin, TestCase):
    def database_url(self) -> str | None:
        return None


class PostgresAdminTests(AdminTestsMixin, TestCase):
    def database_url(self) -> str | None:
        return create_database(self)


class AdminConfigTests(TestCase):
    """A bad config or command line: one line, nothing done, not even a data dir made."""

    def setUp(self) -> None:
        self.base = Path(self.mktemp()).resolve()
        self.base.mkdir()
        self.data_dir = self.base / "data"

    def config(self, text: str) -> str:
        path = self.base / "metadisk.toml"
        path.write_text(text)
        return str(path)

    async def admin(self, config: str, *argv: str) -> Ran:
        return await main_here("--config", config, "--data-dir", str(self.data_dir), *argv)

    async def test_not_toml(self) -> None:
        config = self.config("[storage\n")
        ran = await self.admin(config, "token", "new")
        self.assertEqual(ran.status, 1)
        self.assertRegex(
            ran.stderr,
            rf"^metadisk-admin: config error: --config: {config} is not valid TOML: [^\n]+\n$",
        )
        self.assertEqual(ran.stdout, "")
        self.assertFalse(self.data_dir.exists())

    async def test_missing_file(self) -> None:
        missing = str(self.base / "missing.toml")
        self.assertEqual(
            await self.admin(missing, "secret"),
            failed(f"config error: --config: cannot read {missing}: No such file or directory"),
        )
        self.assertFalse(self.data_dir.exists())

    async def test_bad_value(self) -> None:
        config = self.config('[storage]\ncapacity = "lots"\n')
        self.assertEqual(
            await self.admin(config, "balance", UNKNOWN),
            failed("config error: storage.capacity: expected a size in bytes, got 'lots'"),
        )
        config = self.config('[database]\nurl = "mysql://localhost/x"\n')
        ran = await self.admin(config, "token", "new")
        self.assertEqual(ran.status, 1)
        self.assertRegex(ran.stderr, r"^metadisk-admin: config error: database\.url: [^\n]+\n$")
        self.assertFalse(self.data_dir.exists())

    async def test_as_a_process(self) -> None:
        config = self.config('[storage]\ncapacity = "lots"\n')
        ran = await main_process("--config", config, "token", "new")
        self.assertEqual(
            ran, failed("config error: storage.capacity: expected a size in bytes, got 'lots'")
        )

    async def test_usage(self) -> None:
        """What argparse says of a bad command line: usage, and status 2."""
        config = self.config("")
        for argv in (["price"], ["price", "list"], ["deposit", "x"], ["withdraw", "x", "1"]):
            ran = await self.admin(config, *argv)
            self.assertEqual((ran.status, ran.stdout), (2, ""), argv)
            self.assertTrue(ran.stderr.startswith("usage: python -m metadisk.admin"), ran.stderr)
        self.assertFalse(self.data_dir.exists())


class AdminEnvironmentTests(TestCase):
    """A database or a data dir the command cannot use: one line, status 1."""

    async def test_database_unreachable(self) -> None:
        base = Path(self.mktemp()).resolve()
        base.mkdir()
        with socket.socket() as unused:
            unused.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
            port = unused.getsockname()[1]
            config = base / "metadisk.toml"
            config.write_text(f'[database]\nurl = "postgresql://root@127.0.0.1:{port}/x"\n')
            ran = await main_here(
                "--config", str(config), "--data-dir", str(base / "d"), "token", "new"
            )
        self.assertEqual((ran.status, ran.stdout), (1, ""))
        self.assertRegex(ran.stderr, r"^metadisk-admin: cannot connect to PostgreSQL: [^\n]+\n$")

    async def test_data_dir_unusable(self) -> None:
        in_the_way = Path(self.mktemp()).resolve()
        in_the_way.write_text("a file where a directory should be")
        data_dir = in_the_way / "data"
        self.assertEqual(
            await main_here("--data-dir", str(data_dir), "secret"),
            failed(f"{data_dir}: Not a directory"),
        )
