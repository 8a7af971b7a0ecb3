"""
The tus protocol against a live node: every status it answers (each checked
against the OpenAPI document), two PATCHes at once, the result and the
charge equal to a plain upload's, what the log shows of an upload's URL; and
tuspy, a real tus client, through a proxy that cuts its connection mid-body.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from attrs import define, evolve
from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from metadisk.db import DatabaseUnavailable
from metadisk.logs import ACCESS_NAMESPACE
from metadisk.store.catalog import Catalog
from metadisk.store.resumable import ResumableTable
from tests.fakes.cutting_proxy import CuttingProxy
from tests.nodes import Client
from tests.pg import create_database
from tests.support import (
    RunningNode,
    eventually,
    funded_token,
    hold_open,
    json_of,
    raw_http,
    start_node,
    test_config,
    upload,
)
from tests.test_cli import expected_upload, metadisk
from tests.test_faults import START_TIMEOUT, funded, node_process, open_connection
from tests.test_openapi import CONTRACT, raw_parts

CREDIT = 10**10
TUS = {"Tus-Resumable": "1.0.0"}
STREAM = {"Content-Type": "application/offset+octet-stream"}


def metadata(**values: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in values.items())


def patch_head(location: str, offset: int, length: int) -> bytes:
    """The request line and headers of a raw PATCH of C{length} bytes from C{offset}."""
    return (
        f"PATCH {location} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n"
        f"Content-Type: application/offset+octet-stream\r\nUpload-Offset: {offset}\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


@define
class Answer:
    code: int
    headers: dict[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    @property
    def error(self) -> str | None:
        return json.loads(self.body).get("error") if self.body else None


class TusCase(TestCase):
    timeout = 120

    async def node(self, **sections: Any) -> RunningNode:
        config = test_config(Path(self.mktemp()).resolve(), **sections)
        self.running = await start_node(self, config)
        return self.running

    async def call(
        self, method: str, path: str, headers: dict[str, str], body: bytes = b""
    ) -> Answer:
        """A request, its answer checked against the OpenAPI document."""
        node = self.running
        response = await node.http.request(
            method, node.url + path, headers={k: [v] for k, v in headers.items()}, data=body or None
        )
        content = await response.content()
        seen = {
            name.decode().lower(): values[-1].decode("latin-1")
            for name, values in response.headers.getAllRawHeaders()
        }
        if isinstance(response.length, int):
            seen["content-length"] = str(response.length)
        CONTRACT.check(method, path, response.code, seen, content)
        return Answer(response.code, seen, content)

    async def raw(self, method: str, path: str, payload: bytes) -> Answer:
        status, headers, body = raw_parts(await raw_http(self.running.port, payload))
        CONTRACT.check(method, path, status, headers, body)
        return Answer(status, {k.lower(): v for k, v in headers.items()}, body)

    async def create(
        self, length: int, token: str | None, body: bytes = b"", **more: str
    ) -> Answer:
        headers = {**TUS, "Upload-Length": str(length), **more}
        if token is not None:
            headers["Upload-Metadata"] = metadata(filename="f.bin", token=token)
        if body:
            headers.update(STREAM)
        return await self.call("POST", "/api/tus/", headers, body)

    async def patch_upload(self, location: str, offset: int, body: bytes, **more: str) -> Answer:
        headers = {**TUS, **STREAM, "Upload-Offset": str(offset), **more}
        return await self.call("PATCH", location, headers, body)

    async def balance(self, token: str) -> int:
        return await self.running.node.ledger.balance(token)


class ProtocolTests(TusCase):
    async def test_discovery(self) -> None:
        await self.node()
        answer = await self.call("OPTIONS", "/api/tus/", {})
        self.assertEqual(answer.code, 204)
        self.assertEqual(answer.header("Tus-Version"), "1.0.0")
        self.assertEqual(
            answer.header("Tus-Extension"),
            "creation,creation-with-upload,termination,expiration,checksum",
        )
        self.assertEqual(answer.header("Tus-Max-Size"), str(16 * 2**20))
        self.assertEqual(answer.header("Tus-Checksum-Algorithm"), "sha1,sha256")

    async def test_an_upload_in_chunks_is_a_plain_upload(self) -> None:
        """Same filehash and key as POST /api/upload, charged 4 x size once, findable."""
        node = await self.node()
        token = await funded_token(node, CREDIT)
        data = os.urandom(300_000)
        created = await self.create(len(data), token)
        self.assertEqual(created.code, 201)
        location = created.header("Location")
        self.assertRegex(location, r"^/api/tus/[A-Za-z0-9_-]{32}$")
        self.assertEqual(created.header("Upload-Offset"), "0")
        self.assertIsNotNone(created.header("Upload-Expires"))
        self.assertEqual(await self.balance(token), CREDIT - 4 * len(data))  # reserved

        head = await self.call("HEAD", location, TUS)
        self.assertEqual((head.code, head.header("Upload-Offset")), (200, "0"))
        self.assertEqual(head.header("Upload-Length"), str(len(data)))
        self.assertEqual(head.header("Cache-Control"), "no-store")
        first = await self.patch_upload(location, 0, data[:100_000])
        self.assertEqual((first.code, first.header("Upload-Offset")), (204, "100000"))
        self.assertIsNone(first.header("MetaDisk-Filehash"))
        incomplete = await self.call("GET", location, {})
        self.assertEqual((incomplete.code, incomplete.error), (409, "upload-incomplete"))
        last = await self.patch_upload(location, 100_000, data[100_000:])
        self.assertEqual((last.code, last.header("Upload-Offset")), (204, str(len(data))))

        filehash, key = expected_upload(data)
        self.assertEqual(
            (last.header("MetaDisk-Filehash"), last.header("MetaDisk-Key")), (filehash, key)
        )
        result = await self.call("GET", location, {})
        self.assertEqual(json.loads(result.body), {"filehash": filehash, "key": key})
        self.assertEqual(await self.balance(token), CREDIT - 4 * len(data))
        plain = await json_of(await upload(node, data, await funded_token(node, CREDIT)))
        self.assertEqual(plain, {"filehash": filehash, "key": key})
        record = await node.node.store.find(filehash)
        self.assertEqual((record.filename, record.filesize), (f"{filehash[:7]}_f.bin", len(data)))
        download = await node.http.get(
            node.url + f"/api/download/{filehash}", params={"key": key, "token": token}
        )
        self.assertEqual(await download.content(), data)
        # A finished upload: HEAD says so, a PATCH of nothing at its end too.
        head = await self.call("HEAD", location, TUS)
        self.assertEqual(head.header("Upload-Offset"), str(len(data)))
        again = await self.patch_upload(location, len(data), b"")
        self.assertEqual((again.code, again.header("MetaDisk-Key")), (204, key))
        self.assertEqual(os.listdir(node.node.config.node.data_dir / "resumable"), [])

    async def test_creation_with_upload(self) -> None:
        node = await self.node()
        token = await funded_token(node, CREDIT)
        data = os.urandom(5000)
        part = await self.create(len(data), token, data[:2000])
        self.assertEqual((part.code, part.header("Upload-Offset")), (201, "2000"))
        done = await self.patch_upload(part.header("Location"), 2000, data[2000:])
        self.assertEqual(done.header("MetaDisk-Filehash"), expected_upload(data)[0])
        whole = await self.create(len(data), token, data)
        self.assertEqual(whole.code, 201)
        self.assertEqual(whole.header("MetaDisk-Key"), expected_upload(data)[1])
        self.assertEqual(await self.balance(token), CREDIT - 8 * len(data))  # each paid once
        empty = await self.create(0, token)
        self.assertEqual(empty.header("MetaDisk-Filehash"), hashlib.sha256(b"").hexdigest())

    async def test_refusals(self) -> None:
        """Each status the protocol answers, with its code, nothing charged for any."""
        node = await self.node(uploads={"resumable_per_token": 2}, accounts={"guess_limit": 100})
        token = await funded_token(node, CREDIT)
        created = await self.create(1000, token)
        location = created.header("Location")

        async def expect(answer: Answer, code: int, error: str) -> Answer:
            self.assertEqual((answer.code, answer.error), (code, error), answer.body)
            return answer

        # Creation.
        await expect(
            await self.call("POST", "/api/tus/", {"Upload-Length": "10"}),
            412,
            "unsupported-version",
        )
        await expect(await self.call("POST", "/api/tus/", {**TUS}), 400, "bad-request")
        await expect(await self.create(16 * 2**20 + 1, token), 413, "file-too-large")
        await expect(await self.create(10, token, b"x" * 11), 413, "upload-length-exceeded")
        await expect(
            await self.call(
                "POST",
                "/api/tus/",
                {
                    **TUS,
                    "Upload-Length": "10",
                    "Upload-Metadata": metadata(token=token),
                    "Content-Type": "text/plain",
                },
                b"12345",
            ),
            415,
            "unsupported-content-type",
        )
        await expect(await self.create(10, None), 401, "token-required")
        await expect(await self.create(10, "unknownToken1234"), 401, "invalid-token")
        poor = await funded_token(node, 39)
        await expect(await self.create(10, poor), 402, "balance-insufficient")
        await expect(
            await self.create(10, token, b"0123456789", **{"Upload-Checksum": "md5 AAAA"}),
            400,
            "unsupported-checksum",
        )
        await self.create(10, token)
        limited = await expect(await self.create(10, token), 429, "too-many-uploads")
        self.assertIsNotNone(limited.header("Retry-After"))
        chunked = (
            b"POST /api/tus/ HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\nUpload-Length: 5\r\n"
            b"Transfer-Encoding: chunked\r\nContent-Type: application/offset+octet-stream\r\n\r\n"
            b"5\r\nabcde\r\n0\r\n\r\n"
        )
        await expect(await self.raw("POST", "/api/tus/", chunked), 411, "length-required")

        # Bytes.
        await expect(
            await self.call("PATCH", location, {**STREAM, "Upload-Offset": "0"}, b"a"),
            412,
            "unsupported-version",
        )
        await expect(
            await self.patch_upload(location, 0, b"a", **{"Content-Type": "text/plain"}),
            415,
            "unsupported-content-type",
        )
        await expect(
            await self.call("PATCH", location, {**TUS, **STREAM}, b"a"), 400, "bad-request"
        )
        mismatch = await expect(await self.patch_upload(location, 5, b"a"), 409, "offset-mismatch")
        self.assertEqual(mismatch.header("Upload-Offset"), "0")
        await expect(
            await self.patch_upload(location, 0, b"a" * 1001), 413, "upload-length-exceeded"
        )
        wrong = "sha256 " + base64.b64encode(hashlib.sha256(b"b").digest()).decode()
        await expect(
            await self.patch_upload(location, 0, b"a" * 10, **{"Upload-Checksum": wrong}),
            460,
            "checksum-mismatch",
        )
        self.assertEqual((await self.call("HEAD", location, TUS)).header("Upload-Offset"), "0")
        right = "sha1 " + base64.b64encode(hashlib.sha1(b"a" * 10).digest()).decode()
        ok = await self.patch_upload(location, 0, b"a" * 10, **{"Upload-Checksum": right})
        self.assertEqual((ok.code, ok.header("Upload-Offset")), (204, "10"))

        # Unknown and expired.
        guesses = node.node.guard._failures.get("127.0.0.1")
        before = len(guesses) if guesses else 0
        for method in ("HEAD", "DELETE", "GET"):
            answer = await self.call(method, "/api/tus/" + "A" * 32, TUS)
            self.assertEqual(answer.code, 404)
        await expect(
            await self.patch_upload("/api/tus/" + "A" * 32, 0, b"a"), 404, "upload-not-found"
        )
        self.assertEqual(len(node.node.guard._failures["127.0.0.1"]) - before, 4)  # guesses
        live = node.node.resumable.get(location.rsplit("/", 1)[1])
        self.patch_expiry(live)
        await expect(await self.call("GET", location, {}), 410, "upload-expired")
        await expect(await self.patch_upload(location, 10, b"a"), 410, "upload-expired")
        self.assertEqual((await self.call("HEAD", location, TUS)).code, 410)

    def patch_expiry(self, upload: Any) -> None:
        """As if its expiry had come (the node's clock is the real one here)."""
        upload.row = evolve(upload.row, expires=int(reactor.seconds()) - 1)

    async def test_a_failure_while_storing_spoils_nothing(self) -> None:
        """
        The file is encrypted into a new file, not over the partial one: a
        failure (or a crash) while it is stored leaves every byte to store again.
        """
        node = await self.node()
        token = await funded_token(node, CREDIT)
        data = os.urandom(200_000)
        location = (await self.create(len(data), token)).header("Location")
        record = Catalog.add_file

        async def unavailable_once(catalog: Catalog, *args: Any) -> bool:
            self.patch(Catalog, "add_file", record)
            raise DatabaseUnavailable("as if the database went away")

        self.patch(Catalog, "add_file", unavailable_once)
        failed = await self.patch_upload(location, 0, data)
        self.assertEqual((failed.code, failed.error), (503, "database-unavailable"))
        partial = node.node.config.node.data_dir / "resumable" / location.rsplit("/", 1)[1]
        self.assertEqual(partial.read_bytes(), data)
        self.assertEqual(await self.balance(token), CREDIT - 4 * len(data))  # still reserved
        stored = await self.call("GET", location, {})
        self.assertEqual(json.loads(stored.body)["key"], expected_upload(data)[1])
        self.assertEqual(await self.balance(token), CREDIT - 4 * len(data))  # charged once

    async def test_the_end_is_one_commit(self) -> None:
        """
        The file's record, its charge and the upload's end commit together: a
        failure at the last of them leaves none, and the next try does all.
        """
        node = await self.node()
        token = await funded_token(node, CREDIT)
        data = os.urandom(50_000)
        location = (await self.create(len(data), token)).header("Location")
        # The staticmethod itself: TestCase.patch would put back what getattr gives.
        complete = ResumableTable.__dict__["complete"]
        self.addCleanup(setattr, ResumableTable, "complete", complete)

        async def unavailable_once(*args: Any) -> None:
            ResumableTable.complete = complete  # type: ignore[method-assign]
            raise DatabaseUnavailable("as if the database went away")

        ResumableTable.complete = staticmethod(unavailable_once)  # type: ignore[method-assign]
        failed = await self.patch_upload(location, 0, data)
        self.assertEqual((failed.code, failed.error), (503, "database-unavailable"))
        filehash = expected_upload(data)[0]
        self.assertEqual((await self.call("GET", f"/api/find/{filehash}", {})).code, 404)
        self.assertEqual(await self.balance(token), CREDIT - 4 * len(data))  # still reserved
        self.assertEqual(await node.node.db.query("SELECT COUNT(*) FROM reservations"), [(1,)])
        stored = await self.call("GET", location, {})
        self.assertEqual(json.loads(stored.body)["filehash"], filehash)
        self.assertEqual((await self.call("GET", f"/api/find/{filehash}", {})).code, 200)
        self.assertEqual(await self.balance(token), CREDIT - 4 * len(data))  # charged once
        self.assertEqual(await node.node.db.query("SELECT COUNT(*) FROM reservations"), [(0,)])

    async def test_cache_room_at_creation(self) -> None:
        """Room for the file is set aside when the upload is created: 507 then, not at the end."""
        node = await self.node(storage={"capacity": 3 * 2**20, "max_file_size": 2 * 2**20})
        token = await funded_token(node, CREDIT)
        first = await self.create(2 * 2**20, token)
        self.assertEqual(first.code, 201)
        full = await self.create(2 * 2**20, token)
        self.assertEqual((full.code, full.error), (507, "storage-full"))
        self.assertEqual(await self.balance(token), CREDIT - 8 * 2**20)  # the refused one: none
        await self.call("DELETE", first.header("Location"), TUS)
        self.assertEqual((await self.create(2 * 2**20, token)).code, 201)  # its room came back

    async def test_termination_refunds(self) -> None:
        node = await self.node()
        token = await funded_token(node, CREDIT)
        location = (await self.create(1000, token)).header("Location")
        await self.patch_upload(location, 0, b"d" * 500)
        self.assertEqual(await self.balance(token), CREDIT - 4000)
        gone = await self.call("DELETE", location, TUS)
        self.assertEqual(gone.code, 204)
        self.assertEqual(await self.balance(token), CREDIT)
        self.assertEqual((await self.call("HEAD", location, TUS)).code, 404)
        self.assertEqual(os.listdir(node.node.config.node.data_dir / "resumable"), [])

    async def test_one_patch_at_a_time(self) -> None:
        """A second PATCH (or a DELETE) while one streams gets 423; the first goes on."""
        node = await self.node()
        token = await funded_token(node, CREDIT)
        data = os.urandom(200_000)
        location = (await self.create(len(data), token)).header("Location")
        head = patch_head(location, 0, len(data))
        first = await hold_open(self, node.port, head + data[:50_000])
        upload_id = location.rsplit("/", 1)[1]

        async def streaming() -> bool:
            live = node.node.resumable.get(upload_id)
            return live is not None and live.written == 50_000

        await eventually(streaming)
        second = await self.patch_upload(location, 0, data)
        self.assertEqual((second.code, second.error), (423, "upload-locked"))
        delete = await self.call("DELETE", location, TUS)
        self.assertEqual((delete.code, delete.error), (423, "upload-locked"))
        first.transport.write(data[50_000:])

        async def answered() -> bool:
            return b"204 No Content" in first.received

        await eventually(answered)
        answer = bytes(first.received).lower()
        self.assertIn(b"metadisk-filehash: " + expected_upload(data)[0].encode(), answer)

    async def test_a_cut_patch_keeps_what_arrived(self) -> None:
        node = await self.node()
        token = await funded_token(node, CREDIT)
        data = os.urandom(300_000)
        location = (await self.create(len(data), token)).header("Location")
        head = patch_head(location, 0, len(data))
        cut = await hold_open(self, node.port, head + data[:123_456])
        upload_id = location.rsplit("/", 1)[1]

        async def written() -> bool:
            return node.node.resumable.get(upload_id).written == 123_456

        await eventually(written)
        cut.transport.abortConnection()

        async def durable() -> bool:
            live = node.node.resumable.get(upload_id)
            return not live.busy and live.durable == 123_456

        await eventually(durable)
        offset = int((await self.call("HEAD", location, TUS)).header("Upload-Offset"))
        self.assertEqual(offset, 123_456)
        done = await self.patch_upload(location, offset, data[offset:])
        self.assertEqual(done.header("MetaDisk-Filehash"), expected_upload(data)[0])
        self.assertEqual(await self.balance(token), CREDIT - 4 * len(data))

    async def test_cors_for_a_page_elsewhere(self) -> None:
        await self.node(node={"cors_origins": ["https://page.example"]})
        token = await funded_token(self.running, CREDIT)
        origin = {"Origin": "https://page.example"}
        preflight = await self.call(
            "OPTIONS",
            "/api/tus/",
            {
                **origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "tus-resumable, upload-length, upload-metadata",
            },
        )
        self.assertEqual(preflight.header("Tus-Version"), "1.0.0")
        allowed = preflight.header("Access-Control-Allow-Headers")
        for name in (
            "Tus-Resumable",
            "Upload-Length",
            "Upload-Metadata",
            "Upload-Offset",
            "Upload-Checksum",
        ):
            self.assertIn(name, allowed)
        self.assertIn("PATCH", preflight.header("Access-Control-Allow-Methods"))
        self.assertIn("DELETE", preflight.header("Access-Control-Allow-Methods"))
        created = await self.create(10, token, b"0123456789", **origin)
        exposed = created.header("Access-Control-Expose-Headers")
        for name in (
            "Location",
            "Upload-Offset",
            "Upload-Length",
            "Tus-Resumable",
            "MetaDisk-Filehash",
            "MetaDisk-Key",
        ):
            self.assertIn(name, exposed)

    async def test_the_log_never_shows_an_upload_url(self) -> None:
        node = await self.node()
        token = await funded_token(node, CREDIT)
        lines: list[dict[str, Any]] = []

        def observe(event: dict[str, Any]) -> None:
            if event.get("log_namespace") == ACCESS_NAMESPACE:
                lines.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        location = (await self.create(10, token)).header("Location")
        upload_id = location.rsplit("/", 1)[1]
        await self.patch_upload(location, 0, b"0123456789")
        await self.call("HEAD", location, TUS)
        await self.call("GET", location, {})
        paths = [event["path"] for event in lines if event["route"] == "/api/tus/{upload_id}"]
        self.assertEqual(paths, [f"/api/tus/{upload_id[:4]}..."] * 3)
        self.assertFalse([event for event in lines if upload_id in repr(event)])

    async def test_monthly_cap_and_free_uploads(self) -> None:
        node = await self.node(bandwidth={"monthly_incoming": 10_000}, accounts={"enabled": False})
        refused = await self.create(20_000, None)
        self.assertEqual((refused.code, refused.error), (503, "transfer-limit-reached"))
        self.assertIsNotNone(refused.header("Retry-After"))
        created = await self.create(5000, None)
        self.assertEqual(created.code, 201)  # free: no token
        self.assertEqual(node.node.resumable._unpaid.held, 5000)  # unpaid until stored
        big = await self.create(9000, None)
        self.assertEqual(big.code, 201)
        data = os.urandom(5000)
        done = await self.patch_upload(created.header("Location"), 0, data)
        self.assertEqual(done.header("MetaDisk-Key"), expected_upload(data)[1])
        self.assertEqual(node.node.resumable._unpaid.held, 9000)
        late = await self.patch_upload(
            big.header("Location"), 0, b"b" * 6000
        )  # 5000 + 6000 > 10000
        self.assertEqual((late.code, late.error), (503, "transfer-limit-reached"))


class TuspyTests(TusCase):
    """tuspy (the tus project's Python client) runs in a thread: it blocks."""

    async def test_a_cut_upload_resumes(self) -> None:
        """
        20 MiB in one PATCH (tuspy's default chunk size), cut at about 8 MiB by
        the proxy; tuspy asks HEAD where to go on and sends the rest.
        """
        node = await self.node(storage={"max_file_size": 32 * 2**20})
        token = await funded_token(node, CREDIT)
        data = os.urandom(20 * 2**20)
        source = Path(self.mktemp())
        source.write_bytes(data)
        proxy = await CuttingProxy.start(self, node.port, 8 * 2**20, b"PATCH ")
        patches: list[int] = []

        def send() -> tuple[str, dict[str, str]]:
            from tusclient.client import TusClient

            client = TusClient(proxy.url + "/api/tus/")
            uploader = client.uploader(
                str(source),
                metadata={"filename": "big.bin", "token": token},
                retries=10,
                retry_delay=1,
            )
            uploader.upload()
            patches.append(uploader.offset)
            return uploader.url, uploader.request.response_headers

        url, headers = await deferToThread(send)
        self.assertEqual(proxy.cuts, 1)
        filehash, key = expected_upload(data)
        self.assertEqual((headers["metadisk-filehash"], headers["metadisk-key"]), (filehash, key))
        plain = await json_of(await upload(node, data, await funded_token(node, CREDIT)))
        self.assertEqual(plain, {"filehash": filehash, "key": key})
        self.assertEqual(await self.balance(token), CREDIT - 4 * len(data))  # once
        result = await json_of(await node.http.get(url))
        self.assertEqual(result, {"filehash": filehash, "key": key})


class KilledNodeTests(TestCase):
    """The node as a real process, killed with SIGKILL in the middle of a tus upload."""

    timeout = 4 * START_TIMEOUT

    async def test_the_upload_resumes_after_a_restart(self) -> None:
        await self.killed_and_resumed("")

    async def test_the_upload_resumes_after_a_restart_on_postgresql(self) -> None:
        await self.killed_and_resumed(f"[database]\nurl = {json.dumps(create_database(self))}\n")

    async def killed_and_resumed(self, toml: str) -> None:
        node = node_process(self, toml)
        await node.start()
        token = await funded(node, CREDIT)
        balance = Client(node).balance
        data = os.urandom(12 * 2**20)
        created = await node.http.post(
            node.url + "/api/tus/",
            headers={
                **TUS,
                "Upload-Length": str(len(data)),
                "Upload-Metadata": metadata(token=token),
            },
        )
        location = created.headers.getRawHeaders("location")[0]
        partial = node.directory / "data" / "resumable" / location.rsplit("/", 1)[1]
        acknowledged = 2**20
        first = await node.http.patch(
            node.url + location,
            data=data[:acknowledged],
            headers={**TUS, **STREAM, "Upload-Offset": "0"},
        )
        self.assertEqual(first.code, 204)
        head = patch_head(location, acknowledged, len(data) - acknowledged)
        sender = await open_connection(node.port, head + data[acknowledged : 7 * 2**20])

        async def half_written() -> bool:
            return partial.stat().st_size >= 6 * 2**20

        await eventually(half_written, 30, what="the PATCH to be half written")
        await node.kill()
        sender.transport.abortConnection()

        await node.start()
        self.assertEqual(await balance(token), CREDIT - 4 * len(data))  # still reserved
        answer = await node.http.head(node.url + location, headers=TUS)
        offset = int(answer.headers.getRawHeaders("upload-offset")[0])
        self.assertGreaterEqual(offset, acknowledged)
        self.assertLessEqual(offset, partial.stat().st_size)
        self.assertEqual(partial.read_bytes()[:offset], data[:offset])
        rest = await node.http.patch(
            node.url + location,
            data=data[offset:],
            headers={**TUS, **STREAM, "Upload-Offset": str(offset)},
        )
        self.assertEqual(rest.code, 204)
        filehash, key = expected_upload(data)
        self.assertEqual(rest.headers.getRawHeaders("metadisk-filehash"), [filehash])
        self.assertEqual(await balance(token), CREDIT - 4 * len(data))  # charged once
        download = await node.http.get(
            node.url + f"/api/download/{filehash}", params={"key": key, "token": token}
        )
        self.assertEqual(await download.content(), data)


class CommandLineTests(TusCase):
    """C{metadisk upload} of a large file: tus, resumed by itself and by running it again."""

    async def start(self) -> tuple[str, bytes, Path, dict[str, str]]:
        node = await self.node()
        token = await funded_token(node, CREDIT)
        base = Path(self.mktemp()).resolve()
        base.mkdir()
        data = os.urandom(10 * 2**20)  # over the 8 MiB from which the CLI uses tus
        (base / "big.bin").write_bytes(data)
        return token, data, base / "big.bin", {"XDG_CACHE_HOME": str(base / "cache")}

    async def test_a_cut_upload_resumes_by_itself(self) -> None:
        token, data, path, env = await self.start()
        proxy = await CuttingProxy.start(self, self.running.port, 3 * 2**20, b"PATCH ")
        ran = await metadisk(
            "upload", str(path), "--node", proxy.url, "--token", token, "--json", env=env
        )
        self.assertEqual(ran.code, 0, ran.stderr)
        self.assertEqual(proxy.cuts, 1)
        self.assertIn("connection lost", ran.stderr)
        filehash, key = expected_upload(data)
        self.assertEqual(ran.json(), {"filehash": filehash, "key": key})  # as a plain upload
        self.assertEqual(await self.balance(token), CREDIT - 4 * len(data))
        self.assertEqual(
            json.loads((Path(env["XDG_CACHE_HOME"]) / "metadisk/uploads.json").read_text()), {}
        )

    async def test_the_same_command_resumes(self) -> None:
        token, data, path, env = await self.start()
        proxy = await CuttingProxy.start(self, self.running.port, 3 * 2**20, b"PATCH ")
        argv = ("upload", str(path), "--node", proxy.url, "--token", token, "--json")
        cut = await metadisk(*argv, "--retries", "0", env=env)
        self.assertEqual(cut.code, 3, cut.stderr)
        self.assertIn("run the same command again to resume", cut.stderr)
        uploads = list(self.running.node.resumable._uploads.values())

        async def cut_handled() -> bool:  # the node has seen the cut (at once, but not before)
            return not uploads[0].busy

        await eventually(cut_handled)
        again = await metadisk(*argv, env=env)
        self.assertEqual(again.code, 0, again.stderr)
        resumed = re.search(r"resuming the upload at (\d+) of (\d+) bytes", again.stderr)
        self.assertIsNotNone(resumed, again.stderr)
        self.assertGreater(int(resumed.group(1)), 2**20)
        self.assertEqual(
            again.json(), dict(zip(("filehash", "key"), expected_upload(data), strict=True))
        )
        self.assertEqual(await self.balance(token), CREDIT - 4 * len(data))
