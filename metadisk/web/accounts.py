"""The accounts API: access tokens, their balances, promocodes and prices."""

from __future__ import annotations

import hmac
from typing import Any

from attrs import define
from twisted.web.iweb import IRequest

from metadisk.ledger import BalanceFull, BalanceInsufficient, Ledger, UnknownToken
from metadisk.web.errors import APIError, json_app, write_json
from metadisk.web.guard import TokenGuard
from metadisk.web.params import byte_count, parameter


def _status(status: int, text: str) -> APIError:
    return APIError(status, {"status": text})


@define(slots=False)  # Klein binds itself to the instance's __dict__
class AccountsAPI:
    _ledger: Ledger
    _guard: TokenGuard
    _secret_key: str
    # True when [node] private_listen is set: deposit and withdraw are served only there.
    _private_only: bool = False

    app = json_app()

    def resource(self) -> Any:
        return self.app.resource()

    def _authenticate(self, request: IRequest) -> None:
        site = getattr(request, "site", None)
        if self._private_only and not getattr(site, "private", False):
            raise APIError(404, {"error": "not-found"})  # as if there were no such route here
        headers = request.requestHeaders.getRawHeaders(b"authentication") or []
        # Two of them are ambiguous (a proxy and the node could each read another): refused.
        given = headers[0] if len(headers) == 1 else b""
        if not hmac.compare_digest(given, self._secret_key.encode("utf-8")):
            raise _status(401, "invalid-authentication")

    def _unknown(self, request: IRequest, status: int) -> APIError:
        self._guard.unknown_token(request.getClientAddress())
        return _status(status, "error")

    @app.route("/token/new", methods=["POST"])
    async def new(self, request: IRequest) -> bytes:
        return write_json(request, 200, {"token": await self._ledger.new_token()})

    @app.route("/token/prices", methods=["GET"])
    async def prices(self, request: IRequest) -> bytes:
        return write_json(request, 200, {"prices": await self._ledger.prices()})

    @app.route("/token/balance/<token>", methods=["GET"])
    async def balance(self, request: IRequest, token: str) -> bytes:
        balance = await self._ledger.balance(token)
        if balance is None:
            raise self._unknown(request, 404)
        return write_json(request, 200, {"balance": balance})

    @app.route("/token/redeem/<token>", methods=["POST"])
    async def redeem(self, request: IRequest, token: str) -> bytes:
        code = parameter(request, "promocode")
        if not isinstance(code, str) or not code:
            raise _status(403, "error")
        try:
            redeemed = await self._ledger.redeem(token, code)
        except UnknownToken:
            raise self._unknown(request, 403) from None
        if not redeemed:
            raise _status(403, "error")
        return write_json(request, 201, {"status": "ok"})

    @app.route("/token/deposit/<token>", methods=["POST"])
    async def deposit(self, request: IRequest, token: str) -> bytes:
        self._authenticate(request)
        amount = byte_count(parameter(request, "bytes"))
        if amount is None:
            raise _status(400, "bad-request")
        try:
            await self._ledger.deposit(token, amount)
        except (UnknownToken, BalanceFull):
            raise _status(400, "bad-request") from None
        return write_json(request, 200, {"status": "ok"})

    @app.route("/token/withdraw/<token>", methods=["POST"])
    async def withdraw(self, request: IRequest, token: str) -> bytes:
        self._authenticate(request)
        amount = byte_count(parameter(request, "bytes"))
        if amount is None:
            raise _status(400, "bad-request")
        try:
            await self._ledger.withdraw(token, amount)
        except UnknownToken:
            raise _status(400, "bad-request") from None
        except BalanceInsufficient:
            raise _status(402, "balance-insufficient") from None
        return write_json(request, 200, {"status": "ok"})
