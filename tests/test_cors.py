"""
CORS for a MetaDisk page hosted elsewhere: `[node] cors_origins`. Preflights
are answered, and every answer to an allowed origin carries the headers:
normal ones, errors, streamed downloads and answers given before the body.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.trial.unittest import TestCase

from metadisk.web.site import CORS
from tests.support import (
    body_of,
    funded_token,
    header_of,
    json_of,
    raw_http,
    start_node,
    status_line,
    test_config,
    upload,
)

PAGE = "https://page.example"
OTHER = "https://evil.example"
EXPOSED = (
    "Content-Disposition, Content-Length, Content-Range, Retry-After, Location, Upload-Offset,"
    " Upload-Length, Upload-Expires, Tus-Resumable, Tus-Version, Tus-Extension, Tus-Max-Size,"
    " Tus-Checksum-Algorithm, MetaDisk-Filehash, MetaDisk-Key"
)


async def cors_node(case: TestCase, *origins: str, **sections: Any) -> Any:
    base = Path(case.mktemp()).resolve()
    config = test_config(base, node={"cors_origins": list(origins)}, **sections)
    return await start_node(case, config)


def header(response: Any, name: str) -> str | None:
    values = response.headers.getRawHeaders(name)
    return ", ".join(values) if values else None


class PreflightTests(TestCase):
    async def test_allowed_origin(self) -> None:
        node = await cors_node(self, PAGE)
        for path, method, headers in [
            ("/api/upload", "POST", None),
            ("/accounts/token/redeem/abc", "POST", "content-type"),
            ("/accounts/token/deposit/abc", "POST", "authentication, content-type"),
            ("/api/download/" + "a" * 64, "GET", "range"),
        ]:
            asked = {"Origin": PAGE, "Access-Control-Request-Method": method}
            if headers:
                asked["Access-Control-Request-Headers"] = headers
            response = await node.http.request("OPTIONS", node.url + path, headers=asked)
            self.assertEqual(response.code, 204, path)
            self.assertEqual(await response.content(), b"")
            self.assertEqual(header(response, "access-control-allow-origin"), PAGE)
            allowed = header(response, "access-control-allow-methods").split(", ")
            self.assertIn(method, allowed)
            allowed_headers = header(response, "access-control-allow-headers").lower()
            for name in (headers or "").split(", "):
                self.assertIn(name, allowed_headers)
            self.assertEqual(header(response, "access-control-max-age"), "600")
            self.assertEqual(header(response, "vary"), "Origin")

    async def test_other_origin(self) -> None:
        """A preflight from an origin not in the list gets no CORS headers: the browser refuses."""
        node = await cors_node(self, PAGE)
        response = await node.http.request(
            "OPTIONS",
            node.url + "/api/upload",
            headers={"Origin": OTHER, "Access-Control-Request-Method": "POST"},
        )
        await response.content()
        self.assertIsNone(header(response, "access-control-allow-origin"))
        self.assertIsNone(header(response, "access-control-allow-methods"))
        self.assertEqual(header(response, "vary"), "Origin")

    async def test_none_by_default(self) -> None:
        node = await start_node(self)
        response = await node.http.request(
            "OPTIONS",
            node.url + "/api/status",
            headers={"Origin": PAGE, "Access-Control-Request-Method": "GET"},
        )
        await response.content()
        self.assertIsNone(header(response, "access-control-allow-origin"))
        plain = await node.http.get(node.url + "/api/status", headers={"Origin": PAGE})
        await plain.content()
        self.assertEqual(plain.code, 200)
        self.assertIsNone(header(plain, "access-control-allow-origin"))
        self.assertIsNone(header(plain, "vary"))

    async def test_any_origin(self) -> None:
        node = await cors_node(self, "*")
        response = await node.http.get(node.url + "/api/status", headers={"Origin": OTHER})
        await response.content()
        self.assertEqual(header(response, "access-control-allow-origin"), OTHER)


class ResponseHeaderTests(TestCase):
    def assertAllowed(self, response: Any) -> None:
        self.assertEqual(header(response, "access-control-allow-origin"), PAGE)
        self.assertEqual(header(response, "access-control-expose-headers"), EXPOSED)
        self.assertEqual(header(response, "vary"), "Origin")

    async def test_normal_and_error_answers(self) -> None:
        node = await cors_node(self, PAGE)
        origin = {"Origin": PAGE}
        status = await node.http.get(node.url + "/api/status", headers=origin)
        self.assertEqual(status.code, 200)
        await status.content()
        self.assertAllowed(status)
        for method, path, code in [
            ("GET", "/api/find/" + "0" * 64, 404),
            ("GET", "/no/such/route", 404),
            ("GET", "/api/download/nothex", 400),
            ("POST", "/accounts/token/deposit/abc", 401),
            ("GET", "/accounts/token/balance/unknownToken", 404),
        ]:
            response = await node.http.request(method, node.url + path, headers=origin)
            self.assertEqual(response.code, code, path)
            await response.content()
            self.assertAllowed(response)

    async def test_upload_and_download(self) -> None:
        node = await cors_node(self, PAGE)
        token = await funded_token(node)
        stored = await upload(node, b"cross-origin bytes", token)
        result = await json_of(stored)
        download = await node.http.get(
            node.url + f"/api/download/{result['filehash']}",
            params={"key": result["key"], "token": token},
            headers={"Origin": PAGE},
        )
        self.assertEqual(await download.content(), b"cross-origin bytes")
        self.assertAllowed(download)

    async def test_not_for_other_origins(self) -> None:
        node = await cors_node(self, PAGE)
        for path in ("/api/status", "/no/such/route"):
            response = await node.http.get(node.url + path, headers={"Origin": OTHER})
            await response.content()
            self.assertIsNone(header(response, "access-control-allow-origin"))
            self.assertEqual(header(response, "vary"), "Origin")  # caches keep them apart


class EarlyAnswerTests(TestCase):
    """Answers given from the headers alone, before the body, carry CORS headers too."""

    async def assertEarly(self, port: int, request: bytes, code: int, error: str) -> None:
        answer = await raw_http(port, request)
        self.assertEqual(status_line(answer), code)
        self.assertEqual(body_of(answer), {"error": error})
        self.assertEqual(header_of(answer, b"access-control-allow-origin"), PAGE.encode())
        self.assertEqual(header_of(answer, b"vary"), b"Origin")

    async def test_file_too_large_and_length_required(self) -> None:
        node = await cors_node(self, PAGE)
        head = (
            f"POST /api/upload HTTP/1.1\r\nHost: x\r\nOrigin: {PAGE}\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\n"
        ).encode()
        await self.assertEarly(
            node.port, head + b"Content-Length: 999999999999\r\n\r\n", 413, "file-too-large"
        )
        await self.assertEarly(
            node.port, head + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 411, "length-required"
        )

    async def test_too_many_requests(self) -> None:
        node = await cors_node(self, PAGE, accounts={"guess_limit": 2, "guess_window": 60})
        for _ in range(2):
            response = await node.http.get(node.url + "/accounts/token/balance/nosuchtoken")
            await response.content()
        await self.assertEarly(
            node.port,
            f"GET /api/status HTTP/1.1\r\nHost: x\r\nOrigin: {PAGE}\r\n\r\n".encode(),
            429,
            "too-many-requests",
        )


class CORSUnitTests(TestCase):
    def test_headers(self) -> None:
        cors = CORS((PAGE,))
        self.assertEqual(cors.headers(PAGE.encode())["Access-Control-Allow-Origin"], PAGE)
        self.assertNotIn("Access-Control-Allow-Origin", cors.headers(OTHER.encode()))
        self.assertNotIn("Access-Control-Allow-Origin", cors.headers(None))
        self.assertEqual(CORS(()).headers(PAGE.encode()), {})
