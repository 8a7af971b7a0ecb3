"""
C{metadisk download}: a HEAD to size it, then ranged GETs into C{OUT.part}
that resume after a cut, and a check that what arrived hashes to the filehash.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import re
import time
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import unquote, urlencode

from attrs import define, field
from tqdm import tqdm

from metadisk.client.errors import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_UNVERIFIED,
    EXIT_USAGE,
    CLIError,
    Unreachable,
    node_error,
)
from metadisk.client.node import CHUNK, NodeClient, filehash_argument
from metadisk.client.output import Output, human
from metadisk.crypto import ctr_cipher, is_hex64


@define
class Verifier:
    """
    Re-encrypts what was downloaded with the key (AES-CTR is its own inverse)
    and hashes it: the result must be the filehash. Without a key, the bytes
    are the ciphertext and are hashed as they are.
    """

    _key: bytes | None
    _digest: Any = field(factory=hashlib.sha256)
    _cipher: Any = field(init=False)

    def __attrs_post_init__(self) -> None:
        self._cipher = ctr_cipher(self._key) if self._key is not None else None

    def update(self, data: bytes) -> None:
        self._digest.update(self._cipher.encrypt(data) if self._cipher is not None else data)

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


_EXTENDED_NAME = re.compile(r"filename\*\s*=\s*([A-Za-z0-9_-]*)'[^']*'([^;\s]+)", re.I)
_PLAIN_NAME = re.compile(r'filename\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s]+))', re.I)


def _disposition_name(header: str) -> str:
    """The file name of a C{Content-Disposition}: C{filename*} (RFC 6266, UTF-8) first."""
    extended = _EXTENDED_NAME.search(header)
    if extended:
        charset = extended.group(1) or "utf-8"
        try:
            return unquote(extended.group(2), encoding=charset, errors="replace")
        except LookupError:
            pass  # an unknown charset: fall back to the plain name
    plain = _PLAIN_NAME.search(header)
    if plain is None:
        return ""
    if plain.group(1) is not None:
        return re.sub(r"\\(.)", r"\1", plain.group(1))
    return plain.group(2)


def _filename(disposition: str | None, filehash: str, key: bytes | None) -> str:
    """A local name: the uploaded one (without the node's hash prefix), made safe."""
    if key is None:
        return f"{filehash}.encrypted"
    name = _disposition_name(disposition or "")
    name = name.removeprefix(filehash[:7] + "_")
    name = re.split(r"[/\\]", name)[-1].lstrip(".")
    name = "".join(c for c in name if c.isprintable())
    return name or filehash


@define(kw_only=True)
class Download:
    """One download: the HEAD that sizes it, then ranged GETs until every byte is in."""

    client: NodeClient
    output: Output
    filehash: str
    key: bytes | None
    token: str | None
    retries: int

    @property
    def path(self) -> str:
        query = {"key": self.key.hex() if self.key is not None else None, "token": self.token}
        encoded = urlencode({k: v for k, v in query.items() if v is not None})
        return f"/api/download/{self.filehash}" + (f"?{encoded}" if encoded else "")

    def head(self) -> tuple[int, str]:
        """(size, local file name). HEAD is free, and says 404 before anything is charged."""
        response = self.client.open("HEAD", self.path)
        response.read()
        response.close()
        if response.status >= 400:
            raise node_error("download", response.status, b"", response.headers)
        size = int(response.getheader("Content-Length") or 0)
        disposition = response.getheader("Content-Disposition")
        return size, _filename(disposition, self.filehash, self.key)

    def fetch(self, sink: BinaryIO, verifier: Verifier, offset: int, total: int, bar: tqdm) -> None:
        """Write bytes C{offset} to C{total} into C{sink}; on a cut, resume with a Range."""
        failures = 0
        while offset < total:
            try:
                received = self._fetch_from(sink, verifier, offset, total, bar)
            except (OSError, http.client.HTTPException, Unreachable) as e:
                received = getattr(e, "received", 0)
                # Consecutive cuts; one that came after progress starts the count again.
                failures = 1 if received else failures + 1
                offset += received
                if failures > self.retries:
                    raise Unreachable(
                        f"download: interrupted at {offset} of {total} bytes ({_reason(e)});"
                        " run the same command again to resume"
                    ) from None
                bar.clear()
                self.output.note(
                    f"connection lost at {offset} of {total} bytes ({_reason(e)}); resuming"
                )
                if failures > 1:
                    time.sleep(min(10.0, 2.0 ** (failures - 2)))  # the node may be restarting
                continue
            offset += received

    def _fetch_from(
        self, sink: BinaryIO, verifier: Verifier, offset: int, total: int, bar: tqdm
    ) -> int:
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        response = self.client.open("GET", self.path, headers=headers)
        received = 0
        try:
            if response.status >= 400:
                raise node_error("download", response.status, response.read(), response.headers)
            expected = 206 if offset else 200
            if response.status != expected:
                raise CLIError(f"download: the node answered {response.status} to a resume")
            if offset and not (response.getheader("Content-Range") or "").startswith(
                f"bytes {offset}-"
            ):
                raise CLIError("download: the node resumed at the wrong place")
            while received < total - offset:
                chunk = response.read1(CHUNK)
                if not chunk:
                    raise http.client.IncompleteRead(b"", total - offset - received)
                sink.write(chunk)
                verifier.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
            return received
        except (OSError, http.client.HTTPException) as e:
            e.received = received  # type: ignore[attr-defined]
            raise
        finally:
            response.close()


def _reason(error: BaseException) -> str:
    if isinstance(error, http.client.IncompleteRead):
        return "the connection closed early"
    return str(error) or type(error).__name__


def _hash_prefix(path: Path, verifier: Verifier) -> int:
    """Feed what an earlier attempt left in C{path} to the verifier; its size."""
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            verifier.update(chunk)
            size += len(chunk)
    return size


def download(
    client: NodeClient,
    output: Output,
    args: argparse.Namespace,
    token: str | None,
    stdout: BinaryIO,
) -> int:
    filehash = filehash_argument(args.filehash, "download")
    if args.key is not None and not is_hex64(args.key):
        raise CLIError("download: --key must be 64 hexadecimal digits", EXIT_USAGE)
    key = bytes.fromhex(args.key) if args.key is not None else None
    job = Download(
        client=client, output=output, filehash=filehash, key=key, token=token, retries=args.retries
    )
    total, name = job.head()
    if args.output == "-":
        target, offset = None, 0
        verifier = Verifier(key)
        with output.bar(total, 0, name) as bar:
            job.fetch(stdout, verifier, 0, total, bar)
        stdout.flush()
        _check(verifier, filehash, "")
    else:
        target = Path(args.output) if args.output else Path(name)
        if target.is_dir():
            target = target / name
        if target.exists() and not args.force:
            raise CLIError(f"download: {target} exists (use --force to overwrite it)")
        offset = _download_to_file(job, output, target, total, name)
    how = "re-encrypting it with the key gives" if key is not None else "its SHA-256 is"
    output.result(
        {
            "filehash": filehash,
            "path": None if target is None else str(target),
            "size": total,
            "resumed_from": offset,
            "verified": True,
        },
        f"downloaded {human(total)} to {target or 'standard output'}\nverified: {how} the filehash",
        to_err=target is None,  # stdout carries the file
    )
    return EXIT_OK


def _download_to_file(job: Download, output: Output, target: Path, total: int, name: str) -> int:
    """
    Download into C{target}.part, resuming what an earlier run left there,
    verify, then rename to C{target}. Return the offset it resumed from.
    """
    part = target.with_name(target.name + ".part")
    verifier = Verifier(job.key)
    offset = _hash_prefix(part, verifier) if part.exists() else 0
    if offset > total:  # not from this file: start again
        part.unlink()
        verifier, offset = Verifier(job.key), 0
    elif offset:
        output.note(f"resuming {part} at {offset} of {total} bytes")
    try:
        with open(part, "ab") as sink, output.bar(total, offset, name) as bar:
            job.fetch(sink, verifier, offset, total, bar)
    except KeyboardInterrupt:
        raise CLIError(
            f"download: interrupted; {part} is kept: run the same command again to resume",
            EXIT_INTERRUPTED,
        ) from None
    try:
        _check(verifier, job.filehash, "; the partial file was removed: run it again")
    except CLIError:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, target)
    return offset


def _check(verifier: Verifier, filehash: str, remedy: str) -> None:
    if verifier.hexdigest() != filehash:
        raise CLIError(
            f"download: verification failed: what was received does not hash to {filehash}"
            + remedy,
            EXIT_UNVERIFIED,
        )
