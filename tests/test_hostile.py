"""
The hostile input catalogue: each case gets its documented JSON error, and
nothing that should not change does (balances, the cache, the incoming
directory, the queues, the catalog, open reservations).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from metadisk.config import ConfigError, config_from_dict
from metadisk.crypto import DEFAULT_CONVERGENCE_SECRET, convergent_key, ctr_cipher
from metadisk.logs import event_as_json
from metadisk.store.shards import is_shard
from metadisk.web import accounts
from tests.support import (
    RunningNode,
    eventually,
    funded_token,
    json_of,
    multipart,
    raw_http,
    start_node,
    test_config,
    upload,
)
from tests.test_openapi import CONTRACT, raw_parts

CREDIT = 10**9
BAD_REQUEST = {"error": "bad-request"}
UPLOAD_HEAD = b"POST /api/upload HTTP/1.1\r\nHost: x\r\n"


async def snapshot(node: RunningNode, tokens: list[str]) -> dict[str, Any]:
    """What a refused request must leave as it was."""
    db = node.node.db
    store = node.node.store

    async def rows(sql: str) -> list[tuple]:
        return sorted(await db.query(sql))

    return {
        "balances": {t: await node.node.ledger.balance(t) for t in tokens},
        "cache": (store.cache.used, sorted(store.cache.filehashes())),
        "incoming": sorted(os.listdir(store.incoming)),
        "files": await rows("SELECT filehash, filename, filesize FROM files"),
        "uploads": await rows("SELECT filehash, host_name FROM uploads"),
        "cloud_queue": await rows("SELECT filehash FROM cloud_queue"),
        "reservations": await rows("SELECT token, amount FROM reservations"),
        "redemptions": await rows("SELECT token, code FROM redemptions"),
    }


class HostileCase(TestCase):
    """A node, a funded token, a stored file, and helpers that check answers and state."""

    guess_limit = 10_000  # most cases are not about guessing: every request is from 127.0.0.1

    async def node_with_file(self, **sections: Any) -> None:
        accounts = {"guess_limit": self.guess_limit, **sections.pop("accounts", {})}
        config = test_config(Path(self.mktemp()).resolve(), accounts=accounts, **sections)
        self.node = await start_node(self, config)
        ledger = self.node.node.ledger  # not through the API: it may be on a private listener
        self.token = await ledger.new_token()
        await ledger.deposit(self.token, CREDIT)
        self.data = os.urandom(4000)
        result = await json_of(await upload(self.node, self.data, self.token, name="kept.bin"))
        self.filehash, self.key = result["filehash"], result["key"]
        await self.node.node.sync.idle()

    async def state(self) -> dict[str, Any]:
        return await snapshot(self.node, [self.token])

    async def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, dict, bytes]:
        """A request through treq; (status, headers, body), checked against the OpenAPI document."""
        response = await self.node.http.request(method, self.node.url + path, **kwargs)
        body = await response.content()
        headers = {
            name.decode(): values[-1].decode("latin-1")
            for name, values in response.headers.getAllRawHeaders()
        }
        if isinstance(response.length, int):
            headers["Content-Length"] = str(response.length)
        self._conforms(method, path, response.code, headers, body)
        return response.code, headers, body

    async def raw(self, payload: bytes, **kwargs: Any) -> tuple[int, dict, bytes]:
        status, headers, body = raw_parts(await raw_http(self.node.port, payload, **kwargs))
        line = payload.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
        if len(line) == 3:
            self._conforms(line[0], line[1], status, headers, body)
        return status, headers, body

    def _conforms(self, method: str, path: str, status: int, headers: dict, body: bytes) -> None:
        try:
            CONTRACT.operation(method, path)
        except AssertionError:
            return  # no such operation: the generic 400/404/405 answers, checked by the caller
        CONTRACT.check(method, path, status, headers, body)

    async def expect(self, answer: Any, status: int, body: Any, what: Any = None) -> None:
        got_status, _, got_body = await answer
        self.assertEqual(
            (got_status, json.loads(got_body) if got_body else None), (status, body), what
        )

    async def assert_unchanged(self, before: dict[str, Any]) -> None:
        async def settled() -> bool:
            # Refunds of cut-short transfers finish a moment after the connection is gone.
            return await self.state() == before

        if await settled():
            return
        try:
            await eventually(settled, 2)
        except AssertionError:
            self.assertEqual(await self.state(), before)


class UploadNameTests(HostileCase):
    async def test_path_traversal_and_control_characters(self) -> None:
        await self.node_with_file()
        names = [
            "../../../../etc/passwd",
            "..\\..\\windows\\system32\\drivers\\etc\\hosts",
            "/absolute/path/name.txt",
            "C:\\Users\\x\\evil.exe",
            "nul\x00byte.txt",
            "bell\x07escape\x1b[31mred\x7f.txt",
            "tab\tnew\x0bline\x0c.txt",
            "\u202etxt.exe",  # right-to-left override
            "zero\u200bwidth.txt",
            "....//....//x",
            "..",
            ".",
            "",
            ".hidden",
            "%2e%2e%2fetc%2fpasswd",
            "x" * 1000,
            'quote"semi;colon.txt',
            "résumé 履歴書.pdf",
        ]
        root = self.node.node.config.node.data_dir.parent
        files_before = {p for p in root.rglob("*")}
        for i, name in enumerate(names):
            data = b"name test %d" % i
            response = await upload(self.node, data, self.token, name=name)
            self.assertEqual(response.code, 201, repr(name))
            result = await json_of(response)
            record = await json_of(
                await self.node.http.get(self.node.url + f"/api/find/{result['filehash']}")
            )
            stored = record["filename"]
            self.assertTrue(stored.startswith(result["filehash"][:7] + "_"), repr(stored))
            safe = stored[8:]
            self.assertTrue(safe, repr(name))
            self.assertFalse(set(safe) & {"/", "\\", "\x00"}, repr(stored))
            self.assertFalse(any(ord(c) < 32 or ord(c) == 127 for c in safe), repr(stored))
            self.assertNotIn("\u202e", safe)
            self.assertFalse(safe.startswith("."), repr(stored))
            self.assertLessEqual(len(safe), 200)
            status, headers, body = await self.call(
                "GET",
                f"/api/download/{result['filehash']}?key={result['key']}&token={self.token}",
            )
            self.assertEqual((status, body), (200, data), repr(name))
            disposition = headers["Content-Disposition"]
            self.assertTrue(disposition.isascii() and disposition.isprintable(), disposition)
            self.assertTrue(disposition.startswith('attachment; filename="'), disposition)
            self.assertEqual(disposition.count('"'), 2, disposition)  # no quote breaks out
        # The names never reached the file system: only blobs named by their hash were added
        # (in shard folders named by the hash's first two digits).
        added = {p for p in root.rglob("*")} - files_before
        for path in added:
            self.assertTrue(
                len(path.name.split(".")[0]) == 64
                or path.name in ("", "incoming")
                or (path.is_dir() and is_shard(path.name)),
                str(path),
            )


class FilehashAndKeyTests(HostileCase):
    async def test_malformed_filehashes(self) -> None:
        await self.node_with_file()
        before = await self.state()
        for bad in (
            "nothex",
            "0" * 63,
            "0" * 65,
            "g" * 64,
            self.filehash[:-1] + "z",
            self.filehash + "0",
            quote("\u0660") * 64,  # Arabic-Indic zeros: digits to Python, not hex
            quote("\uff10") * 64,  # fullwidth zeros
            "%00" * 64,
            quote(" " + self.filehash[1:]),
        ):
            await self.expect(
                self.call("GET", f"/api/download/{bad}?token={self.token}"),
                400,
                {"error": "invalid-filehash"},
                bad,
            )
            status, _, _ = await self.call("HEAD", f"/api/download/{bad}")
            self.assertIn(status, (400, 404), bad)
            status, _, body = await self.call("GET", f"/api/find/{bad}")
            self.assertEqual(status, 404, bad)
            self.assertIn(json.loads(body), ({"error": "File not found"}, {"error": "not-found"}))
        # A path that breaks out of the route is no route at all.
        await self.expect(
            self.call("GET", f"/api/download/..%2f..%2f{'0' * 54}?token={self.token}"),
            404,
            {"error": "not-found"},
        )
        # Upper case is the same hash; a well-formed unknown one is not found.
        status, _, _ = await self.call(
            "GET", f"/api/download/{self.filehash.upper()}?token={self.token}&key={self.key}"
        )
        await self.expect(
            self.call("GET", f"/api/download/{'ab' * 32}?token={self.token}"),
            404,
            {"error": "file-not-found"},
        )
        self.assertEqual(status, 200)
        before["balances"][self.token] -= len(self.data)  # the one good download
        await self.assert_unchanged(before)

    async def test_malformed_keys(self) -> None:
        await self.node_with_file()
        before = await self.state()
        for bad in (
            "zz",
            "0" * 63,
            "0" * 65,
            "g" * 64,
            quote("\u0660") * 64,
            "%00" * 64,
            "",
            quote(self.key + "\n"),
        ):
            await self.expect(
                self.call("GET", f"/api/download/{self.filehash}?key={bad}&token={self.token}"),
                400,
                {"error": "invalid-key"},
                bad,
            )
        await self.assert_unchanged(before)

    async def test_key_of_another_file(self) -> None:
        """Garbage out, of the right length, for the bytes asked: never a crash."""
        await self.node_with_file()
        other = convergent_key(DEFAULT_CONVERGENCE_SECRET, hashlib.sha256(b"other").hexdigest())
        for range_header, start, end in ((None, 0, 3999), ("bytes=100-1123", 100, 1123)):
            headers = {"Range": range_header} if range_header else {}
            status, _, body = await self.call(
                "GET",
                f"/api/download/{self.filehash}?key={other.hex()}&token={self.token}",
                headers=headers,
            )
            self.assertEqual(status, 206 if range_header else 200)
            self.assertEqual(len(body), end - start + 1)
            ciphertext = ctr_cipher(bytes.fromhex(self.key)).encrypt(self.data)
            self.assertEqual(body, ctr_cipher(other, start).encrypt(ciphertext[start : end + 1]))
            self.assertNotEqual(body, self.data[start : end + 1])


class ByteCountTests(HostileCase):
    async def test_bad_bytes_everywhere(self) -> None:
        await self.node_with_file()
        secret = {"Authentication": self.node.secret}
        before = await self.state()
        json_values: list[Any] = [
            -1,
            0,
            1.5,
            1e3,
            2**53 + 1,
            2**63,
            2**64,
            10**30,
            int("9" * 4000),
            True,
            None,
            [5],
            {"n": 5},
            "-1",
            "0",
            "1.5",
            "1e3",
            "",
            " 5",
            "5 ",
            "+5",
            "0x10",
            "abc",
            "\u0661\u0662\u0663",  # Arabic-Indic digits: int() takes them, the API must not
            "\uff11\uff12\uff13",  # fullwidth digits
            "9" * 65,
            str(2**63),
        ]
        for op in ("deposit", "withdraw"):
            path = f"/accounts/token/{op}/{self.token}"
            for value in json_values:
                await self.expect(
                    self.call(
                        "POST", path, data=json.dumps({"bytes": value}).encode(), headers=secret
                    ),
                    400,
                    {"status": "bad-request"},
                    (op, "json", value),
                )
                if isinstance(value, str):
                    await self.expect(
                        self.call("POST", path, data={"bytes": value}, headers=secret),
                        400,
                        {"status": "bad-request"},
                        (op, "form", value),
                    )
                    await self.expect(
                        self.call("POST", path, params={"bytes": value}, headers=secret),
                        400,
                        {"status": "bad-request"},
                        (op, "query", value),
                    )
        await self.assert_unchanged(before)
        # The largest allowed amount works: the refusals above were about the value.
        await self.expect(
            self.call(
                "POST",
                f"/accounts/token/deposit/{self.token}",
                json={"bytes": 2**53},
                headers=secret,
            ),
            200,
            {"status": "ok"},
        )
        self.assertEqual(
            await self.node.node.ledger.balance(self.token), before["balances"][self.token] + 2**53
        )

    async def test_withdraw_more_than_balance(self) -> None:
        await self.node_with_file()
        before = await self.state()
        await self.expect(
            self.call(
                "POST",
                f"/accounts/token/withdraw/{self.token}",
                json={"bytes": before["balances"][self.token] + 1},
                headers={"Authentication": self.node.secret},
            ),
            402,
            {"status": "balance-insufficient"},
        )
        await self.assert_unchanged(before)


class FormFieldTests(HostileCase):
    async def test_missing_and_duplicate_parameters(self) -> None:
        """A parameter given twice in one place is ambiguous: refused, never half-applied."""
        await self.node_with_file()
        await self.node.node.ledger.add_promocode("ONCE", 1000)
        secret = {"Authentication": self.node.secret}
        before = await self.state()
        path = f"/accounts/token/deposit/{self.token}"
        bad_deposits: list[dict[str, Any]] = [
            {},
            {"data": b""},
            {"data": b"{}"},
            {"data": b"bites=5"},
            {"data": b"bytes=1&bytes=999"},
            {"data": b"bytes=5&bytes=5"},
            {"params": [("bytes", "1"), ("bytes", "999")]},
            {"data": b'{"bytes": 1, "bytes": 999}'},
            {"data": b"[" * 30_000},  # nesting too deep for the JSON parser
            {"data": b'{"bytes": ' + b"9" * 5000 + b"}"},
            {"data": os.urandom(2000)},
        ]
        for kwargs in bad_deposits:
            await self.expect(
                self.call("POST", path, headers=secret, **kwargs),
                400,
                {"status": "bad-request"},
                kwargs,
            )
        redeem = f"/accounts/token/redeem/{self.token}"
        for kwargs in (
            {},
            {"data": b"promocode="},
            {"data": b"promocode=ONCE&promocode=ONCE"},
            {"data": b'{"promocode": "ONCE", "promocode": "ONCE"}'},
            {"json": {"promocode": ["ONCE"]}},
            {"json": {"promocode": 5}},
        ):
            await self.expect(self.call("POST", redeem, **kwargs), 403, {"status": "error"}, kwargs)
        await self.assert_unchanged(before)

    async def test_upload_fields(self) -> None:
        await self.node_with_file()
        other = await funded_token(self.node, CREDIT)
        before = await snapshot(self.node, [self.token, other])

        async def post(*parts: tuple[str, str | None, bytes], query: str = "") -> tuple:
            content_type, body = multipart(*parts)
            return await self.call(
                "POST", "/api/upload" + query, data=body, headers={"Content-Type": content_type}
            )

        token = ("token", None, self.token.encode())
        await self.expect(post(token), 400, {"error": "no-file"})
        await self.expect(post(("file", "a", b"x")), 401, {"error": "token-required"})
        await self.expect(post(token, ("file", "a", b"x"), ("file", "b", b"y")), 400, BAD_REQUEST)
        await self.expect(post(("token", None, b"A" * 129), ("file", "a", b"x")), 400, BAD_REQUEST)
        await self.expect(
            post(("token", None, b"bad token!"), ("file", "a", b"x")),
            401,
            {"error": "invalid-token"},
        )
        await self.expect(
            post(("token", None, b""), ("file", "a", b"x")), 401, {"error": "invalid-token"}
        )
        after = await snapshot(self.node, [self.token, other])
        self.assertEqual(after, before)

        # A file before its token, past what one address may send unpaid: refused at once.
        share = self.node.node.site.upload_policy.unpaid.share
        status, headers, body = await post(("file", "a", b"u" * (share + 8192)), token)
        self.assertEqual((status, json.loads(body)), (503, {"error": "unpaid-upload-limit"}))
        self.assertIn("Retry-After", headers)

        async def unchanged() -> bool:  # the partial file goes as the connection does
            return await snapshot(self.node, [self.token, other]) == before

        await eventually(unchanged)

        # Two tokens: the first one given pays, the other is never touched.
        status, _, _ = await post(token, ("token", None, other.encode()), ("file", "t", b"two"))
        self.assertEqual(status, 201)
        status, _, _ = await post(
            ("token", None, other.encode()), ("file", "q", b"query"), query=f"?token={self.token}"
        )
        self.assertEqual(status, 201)
        after = await snapshot(self.node, [self.token, other])
        self.assertEqual(after["balances"][other], CREDIT)
        self.assertEqual(after["balances"][self.token], before["balances"][self.token] - 4 * 8)


class MultipartTests(HostileCase):
    async def upload_raw(self, content_type: bytes, body: bytes) -> Any:
        head = (
            b"POST /api/upload?token=%s HTTP/1.1\r\nHost: x\r\nContent-Type: %s\r\n"
            b"Content-Length: %d\r\n\r\n" % (self.token.encode(), content_type, len(body))
        )
        return await self.raw(head + body)

    async def test_malformed_multipart(self) -> None:
        await self.node_with_file()
        before = await self.state()
        good_type, good = multipart(("file", "a.txt", b"0123456789"), boundary="BOUNDARY")
        part_head = (
            b'--BOUNDARY\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\n'
        )
        cases: list[tuple[str, bytes, bytes, int, dict]] = [
            (
                "truncated: no closing delimiter",
                good_type,
                good[: good.rindex(b"--BOUNDARY--")],
                400,
                BAD_REQUEST,
            ),
            ("truncated inside the part", good_type, good[:60], 400, BAD_REQUEST),
            ("another boundary", b"multipart/form-data; boundary=OTHER", good, 400, BAD_REQUEST),
            ("no boundary parameter", b"multipart/form-data", good, 400, {"error": "no-file"}),
            ("empty boundary", b"multipart/form-data; boundary=", good, 400, {"error": "no-file"}),
            ("not multipart", b"application/octet-stream", good, 400, {"error": "no-file"}),
            ("empty body", good_type, b"", 400, BAD_REQUEST),
            ("only the end", good_type, b"--BOUNDARY--\r\n", 400, {"error": "no-file"}),
            (
                "no Content-Disposition",
                good_type,
                b"--BOUNDARY\r\nContent-Type: text/plain\r\n\r\nx\r\n--BOUNDARY--\r\n",
                400,
                BAD_REQUEST,
            ),
            (
                "a header line without a colon",
                good_type,
                b"--BOUNDARY\r\ngarbage\r\n\r\nx\r\n--BOUNDARY--\r\n",
                400,
                BAD_REQUEST,
            ),
            (
                "a part header of 20 KB",
                good_type,
                b"--BOUNDARY\r\nX-Long: "
                + b"a" * 20_000
                + b"\r\n"
                + part_head[12:]
                + b"x\r\n--BOUNDARY--\r\n",
                400,
                BAD_REQUEST,
            ),
            (
                "40 parts",
                good_type,
                b"".join(
                    b'--BOUNDARY\r\nContent-Disposition: form-data; name="f%d"\r\n\r\nx\r\n' % i
                    for i in range(40)
                )
                + b"--BOUNDARY--\r\n",
                400,
                BAD_REQUEST,
            ),
            (
                "a bare LF between headers",
                good_type,
                b'--BOUNDARY\nContent-Disposition: form-data; name="file"\n\nx\n--BOUNDARY--\n',
                400,
                BAD_REQUEST,
            ),
        ]
        for what, content_type, body, status, expected in cases:
            got_status, _, got_body = await self.upload_raw(content_type, body)
            self.assertEqual((got_status, json.loads(got_body)), (status, expected), what)
            await self.assert_unchanged(before)
        # The same body, well formed, is taken: the refusals were about the malformations.
        status, _, _ = await self.upload_raw(good_type, good)
        self.assertEqual(status, 201)


class ContentLengthTests(HostileCase):
    async def test_short_body_then_gone(self) -> None:
        """Content-Length promises more than comes: nothing stored, nothing charged."""
        await self.node_with_file()
        before = await self.state()
        content_type, body = multipart(
            ("token", None, self.token.encode()), ("file", "a", os.urandom(50_000))
        )
        head = UPLOAD_HEAD + b"Content-Type: %s\r\nContent-Length: %d\r\n\r\n"
        answer = await raw_http(
            self.node.port, head % (content_type, len(body) + 1000) + body, close_after_send=True
        )
        self.assertEqual(answer, b"")
        await self.assert_unchanged(before)
        # The same for the accounts API: nothing deposited.
        answer = await raw_http(
            self.node.port,
            b"POST /accounts/token/deposit/%s HTTP/1.1\r\nHost: x\r\nAuthentication: %s\r\n"
            b"Content-Length: 100\r\n\r\nbytes=5"
            % (self.token.encode(), self.node.secret.encode()),
            close_after_send=True,
        )
        self.assertEqual(answer, b"")
        await self.assert_unchanged(before)

    async def test_long_body(self) -> None:
        """Bytes past Content-Length are the next request, never part of this one."""
        await self.node_with_file()
        before = await self.state()
        status, _, body = await self.raw(
            b"POST /accounts/token/deposit/%s HTTP/1.1\r\nHost: x\r\nAuthentication: %s\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 7\r\n\r\n"
            b"bytes=1000000" % (self.token.encode(), self.node.secret.encode())
        )
        self.assertEqual((status, json.loads(body)), (200, {"status": "ok"}))
        data = os.urandom(3000)
        content_type, multipart_body = multipart(("file", "long.bin", data))
        status, _, body = await self.raw(
            b"POST /api/upload?token=%s HTTP/1.1\r\nHost: x\r\nContent-Type: %s\r\n"
            b"Content-Length: %d\r\n\r\n%sGARBAGE\r\n\r\n"
            % (self.token.encode(), content_type, len(multipart_body), multipart_body)
        )
        self.assertEqual(status, 201)
        after = await self.state()
        self.assertEqual(
            after["balances"][self.token], before["balances"][self.token] + 1 - 4 * 3000
        )
        self.assertEqual(len(after["files"]), len(before["files"]) + 1)

    async def test_malformed_lengths(self) -> None:
        await self.node_with_file()
        before = await self.state()
        for headers in (
            b"Content-Length: abc\r\n",
            b"Content-Length: -5\r\n",
            b"Content-Length: 5\r\nContent-Length: 7\r\n",
            b"Content-Length: 1e3\r\n",
            b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        ):
            for path in (b"/api/upload", b"/accounts/token/deposit/" + self.token.encode()):
                answer = await raw_http(
                    self.node.port,
                    b"POST %s HTTP/1.1\r\nHost: x\r\nAuthentication: %s\r\n"
                    b"Content-Type: multipart/form-data; boundary=b\r\n%s\r\nbytes=5"
                    % (path, self.node.secret.encode(), headers),
                )
                status, _, body = raw_parts(answer)
                self.assertEqual((status, json.loads(body)), (400, BAD_REQUEST), headers)
        await self.assert_unchanged(before)


class HugeRequestTests(HostileCase):
    async def test_huge_headers_and_urls(self) -> None:
        await self.node_with_file()
        before = await self.state()
        token = self.token.encode()
        for what, payload in (
            ("URL of 20 KB", b"GET /api/find/" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"),
            (
                "query of 20 KB",
                b"GET /api/status?x=" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
            ),
            (
                "one header of 20 KB",
                b"GET /api/status HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 20_000 + b"\r\n\r\n",
            ),
            (
                "headers of 40 KB",
                b"GET /api/status HTTP/1.1\r\nHost: x\r\n"
                + b"".join(b"X-%d: %s\r\n" % (i, b"a" * 1000) for i in range(40))
                + b"\r\n",
            ),
            (
                "600 headers",
                b"GET /api/status HTTP/1.1\r\nHost: x\r\n"
                + b"".join(b"X-%d: 1\r\n" % i for i in range(600))
                + b"\r\n",
            ),
            (
                "an upload with huge headers",
                b"POST /api/upload?token="
                + token
                + b" HTTP/1.1\r\nHost: x\r\nX-A: "
                + b"a" * 20_000
                + b"\r\nContent-Length: 10\r\n\r\n0123456789",
            ),
            ("a NUL in a header", b"GET /api/status HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n"),
            ("not HTTP", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n"),
            ("a non-UTF-8 path", b"GET /api/find/\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n"),
            (
                "a non-UTF-8 escaped path",
                b"GET /accounts/token/balance/%ff%fe HTTP/1.1\r\nHost: x\r\n\r\n",
            ),
            ("a non-UTF-8 Host", b"GET /api/status HTTP/1.1\r\nHost: \xff\xfe\r\n\r\n"),
        ):
            status, headers, body = raw_parts(await raw_http(self.node.port, payload))
            self.assertEqual((status, json.loads(body)), (400, BAD_REQUEST), what)
            self.assertEqual(headers.get("Content-Type"), "application/json", what)
        await self.assert_unchanged(before)
        # The node serves on.
        status, _, _ = await self.call("GET", "/api/status")
        self.assertEqual(status, 200)


class RangeTests(HostileCase):
    async def test_bad_ranges(self) -> None:
        await self.node_with_file()
        before = await self.state()
        url = f"/api/download/{self.filehash}?key={self.key}&token={self.token}"
        for header in (
            "bytes=4000-",
            "bytes=5-2",
            "bytes=-0",
            "bytes=-",
            "bytes=",
            "bytes=0-1,3-4",
            "bytes=--5",
            "bytes=-5-",
            "bytes=1-2-3",
            "bytes=0x10-",
            "bytes=\u0661-\u0662",
            "items=0-1",
            "bytes 0-1",
            "=0-1",
            "bytes=" + "9" * 5000 + "-",
            "bytes=" + "9" * 20 + "-" + "9" * 20,
        ):
            for method in ("GET", "HEAD"):
                status, headers, body = await self.call(method, url, headers={"Range": header})
                self.assertEqual(status, 416, (method, header))
                self.assertEqual(headers["Content-Range"], "bytes */4000")
                if method == "GET":
                    self.assertEqual(json.loads(body), {"error": "invalid-range"})
        await self.assert_unchanged(before)
        # Ends past the file are cut to it (and charged as served).
        for header, first, last in (
            ("bytes=0-" + "9" * 5000, 0, 3999),
            ("bytes=-" + "9" * 5000, 0, 3999),
            ("bytes=000000000000000000000003-000000000000000000000007", 3, 7),
        ):
            status, _, body = await self.call("GET", url, headers={"Range": header})
            self.assertEqual((status, body), (206, self.data[first : last + 1]), header)


class SecretKeyTests(HostileCase):
    async def test_wrong_empty_and_almost_right(self) -> None:
        await self.node_with_file()
        before = await self.state()
        secret = self.node.secret
        path = f"/accounts/token/deposit/{self.token}"
        variants: list[list[tuple[bytes, bytes]]] = [
            [],
            [(b"Authentication", b"")],
            [(b"Authentication", secret[:-1].encode())],
            [(b"Authentication", secret.encode() + b"x")],
            [(b"Authentication", secret[:-1].encode() + bytes([secret.encode()[-1] ^ 1]))],
            [(b"Authentication", secret.swapcase().encode())],
            [(b"Authentication", secret.encode() * 2)],
            [(b"Authentication", b"\xff" + secret.encode()[1:])],
            [(b"Authorization", secret.encode())],
            [(b"Authorization", b"Bearer " + secret.encode())],
            [(b"Authentication", b"nope"), (b"Authentication", secret.encode())],
            [(b"Authentication", secret.encode()), (b"Authentication", secret.encode())],
        ]
        for headers in variants:
            lines = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
            for op in (b"deposit", b"withdraw"):
                status, _, body = await self.raw(
                    b"POST /accounts/token/%s/%s?bytes=5 HTTP/1.1\r\nHost: x\r\n%s"
                    b"Content-Length: 0\r\n\r\n" % (op, self.token.encode(), lines)
                )
                self.assertEqual(
                    (status, json.loads(body)), (401, {"status": "invalid-authentication"}), headers
                )
        await self.expect(
            self.call("POST", path, params={"bytes": "5", "Authentication": secret}),
            401,
            {"status": "invalid-authentication"},
        )
        await self.assert_unchanged(before)

    async def test_compared_in_constant_time(self) -> None:
        """Every comparison of the secret goes through hmac.compare_digest."""
        await self.node_with_file()
        seen: list[tuple[bytes, bytes]] = []

        def spy(given: bytes, expected: bytes) -> bool:
            seen.append((given, expected))
            return original(given, expected)

        original = hmac.compare_digest
        self.patch(accounts.hmac, "compare_digest", spy)
        for given in (b"wrong", self.node.secret.encode()):
            await self.raw(
                b"POST /accounts/token/deposit/%s?bytes=5 HTTP/1.1\r\nHost: x\r\n"
                b"Authentication: %s\r\nContent-Length: 0\r\n\r\n" % (self.token.encode(), given)
            )
        self.assertEqual([g for g, _ in seen], [b"wrong", self.node.secret.encode()])
        self.assertEqual({e for _, e in seen}, {self.node.secret.encode()})


class UnknownTokenTests(HostileCase):
    guess_limit = 40

    async def test_unknown_tokens(self) -> None:
        await self.node_with_file()
        secret = {"Authentication": self.node.secret}
        before = await self.state()
        for token in (
            "nosuchtoken",
            "A" * 16,
            "a" * 1000,
            ".x.",
            "%00",
            quote("é"),
        ):
            await self.expect(
                self.call("GET", f"/accounts/token/balance/{token}"),
                404,
                {"status": "error"},
                token,
            )
            await self.expect(
                self.call("POST", f"/accounts/token/redeem/{token}", json={"promocode": "X"}),
                403,
                {"status": "error"},
                token,
            )
            await self.expect(
                self.call(
                    "POST", f"/accounts/token/deposit/{token}", json={"bytes": 5}, headers=secret
                ),
                400,
                {"status": "bad-request"},
                token,
            )
            await self.expect(
                self.call("GET", f"/api/download/{self.filehash}?token={token}"),
                401,
                {"error": "invalid-token"},
                token,
            )
            response = await upload(self.node, b"unpaid", token)
            # A token field longer than any token is malformed, not unknown.
            refusal = (400, BAD_REQUEST) if len(token) > 128 else (401, {"error": "invalid-token"})
            self.assertEqual((response.code, await json_of(response)), refusal, token)
        # Line breaks in a token go nowhere: not into a header, not into a route.
        crlf = quote("tok\r\nX-Injected: 1")
        status, headers, _ = await self.call("GET", f"/accounts/token/balance/{crlf}")
        self.assertEqual(status, 404)
        status, headers, body = await self.call(
            "GET", f"/api/download/{self.filehash}?token={crlf}"
        )
        self.assertEqual((status, json.loads(body)), (401, {"error": "invalid-token"}))
        self.assertNotIn("X-Injected", headers)
        await self.assert_unchanged(before)

    async def test_guessing_is_refused_at_once(self) -> None:
        await self.node_with_file()
        before = await self.state()
        statuses = []
        for i in range(self.guess_limit):
            status, _, _ = await self.call("GET", f"/accounts/token/balance/guess{i:04d}abcdefgh")
            statuses.append(status)
        self.assertEqual(set(statuses), {404})
        started = reactor.seconds()
        for method, path in (
            ("GET", f"/accounts/token/balance/{self.token}"),  # even a real one, from this address
            ("GET", f"/api/download/{self.filehash}?token={self.token}"),
            ("POST", "/accounts/token/new"),
        ):
            status, headers, body = await self.call(method, path)
            self.assertEqual((status, json.loads(body)), (429, {"error": "too-many-requests"}))
            self.assertGreater(int(headers["Retry-After"]), 0)
        self.assertLess(reactor.seconds() - started, 2.0)  # refused, never slowed down
        await self.assert_unchanged(before)


class ConnectionTests(HostileCase):
    """Connections the node will not serve: refused or cut in JSON, nothing charged."""

    async def test_too_many_connections_from_one_address(self) -> None:
        await self.node_with_file(node={"max_connections_per_address": 3})
        before = await self.state()
        endpoint = TCP4ClientEndpoint(
            reactor, "127.0.0.1", self.node.port, bindAddress=("127.0.0.2", 0)
        )
        held = [await endpoint.connect(Factory.forProtocol(Protocol)) for _ in range(3)]
        for connection in held:
            self.addCleanup(connection.transport.abortConnection)
        download = f"/api/download/{self.filehash}?key={self.key}&token={self.token}"
        status, headers, body = raw_parts(
            await raw_http(
                self.node.port,
                b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % download.encode(),
                source="127.0.0.2",
            )
        )
        self.assertEqual((status, json.loads(body)), (429, {"error": "too-many-connections"}))
        CONTRACT.check("GET", download, status, headers, body)
        await self.assert_unchanged(before)
        # Another address is served.
        status, _, _ = await self.call("GET", download)
        self.assertEqual(status, 200)

    async def test_headers_too_slow(self) -> None:
        await self.node_with_file(node={"header_timeout": 0.5})
        before = await self.state()
        download = f"/api/download/{self.filehash}?key={self.key}&token={self.token}"
        # No blank line: the headers never end. The answer comes at the deadline.
        status, _, body = await self.raw(b"GET %s HTTP/1.1\r\nHost: x\r\n" % download.encode())
        self.assertEqual((status, json.loads(body)), (408, {"error": "request-timeout"}))
        await self.assert_unchanged(before)


class PromocodeTests(HostileCase):
    async def test_replay(self) -> None:
        await self.node_with_file()
        await self.node.node.ledger.add_promocode("WELCOME", 5000)
        other = await funded_token(self.node, 1)
        redeem = f"/accounts/token/redeem/{self.token}"
        await self.expect(
            self.call("POST", redeem, json={"promocode": "WELCOME"}), 201, {"status": "ok"}
        )
        before = await self.state()
        for kwargs in (
            {"json": {"promocode": "WELCOME"}},
            {"data": {"promocode": "WELCOME"}},
            {"params": {"promocode": "WELCOME"}},
            {"json": {"promocode": "welcome"}},
            {"json": {"promocode": "WELCOME "}},
            {"json": {"promocode": "NOSUCHCODE"}},
        ):
            await self.expect(self.call("POST", redeem, **kwargs), 403, {"status": "error"}, kwargs)
        await self.assert_unchanged(before)
        # Once per token: another token may use it, once, even when it tries many times at once.
        attempts = [
            Deferred.fromCoroutine(
                self.call("POST", f"/accounts/token/redeem/{other}", json={"promocode": "WELCOME"})
            )
            for _ in range(8)
        ]
        statuses = sorted(status for status, _, _ in await gatherResults(attempts))
        self.assertEqual(statuses, [201] + [403] * 7)
        self.assertEqual(await self.node.node.ledger.balance(other), 1 + 5000)


class PrivateListenerTests(HostileCase):
    async def test_private_api_only_on_its_listener(self) -> None:
        await self.node_with_file(node={"private_listen": "tcp:0:interface=127.0.0.1"})
        before = await self.state()
        secret = {"Authentication": self.node.secret}
        for op in ("deposit", "withdraw"):
            await self.expect(
                self.call(
                    "POST", f"/accounts/token/{op}/{self.token}", json={"bytes": 5}, headers=secret
                ),
                404,
                {"error": "not-found"},
                op,
            )
        await self.assert_unchanged(before)
        private = f"http://127.0.0.1:{self.node.service.private_port.getHost().port}"
        for op, change in (("deposit", 5), ("withdraw", -3)):
            response = await self.node.http.post(
                f"{private}/accounts/token/{op}/{self.token}",
                json={"bytes": abs(change)},
                headers=secret,
            )
            self.assertEqual((response.code, await json_of(response)), (200, {"status": "ok"}))
            before["balances"][self.token] += change
        response = await self.node.http.post(
            f"{private}/accounts/token/deposit/{self.token}", json={"bytes": 5}
        )
        self.assertEqual(response.code, 401)
        await response.content()
        self.assertEqual(await self.state(), before)
        # The rest of the API is served on the public listener as before.
        status, _, _ = await self.call("GET", f"/accounts/token/balance/{self.token}")
        self.assertEqual(status, 200)


class PrivateListenConfigTests(SynchronousTestCase):
    def test_only_local_endpoints(self) -> None:
        for good in (
            "tcp:8081:interface=127.0.0.1",
            "tcp:8081:interface=127.0.0.53",
            "tcp6:8081:interface=\\:\\:1",
            "unix:/run/metadisk/private.sock",
            "ssl:8443:privateKey=k.pem:certKey=c.pem:interface=127.0.0.1",
        ):
            config = config_from_dict({"node": {"private_listen": good}})
            self.assertEqual(config.node.private_listen, good)
        for bad in (
            "tcp:8081",
            "tcp:8081:interface=0.0.0.0",
            "tcp:8081:interface=192.168.1.5",
            "tcp6:8081:interface=\\:\\:",
            "ssl:8443:privateKey=k.pem",
            "tor:80",
        ):
            with self.assertRaises(ConfigError) as caught:
                config_from_dict({"node": {"private_listen": bad}})
            self.assertEqual(caught.exception.key, "node.private_listen")
        with self.assertRaises(ConfigError):
            config_from_dict(
                {
                    "node": {
                        "listen": "tcp:8080:interface=127.0.0.1",
                        "private_listen": "tcp:8080:interface=127.0.0.1",
                    }
                }
            )


class NoSecretsInLogsTests(HostileCase):
    async def test_no_key_token_or_secret_logged(self) -> None:
        """Every log event of a hostile session, formatted, holds no key, full token or secret."""
        lines: list[str] = []

        def observe(event: dict) -> None:
            lines.append(event_as_json(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        await self.node_with_file()
        secret = self.node.secret
        url = f"/api/download/{self.filehash}"
        await self.call(
            "GET",
            f"{url}?key={self.key}&token={self.token}",
            headers={"Referer": f"http://x/?key={self.key}"},
        )
        await self.call(
            "GET", f"{url}?key={self.key}&token={self.token}", headers={"Range": "bytes=9999-"}
        )
        await self.call("GET", f"{url}?key={self.key[:-1]}q&token={self.token}")
        await self.call(
            "POST",
            f"/accounts/token/deposit/{self.token}",
            json={"bytes": 1},
            headers={"Authentication": secret},
        )
        await self.call(
            "POST",
            f"/accounts/token/deposit/{self.token}",
            json={"bytes": 1},
            headers={"Authentication": secret + "x"},
        )
        await self.call(
            "POST",
            f"/accounts/token/withdraw/{self.token}?bytes=1&token={self.token}",
            headers={"Authentication": secret},
        )
        await self.call("GET", f"/accounts/token/balance/{self.token}")
        await self.call("POST", f"/accounts/token/redeem/{self.token}", json={"promocode": "X"})
        await raw_http(
            self.node.port, b"GET /api/find/" + self.token.encode() * 2000 + b" HTTP/1.1\r\n\r\n"
        )
        content_type, body = multipart(
            ("token", None, self.token.encode()), ("file", "x", b"1" * 100)
        )
        await raw_http(
            self.node.port,
            UPLOAD_HEAD
            + b"Content-Type: %s\r\nContent-Length: %d\r\n\r\n%s"
            % (content_type, len(body) + 50, body),
            close_after_send=True,
        )
        await self.node.stop()  # the request log is written when each request ends
        text = "\n".join(lines)
        self.assertIn("/api/download/", text)  # the observer did see the traffic
        for secret_text in (self.key, self.token, secret):
            self.assertNotIn(secret_text, text)
