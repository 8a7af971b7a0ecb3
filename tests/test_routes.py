"""The one list of routes: matching a path, redacting its secrets, merging repeated slashes."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase, TestCase

from metadisk.routes import merge_slashes, redact_path, route_of
from tests.support import json_of, start_node


class RouteTests(SynchronousTestCase):
    def test_route_of(self) -> None:
        filehash = "ab" * 32
        for path, route in [
            ("/api/upload", "/api/upload"),
            (f"/api/download/{filehash}?key=k&token=t", "/api/download/{filehash}"),
            (f"/api/find/{filehash}", "/api/find/{filehash}"),
            ("/api/status", "/api/status"),
            ("/accounts/token/new", "/accounts/token/new"),
            ("/accounts/token/balance/adF7WFCpQR2EvFkG", "/accounts/token/balance/{token}"),
            ("/accounts/token/deposit/x", "/accounts/token/deposit/{token}"),
            ("/metrics", "/metrics"),
            ("/", "/"),
            ("/app.css", "/{asset}"),
            ("/wp-admin/../../etc/passwd", "other"),
            ("/api/download/a/b", "other"),
        ]:
            self.assertEqual(route_of(path), route, path)

    def test_secrets_in_paths_are_redacted(self) -> None:
        def cut(value: str) -> str:
            return value[:4] + "..."

        for route in ("balance", "redeem", "deposit", "withdraw"):
            self.assertEqual(
                redact_path(f"/accounts/token/{route}/adF7WFCpQR2EvFkG", cut),
                f"/accounts/token/{route}/adF7...",
            )
        for path in ("/accounts/token/new", f"/api/find/{'ab' * 32}", "/other/token/x"):
            self.assertEqual(redact_path(path, cut), path)

    def test_merge_slashes(self) -> None:
        self.assertEqual(merge_slashes(b"//accounts//token/new"), b"/accounts/token/new")
        self.assertEqual(merge_slashes(b"/api/find/x?u=http://y//z"), b"/api/find/x?u=http://y//z")
        self.assertEqual(merge_slashes(b"/"), b"/")


class DoubledSlashTests(TestCase):
    async def test_a_client_joining_its_base_url_with_a_slash(self) -> None:
        """MetaDiskPy asks for http://host//accounts/token/new: every route answers it."""
        node = await start_node(self)
        response = await node.http.post(node.url + "//accounts/token/new")
        self.assertEqual(response.code, 200)
        token = (await json_of(response))["token"]
        response = await node.http.get(f"{node.url}//accounts//token/balance/{token}")
        self.assertEqual(await json_of(response), {"balance": 0})
        response = await node.http.get(node.url + "//api/status")
        self.assertEqual(response.code, 200)
