"""
PostgreSQL for the tests: a database of its own for each test, dropped when
it ends, on the server of the project's machines (127.0.0.1:5432, trust
authentication; C{METADISK_TEST_POSTGRES} names another); and throwaway
clusters a test starts and stops itself, to cut the database off for real.

Without PostgreSQL a test is skipped with the reason, except in CI
(C{CI=true}), where it fails.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from contextlib import closing
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import psycopg2
from attrs import define
from twisted.trial.unittest import SkipTest, TestCase

from tests.nodes import free_port

ADMIN_URL = os.environ.get("METADISK_TEST_POSTGRES", "postgresql://root@127.0.0.1:5432/test")
_reachable: dict[str, str | None] = {}


def missing(reason: str) -> None:
    """A part the test needs is missing: a failure in CI, a skip elsewhere."""
    if os.environ.get("CI") == "true":
        raise AssertionError(f"{reason} (required in CI)")
    raise SkipTest(reason)


def require_postgres() -> None:
    if ADMIN_URL not in _reachable:
        try:
            psycopg2.connect(ADMIN_URL, connect_timeout=3).close()
            _reachable[ADMIN_URL] = None
        except psycopg2.Error as e:
            _reachable[ADMIN_URL] = str(e).strip().splitlines()[0]
    reason = _reachable[ADMIN_URL]
    if reason is not None:
        missing(f"PostgreSQL is not reachable at {ADMIN_URL}: {reason}")


def admin(sql: str, params: tuple = (), url: str = ADMIN_URL) -> list[tuple]:
    """Run one statement outside the node (blocking; the tests' statements are quick)."""
    with closing(psycopg2.connect(url, connect_timeout=5)) as connection:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall() if cursor.description is not None else []


def database_url(name: str, base: str = ADMIN_URL, **options: Any) -> str:
    """C{base} pointed at the database C{name}, with query options."""
    parts = urlsplit(base)
    return urlunsplit(parts._replace(path=f"/{name}", query=urlencode(options)))


def create_database(case: TestCase, **options: Any) -> str:
    """A new empty database, dropped after the test; its URL with C{options}."""
    require_postgres()
    name = f"metadisk_test_{os.getpid()}_{secrets.token_hex(4)}"
    admin(f'CREATE DATABASE "{name}"')
    # FORCE: connections a test left behind (or a hung statement) must not keep it alive.
    case.addCleanup(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return database_url(name, **options)


def database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def terminate_connections(url: str) -> int:
    """Cut every connection to the database of C{url}, as an administrator would."""
    rows = admin(
        "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity"
        " WHERE datname = %s AND pid <> pg_backend_pid()",
        (database_name(url),),
    )
    return int(rows[0][0])


def _postgres_bin() -> Path | None:
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: p.parts)
    if versions:
        return versions[-1].parent
    found = shutil.which("pg_ctl")
    return Path(found).parent if found else None


@define
class ThrowawayCluster:
    """A PostgreSQL server of the test's own, on a port of its own, stopped at the end."""

    directory: Path
    port: int
    bin: Path
    user: str | None  # run as this user (initdb refuses root)

    @classmethod
    def create(cls, case: TestCase) -> ThrowawayCluster:
        bin = _postgres_bin()
        if bin is None or not (bin / "initdb").exists():
            missing("initdb and pg_ctl are not installed (/usr/lib/postgresql/*/bin)")
        user = "postgres" if os.getuid() == 0 else None
        directory = Path(tempfile.mkdtemp(prefix="metadisk-pg-"))
        case.addCleanup(shutil.rmtree, directory, True)
        if user is not None:
            shutil.chown(directory, user)
        cluster = cls(directory, free_port(), bin, user)
        cluster._run(
            "initdb",
            "-D",
            str(directory / "data"),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
        )
        case.addCleanup(cluster.stop)
        cluster.start()
        return cluster

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1"
            " -c fsync=off -c max_connections=40"
        )
        log = str(self.directory / "log")
        self._run(
            "pg_ctl",
            "-D",
            str(self.directory / "data"),
            "-o",
            options,
            "-l",
            log,
            "-w",
            "-t",
            "30",
            "start",
        )

    def stop(self) -> None:
        if (self.directory / "data" / "postmaster.pid").exists():
            self._run(
                "pg_ctl", "-D", str(self.directory / "data"), "-m", "fast", "-w", "-t", "30", "stop"
            )

    def _run(self, program: str, *args: str) -> None:
        command = [str(self.bin / program), *args]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"{program} failed: {result.stdout}{result.stderr}")
