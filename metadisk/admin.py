"""
The operator's admin command, on the node's own database:

    python -m metadisk.admin [--config FILE] [--data-dir DIR] COMMAND …
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred

from metadisk.config import ConfigError, load_config
from metadisk.db import DatabaseUnavailable, open_database
from metadisk.ledger import BalanceFull, Ledger, UnknownToken
from metadisk.node import node_identity
from metadisk.web.params import byte_count


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m metadisk.admin", description=__doc__)
    parser.add_argument("--config", help="the node's TOML configuration file")
    parser.add_argument("--data-dir", help="the node's data directory")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("secret", help="print the secret key of the private API")
    promocode = commands.add_parser("promocode", help="add a promocode")
    promocode.add_argument("action", choices=["add"])
    promocode.add_argument("code")
    promocode.add_argument("bytes")
    price = commands.add_parser("price", help="set or remove a price")
    price.add_argument("action", choices=["set", "remove"])
    price.add_argument("amount")
    price.add_argument("cost", nargs="?")
    token = commands.add_parser("token", help="create a token")
    token.add_argument("action", choices=["new"])
    deposit = commands.add_parser("deposit", help="add credit to a token")
    deposit.add_argument("token")
    deposit.add_argument("bytes")
    balance = commands.add_parser("balance", help="print a token's balance")
    balance.add_argument("token")
    return parser


class AdminError(Exception):
    pass


def _amount(text: str, what: str) -> int:
    value = byte_count(text)
    if value is None:
        raise AdminError(f"{what} must be a whole number from 1 to 2^53, got {text!r}")
    return value


async def run(reactor: Any, args: argparse.Namespace) -> str:
    config = load_config(args.config, data_dir=args.data_dir)
    node_id, secret_key = node_identity(config)
    if args.command == "secret":
        return secret_key
    db = await open_database(config.effective_database_url, reactor)
    ledger = Ledger(db, reactor, node_id)
    try:
        if args.command == "promocode":
            await ledger.add_promocode(args.code, _amount(args.bytes, "BYTES"))
            return f"promocode {args.code} is worth {args.bytes} bytes"
        if args.command == "price" and args.action == "set":
            if args.cost is None:
                raise AdminError("price set needs AMOUNT and COST")
            await ledger.set_price(_amount(args.amount, "AMOUNT"), _amount(args.cost, "COST"))
            return "price set"
        if args.command == "price":
            await ledger.remove_price(_amount(args.amount, "AMOUNT"))
            return "price removed"
        if args.command == "token":
            return await ledger.new_token()
        if args.command == "deposit":
            await ledger.deposit(args.token, _amount(args.bytes, "BYTES"))
            return f"balance {await ledger.balance(args.token)}"
        balance = await ledger.balance(args.token)
        if balance is None:
            raise UnknownToken()
        return str(balance)
    finally:
        await db.close()


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)

    async def command(reactor: Any) -> None:
        try:
            print(await run(reactor, args))
        except (AdminError, ConfigError, DatabaseUnavailable) as e:
            raise SystemExit(f"metadisk-admin: {e}") from None
        except OSError as e:  # the data dir: a file in the way, no rights
            where = f"{e.filename}: " if e.filename else ""
            raise SystemExit(f"metadisk-admin: {where}{e.strerror or e}") from None
        except UnknownToken:
            raise SystemExit("metadisk-admin: unknown token") from None
        except BalanceFull:
            raise SystemExit("metadisk-admin: that would take the balance past 2^62") from None

    task.react(lambda reactor: Deferred.fromCoroutine(command(reactor)))


if __name__ == "__main__":
    main(sys.argv[1:])
