"""
The blockchain: publishing where files went (docs/protocol.md section 5, the metachains
format) and reading what other nodes published.

- L{rpc}: JSON-RPC over treq; L{codec}: records, batches, regions and entries;
- L{florincoin}, L{bitcoinlike}: the two L{metadisk.interfaces.IChain} adapters
  (L{adapter}: what they hand back);
- L{queue}: the blockchain queue; L{publisher}: from it to the chain;
- L{reader}: the chain into claims (L{metadisk.store.claims}); L{service}: the loops and
  the status.

The blobs of records read from the chain are fetched from their http(s) URLs by
L{metadisk.store.hosts.url}: a file host like the others.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime

from metadisk.config import ChainConfig
from metadisk.interfaces import IChain


def make_chain(config: ChainConfig, http: Any, clock: IReactorTime) -> IChain:
    """The chain adapter C{[chain] kind} names, talking to C{[chain] url}."""
    from metadisk.chain.rpc import JSONRPCClient

    rpc = JSONRPCClient.from_url(config.url, http, clock, config.timeout)
    if config.kind == "florincoin":
        from metadisk.chain.florincoin import Florincoin

        return Florincoin(rpc, config.address, config.amount)
    if config.kind == "litecoin":
        from metadisk.chain.bitcoinlike import BitcoinLike

        return BitcoinLike(rpc, "litecoin")
    raise ValueError(f"unknown chain kind {config.kind!r}")
