"""
A host that is any rclone remote (S3, WebDAV, SFTP, Google Drive…), driven
through the C{rclone} command. Objects are named by filehash under the remote.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from attrs import define, field
from twisted.internet.defer import Deferred, gatherResults
from zope.interface import implementer

from metadisk.interfaces import IFileHost
from metadisk.store.blocking import RunBlocking
from metadisk.store.hosts import (
    SLOWEST_RATE,
    HostError,
    Stored,
    blob_size,
    check_filehash,
    store_each,
    transfer_timeout,
)
from metadisk.store.hosts.process import ProcessFailed, ProcessRunner, Tool

RCLONE = Tool(
    "rclone",
    {
        1: "syntax or usage error",
        2: "error",
        3: "directory not found",
        4: "file not found",
        5: "temporary error",
        6: "less serious error",
        7: "fatal error",
        8: "transfer limit exceeded",
        9: "no files transferred",
        10: "duration exceeded",
    },
)
NOT_FOUND = (3, 4)

# A dead remote must fail in a second, not after rclone's 3 x 10 retries
# (minutes); but a request the backend itself calls worth retrying (a 423
# Locked from a WebDAV server handling two MKCOLs of one folder at once, as
# parallel runs send; a 429; a 5xx) gets 3 tries, its pacer's backoff apart
# (tens of ms): with one, such an answer failed the whole run, and each of its
# blobs then took a process of its own. --ask-password=false: never wait for a
# config password on stdin.
FLAGS = (
    "--retries=1",
    "--low-level-retries=3",
    "--contimeout=10s",
    "--timeout=60s",
    "--ask-password=false",
)
CHECK_TIMEOUT = 60.0
# Fewer blobs than this are not worth a process of their own.
MIN_RUN = 8
# A run's scratch folder: the folder of links it copies, and its log.
LINKS = "blobs"
LOG = "log"

# ":backend,key=value,…:path" or "name,key=value,…:path": the parameters may hold
# credentials, so they never leave the node (URLs, logs, errors).
_CONNECTION_STRING = re.compile(r"""^(:?[\w.-]+)(,(?:[^:'"]|'[^']*'|"[^"]*")*):""")


def public_location(remote: str) -> str:
    """The remote without the parameters of a connection string."""
    match = _CONNECTION_STRING.match(remote)
    if match is None:
        return remote
    return match.group(1) + ":" + remote[match.end() :]


_PARAMETER = re.compile(r"""([\w-]+)=('[^']*'|"[^"]*"|[^,]*)""")


def _join(remote: str, name: str) -> str:
    return remote + name if remote.endswith((":", "/")) else f"{remote}/{name}"


def object_url(remote: str, filehash: str) -> str:
    """
    Where a copy is published. A WebDAV or HTTP remote given as a connection
    string has a real URL, which other nodes can read if the server lets
    them; any other remote is named by its location (parameters left out).
    """
    match = _CONNECTION_STRING.match(remote)
    if match is not None and match.group(1) in (":webdav", ":http"):
        parameters = {key: value.strip("'\"") for key, value in _PARAMETER.findall(match.group(2))}
        base = urlsplit(parameters.get("url", ""))
        if base.scheme in ("http", "https") and base.hostname:
            # No user:password@ in a published URL.
            netloc = base.hostname if base.port is None else f"{base.hostname}:{base.port}"
            path = "/".join(
                quote(part) for part in [*remote[match.end() :].split("/"), filehash] if part
            )
            return urlunsplit((base.scheme, netloc, f"{base.path.rstrip('/')}/{path}", "", ""))
    return _join(public_location(remote), filehash)


def _remote(instance: object, attribute: object, remote: str) -> None:
    # It becomes part of rclone's arguments: never something read as an option.
    if not remote or remote.startswith("-"):
        raise ValueError(f"rclone remote {remote!r} is not a remote")


@implementer(IFileHost)
@define(kw_only=True)
class RcloneHost:
    name: str
    remote: str = field(validator=_remote)
    _runner: ProcessRunner
    _run_blocking: RunBlocking
    check_timeout: float = CHECK_TIMEOUT  # an existence check: short, whatever the transfers get
    # What one transfer may use, (up, down) in bytes/s, 0: no limit; rclone runs outside
    # the node's buckets, so this bounds each host transfer, not their sum.
    one_transfer: tuple[int, int] = (0, 0)
    slowest_rate: float = SLOWEST_RATE  # what a transfer is timed by: below any --bwlimit

    def _object(self, filehash: str) -> str:
        check_filehash(filehash)
        return _join(self.remote, filehash)

    async def _rclone(
        self, action: str, *args: str, log_file: str | None = None, **options: object
    ) -> str:
        # Errors only, on stderr, whose tail the runner puts in the error message; or, with a
        # log file, what became of each object too, one JSON object a line (L{_copied}).
        log = (
            ("--log-level=INFO", "--use-json-log", f"--log-file={log_file}")
            if log_file
            else ("--log-level=ERROR",)
        )
        try:
            result = await self._runner.run(
                RCLONE,
                (action, *FLAGS, *log, *self._limit(), *args),
                action=f"rclone {action}",
                **options,
            )
        except HostError as e:
            self._redact(e)
            raise
        return result.text

    def _transfer_timeout(self, size: int) -> float:
        return transfer_timeout(self._runner.timeout, size, self.slowest_rate)

    def _limit(self) -> tuple[str, ...]:
        if not any(self.one_transfer):
            return ()
        rates = ":".join(f"{rate}B" if rate else "off" for rate in self.one_transfer)
        return (f"--bwlimit={rates}",)

    def _redact(self, error: HostError) -> None:
        # rclone quotes the remote in its messages, connection-string parameters included.
        location = public_location(self.remote)
        if location != self.remote:
            error.args = tuple(
                a.replace(self.remote, location) if isinstance(a, str) else a for a in error.args
            )
            if isinstance(error, ProcessFailed):
                error.stderr = error.stderr.replace(self.remote, location)

    def store(self, filehash: str, path: str) -> Deferred[str]:
        async def store() -> str:
            # --ignore-times: always upload; a same-size object there may be a corrupt copy.
            # An absolute path: rclone would read "dir:name" as a remote.
            source = os.path.abspath(path)
            await self._rclone(
                "copyto",
                "--ignore-times",
                source,
                self._object(filehash),
                timeout=self._transfer_timeout(blob_size(source)),
            )
            return object_url(self.remote, filehash)

        return Deferred.fromCoroutine(store())

    def store_all(self, blobs: Sequence[tuple[str, str]]) -> Deferred[list[Stored]]:
        """
        Many blobs in a few rclone runs, one for each process the runner
        allows: a run's own parallel transfers still wait on its backend's
        pacer (WebDAV: one request at a time, a few ms apart), so separate
        processes are what makes a batch go faster. If a run fails, each of
        its blobs that rclone did not say it copied is tried alone, to tell
        which ones did not make it.
        """
        if len(blobs) < 2:
            return Deferred.fromCoroutine(store_each(self, blobs))
        runs = min(self._runner.max_processes, len(blobs) // MIN_RUN or 1)
        groups = [blobs[i::runs] for i in range(runs)]

        async def store_all() -> list[Stored]:
            results = await gatherResults(
                [Deferred.fromCoroutine(self._copy(group)) for group in groups],
                consumeErrors=True,
            )
            # Back into the order asked for: group i holds blobs i, i + runs, …
            stored: list[Stored] = [None] * len(blobs)  # type: ignore[list-item]
            for i, result in enumerate(results):
                stored[i::runs] = result
            return stored

        return Deferred.fromCoroutine(store_all())

    async def _copy(self, blobs: Sequence[tuple[str, str]]) -> list[Stored]:
        """One rclone run: the blobs named by filehash in a folder of links, copied as they are."""
        try:
            for filehash, _ in blobs:
                check_filehash(filehash)
            scratch, size = await self._run_blocking(_links, blobs)
        except HostError:
            return await store_each(self, blobs)  # each its own answer
        try:
            await self._rclone(
                "copy",
                "--ignore-times",
                "--copy-links",
                "--no-check-dest",  # nothing to compare: every blob goes up
                os.path.join(scratch, LINKS),
                self.remote,
                log_file=os.path.join(scratch, LOG),
                timeout=self._transfer_timeout(size),
            )
        except HostError:
            # A run fails for one blob as for all (a timeout, a refusal): those it
            # copied are there, the others get a run each, and an answer each.
            copied = await self._run_blocking(_copied, os.path.join(scratch, LOG))
            retried = iter(await store_each(self, [b for b in blobs if b[0] not in copied]))
            return [
                object_url(self.remote, filehash) if filehash in copied else next(retried)
                for filehash, _ in blobs
            ]
        finally:
            await self._run_blocking(shutil.rmtree, scratch, True)
        return [object_url(self.remote, filehash) for filehash, _ in blobs]

    def fetch(self, filehash: str, url: str, destination: str, size: int) -> Deferred[None]:
        target = Path(os.path.abspath(destination))
        # A private name: a killed rclone that still writes cannot touch the destination.
        partial = target.with_name(f".{target.name}.rclone-{secrets.token_hex(4)}")

        async def fetch() -> None:
            # The object is found by its filehash, never by a URL that came from elsewhere.
            source = self._object(filehash)
            try:
                await self._rclone(
                    "copyto",
                    "--ignore-times",
                    source,
                    str(partial),
                    timeout=self._transfer_timeout(size),
                )
                await self._run_blocking(os.replace, partial, target)
            finally:
                await self._run_blocking(partial.unlink, True)

        return Deferred.fromCoroutine(fetch())

    def exists(self, filehash: str, url: str) -> Deferred[bool]:
        async def exists() -> bool:
            target = self._object(filehash)
            try:
                listing = await self._rclone(
                    "lsjson",
                    "--stat",
                    target,
                    timeout=min(self.check_timeout, self._runner.timeout),
                )
            except ProcessFailed as e:
                # 3/4: the object (or its directory) is not there. A dead remote
                # exits 1 or 5, and must never read as a missing copy.
                if e.code in NOT_FOUND:
                    return False
                raise
            try:
                entry = json.loads(listing)
            except ValueError:
                raise HostError(f"rclone lsjson: unreadable answer {listing[:200]!r}") from None
            return (
                isinstance(entry, dict)
                and entry.get("Name") == filehash
                and entry.get("IsDir") is False
            )

        return Deferred.fromCoroutine(exists())


def _links(blobs: Sequence[tuple[str, str]]) -> tuple[str, int]:
    """
    A folder for one run, in the system's temporary folder (a crash's
    leftover disturbs nothing): in its folder L{LINKS}, a link named by its
    filehash to each blob; beside it, the run's L{LOG}. With it, the blobs'
    total size (for the run's timeout); a L{HostError} if one cannot be read.
    """
    size = sum([blob_size(path) for _, path in blobs])
    scratch = tempfile.mkdtemp(prefix="metadisk-rclone-")
    folder = os.path.join(scratch, LINKS)
    os.mkdir(folder)
    for filehash, path in blobs:
        os.symlink(os.path.abspath(path), os.path.join(folder, filehash))
    return scratch, size


def _copied(log: str) -> set[str]:
    """
    The objects a run's JSON log says it copied: rclone logs "Copied (…)"
    once the object is up and its size (and hash, where both ends have one)
    checked, and an error instead when either is wrong.
    """
    copied = set()
    try:
        with open(log, encoding="utf-8", errors="replace") as lines:
            for line in lines:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue  # a line cut short by a kill
                if (
                    isinstance(entry, dict)
                    and str(entry.get("msg", "")).startswith("Copied")
                    and isinstance(entry.get("object"), str)
                ):
                    copied.add(entry["object"])
    except OSError:
        pass  # no log (rclone never started): nothing is known to be copied
    return copied
