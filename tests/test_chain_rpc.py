"""The JSON-RPC client: credentials, errors, timeouts, limits and TLS verification."""

from __future__ import annotations

import datetime
import ipaddress
import json
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from treq.client import HTTPClient
from treq.testing import StubTreq
from twisted.internet import reactor, ssl
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from metadisk.chain.rpc import (
    ChainUnavailable,
    JSONRPCClient,
    RPCAuthError,
    RPCError,
    split_credentials,
)


class Scripted(Resource):
    """Answers every POST with the next (status, body); records what it got."""

    isLeaf = True

    def __init__(self, *answers: tuple[int, bytes]) -> None:
        super().__init__()
        self.answers = list(answers)
        self.requests: list[dict[str, Any]] = []
        self.pending: list[Any] = []

    def render_POST(self, request: Any) -> Any:
        self.requests.append(
            {
                "user": request.getUser(),
                "password": request.getPassword(),
                "body": json.loads(request.content.read()),
                "path": request.path,
            }
        )
        if not self.answers:
            self.pending.append(request)
            return NOT_DONE_YET
        status, body = self.answers.pop(0)
        request.setResponseCode(status)
        return body


def client(resource: Resource, clock: Clock | None = None, **kw: Any) -> JSONRPCClient:
    return JSONRPCClient.from_url(
        "http://alice:p%40ss%3Aword@127.0.0.1:9332/wallet/w",
        StubTreq(resource),
        clock or Clock(),
        **kw,
    )


class CredentialTests(SynchronousTestCase):
    def test_split(self) -> None:
        self.assertEqual(
            split_credentials("http://u:p%40ss@127.0.0.1:9332/"),
            ("http://127.0.0.1:9332/", ("u", "p@ss")),
        )
        self.assertEqual(split_credentials("https://[::1]:9332"), ("https://[::1]:9332", None))
        self.assertEqual(
            split_credentials("https://u@node.example/"), ("https://node.example/", ("u", ""))
        )
        for bad in ("ftp://u:p@host/", "127.0.0.1:9332", "http://"):
            self.assertRaises(ValueError, split_credentials, bad)


class CallTests(SynchronousTestCase):
    def test_result_and_request(self) -> None:
        resource = Scripted((200, b'{"result": {"a": [1, 2]}, "error": null, "id": 1}'))
        rpc = client(resource)
        self.assertEqual(self.successResultOf(rpc.call("getblock", "ab", 2)), {"a": [1, 2]})
        sent = resource.requests[0]
        self.assertEqual((sent["user"], sent["password"]), (b"alice", b"p@ss:word"))
        self.assertEqual(sent["path"], b"/wallet/w")
        self.assertEqual(sent["body"]["method"], "getblock")
        self.assertEqual(sent["body"]["params"], ["ab", 2])
        self.assertNotIn("alice", rpc.url)

    def test_json_error_is_rpc_error(self) -> None:
        for status in (500, 404, 200):
            body = b'{"result": null, "error": {"code": -26, "message": "scriptpubkey"}, "id": 1}'
            failure = self.failureResultOf(client(Scripted((status, body))).call("send"), RPCError)
            self.assertEqual((failure.value.code, failure.value.message), (-26, "scriptpubkey"))
            self.assertIn("send", str(failure.value))

    def test_string_error(self) -> None:
        """metachains' own fake answered {"result": null, "errors": "..."}: not a result either."""
        failure = self.failureResultOf(
            client(Scripted((500, b'{"error": "tx-comment too long"}'))).call("x"), RPCError
        )
        self.assertIsNone(failure.value.code)

    def test_bad_credentials(self) -> None:
        failure = self.failureResultOf(
            client(Scripted((401, b""))).call("getblockcount"), RPCAuthError
        )
        self.assertIn("credentials", str(failure.value))
        self.assertIsInstance(failure.value, ChainUnavailable)

    def test_not_json_rpc(self) -> None:
        for status, body in ((502, b"<html>bad gateway</html>"), (200, b"[1, 2]"), (200, b"{")):
            self.failureResultOf(client(Scripted((status, body))).call("x"), ChainUnavailable)

    def test_timeout(self) -> None:
        clock = Clock()
        resource = Scripted()
        d = client(resource, clock, timeout=5).call("getblockcount")
        self.assertNoResult(d)
        clock.advance(5)
        failure = self.failureResultOf(d, ChainUnavailable)
        self.assertIn("no answer within 5 s", str(failure.value))

    def test_answer_too_large(self) -> None:
        body = json.dumps({"result": "x" * 5000, "error": None}).encode()
        rpc = client(Scripted((200, body)))
        rpc.max_response = 1000
        self.failureResultOf(rpc.call("getblock"), ChainUnavailable)

    def test_undecodable_bytes_do_not_break_the_answer(self) -> None:
        body = b'{"result": {"tx-comment": "\xff\xfe"}, "error": null}'
        result = self.successResultOf(client(Scripted((200, body))).call("decoderawtransaction"))
        self.assertEqual(result["tx-comment"].encode("utf-8", "surrogateescape"), b"\xff\xfe")


def _self_signed() -> ssl.PrivateCertificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return ssl.PrivateCertificate.loadPEM(pem)


class NetworkTests(TestCase):
    """Real sockets on loopback: refused connections and TLS verification."""

    def _client(self, url: str, policy: Any = None) -> JSONRPCClient:
        pool = HTTPConnectionPool(reactor, persistent=False)
        agent = Agent(reactor, contextFactory=policy or BrowserLikePolicyForHTTPS(), pool=pool)
        return JSONRPCClient.from_url(url, HTTPClient(agent), reactor, timeout=10)

    def _serve_tls(self, certificate: ssl.PrivateCertificate) -> int:
        resource = Scripted(*[(200, b'{"result": 7, "error": null, "id": 1}')] * 2)
        port = reactor.listenSSL(0, Site(resource), certificate.options(), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port.getHost().port

    async def test_refused(self) -> None:
        port = reactor.listenTCP(0, Site(Resource()), interface="127.0.0.1")
        number = port.getHost().port
        await port.stopListening()
        with self.assertRaises(ChainUnavailable):
            await self._client(f"http://u:p@127.0.0.1:{number}/").call("getblockcount")

    async def test_https_is_verified(self) -> None:
        certificate = _self_signed()
        number = self._serve_tls(certificate)
        # Not signed by a trusted authority: refused.
        with self.assertRaises(ChainUnavailable):
            await self._client(f"https://u:p@localhost:{number}/").call("getblockcount")
        # Trusted, and the name matches: accepted.
        trusted = BrowserLikePolicyForHTTPS(trustRoot=ssl.Certificate(certificate.original))
        rpc = self._client(f"https://u:p@localhost:{number}/", trusted)
        self.assertEqual(await rpc.call("getblockcount"), 7)
