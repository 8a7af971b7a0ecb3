"""
TLS: the node listens through a Twisted endpoint string (C{ssl:…}) with a
self-signed certificate made for the test (never a committed key), for the
public API and for the private listener.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.ssl import Certificate
from twisted.python import usage
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool, ResponseFailed

from metadisk.tap import Options, makeService
from tests.support import raw_http, start_node, test_config


def self_signed(directory: Path) -> tuple[Path, Path]:
    """(key, certificate) for localhost and 127.0.0.1, made by openssl, valid for a day."""
    if shutil.which("openssl") is None:
        message = "openssl is needed to make a test certificate (apt-get install openssl)"
        if os.environ.get("CI"):
            raise AssertionError(message)
        raise SkipTest(message)
    key, cert = directory / "key.pem", directory / "cert.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-nodes", "-days", "1", "-subj", "/CN=localhost",
            "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-keyout", str(key), "-out", str(cert),
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    return key, cert


def ssl_endpoint(key: Path, cert: Path) -> str:
    return f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"


def https_client(case: TestCase, trust: Path | None) -> HTTPClient:
    """A client that trusts only C{trust} (None: the system's roots, which do not know it)."""
    pool = HTTPConnectionPool(reactor, persistent=False)
    root = Certificate.loadPEM(trust.read_bytes()) if trust is not None else None
    policy = BrowserLikePolicyForHTTPS(trustRoot=root)
    case.addCleanup(pool.closeCachedConnections)
    return HTTPClient(Agent(reactor, contextFactory=policy, pool=pool))


class TLSTests(TestCase):
    async def test_api_over_tls(self) -> None:
        base = Path(self.mktemp()).resolve()
        base.mkdir(parents=True)
        key, cert = self_signed(base)
        config = test_config(
            base,
            node={"listen": ssl_endpoint(key, cert), "private_listen": ssl_endpoint(key, cert)},
        )
        node = await start_node(self, config)
        public = f"https://localhost:{node.port}"
        private = f"https://localhost:{node.service.private_port.getHost().port}"
        http = https_client(self, cert)

        async def json_call(method: str, url: str, **kwargs: Any) -> tuple[int, Any]:
            response = await http.request(method, url, **kwargs)
            return response.code, await response.json()

        status, body = await json_call("POST", public + "/accounts/token/new")
        self.assertEqual(status, 200)
        token = body["token"]
        secret = {"Authentication": node.secret}
        deposit = f"/accounts/token/deposit/{token}"
        self.assertEqual(
            await json_call("POST", private + deposit, json={"bytes": 10**6}, headers=secret),
            (200, {"status": "ok"}),
        )
        # The private API is not on the public listener, TLS or not.
        self.assertEqual(
            await json_call("POST", public + deposit, json={"bytes": 1}, headers=secret),
            (404, {"error": "not-found"}),
        )
        data = os.urandom(20_000)
        response = await http.post(
            public + "/api/upload",
            params={"token": token},
            files={"file": ("secret.bin", data)},
        )
        self.assertEqual(response.code, 201)
        result = await response.json()
        download = await http.get(
            f"{public}/api/download/{result['filehash']}",
            params={"key": result["key"], "token": token},
        )
        self.assertEqual((download.code, await download.content()), (200, data))
        status, body = await json_call("GET", f"{public}/accounts/token/balance/{token}")
        self.assertEqual(body, {"balance": 10**6 - 5 * len(data)})

    async def test_certificate_really_served(self) -> None:
        """A client that does not trust the certificate refuses it; plain HTTP gets no answer."""
        base = Path(self.mktemp()).resolve()
        base.mkdir(parents=True)
        key, cert = self_signed(base)
        node = await start_node(self, test_config(base, node={"listen": ssl_endpoint(key, cert)}))
        with self.assertRaises(ResponseFailed):
            await https_client(self, None).get(f"https://localhost:{node.port}/api/status")
        answer = await raw_http(node.port, b"GET /api/status HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertFalse(answer.startswith(b"HTTP/"), answer[:40])


class TLSConfigTests(SynchronousTestCase):
    def test_missing_or_bad_certificate_is_one_line(self) -> None:
        base = Path(self.mktemp()).resolve()
        base.mkdir(parents=True)
        (base / "garbage.pem").write_text("not a certificate\n")
        for listen, problem in (
            (f"ssl:8443:privateKey={base / 'missing.pem'}", "FileNotFoundError"),
            (f"ssl:8443:privateKey={base / 'garbage.pem'}", "Error"),
        ):
            options = Options()
            options.parseOptions(["--listen", listen, "--data-dir", str(base / "data")])
            with self.assertRaises(SystemExit) as caught:
                makeService(options, reactor)
            message = str(caught.exception)
            self.assertTrue(message.startswith("metadisk: config error: node.listen: "), message)
            self.assertIn(problem, message)
            self.assertNotIn("\n", message)

    def test_options(self) -> None:
        with self.assertRaises(usage.UsageError):
            Options().parseOptions(["--log-format", "xml"])
