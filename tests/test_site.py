"""What the site does on every route: early answers, the guessing limit, a log without secrets."""

from __future__ import annotations

import io
from pathlib import Path

from twisted.trial.unittest import TestCase

from tests.support import (
    body_of,
    eventually,
    funded_token,
    header_of,
    json_of,
    multipart,
    raw_http,
    start_node,
    status_line,
    test_config,
    upload,
)


class GuessLimitTests(TestCase):
    async def test_unknown_tokens_get_429_at_once(self) -> None:
        config = test_config(
            Path(self.mktemp()).resolve(), accounts={"guess_limit": 3, "guess_window": 60}
        )
        node = await start_node(self, config)
        for i in range(3):
            response = await node.http.get(node.url + f"/accounts/token/balance/guess{i}")
            self.assertEqual(response.code, 404)
            await response.content()
        response = await node.http.get(node.url + "/accounts/token/balance/guess9")
        self.assertEqual(response.code, 429)
        self.assertEqual(await json_of(response), {"error": "too-many-requests"})
        retry = int(response.headers.getRawHeaders("retry-after")[0])
        self.assertTrue(0 < retry <= 60, retry)
        # Every route, and an upload before any of its body is read.
        response = await node.http.get(node.url + "/api/status")
        self.assertEqual(response.code, 429)
        await response.content()
        answer = await raw_http(
            node.port,
            b"POST /api/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\n\r\n",
        )
        self.assertEqual(status_line(answer), 429)
        self.assertEqual(body_of(answer), {"error": "too-many-requests"})
        self.assertIsNotNone(header_of(answer, b"retry-after"))

    async def test_upload_with_unknown_token_counts(self) -> None:
        config = test_config(
            Path(self.mktemp()).resolve(), accounts={"guess_limit": 2, "guess_window": 60}
        )
        node = await start_node(self, config)
        for _ in range(2):
            response = await upload(node, b"x", "unknownTokenAbc")
            self.assertEqual(response.code, 401)
            await response.content()
        response = await node.http.get(node.url + "/api/status")
        self.assertEqual(response.code, 429)
        await response.content()


class BodyLimitTests(TestCase):
    async def test_large_accounts_body(self) -> None:
        node = await start_node(self)
        token = await funded_token(node, 100)
        response = await node.http.post(
            node.url + f"/accounts/token/redeem/{token}", data=b"promocode=" + b"x" * 100_000
        )
        self.assertEqual(response.code, 413)
        self.assertEqual(await json_of(response), {"error": "request-too-large"})
        chunks = b"".join(b"%x\r\n%s\r\n" % (8192, b"y" * 8192) for _ in range(10)) + b"0\r\n\r\n"
        answer = await raw_http(
            node.port,
            f"POST /accounts/token/redeem/{token} HTTP/1.1\r\nHost: x\r\n"
            "Transfer-Encoding: chunked\r\n\r\n".encode()
            + chunks,
        )
        self.assertEqual(status_line(answer), 413)


class AccessLogTests(TestCase):
    async def test_no_secrets_in_the_log(self) -> None:
        node = await start_node(self)
        log = io.StringIO()
        node.node.site.logFile = log
        token = await funded_token(node)
        content_type, body = multipart(("file", "a.txt", b"logged"))
        response = await node.http.post(
            node.url + "/api/upload",
            params={"token": token},
            data=body,
            headers={"Content-Type": content_type},
        )
        result = await json_of(response)
        response = await node.http.get(
            node.url + f"/api/download/{result['filehash']}",
            params={"key": result["key"], "token": token},
            headers={"Referer": f"http://page/?key={result['key']}"},
        )
        await response.content()
        await (await node.http.get(node.url + f"/accounts/token/balance/{token}")).content()

        async def logged() -> bool:
            # A download ends (and is logged) once the client has acknowledged its last byte.
            return "/api/download/" in log.getvalue()

        await eventually(logged)
        text = log.getvalue()
        self.assertIn(token[:4] + "...", text)
        self.assertNotIn(token, text)
        self.assertNotIn(result["key"], text)
        self.assertNotIn(node.secret, text)
