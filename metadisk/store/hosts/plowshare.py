"""
A host that is a public file-sharing site, through plowshare 2.x:
C{plowup SITE FILE:NAME} to store (the URL is the last token of its output,
as plowshare-wrapper read it), C{plowdown -o DIR URL} to fetch (it prints the
path of the file it saved), C{plowprobe URL} to check (exit 13: link dead).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from attrs import define, field
from twisted.internet.defer import Deferred
from zope.interface import implementer

from metadisk.interfaces import IFileHost
from metadisk.store.blocking import RunBlocking
from metadisk.store.hosts import (
    HostError,
    Stored,
    blob_size,
    check_filehash,
    store_each,
    transfer_timeout,
)
from metadisk.store.hosts.process import ProcessFailed, ProcessRunner, Tool

# plowshare's core.sh: the same codes for every plow* command.
EXIT_CODES = {
    1: "fatal error",
    2: "no module for this site or link",
    3: "network error",
    4: "login failed",
    5: "wait timeout reached",
    6: "maximum retries reached",
    7: "captcha not solved",
    8: "system failure",
    10: "link temporarily unavailable",
    11: "password required",
    12: "insufficient permissions",
    13: "link dead, file not found",
    14: "file too big for this site",
    15: "bad command line",
    16: "asynchronous remote upload",
}
LINK_DEAD = 13
PLOWUP = Tool("plowup", EXIT_CODES)
PLOWDOWN = Tool("plowdown", EXIT_CODES)
PLOWPROBE = Tool("plowprobe", EXIT_CODES)
CHECK_TIMEOUT = 60.0

# What plowup may hand back, and what may be handed to plowdown/plowprobe as an
# argument: a plain link, never something a tool could read as an option or a list file.
_LINK = re.compile(r"(?:https?|ftps?)://[^\s\x00-\x1f\x7f]+")


def check_link(url: str) -> None:
    if not _LINK.fullmatch(url):
        raise HostError(f"not a link plowshare can use: {url[:200]!r}")


def _module_name(instance: object, attribute: object, site: str) -> None:
    # It becomes plowup's first argument: a name, never something read as an option.
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.]*", site):
        raise ValueError(f"plowshare site {site!r} is not a plowshare module name")


@implementer(IFileHost)
@define(kw_only=True)
class PlowshareHost:
    name: str
    site: str = field(validator=_module_name)  # a plowshare module name, e.g. "rghost"
    _runner: ProcessRunner
    _run_blocking: RunBlocking
    check_timeout: float = CHECK_TIMEOUT  # an existence check: short, whatever the transfers get

    def store(self, filehash: str, path: str) -> Deferred[str]:
        source = Path(path)

        async def store() -> str:
            check_filehash(filehash)
            if ":" in source.name:
                # plowup reads FILE:NAME; the cache names blobs by filehash.
                raise HostError(f"plowup cannot upload a file named {source.name!r}")
            # Run in the blob's directory: plowup splits its argument at the first ':'.
            result = await self._runner.run(
                PLOWUP,
                (self.site, f"{source.name}:{filehash}"),
                action=f"plowup {self.site}",
                timeout=transfer_timeout(self._runner.timeout, blob_size(source)),
                cwd=str(source.parent),
            )
            tokens = result.text.split()
            url = tokens[-1] if tokens else ""
            if not _LINK.fullmatch(url):
                # plowup exits 0 and prints nothing when it skips a file (an empty one).
                raise HostError(
                    f"plowup {self.site}: no link in its output {result.text[-200:]!r}"
                    + (f" ({result.stderr})" if result.stderr else "")
                )
            return url

        return Deferred.fromCoroutine(store())

    def store_all(self, blobs: Sequence[tuple[str, str]]) -> Deferred[list[Stored]]:
        return Deferred.fromCoroutine(store_each(self, blobs))  # plowup: one file a run

    def fetch(self, filehash: str, url: str, destination: str, size: int) -> Deferred[None]:
        target = Path(destination)

        async def fetch() -> None:
            check_filehash(filehash)
            check_link(url)
            # A directory of its own, since plowdown names the file as the site does;
            # in the system's temporary folder, where a crash's leftovers disturb nothing.
            folder = await self._run_blocking(tempfile.mkdtemp, "", "metadisk-plowdown-")
            try:
                result = await self._runner.run(
                    PLOWDOWN,
                    ("-o", folder, url),
                    action=f"plowdown {self.site}",
                    timeout=transfer_timeout(self._runner.timeout, size),
                    cwd=folder,
                )
                lines = [line for line in result.text.splitlines() if line.strip()]
                saved = await self._run_blocking(_saved_file, folder, lines[-1] if lines else "")
                if saved is None:
                    raise HostError(
                        f"plowdown {self.site}: no downloaded file named in its output"
                        f" {result.text[-200:]!r}"
                    )
                await self._run_blocking(shutil.move, saved, target)  # a rename if it can
            finally:
                await self._run_blocking(shutil.rmtree, folder, True)

        return Deferred.fromCoroutine(fetch())

    def exists(self, filehash: str, url: str) -> Deferred[bool]:
        async def exists() -> bool:
            check_filehash(filehash)
            check_link(url)
            try:
                result = await self._runner.run(
                    PLOWPROBE,
                    (url,),
                    action=f"plowprobe {self.site}",
                    timeout=min(self.check_timeout, self._runner.timeout),
                )
            except ProcessFailed as e:
                # Only "link dead" says the copy is gone; anything else says nothing.
                if e.code == LINK_DEAD:
                    return False
                raise
            # plowprobe prints the link of a live file ("%F%u%n"); anything else is not an answer.
            if url not in result.text.split():
                raise HostError(f"plowprobe {self.site}: unexpected output {result.text[:200]!r}")
            return True

        return Deferred.fromCoroutine(exists())


def _saved_file(folder: str, reported: str) -> str | None:
    """The file plowdown says it saved, if it is a regular file inside C{folder}."""
    if not reported:
        return None
    path = os.path.realpath(os.path.join(folder, reported))
    if os.path.dirname(path) != os.path.realpath(folder) or not os.path.isfile(path):
        return None
    return path
