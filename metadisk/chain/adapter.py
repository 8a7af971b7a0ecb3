"""What the chain adapters (L{metadisk.interfaces.IChain}) hand back, and their shared checks."""

from __future__ import annotations

import re
from typing import Any

from attrs import frozen

from metadisk.chain.rpc import ChainError, ChainUnavailable

_HASH = re.compile(r"[0-9a-f]{64}")


class ChainBusy(ChainError):
    """
    The node refused the transaction for now (too many unconfirmed ancestors
    in its mempool): nothing was sent; try again after the next block.
    """


class EntryTooLong(ChainError):
    """An entry larger than the chain takes; the node would cut it short."""


@frozen
class ChainBlock:
    """A block, reduced to what the reader needs: where it is and the entries it carries."""

    height: int
    hash: str
    previous: str | None  # None for the genesis block
    entries: tuple[tuple[str, bytes], ...]  # (txid, entry bytes) of transactions with data


@frozen
class Ticket:
    """
    A transaction about to carry an entry. C{txid} and C{raw} are known
    before sending on chains that sign first (Bitcoin family); the publisher
    writes them down before it sends, so a restart can find out what happened.
    C{tag} is a wallet-local label unique to this entry.
    """

    entry: str
    tag: str
    txid: str | None = None
    raw: str | None = None


def checked_hash(value: Any, what: str) -> str:
    """A block hash or txid from the node: 64 lowercase hex digits, or the node misbehaves."""
    if not isinstance(value, str) or not _HASH.fullmatch(value):
        raise ChainUnavailable(f"{what}: expected a hash, got {str(value)[:80]!r}")
    return value


def checked_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ChainUnavailable(f"{what}: expected a whole number, got {str(value)[:80]!r}")
    return value


def checked_block(block: Any, block_hash: str) -> tuple[int, str | None, list[Any]]:
    """(height, previous hash, transactions) of a C{getblock} answer."""
    if not isinstance(block, dict) or block.get("hash") != block_hash:
        raise ChainUnavailable(f"getblock {block_hash}: not the block asked for")
    height = checked_int(block.get("height"), "getblock height")
    previous = block.get("previousblockhash")
    if previous is not None:
        previous = checked_hash(previous, "getblock previousblockhash")
    txs = block.get("tx")
    if not isinstance(txs, list):
        raise ChainUnavailable(f"getblock {block_hash}: no transaction list")
    return height, previous, txs


class BlockHeights:
    """How every chain's daemon answers for heights and block hashes (C{self._rpc})."""

    _rpc: Any

    async def block_count(self) -> int:
        return checked_int(await self._rpc.call("getblockcount"), "getblockcount")

    async def block_hash(self, height: int) -> str:
        return checked_hash(await self._rpc.call("getblockhash", height), "getblockhash")
