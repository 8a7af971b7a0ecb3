"""
The OpenAPI document is kept true: it is valid OpenAPI 3.1, it names every
route the Klein apps serve and no other, and a live node's answers (successes
and documented errors) validate against it.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_openapi
from twisted.trial.unittest import SynchronousTestCase, TestCase

from metadisk.routes import TEMPLATES, route_of
from metadisk.web.accounts import AccountsAPI
from metadisk.web.files import FilesAPI
from metadisk.web.openapi import document
from metadisk.web.root import NodeRoot
from metadisk.web.tus import TusAPI
from tests.support import funded_token, raw_http, start_node, test_config, upload

_METHODS = ("get", "head", "post", "put", "delete", "patch", "options", "trace")


def _inline(node: Any, components: dict[str, Any]) -> Any:
    """C{node} with every C{#/components/schemas/…} reference replaced by its schema."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            return _inline(components[ref.rsplit("/", 1)[1]], components)
        return {key: _inline(value, components) for key, value in node.items()}
    if isinstance(node, list):
        return [_inline(value, components) for value in node]
    return node


class Contract:
    """Checks an HTTP answer against the operation the document gives its method and path."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self._spec = spec
        self._components = spec["components"]["schemas"]

    def operation(self, method: str, path: str) -> dict[str, Any]:
        """The operation of a request, found by the node's own route matcher."""
        item = self._spec["paths"].get(route_of(path), {})
        if method.lower() not in item:
            raise AssertionError(f"{method} {path} is not in the OpenAPI document")
        return item[method.lower()]

    def check(
        self, method: str, path: str, status: int, headers: dict[str, str], body: bytes
    ) -> None:
        """Raise AssertionError unless the answer is one the document gives for the request."""
        operation = self.operation(method, path)
        what = f"{method} {path} -> {status}"
        response = operation["responses"].get(str(status))
        if response is None:
            raise AssertionError(f"{what}: status not documented ({body[:200]!r})")
        headers = {name.lower(): value for name, value in headers.items()}
        for name, header in response.get("headers", {}).items():
            value = headers.get(name.lower())
            if value is None:
                if header.get("required"):
                    raise AssertionError(f"{what}: no {name} header")
                continue
            self._validate(header["schema"], value, f"{what}: header {name}")
        content = response.get("content")
        if not content or method.upper() == "HEAD" or status == 304:
            return
        media = headers.get("content-type", "").split(";")[0].strip()
        if media not in content:
            raise AssertionError(f"{what}: Content-Type {media!r}, documented {sorted(content)}")
        if media == "application/json":
            self._validate(content[media]["schema"], json.loads(body), f"{what}: body")

    def _validate(self, schema: dict[str, Any], value: Any, what: str) -> None:
        errors = list(Draft202012Validator(_inline(schema, self._components)).iter_errors(value))
        if errors:
            raise AssertionError(f"{what}: {value!r} breaks the schema: {errors[0].message}")


CONTRACT = Contract(document())


def raw_parts(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of a raw HTTP answer."""
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip()] = value.strip()
    return int(lines[0].split(" ", 2)[1]), headers, body


def served_routes() -> set[tuple[str, str]]:
    """(method, OpenAPI path) of every route the node's Klein apps serve; HEAD only if explicit."""
    branches = {
        "api_branch": ("/api", FilesAPI.app),
        "accounts_branch": ("/accounts", AccountsAPI.app),
        "tus_branch": ("/api/tus", TusAPI.app),
    }
    routes: set[tuple[str, str]] = set()

    def add(prefix: str, app: Any) -> None:
        for rule in app.url_map.iter_rules():
            if rule.endpoint in branches:
                add(prefix + branches[rule.endpoint][0], branches[rule.endpoint][1])
                continue
            if rule.endpoint == "other_branch":
                routes.add(("get", "/"))  # the web page and its assets
                continue
            if rule.endpoint.endswith("_branch"):
                raise AssertionError(f"a new branch route {rule.rule}: document it")
            if rule.rule.endswith("/") and rule.endpoint + "_branch" in {
                r.endpoint for r in app.url_map.iter_rules()
            }:
                continue  # the bare prefix of a branch
            path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", prefix + rule.rule)
            for method in rule.methods or ():
                routes.add((method.lower(), path))

    add("", NodeRoot.app)
    return routes


class DocumentTests(SynchronousTestCase):
    def test_valid_openapi(self) -> None:
        validate_openapi(document())

    def test_every_route_and_no_other(self) -> None:
        served = served_routes()
        documented = {
            (method, path)
            for path, item in document()["paths"].items()
            for method in item
            if method in _METHODS
        }
        # Werkzeug serves HEAD wherever GET is: documented only where it means something.
        self.assertEqual(
            {route for route in served if route[0] != "head"},
            {route for route in documented if route[0] != "head"},
        )
        self.assertLessEqual({route for route in documented if route[0] == "head"}, served)
        # One list of routes: what metrics and the access log go by is what is served.
        self.assertEqual({path for _, path in served}, set(TEMPLATES))

    def test_every_operation_answers_429_and_503(self) -> None:
        for path, item in document()["paths"].items():
            for method, operation in item.items():
                for status in ("429", "503"):
                    self.assertIn(status, operation["responses"], (method, path))

    def test_contract_rejects_what_is_not_documented(self) -> None:
        """The checker itself can fail: an undocumented status, shape or header."""
        with self.assertRaises(AssertionError):
            CONTRACT.check("GET", "/api/status", 418, {}, b"{}")
        with self.assertRaises(AssertionError):
            CONTRACT.check(
                "GET",
                "/api/find/" + "a" * 64,
                404,
                {"Content-Type": "application/json"},
                b'{"error": "nope"}',
            )
        with self.assertRaises(AssertionError):
            CONTRACT.check(
                "GET",
                "/accounts/token/prices",
                429,
                {"Content-Type": "application/json"},
                b'{"error": "too-many-requests"}',
            )
        with self.assertRaises(AssertionError):
            CONTRACT.operation("DELETE", "/api/status")


class LiveNodeTests(TestCase):
    """A node's answers to every operation, successful and failing, fit the document."""

    async def _call(self, node: Any, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        response = await node.http.request(method, node.url + path, **kwargs)
        body = await response.content()
        headers = {
            name.decode(): values[-1].decode("latin-1")
            for name, values in response.headers.getAllRawHeaders()
        }
        if isinstance(response.length, int):  # Twisted's client keeps it out of the headers
            headers["Content-Length"] = str(response.length)
        CONTRACT.check(method, path, response.code, headers, body)
        is_json = headers.get("Content-Type") == "application/json"
        return response.code, json.loads(body) if is_json and body else body

    async def _raw(self, node: Any, method: str, path: str, payload: bytes) -> int:
        status, headers, body = raw_parts(await raw_http(node.port, payload))
        CONTRACT.check(method, path, status, headers, body)
        return status

    async def test_answers_fit_the_document(self) -> None:
        config = test_config(Path(self.mktemp()).resolve(), accounts={"guess_limit": 30})
        node = await start_node(self, config)
        secret = {"Authentication": node.secret}
        seen: set[tuple[str, str, int]] = set()

        async def call(method: str, path: str, expected: int, **kwargs: Any) -> Any:
            status, body = await self._call(node, method, path, **kwargs)
            self.assertEqual(status, expected, (method, path, body))
            seen.add((method, path.split("?")[0], status))
            return body

        spec = await call("GET", "/api/openapi.json", 200)
        self.assertEqual(spec, document())
        await call("GET", "/", 200)
        await call("GET", "/metrics", 200)
        await call("GET", "/api/status", 200)
        await call("GET", "/accounts/token/prices", 200)
        token = (await call("POST", "/accounts/token/new", 200))["token"]
        await call("GET", f"/accounts/token/balance/{token}", 200)
        await call("GET", "/accounts/token/balance/unknownToken", 404)
        await call(
            "POST", f"/accounts/token/deposit/{token}", 200, json={"bytes": 10**9}, headers=secret
        )
        await call(
            "POST", f"/accounts/token/deposit/{token}", 400, json={"bytes": 0}, headers=secret
        )
        await call("POST", f"/accounts/token/deposit/{token}", 401, json={"bytes": 1})
        await call(
            "POST", f"/accounts/token/withdraw/{token}", 200, data={"bytes": "1"}, headers=secret
        )
        await call(
            "POST",
            f"/accounts/token/withdraw/{token}",
            402,
            params={"bytes": "99999999999"},
            headers=secret,
        )
        await node.node.ledger.add_promocode("WELCOME", 1000)
        await call("POST", f"/accounts/token/redeem/{token}", 201, json={"promocode": "WELCOME"})
        await call("POST", f"/accounts/token/redeem/{token}", 403, json={"promocode": "WELCOME"})
        await call(
            "POST", "/accounts/token/redeem/" + token, 413, data=b"promocode=" + b"x" * 70_000
        )

        data = os.urandom(5000)
        response = await upload(node, data, token)
        body = await response.content()
        headers = {"Content-Type": response.headers.getRawHeaders("content-type")[0]}
        CONTRACT.check("POST", "/api/upload", response.code, headers, body)
        result = json.loads(body)
        filehash, key = result["filehash"], result["key"]
        download = f"/api/download/{filehash}"
        await call("GET", f"/api/find/{filehash}", 200)
        await call("GET", "/api/find/" + "0" * 64, 404)
        await call("GET", "/api/find/nothex", 404)
        await call("GET", download, 200, params={"key": key, "token": token})
        await call("GET", download, 200, params={"token": token})
        await call("GET", download, 206, params={"token": token}, headers={"Range": "bytes=10-99"})
        await call("GET", download, 416, params={"token": token}, headers={"Range": "bytes=9000-"})
        await call("HEAD", download, 200)
        await call("HEAD", download, 206, headers={"Range": "bytes=-10"})
        await call("GET", "/api/download/nothex", 400)
        await call("GET", download, 400, params={"key": "zz"})
        await call("GET", download, 401)
        await call("GET", "/api/download/" + "0" * 64, 404, params={"token": token})
        poor = await funded_token(node, 10)
        await call("GET", download, 402, params={"token": poor})
        response = await upload(node, b"z" * 100, poor)
        body = await response.content()
        CONTRACT.check(
            "POST", "/api/upload", response.code, {"Content-Type": "application/json"}, body
        )
        self.assertEqual(response.code, 402)

        head = "POST /api/upload HTTP/1.1\r\nHost: x\r\n"
        multipart = "Content-Type: multipart/form-data; boundary=b\r\n"
        self.assertEqual(
            await self._raw(
                node, "POST", "/api/upload", (head + "Content-Length: 9\r\n\r\nno-multi").encode()
            ),
            400,
        )
        self.assertEqual(
            await self._raw(
                node,
                "POST",
                "/api/upload",
                (head + multipart + "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n").encode(),
            ),
            411,
        )
        self.assertEqual(
            await self._raw(
                node,
                "POST",
                "/api/upload",
                (head + multipart + "Content-Length: 999999999999\r\n\r\n").encode(),
            ),
            413,
        )
        statuses = [
            (await self._call(node, "GET", "/accounts/token/balance/guessing"))[0]
            for _ in range(30)
        ]
        self.assertEqual(statuses[-1], 429)
        await call("GET", "/api/status", 429)
        await call("POST", "/api/upload", 429, data=b"x")
        self.assertGreater(len(seen), 30)
