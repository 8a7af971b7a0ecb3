"""
The node's HTTP root: the files API under /api (resumable uploads under
/api/tus), the accounts API under /accounts, and the MetaDisk web page at / (its assets beside it).
"""

from __future__ import annotations

from typing import Any

from attrs import define, field
from twisted.web.iweb import IRequest

from metadisk.metrics import Metrics
from metadisk.web.accounts import AccountsAPI
from metadisk.web.errors import error, json_app
from metadisk.web.files import FilesAPI
from metadisk.web.page import WebPage
from metadisk.web.tus import TusAPI


@define(slots=False, kw_only=True)  # Klein binds itself to the instance's __dict__
class NodeRoot:
    _files: FilesAPI
    _accounts: AccountsAPI | None  # None: accounts disabled
    _tus: TusAPI  # resumable uploads
    _page: WebPage = field(factory=WebPage.from_package)
    _metrics: Metrics | None = None  # None: no /metrics

    app = json_app()

    def resource(self) -> Any:
        return self.app.resource()

    @app.route("/api/", branch=True)
    def api(self, request: IRequest) -> Any:
        return self._files.resource()

    @app.route("/api/tus/", branch=True)
    def tus(self, request: IRequest) -> Any:
        return self._tus.resource()

    @app.route("/accounts/", branch=True)
    def accounts(self, request: IRequest) -> Any:
        if self._accounts is None:
            raise error(404, "not-found")
        return self._accounts.resource()

    @app.route("/metrics", methods=["GET"])
    async def prometheus(self, request: IRequest) -> bytes:
        if self._metrics is None:
            raise error(404, "not-found")
        return await self._metrics.render(request)

    @app.route("/", branch=True)
    def other(self, request: IRequest) -> Any:
        # The router sends here any method that /metrics does not list.
        if request.path == b"/metrics" and self._metrics is not None:
            _read_only(request)
        if self._page.handles(request):
            _read_only(request)
            return self._page.render(request)
        raise error(404, "not-found")


def _read_only(request: IRequest) -> None:
    if request.method not in (b"GET", b"HEAD"):
        raise error(405, "method-not-allowed", Allow="GET, HEAD")
