"""
The MetaDisk command-line client, installed as the C{metadisk} command:

    metadisk [--node URL] [--token TOKEN] [--json] COMMAND ...

    upload FILE                           upload a file; prints its filehash and key
    download FILEHASH [--key KEY] [-o OUT]  download (and verify) a file; resumes if cut
    find FILEHASH                         where a file is stored
    status                                the node's bandwidth, storage, queues, chain
    token new | balance [TOKEN] | redeem PROMOCODE | prices

Global options are accepted before or after the command. The token may come
from METADISK_TOKEN, the node from METADISK_NODE. It is a blocking client
(http.client) that streams: no file is ever held in memory.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import http.client
import json
import os
import re
import secrets
import select
import ssl
import stat
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO, NoReturn, TextIO
from urllib.parse import quote, unquote, urlencode, urlsplit

from attrs import define, field
from tqdm import tqdm

from metadisk import __version__
from metadisk.crypto import ctr_cipher, is_hex64

DEFAULT_NODE = "http://127.0.0.1:8080"
DEFAULT_TIMEOUT = 60.0
DEFAULT_RETRIES = 5
CHUNK = 256 * 1024

EXIT_OK = 0
EXIT_FAILED = 1  # the node refused, or something else went wrong
EXIT_USAGE = 2  # bad arguments (argparse's convention)
EXIT_UNREACHABLE = 3  # no connection to the node, or it was lost for good
EXIT_UNVERIFIED = 4  # a download did not verify
EXIT_INTERRUPTED = 130  # Ctrl-C

# What a failed HEAD means: it has no body to say so.
_HEAD_ERRORS = {
    400: "invalid-filehash",
    401: "token-required",
    404: "file-not-found",
    429: "too-many-requests",
    503: "unavailable",
}
_HINTS = {
    "token-required": "pass --token or set METADISK_TOKEN",
    "invalid-token": "check --token or METADISK_TOKEN",
    "balance-insufficient": "the token has too little credit",
    "transfer-limit-reached": "the node's monthly transfer cap is reached",
    "unpaid-upload-limit": "the node takes in too many unpaid bytes now; try again later",
    "too-many-requests": "too many unknown tokens from this address",
    "too-many-connections": "too many connections from this address are open to the node",
    "node-busy": "the node has as many connections as it can take",
    "request-timeout": "the request was too slow to arrive",
}


class CLIError(Exception):
    """Ends the command with one line on stderr and an exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILED, details: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.details = details  # for --json: what the node said


class Unreachable(CLIError):
    """No connection to the node (refused, timed out, reset)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_UNREACHABLE)


def node_error(what: str, status: int, body: bytes, headers: Mapping[str, str]) -> CLIError:
    """The node's JSON error as one line: C{upload: balance-insufficient (HTTP 402)}."""
    try:
        details = json.loads(body)
        code = str(details.get("error") or details.get("status") or "")
    except (ValueError, AttributeError):
        details, code = None, ""
    code = code or _HEAD_ERRORS.get(status, http.client.responses.get(status, "error"))
    message = f"{what}: {code} (HTTP {status})"
    hint = _HINTS.get(code)
    retry = headers.get("Retry-After")
    if retry:
        hint = f"{hint + '; ' if hint else ''}retry in {retry} s"
    if hint:
        message += f": {hint}"
    return CLIError(message, EXIT_FAILED, {"status": status, "error": code, "body": details})


def human(n: float) -> str:
    """A byte count for people: C{1.5 MiB}."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


@define
class NodeClient:
    """Blocking HTTP to one node; a new connection per request."""

    url: str
    timeout: float
    _scheme: str = field(init=False)
    _host: str = field(init=False)
    _port: int | None = field(init=False)
    _prefix: str = field(init=False)

    def __attrs_post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise CLIError(f"--node: expected http://HOST[:PORT], got {self.url!r}", EXIT_USAGE)
        try:
            self._port = parts.port
        except ValueError:
            raise CLIError(f"--node: bad port in {self.url!r}", EXIT_USAGE) from None
        self._scheme, self._host = parts.scheme, parts.hostname
        self._prefix = parts.path.rstrip("/")

    def path(self, path: str) -> str:
        return self._prefix + path

    def connect(self) -> http.client.HTTPConnection:
        if self._scheme == "https":
            return http.client.HTTPSConnection(
                self._host, self._port, timeout=self.timeout, context=ssl.create_default_context()
            )
        return http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)

    def unreachable(self, error: BaseException) -> Unreachable:
        reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
        return Unreachable(f"cannot reach the node at {self.url}: {reason}")

    def open(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
    ) -> http.client.HTTPResponse:
        """Send a request; the response's body is still to be read."""
        connection = self.connect()
        try:
            connection.request(method, self.path(path), body=body, headers=dict(headers or {}))
            return connection.getresponse()
        except (OSError, http.client.HTTPException) as e:
            connection.close()
            raise self.unreachable(e) from None

    def call(self, what: str, method: str, path: str, params: dict[str, Any] | None = None) -> Any:
        """A JSON request; the JSON answer, or L{CLIError} with the node's error."""
        body = json.dumps(params).encode("utf-8") if params is not None else None
        headers = {"Content-Type": "application/json"} if body is not None else {}
        response = self.open(method, path, headers=headers, body=body)
        try:
            data = response.read()
        except (OSError, http.client.HTTPException) as e:
            raise self.unreachable(e) from None
        finally:
            response.close()
        if response.status >= 400:
            raise node_error(what, response.status, data, response.headers)
        try:
            return json.loads(data)
        except ValueError:
            raise CLIError(
                f"{what}: the node's answer is not JSON (HTTP {response.status})"
            ) from None


@define
class Output:
    """Where results, notes and progress bars go."""

    out: TextIO
    err: TextIO
    json_mode: bool
    progress: bool

    def result(self, data: Any, text: str, *, to_err: bool = False) -> None:
        stream = self.err if to_err else self.out
        print(json.dumps(data) if self.json_mode else text, file=stream)

    def note(self, text: str) -> None:
        print(f"metadisk: {text}", file=self.err)

    def bar(self, total: int, initial: int, desc: str) -> tqdm:
        # tqdm shows the speed and the time left; off when stderr is not a terminal.
        return tqdm(
            total=total,
            initial=initial,
            desc=desc,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            file=self.err,
            disable=None if self.progress else True,
            dynamic_ncols=True,
            leave=True,
        )


# upload


def _form_name(name: str) -> bytes:
    # As browsers do: the name in UTF-8, with the characters that would break the header escaped.
    for char, escaped in (('"', "%22"), ("\r", "%0D"), ("\n", "%0A")):
        name = name.replace(char, escaped)
    return name.encode("utf-8")


def multipart_envelope(boundary: str, token: str | None, filename: str) -> tuple[bytes, bytes]:
    """The bytes before and after the file in the upload's body; the token goes first."""
    dash = b"--" + boundary.encode("ascii")
    head = b""
    if token is not None:
        head += dash + b'\r\nContent-Disposition: form-data; name="token"\r\n\r\n'
        head += token.encode("utf-8") + b"\r\n"
    head += dash + b'\r\nContent-Disposition: form-data; name="file"; filename="'
    head += _form_name(filename) + b'"\r\nContent-Type: application/octet-stream\r\n\r\n'
    return head, b"\r\n" + dash + b"--\r\n"


def _answered(connection: http.client.HTTPConnection) -> bool:
    """The node has answered (or closed) before the whole body was sent: a refusal."""
    sock = connection.sock
    return sock is not None and bool(select.select([sock], [], [], 0)[0])


def _chunks(f: BinaryIO, size: int) -> Iterator[bytes]:
    remaining = size
    while remaining > 0:
        chunk = f.read(min(CHUNK, remaining))
        if not chunk:
            raise CLIError("upload: the file shrank while it was being sent")
        remaining -= len(chunk)
        yield chunk


def upload(client: NodeClient, output: Output, path: str, token: str | None) -> int:
    try:
        f = open(path, "rb")
    except OSError as e:
        raise CLIError(f"upload: cannot read {path}: {e.strerror}") from None
    with f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise CLIError(f"upload: {path} is not a regular file")
        size = info.st_size
        name = os.path.basename(path)
        boundary = secrets.token_hex(16)
        head, tail = multipart_envelope(boundary, token, name)
        connection = client.connect()
        try:
            connection.putrequest("POST", client.path("/api/upload"))
            connection.putheader("Content-Type", f"multipart/form-data; boundary={boundary}")
            connection.putheader("Content-Length", str(len(head) + size + len(tail)))
            connection.endheaders()
        except OSError as e:
            connection.close()
            raise client.unreachable(e) from None
        try:
            response = _send_upload(connection, f, size, head, tail, output.bar(size, 0, name))
            body = response.read()
        except (OSError, http.client.HTTPException) as e:
            raise Unreachable(f"upload: the connection to the node was lost: {e}") from None
        finally:
            connection.close()
    if response.status >= 400:
        raise node_error("upload", response.status, body, response.headers)
    answer = json.loads(body)
    output.result(
        answer,
        f"uploaded {name} ({human(size)})\nfilehash {answer['filehash']}\nkey      {answer['key']}",
    )
    return EXIT_OK


def _send_upload(
    connection: http.client.HTTPConnection,
    f: BinaryIO,
    size: int,
    head: bytes,
    tail: bytes,
    bar: tqdm,
) -> http.client.HTTPResponse:
    with bar:
        try:
            connection.send(head)
            for chunk in _chunks(f, size):
                if _answered(connection):
                    break  # refused early (413, 402, …): stop sending, read why
                connection.send(chunk)
                bar.update(len(chunk))
            else:
                connection.send(tail)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the node closed after an early answer, which is still there to read
    return connection.getresponse()


# download


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


@define
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
    filehash = _filehash(args.filehash, "download")
    if args.key is not None and not is_hex64(args.key):
        raise CLIError("download: --key must be 64 hexadecimal digits", EXIT_USAGE)
    key = bytes.fromhex(args.key) if args.key is not None else None
    job = Download(client, output, filehash, key, token, args.retries)
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


# find, status, token


def _filehash(value: str, what: str) -> str:
    if not is_hex64(value):
        raise CLIError(f"{what}: FILEHASH must be 64 hexadecimal digits", EXIT_USAGE)
    return value.lower()


def find(client: NodeClient, output: Output, args: argparse.Namespace) -> int:
    filehash = _filehash(args.filehash, "find")
    record = client.call("find", "GET", f"/api/find/{filehash}")
    when = datetime.datetime.fromtimestamp(int(record["datetime"]), datetime.UTC)
    lines = [
        f"filehash  {record['filehash']}",
        f"filename  {record['filename']}",
        f"size      {record['filesize']} bytes ({human(record['filesize'])})",
        f"uploaded  {when:%Y-%m-%d %H:%M:%S} UTC",
    ]
    uploads = record.get("uploads") or []
    if not uploads:
        lines.append("hosts     (none yet)")
    for i, upload_ in enumerate(uploads):
        label = "hosts" if i == 0 else ""
        lines.append(f"{label:<9} {upload_['host_name']}  {upload_['url']}")
    output.result(record, "\n".join(lines))
    return EXIT_OK


def _pair(figures: Mapping[str, int], rate: bool = False) -> str:
    unit = "/s" if rate else ""
    return ", ".join(
        f"{direction} {human(figures.get(direction, 0))}{unit}"
        for direction in ("incoming", "outgoing")
    )


def _limits(figures: Mapping[str, int], rate: bool = False) -> str:
    unit = "/s" if rate else ""
    return ", ".join(
        f"{direction} {human(n) + unit if (n := figures.get(direction, 0)) else 'none'}"
        for direction in ("incoming", "outgoing")
    )


def status(client: NodeClient, output: Output) -> int:
    data = client.call("status", "GET", "/api/status")
    bandwidth, storage, sync = data["bandwidth"], data["storage"], data["sync"]
    chain = data.get("florincoin") or data.get("datacoin") or {}
    lines = [
        f"node              {client.url}",
        f"storage           {human(storage['used'])} used of {human(storage['capacity'])}"
        f" (files up to {human(storage['max_file_size'])})",
        f"transferred       {_pair(bandwidth['total'])}",
        f"this month        {_pair(bandwidth['current'])}",
        f"monthly limits    {_limits(bandwidth['limits'])}",
        f"rate              {_pair(bandwidth['rate'], rate=True)}",
        f"rate limits       {_limits(bandwidth['rate_limits'], rate=True)}",
    ]
    for queue in ("cloud_queue", "blockchain_queue"):
        q = sync.get(queue, {"count": 0, "size": 0})
        lines.append(f"{queue.replace('_', ' '):<17} {q['count']} files ({human(q['size'])})")
    lines.append(
        f"chain             {chain.get('coin', 'none')}, block {chain.get('block', 0)},"
        f" balance {chain.get('balance', 0)}, address {chain.get('address') or '-'}"
    )
    output.result(data, "\n".join(lines))
    return EXIT_OK


def _need_token(token: str | None, what: str) -> str:
    if not token:
        raise CLIError(f"{what}: no token: pass --token or set METADISK_TOKEN", EXIT_USAGE)
    return token


def _accounts_call(client: NodeClient, what: str, method: str, path: str, **params: Any) -> Any:
    try:
        return client.call(what, method, path, params or None)
    except CLIError as e:
        if isinstance(e.details, dict) and e.details.get("error") == "not-found":
            raise CLIError(f"{what}: this node has no accounts (they are disabled)") from None
        raise


def token_command(
    client: NodeClient, output: Output, args: argparse.Namespace, token: str | None
) -> int:
    if args.action == "new":
        answer = _accounts_call(client, "token new", "POST", "/accounts/token/new")
        output.result(answer, answer["token"])
    elif args.action == "balance":
        token = _need_token(args.balance_token or token, "token balance")
        path = f"/accounts/token/balance/{quote(token, safe='')}"
        try:
            answer = _accounts_call(client, "token balance", "GET", path)
        except CLIError as e:
            if isinstance(e.details, dict) and e.details.get("status") == 404:
                raise CLIError("token balance: unknown token", EXIT_FAILED, e.details) from None
            raise
        output.result(answer, f"{answer['balance']} bytes ({human(answer['balance'])})")
    elif args.action == "redeem":
        token = _need_token(token, "token redeem")
        path = f"/accounts/token/redeem/{quote(token, safe='')}"
        try:
            answer = _accounts_call(client, "token redeem", "POST", path, promocode=args.promocode)
        except CLIError as e:
            if isinstance(e.details, dict) and e.details.get("status") == 403:
                raise CLIError(
                    "token redeem: refused: an unknown promocode or token,"
                    " or a promocode this token has redeemed already",
                    EXIT_FAILED,
                    e.details,
                ) from None
            raise
        output.result(answer, f"redeemed {args.promocode}")
    else:
        answer = _accounts_call(client, "token prices", "GET", "/accounts/token/prices")
        rows = [f"{'amount':>16}  cost"] + [
            f"{human(p['amount']):>16}  {p['cost']}" for p in answer["prices"]
        ]
        output.result(answer, "\n".join(rows) if answer["prices"] else "no prices set")
    return EXIT_OK


# arguments


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit code 2."""

    def error(self, message: str) -> NoReturn:
        raise CLIError(f"{message} (see {self.prog} --help)", EXIT_USAGE)


def _global_options() -> argparse.ArgumentParser:
    # SUPPRESS: an option given before the command is not reset by the command's parser.
    common = _Parser(add_help=False)
    options = common.add_argument_group("global options")
    options.add_argument(
        "--node", default=argparse.SUPPRESS, help=f"the node's URL (default {DEFAULT_NODE})"
    )
    options.add_argument(
        "--token", default=argparse.SUPPRESS, help="access token (default: $METADISK_TOKEN)"
    )
    options.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print JSON for scripts"
    )
    options.add_argument(
        "--no-progress",
        action="store_true",
        default=argparse.SUPPRESS,
        help="no progress bars (they are only shown on a terminal)",
    )
    options.add_argument(
        "--timeout",
        type=float,
        default=argparse.SUPPRESS,
        help=f"seconds to wait on the network (default {DEFAULT_TIMEOUT:g})",
    )
    return common


def parser() -> argparse.ArgumentParser:
    common = _global_options()
    main_parser = _Parser(
        prog="metadisk",
        parents=[common],
        description="The MetaDisk command-line client.",
        epilog="Exit codes: 0 ok, 1 refused or failed, 2 usage, 3 node unreachable,"
        " 4 verification failed, 130 interrupted.",
    )
    main_parser.add_argument("--version", action="version", version=f"metadisk {__version__}")
    commands = main_parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help_: str, subs: Any = commands) -> argparse.ArgumentParser:
        return subs.add_parser(name, parents=[common], help=help_, description=help_)

    up = command("upload", "upload a file; prints its filehash and key")
    up.add_argument("file", metavar="FILE")
    down = command("download", "download a file, verify it, resume if cut")
    down.add_argument("filehash", metavar="FILEHASH")
    down.add_argument("--key", help="the file's key (without it: the encrypted blob)")
    down.add_argument("-o", "--output", metavar="OUT", help="file or folder; - for stdout")
    down.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    down.add_argument(
        "--retries",
        type=int,
        default=DEFAULT_RETRIES,
        help=f"resumes in a row after cuts without progress (default {DEFAULT_RETRIES})",
    )
    found = command("find", "where a file is stored")
    found.add_argument("filehash", metavar="FILEHASH")
    command("status", "the node's bandwidth, storage, queues and chain")
    token = command("token", "access tokens: new, balance, redeem, prices")
    actions = token.add_subparsers(dest="action", metavar="ACTION", required=True)
    command("new", "create a token", actions)
    balance = command("balance", "a token's credit, in bytes", actions)
    balance.add_argument("balance_token", metavar="TOKEN", nargs="?")
    redeem = command("redeem", "add a promocode's credit to the token", actions)
    redeem.add_argument("promocode", metavar="PROMOCODE")
    command("prices", "the node's price list", actions)
    return main_parser


def run(
    argv: Sequence[str],
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Run one command; return its exit code. The streams are for tests."""
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    environ = os.environ if environ is None else environ
    try:
        args = parser().parse_args(list(argv))
    except CLIError as e:
        print(f"metadisk: {e}", file=stderr)
        return e.code
    except SystemExit as e:  # --help, --version
        return int(e.code or 0)
    output = Output(
        stdout, stderr, getattr(args, "json", False), not getattr(args, "no_progress", False)
    )
    try:
        return _dispatch(args, output, environ)
    except CLIError as e:
        if output.json_mode:
            error = {"error": str(e), "exit_code": e.code}
            if e.details is not None:
                error["node"] = e.details
            print(json.dumps(error), file=stdout)
        print(f"metadisk: {e}", file=stderr)
        return e.code
    except KeyboardInterrupt:
        print("metadisk: interrupted", file=stderr)
        return EXIT_INTERRUPTED


def _dispatch(args: argparse.Namespace, output: Output, environ: Mapping[str, str]) -> int:
    url = getattr(args, "node", None) or environ.get("METADISK_NODE") or DEFAULT_NODE
    client = NodeClient(url, getattr(args, "timeout", DEFAULT_TIMEOUT))
    token = getattr(args, "token", None) or environ.get("METADISK_TOKEN") or None
    handlers: dict[str, Callable[[], int]] = {
        "upload": lambda: upload(client, output, args.file, token),
        "download": lambda: download(client, output, args, token, _binary(output.out)),
        "find": lambda: find(client, output, args),
        "status": lambda: status(client, output),
        "token": lambda: token_command(client, output, args, token),
    }
    return handlers[args.command]()


def _binary(stream: TextIO) -> BinaryIO:
    binary = getattr(stream, "buffer", None)
    if binary is None:
        raise CLIError("download: standard output cannot take bytes here", EXIT_USAGE)
    return binary


def main() -> None:
    """The C{metadisk} console script."""
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
