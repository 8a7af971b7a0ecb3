"""
C{metadisk token new | balance | redeem | prices}: the node's accounts API,
with the sentences its bare C{{"status": "error"}} answers mean there.
"""

from __future__ import annotations

import argparse
from typing import Any
from urllib.parse import quote

from metadisk.client.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, CLIError
from metadisk.client.node import NodeClient
from metadisk.client.output import Output, human


def _need_token(token: str | None, what: str) -> str:
    if not token:
        raise CLIError(f"{what}: no token: pass --token or set METADISK_TOKEN", EXIT_USAGE)
    return token


def _accounts_call(client: NodeClient, what: str, method: str, path: str, **params: Any) -> Any:
    try:
        return client.call(what, method, path, params or None)
    except CLIError as e:
        if isinstance(e.details, dict) and e.details.get("error") == "not-found":
            raise CLIError(f"{what}: this node has no accounts (they are disabled)") from None
        raise


def token_command(
    client: NodeClient, output: Output, args: argparse.Namespace, token: str | None
) -> int:
    if args.action == "new":
        answer = _accounts_call(client, "token new", "POST", "/accounts/token/new")
        output.result(answer, answer["token"])
    elif args.action == "balance":
        token = _need_token(args.balance_token or token, "token balance")
        path = f"/accounts/token/balance/{quote(token, safe='')}"
        try:
            answer = _accounts_call(client, "token balance", "GET", path)
        except CLIError as e:
            if isinstance(e.details, dict) and e.details.get("status") == 404:
                raise CLIError("token balance: unknown token", EXIT_FAILED, e.details) from None
            raise
        output.result(answer, f"{answer['balance']} bytes ({human(answer['balance'])})")
    elif args.action == "redeem":
        token = _need_token(token, "token redeem")
        path = f"/accounts/token/redeem/{quote(token, safe='')}"
        try:
            answer = _accounts_call(client, "token redeem", "POST", path, promocode=args.promocode)
        except CLIError as e:
            if isinstance(e.details, dict) and e.details.get("status") == 403:
                raise CLIError(
                    "token redeem: refused: an unknown promocode or token,"
                    " or a promocode this token has redeemed already",
                    EXIT_FAILED,
                    e.details,
                ) from None
            raise
        output.result(answer, f"redeemed {args.promocode}")
    else:
        answer = _accounts_call(client, "token prices", "GET", "/accounts/token/prices")
        rows = [f"{'amount':>16}  cost"] + [
            f"{human(p['amount']):>16}  {p['cost']}" for p in answer["prices"]
        ]
        output.result(answer, "\n".join(rows) if answer["prices"] else "no prices set")
    return EXIT_OK
