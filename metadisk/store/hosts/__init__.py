"""File hosts (L{metadisk.interfaces.IFileHost}) and how the config chooses them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from metadisk.config import HostConfig
from metadisk.crypto import is_hex64
from metadisk.interfaces import IFileHost
from metadisk.store.blocking import RunBlocking


class HostError(Exception):
    """A host could not do what was asked; the message says why."""


def check_filehash(filehash: str) -> None:
    """Hosts name objects by filehash: never let anything else become a path or argument."""
    if not is_hex64(filehash):
        raise HostError(f"not a filehash: {filehash!r}")


def make_host(config: HostConfig, reactor: Any, run_blocking: RunBlocking) -> IFileHost:
    """The host a C{[[hosts]]} entry describes."""
    if config.kind == "local":
        from metadisk.store.hosts.local import LocalDirectoryHost

        return LocalDirectoryHost(config.name, Path(config.setting), run_blocking)
    raise ValueError(f"host kind {config.kind!r} is not available yet")
