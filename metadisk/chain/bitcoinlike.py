"""
Bitcoin-family chains (Litecoin, Bitcoin; tested with C{litecoind -regtest}):
the entry is the data of an OP_RETURN output. A transaction is built, funded
and signed first, so its txid is known (and written down by the publisher)
before it is sent; read back with C{getblock} verbosity 2.

Entries of ~500 bytes need a node that relays them: Bitcoin Core 30 or later
by default, litecoind with C{-datacarriersize}; the 80-byte default policy
answers C{-26 scriptpubkey}.
"""

from __future__ import annotations

from typing import Any

from attrs import define, field
from twisted.logger import Logger
from zope.interface import implementer

from metadisk.chain.adapter import (
    BlockHeights,
    ChainBlock,
    ChainBusy,
    EntryTooLong,
    Ticket,
    checked_block,
    checked_hash,
)
from metadisk.chain.codec import MAX_ENTRY
from metadisk.chain.rpc import ChainUnavailable, JSONRPCClient, RPCError
from metadisk.interfaces import IChain

OP_RETURN = 0x6A
OP_PUSHDATA1, OP_PUSHDATA2, OP_PUSHDATA4 = 0x4C, 0x4D, 0x4E
RPC_VERIFY_ALREADY_IN_CHAIN = -27
WALLET_LABEL = "metadisk"


def op_return_data(script: bytes) -> bytes | None:
    """
    The data of an C{OP_RETURN <one push>} script (direct push, PUSHDATA1, 2
    or 4), or None for any other script.
    """
    if len(script) < 2 or script[0] != OP_RETURN:
        return None
    op = script[1]
    if 1 <= op < OP_PUSHDATA1:
        start, size = 2, op
    elif op == OP_PUSHDATA1 and len(script) >= 3:
        start, size = 3, script[2]
    elif op == OP_PUSHDATA2 and len(script) >= 4:
        start, size = 4, int.from_bytes(script[2:4], "little")
    elif op == OP_PUSHDATA4 and len(script) >= 6:
        start, size = 6, int.from_bytes(script[2:6], "little")
    else:
        return None
    if start + size != len(script):
        return None
    return script[start:]


def _is_coinbase(tx: dict[str, Any]) -> bool:
    vin = tx.get("vin")
    return isinstance(vin, list) and bool(vin) and isinstance(vin[0], dict) and "coinbase" in vin[0]


def _entry_of(tx: dict[str, Any]) -> bytes | None:
    """The data of the transaction's first OP_RETURN output."""
    for out in tx.get("vout") or ():
        script = out.get("scriptPubKey") if isinstance(out, dict) else None
        hex_script = script.get("hex") if isinstance(script, dict) else None
        if isinstance(hex_script, str) and hex_script.startswith("6a"):
            try:
                data = op_return_data(bytes.fromhex(hex_script))
            except ValueError:
                continue
            if data:
                return data
    return None


@implementer(IChain)
@define
class BitcoinLike(BlockHeights):
    _rpc: JSONRPCClient
    coin: str = "litecoin"
    _own_address: str | None = field(default=None, init=False)

    max_entry = MAX_ENTRY  # the same entries as on Florincoin: any metachains reader takes them
    log = Logger()

    async def block(self, block_hash: str) -> ChainBlock:
        height, previous, txs = checked_block(
            await self._rpc.call("getblock", block_hash, 2), block_hash
        )
        entries = []
        for tx in txs:
            # The coinbase's OP_RETURN is the witness commitment, never an entry.
            if not isinstance(tx, dict) or _is_coinbase(tx):
                continue
            data = _entry_of(tx)
            if data is not None:
                entries.append((checked_hash(tx.get("txid"), "getblock txid"), data))
        return ChainBlock(height, block_hash, previous, tuple(entries))

    async def prepare(self, entry: str, tag: str) -> Ticket:
        data = entry.encode("utf-8")
        if len(data) > self.max_entry:
            raise EntryTooLong(f"an entry of {len(data)} bytes; the limit is {self.max_entry}")
        raw = await self._rpc.call("createrawtransaction", [], [{"data": data.hex()}])
        # Locked, so that nothing else spends these coins before this one goes out.
        funded = await self._rpc.call("fundrawtransaction", raw, {"lockUnspents": True})
        signed = await self._rpc.call("signrawtransactionwithwallet", _field(funded, "hex"))
        if not isinstance(signed, dict) or signed.get("complete") is not True:
            await self._unlock(_field(funded, "hex"))
            raise ChainUnavailable("signrawtransactionwithwallet: could not sign")
        hex_tx = _field(signed, "hex")
        decoded = await self._rpc.call("decoderawtransaction", hex_tx)
        return Ticket(entry, tag, checked_hash(_field(decoded, "txid"), "txid"), hex_tx)

    async def send(self, ticket: Ticket) -> str:
        try:
            txid = await self._rpc.call("sendrawtransaction", ticket.raw)
        except RPCError as e:
            await self._unlock(str(ticket.raw))
            if "too-long-mempool-chain" in e.message:
                raise ChainBusy(str(e)) from None
            raise
        if txid != ticket.txid:
            raise ChainUnavailable(f"sendrawtransaction: sent {txid!r}, expected {ticket.txid}")
        return txid

    async def abandon(self, ticket: Ticket) -> None:
        if ticket.raw is not None:
            await self._unlock(ticket.raw)

    async def recover(self, ticket: Ticket) -> str | None:
        """Send it again: the node accepts what it has (mempool); else ask the wallet."""
        if ticket.raw is None or ticket.txid is None:
            return None  # never prepared, so never sent
        try:
            return await self._rpc.call("sendrawtransaction", ticket.raw)
        except RPCError as e:
            if e.code == RPC_VERIFY_ALREADY_IN_CHAIN:
                return ticket.txid
        try:
            known = await self._rpc.call("gettransaction", ticket.txid)
        except RPCError:
            known = None  # not a wallet transaction: it never went out
        if isinstance(known, dict) and isinstance(known.get("confirmations"), int):
            if known["confirmations"] >= 0:
                return ticket.txid
            # A conflicting transaction won: this one will never confirm.
        await self._unlock(ticket.raw)
        return None

    async def _unlock(self, raw: str) -> None:
        """Give back the coins a transaction that will not go out had locked (best effort)."""
        try:
            decoded = await self._rpc.call("decoderawtransaction", raw)
            inputs = [
                {"txid": i["txid"], "vout": i["vout"]}
                for i in decoded.get("vin", ())
                if isinstance(i, dict) and "txid" in i and "vout" in i
            ]
            if inputs:
                await self._rpc.call("lockunspent", True, inputs)
        except Exception as e:
            self.log.warn("could not unlock the coins of a transaction not sent: {e}", e=e)

    async def wallet(self) -> tuple[float, str | None]:
        balance = await self._rpc.call("getbalance")
        if self._own_address is None:
            self._own_address = await self._address()
        if isinstance(balance, bool) or not isinstance(balance, (int, float)):
            raise ChainUnavailable(f"getbalance: expected an amount, got {str(balance)[:40]!r}")
        return float(balance), self._own_address

    async def _address(self) -> str | None:
        """The wallet's address labelled for the node: the same one across restarts."""
        try:
            labelled = await self._rpc.call("getaddressesbylabel", WALLET_LABEL)
        except RPCError:
            labelled = None  # no address has the label yet
        if isinstance(labelled, dict) and labelled:
            return sorted(labelled)[0]
        address = await self._rpc.call("getnewaddress", WALLET_LABEL)
        return address if isinstance(address, str) else None


def _field(answer: Any, name: str) -> str:
    value = answer.get(name) if isinstance(answer, dict) else None
    if not isinstance(value, str):
        raise ChainUnavailable(f"expected {name!r} in the node's answer")
    return value
