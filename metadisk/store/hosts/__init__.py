"""File hosts (L{metadisk.interfaces.IFileHost}) and how the config chooses them."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from metadisk.config import HostConfig
from metadisk.crypto import is_hex64
from metadisk.interfaces import IFileHost
from metadisk.store.blocking import RunBlocking

# The slowest a host may move a blob, on average, before its transfer is taken for
# hung: transfer timeouts grow with the blob, so a big one on a slow host can finish.
SLOWEST_RATE = 256 * 1024  # bytes/s


def transfer_timeout(base: float, size: int, rate: float = SLOWEST_RATE) -> float:
    """C{base} seconds to start and finish, and the time to move C{size} bytes at C{rate}."""
    return base + size / rate


class HostError(Exception):
    """A host could not do what was asked; the message says why."""


@contextmanager
def host_errors() -> Iterator[None]:
    """What the filesystem refuses (gone, unmounted, read-only, I/O error) is the host's error."""
    try:
        yield
    except OSError as e:
        raise HostError(f"{e.strerror}: {e.filename}") from None


def blob_size(path: str | Path) -> int:
    """The size of the blob to store at C{path}, or a L{HostError} if it cannot be read."""
    with host_errors():
        return os.stat(path).st_size


# What a host's store_all gives for each blob: its URL, or why it is not there.
Stored = str | HostError


async def store_each(host: IFileHost, blobs: Sequence[tuple[str, str]]) -> list[Stored]:
    """L{IFileHost.store_all} for a host that stores one blob at a time."""
    results: list[Stored] = []
    for filehash, path in blobs:
        try:
            results.append(await host.store(filehash, path))
        except HostError as e:
            results.append(e)
    return results


def one(results: list[Stored]) -> str:
    """The URL of the one blob a store_all was given, or its error raised."""
    [result] = results
    if isinstance(result, HostError):
        raise result
    return result


def check_filehash(filehash: str) -> None:
    """Hosts name objects by filehash: never let anything else become a path or argument."""
    if not is_hex64(filehash):
        raise HostError(f"not a filehash: {filehash!r}")


def make_host(
    config: HostConfig,
    reactor: Any,
    run_blocking: RunBlocking,
    *,
    one_transfer: tuple[int, int] = (0, 0),
    slowest_rate: float = SLOWEST_RATE,
) -> IFileHost:
    """
    The host a C{[[hosts]]} entry describes. C{one_transfer}: what one
    transfer may use, (up, down) in bytes/s, 0 for no limit (rclone alone can
    keep to it); C{slowest_rate}: the slowest its transfers may then run.
    """
    if config.kind == "local":
        from metadisk.store.hosts.local import LocalDirectoryHost

        return LocalDirectoryHost(
            name=config.name,
            root=Path(config.setting),
            run_blocking=run_blocking,
            public_url=config.public_url,
        )
    # One runner per host: its bound on concurrent processes is per host.
    from metadisk.store.hosts.process import ProcessRunner

    runner = ProcessRunner(reactor=reactor, clock=reactor)
    if config.kind == "rclone":
        from metadisk.store.hosts.rclone import RcloneHost

        return RcloneHost(
            name=config.name,
            remote=config.setting,
            runner=runner,
            run_blocking=run_blocking,
            one_transfer=one_transfer,
            slowest_rate=slowest_rate,
        )
    if config.kind == "plowshare":
        from metadisk.store.hosts.plowshare import PlowshareHost

        return PlowshareHost(
            name=config.name, site=config.setting, runner=runner, run_blocking=run_blocking
        )
    raise ValueError(f"unknown host kind {config.kind!r}")
