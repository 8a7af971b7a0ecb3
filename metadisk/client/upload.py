"""
C{metadisk upload}: the file streams into a multipart body, token first, and
the sending stops as soon as the node answers early (a refusal). A large
file goes through tus instead, and resumes (L{metadisk.client.resumable}).
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import select
import stat
from collections.abc import Iterator
from typing import BinaryIO

from tqdm import tqdm

from metadisk.client.errors import EXIT_INTERRUPTED, EXIT_OK, CLIError, Unreachable, node_error
from metadisk.client.node import CHUNK, NodeClient
from metadisk.client.output import Output, human
from metadisk.client.resumable import THRESHOLD, ResumableUpload, UploadState, fingerprint


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


def upload(
    client: NodeClient,
    output: Output,
    path: str,
    token: str | None,
    retries: int,
    state: UploadState,
) -> int:
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
        if size >= THRESHOLD:
            key = fingerprint(client, path, info)
            job = ResumableUpload(
                client=client,
                f=f,
                size=size,
                name=name,
                token=token,
                retries=retries,
                state=state,
                key=key,
                note=output.note,
            )
            try:
                with output.bar(size, 0, name) as bar:
                    answer = job.run(bar)
            except KeyboardInterrupt:
                raise CLIError(
                    "upload: interrupted; run the same command again to resume", EXIT_INTERRUPTED
                ) from None
            _print(output, name, size, answer)
            return EXIT_OK
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
    _print(output, name, size, json.loads(body))
    return EXIT_OK


def _print(output: Output, name: str, size: int, answer: dict[str, str]) -> None:
    output.result(
        answer,
        f"uploaded {name} ({human(size)})\nfilehash {answer['filehash']}\nkey      {answer['key']}",
    )


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
