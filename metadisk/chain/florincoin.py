"""
Florincoin: the entry is a transaction's tx-comment, the 5th parameter of
C{sendtoaddress}, read back with C{getrawtransaction} + C{decoderawtransaction}
(so florincoind needs C{txindex=1} to see other wallets' transactions).
"""

from __future__ import annotations

from typing import Any

from attrs import define, field
from twisted.logger import Logger
from zope.interface import implementer

from metadisk.chain.adapter import (
    BlockHeights,
    ChainBlock,
    EntryTooLong,
    Ticket,
    checked_block,
    checked_hash,
)
from metadisk.chain.codec import MAX_ENTRY
from metadisk.chain.rpc import ChainUnavailable, JSONRPCClient, RPCError
from metadisk.interfaces import IChain

DEFAULT_ADDRESS = "F94Vd1E6Hx2uhntGRo8mn3aJvQLS4KXmSA"  # metachains' publishing address
RECENT_SENDS = 1000  # wallet transactions searched when recovering a send


@implementer(IChain)
@define
class Florincoin(BlockHeights):
    _rpc: JSONRPCClient
    address: str = DEFAULT_ADDRESS  # where publishing transactions send `amount`
    amount: float = 0.05
    _own_address: str | None = field(default=None, init=False)

    coin = "florincoin"
    max_entry = MAX_ENTRY  # florincoind cuts longer tx-comments short, silently
    log = Logger()

    async def block(self, block_hash: str) -> ChainBlock:
        height, previous, txids = checked_block(
            await self._rpc.call("getblock", block_hash), block_hash
        )
        entries = []
        for txid in txids:
            txid = checked_hash(txid, "getblock tx")
            comment = await self._comment(txid)
            if comment:
                # The RPC layer kept undecodable bytes as surrogates: give them back as they were.
                entries.append((txid, comment.encode("utf-8", "surrogateescape")))
        return ChainBlock(height, block_hash, previous, tuple(entries))

    async def _comment(self, txid: str) -> str | None:
        try:
            raw = await self._rpc.call("getrawtransaction", txid)
            tx = await self._rpc.call("decoderawtransaction", raw)
        except RPCError as e:
            # The genesis coinbase, or a node without txindex: nothing to read here.
            self.log.debug("no transaction {txid}: {e}", txid=txid, e=e)
            return None
        comment = tx.get("tx-comment") if isinstance(tx, dict) else None
        return comment if isinstance(comment, str) else None

    async def prepare(self, entry: str, tag: str) -> Ticket:
        size = len(entry.encode("utf-8"))
        if size > self.max_entry:
            raise EntryTooLong(f"an entry of {size} bytes; florincoind keeps {self.max_entry}")
        return Ticket(entry, tag)

    async def send(self, ticket: Ticket) -> str:
        # The wallet comment (3rd) is local to the wallet: it names the entry for recover().
        txid = await self._rpc.call(
            "sendtoaddress", self.address, self.amount, ticket.tag, "storj", ticket.entry
        )
        return checked_hash(txid, "sendtoaddress")

    async def abandon(self, ticket: Ticket) -> None:
        pass  # nothing was built yet

    async def recover(self, ticket: Ticket) -> str | None:
        """The wallet remembers its sends with their comment: look for the ticket's tag."""
        sends = await self._rpc.call("listtransactions", "*", RECENT_SENDS)
        if not isinstance(sends, list):
            raise ChainUnavailable("listtransactions: expected a list")
        for tx in sends:
            if isinstance(tx, dict) and tx.get("category") == "send":
                if tx.get("comment") == ticket.tag:
                    return checked_hash(tx.get("txid"), "listtransactions txid")
        return None

    async def wallet(self) -> tuple[float, str | None]:
        balance = await self._rpc.call("getbalance")
        if self._own_address is None:
            address = await self._rpc.call("getaccountaddress", "")
            self._own_address = address if isinstance(address, str) else None
        return _amount(balance), self._own_address


def _amount(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ChainUnavailable(f"getbalance: expected an amount, got {str(value)[:40]!r}")
    try:
        return float(value)
    except ValueError:
        raise ChainUnavailable(f"getbalance: expected an amount, got {value[:40]!r}") from None
