"""
C{metadisk upload} of a large file: the tus protocol (docs/protocol.md section
2.4). The file goes in one PATCH, streamed; a cut connection is resumed from
the node's offset (HEAD) up to C{--retries} times in a row, and the upload's
URL is kept (L{UploadState}) until it is done, so that running the same
command again after an interruption goes on where the node stopped.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

from attrs import define
from tqdm import tqdm

from metadisk.client.errors import CLIError, Unreachable, node_error
from metadisk.client.node import CHUNK, NodeClient

THRESHOLD = 8 * 2**20  # files from this size up go through tus
TUS = {"Tus-Resumable": "1.0.0"}


@define
class UploadState:
    """
    The ids of unfinished uploads (their URLs' last part), by node and file (its path, size and
    modification time, as tus-js-client's fingerprint): one JSON file.
    """

    path: Path

    @classmethod
    def default(cls, environ: Mapping[str, str]) -> UploadState:
        cache = environ.get("XDG_CACHE_HOME") or os.path.join(
            environ.get("HOME") or os.path.expanduser("~"), ".cache"
        )
        return cls(Path(cache) / "metadisk" / "uploads.json")

    def _read(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text("utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write(self, data: dict[str, str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        temporary = self.path.with_suffix(".tmp")
        # The URLs are capabilities: the file is its owner's alone.
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f)
        os.replace(temporary, self.path)

    def get(self, key: str) -> str | None:
        return self._read().get(key)

    def put(self, key: str, url: str) -> None:
        self._write({**self._read(), key: url})

    def forget(self, key: str) -> None:
        data = self._read()
        if data.pop(key, None) is not None:
            self._write(data)


def fingerprint(client: NodeClient, path: str, info: os.stat_result) -> str:
    return f"{client.url} {os.path.abspath(path)} {info.st_size} {info.st_mtime_ns}"


def _metadata(**values: str) -> str:
    return ",".join(
        f"{k} {base64.b64encode(v.encode('utf-8')).decode()}" for k, v in values.items()
    )


class _Cut(Exception):
    """The connection broke during a PATCH; C{sent} bytes of it went out."""

    def __init__(self, reason: BaseException, sent: int) -> None:
        super().__init__(str(reason) or type(reason).__name__)
        self.sent = sent


@define(kw_only=True)
class ResumableUpload:
    """One upload of C{f} (C{size} bytes) through tus, resumed after cuts."""

    client: NodeClient
    f: BinaryIO
    size: int
    name: str
    token: str | None
    retries: int
    state: UploadState
    key: str
    note: Any  # Output.note

    def run(self, bar: tqdm) -> dict[str, str]:
        upload_id = self.state.get(self.key)
        offset = self._offset(upload_id) if upload_id is not None else None
        if upload_id is None or offset is None:
            upload_id, offset = self._create(), 0
            self.state.put(self.key, upload_id)
        elif offset:
            self.note(f"resuming the upload at {offset} of {self.size} bytes")
        bar.update(offset)
        headers: Mapping[str, str] = {}
        failures = 0
        while offset is None or offset < self.size:
            try:
                if offset is None:
                    offset = self._resume_offset(upload_id, bar)
                    continue
                headers = self._patch(upload_id, offset, bar)
                offset = int(headers.get("Upload-Offset") or offset)
                failures = 0
            except _Cut as e:
                # Cuts in a row; one after progress starts the count again.
                failures = 1 if e.sent else failures + 1
                if failures > self.retries:
                    raise Unreachable(
                        f"upload: interrupted ({e}); run the same command again to resume"
                    ) from None
                bar.clear()
                self.note(f"connection lost ({e}); resuming")
                if failures > 1:
                    time.sleep(min(10.0, 2.0 ** (failures - 2)))  # the node may be restarting
                offset = None
        filehash, key = headers.get("MetaDisk-Filehash"), headers.get("MetaDisk-Key")
        answer = {"filehash": filehash, "key": key} if filehash and key else None
        answer = answer or self._result(upload_id)  # the last answer was lost, or long ago
        self.state.forget(self.key)
        return answer

    def _create(self) -> str:
        metadata = {"filename": self.name}
        if self.token is not None:
            metadata["token"] = self.token
        headers = {**TUS, "Upload-Length": str(self.size), "Upload-Metadata": _metadata(**metadata)}
        response = self.client.open("POST", "/api/tus/", headers=headers, body=b"")
        body = self._read(response)
        if response.status != 201:
            raise node_error("upload", response.status, body, response.headers)
        location = response.getheader("Location") or ""
        if not location.startswith("/api/tus/"):
            raise CLIError("upload: the node's answer has no upload URL")
        return location.removeprefix("/api/tus/")

    def _path(self, upload_id: str) -> str:
        return f"/api/tus/{quote(upload_id, safe='')}"

    def _offset(self, upload_id: str) -> int | None:
        """The node's offset; None if it no longer has the upload (expired, or another node's)."""
        response = self.client.open("HEAD", self._path(upload_id), headers=TUS)
        self._read(response)
        if response.status in (404, 410):
            self.state.forget(self.key)
            return None
        if response.status != 200:
            raise node_error("upload", response.status, b"", response.headers)
        return int(response.getheader("Upload-Offset") or 0)

    def _resume_offset(self, upload_id: str, bar: tqdm) -> int:
        try:
            offset = self._offset(upload_id)
        except Unreachable as e:
            raise _Cut(e, 0) from None
        if offset is None:
            raise CLIError("upload: the node no longer has this upload (it expired); run it again")
        bar.n = offset
        bar.refresh()
        return offset

    def _patch(self, upload_id: str, offset: int, bar: tqdm) -> Mapping[str, str]:
        connection = self.client.connect()
        sent = 0
        try:
            connection.putrequest("PATCH", self.client.path(self._path(upload_id)))
            for name, value in {
                **TUS,
                "Content-Type": "application/offset+octet-stream",
                "Upload-Offset": str(offset),
                "Content-Length": str(self.size - offset),
            }.items():
                connection.putheader(name, value)
            connection.endheaders()
            self.f.seek(offset)
            while sent < self.size - offset:
                chunk = self.f.read(min(CHUNK, self.size - offset - sent))
                if not chunk:
                    raise CLIError("upload: the file shrank while it was being sent")
                connection.send(chunk)
                sent += len(chunk)
                bar.update(len(chunk))
            response = connection.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException) as e:
            raise _Cut(e, sent) from None
        finally:
            connection.close()
        if response.status in (409, 423):
            raise _Cut(Exception(f"the node answered {response.status}"), 0)
        if response.status != 204:
            raise node_error("upload", response.status, body, response.headers)
        return response.headers

    def _result(self, upload_id: str) -> dict[str, str]:
        response = self.client.open("GET", self._path(upload_id))
        body = self._read(response)
        if response.status != 200:
            raise node_error("upload", response.status, body, response.headers)
        answer = json.loads(body)
        return {"filehash": answer["filehash"], "key": answer["key"]}

    def _read(self, response: http.client.HTTPResponse) -> bytes:
        try:
            return response.read()
        except (OSError, http.client.HTTPException) as e:
            raise self.client.unreachable(e) from None
        finally:
            response.close()
