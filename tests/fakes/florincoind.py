"""
An in-process florincoind: the JSON-RPC it speaks, as far as MetaDisk uses it.

Modelled on florincoind 0.10 (src/rpcwallet.cpp, rpcrawtransaction.cpp,
rpcserver.cpp): C{sendtoaddress address amount comment comment-to tx-comment}
keeps at most 528 bytes of the tx-comment and cuts the rest without a word;
C{getrawtransaction} + C{decoderawtransaction} give the comment back in the
field C{tx-comment}; errors are HTTP 500 (404 for an unknown method) with a
JSON C{error} object; bad credentials get 401 with an empty body.

Tests drive the chain: C{mine()}, C{reorganise()}, C{publish()} (someone
else's records), C{hang} (answers nothing), C{fail} (method name -> (code,
message) for its next call), C{lose_answer} (method names whose next call is
carried out but never answered), C{held()} (fires when a call is left
unanswered). C{listen(reactor)} serves it on a loopback port of its own
(port 0) and gives the URL a node's C{[chain] url} takes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTCP
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from metadisk.chain import codec

MAX_TX_COMMENT_LEN = 528
FEE = 0.001
_ADDRESS = re.compile(r"[1-9A-HJ-NP-Za-km-z]{26,35}")


class RPCFailure(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message


def _hash(data: bytes) -> str:
    return hashlib.sha256(hashlib.sha256(data).digest()).hexdigest()


class FakeFlorincoind(Resource):
    isLeaf = True

    def __init__(self, user: str = "flo", password: str = "secret") -> None:
        super().__init__()
        self.user = user
        self.password = password
        self.balance = 100.0
        self.transactions: dict[str, dict[str, Any]] = {}  # txid -> decoded transaction
        self.raw: dict[str, str] = {}  # txid -> raw hex
        self.wallet: list[dict[str, Any]] = []  # listtransactions entries
        self.mempool: list[str] = []
        self.blocks: list[dict[str, Any]] = []
        self.calls: list[str] = []
        self.hang = False
        self.fail: dict[str, tuple[int, str]] = {}
        self.lose_answer: set[str] = set()
        self.waiting: list[Any] = []  # requests left unanswered while hanging
        self._on_hold: list[Deferred[str]] = []
        self._nonce = 0
        genesis = self._new_tx("text:Florincoin genesis block", coinbase=True)
        self._add_block([genesis])

    # -- test controls

    def listen(self, reactor: IReactorTCP) -> tuple[Any, str]:
        """Listen on a free loopback port; return the port and the URL with credentials."""
        port = reactor.listenTCP(0, _QuietSite(self), interface="127.0.0.1")
        url = f"http://{self.user}:{self.password}@127.0.0.1:{port.getHost().port}/"
        return port, url

    def mine(self, n: int = 1) -> list[str]:
        """Mine C{n} blocks; the first takes the mempool. Return their hashes."""
        hashes = []
        for _ in range(n):
            coinbase = self._new_tx("", coinbase=True)
            block = self._add_block([coinbase, *self.mempool])
            self.mempool = []
            hashes.append(block["hash"])
        return hashes

    def reorganise(self, depth: int, keep: bool = True) -> None:
        """
        Replace the last C{depth} blocks with as many new ones (and one more);
        their transactions go into the first new block, or are lost if not C{keep}.
        """
        dropped = self.blocks[-depth:]
        del self.blocks[-depth:]
        moved = [txid for b in dropped for txid in b["tx"][1:]]
        for txid in moved:
            self.transactions[txid]["_height"] = None
        if not keep:
            for txid in moved:
                del self.transactions[txid]
                del self.raw[txid]
            moved = []
        self.mempool = moved + self.mempool
        self.mine(depth + 1)

    def held(self) -> Deferred[str]:
        """Fires with the method of the next request left unanswered (hang, lose_answer)."""
        d: Deferred[str] = Deferred()
        self._on_hold.append(d)
        return d

    def _hold(self, request: Any, method: str) -> Any:
        from twisted.internet import reactor

        self.waiting.append(request)
        waiters, self._on_hold = self._on_hold, []
        for d in waiters:
            # Once the request is fully in flight, not from inside its rendering.
            reactor.callLater(0, d.callback, method)
        return NOT_DONE_YET

    def send_comment(self, comment: str) -> str:
        """Someone else's transaction carrying C{comment}, into the mempool."""
        txid = self._new_tx(comment)
        self.mempool.append(txid)
        return txid

    def publish(self, records: list[dict[str, Any]]) -> list[str]:
        """
        Someone else's batch of C{records}, in the metachains format, into the
        mempool (one transaction an entry); return the txids, the first naming it.
        """
        batch = codec.batch_text(records)
        txids: list[str] = []
        for i, region in enumerate(codec.split_regions(batch)):
            prev, first = (txids[-1], txids[0]) if txids else (None, None)
            txids.append(self.send_comment(codec.entry_text(region, i, prev, first, len(batch))))
        return txids

    def announce(self, announcement: codec.Announcement) -> list[str]:
        """
        Someone's v0.3 announcement into the mempool, as entries whose regions
        may be up to 1,024 characters (docs/protocol.md, section 5.8).
        """
        text = codec.batch_text([announcement.to_json()])
        txids: list[str] = []
        regions = codec.split_regions(text, codec.MAX_ENTRY, codec.MAX_REGION_IN)
        for i, region in enumerate(regions):
            prev, first = (txids[-1], txids[0]) if txids else (None, None)
            txids.append(self.send_comment(codec.entry_text(region, i, prev, first, len(text))))
        return txids

    # -- HTTP

    def render_POST(self, request: Any) -> Any:
        if request.getUser().decode() != self.user or request.getPassword().decode() != (
            self.password
        ):
            request.setResponseCode(401)
            request.setHeader(b"WWW-Authenticate", b'Basic realm="jsonrpc"')
            return b""
        try:
            call = json.loads(request.content.read())
            method, params, rid = call["method"], call.get("params", []), call.get("id")
        except (ValueError, KeyError, TypeError):
            return self._error(request, None, -32700, "Parse error", 500)
        if self.hang:
            return self._hold(request, method)
        self.calls.append(method)
        handler = getattr(self, f"rpc_{method}", None)
        if handler is None:
            return self._error(request, rid, -32601, "Method not found", 404)
        try:
            if method in self.fail:
                raise RPCFailure(*self.fail.pop(method))
            result = handler(*params)
        except RPCFailure as e:
            return self._error(request, rid, e.code, e.message, 500)
        except TypeError:
            return self._error(request, rid, -1, f"{method} wrong number of parameters", 500)
        if method in self.lose_answer:
            self.lose_answer.discard(method)
            return self._hold(request, method)
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps({"result": result, "error": None, "id": rid}).encode() + b"\n"

    def _error(self, request: Any, rid: Any, code: int, message: str, status: int) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", b"application/json")
        body = {"result": None, "error": {"code": code, "message": message}, "id": rid}
        return json.dumps(body).encode() + b"\n"

    # -- the chain

    def _new_tx(self, comment: str, coinbase: bool = False) -> str:
        self._nonce += 1
        body = {"nonce": self._nonce, "coinbase": coinbase, "comment": comment}
        raw = base64.b16encode(json.dumps(body).encode()).decode().lower()
        txid = _hash(raw.encode())
        self.raw[txid] = raw
        self.transactions[txid] = {
            "txid": txid,
            "version": 2,
            "locktime": 0,
            "vin": [{"coinbase": "04ffff001d0104"}] if coinbase else [{"txid": "00" * 32}],
            "vout": [],
            "tx-comment": comment,
            "_height": None,
        }
        return txid

    def _add_block(self, txids: list[str]) -> dict[str, Any]:
        height = len(self.blocks)
        previous = self.blocks[-1]["hash"] if self.blocks else None
        self._nonce += 1
        block = {
            "hash": _hash(f"{previous}{txids}{self._nonce}".encode()),
            "height": height,
            "version": 2,
            "merkleroot": _hash("".join(txids).encode()),
            "tx": txids,
            "time": 1_400_000_000 + height * 40,
            "nonce": self._nonce,
            "bits": "1e0ffff0",
            "difficulty": 0.000244,
        }
        if previous is not None:
            block["previousblockhash"] = previous
        self.blocks.append(block)
        for txid in txids:
            self.transactions[txid]["_height"] = height
        return block

    def _confirmations(self, txid: str) -> int:
        height = self.transactions[txid]["_height"]
        return 0 if height is None else len(self.blocks) - height

    # -- RPC methods (florincoind's names and errors)

    def rpc_getblockcount(self) -> int:
        return len(self.blocks) - 1

    def rpc_getblockhash(self, height: int) -> str:
        if not isinstance(height, int) or not 0 <= height < len(self.blocks):
            raise RPCFailure(-8, "Block height out of range")
        return self.blocks[height]["hash"]

    def rpc_getblock(self, block_hash: str, verbose: bool = True) -> dict[str, Any]:
        for i, block in enumerate(self.blocks):
            if block["hash"] == block_hash:
                answer = {**block, "confirmations": len(self.blocks) - i, "size": 200}
                if i + 1 < len(self.blocks):
                    answer["nextblockhash"] = self.blocks[i + 1]["hash"]
                return answer
        raise RPCFailure(-5, "Block not found")

    def rpc_getrawtransaction(self, txid: str, verbose: int = 0) -> str:
        tx = self.transactions.get(txid)
        if tx is None or (tx["vin"][0].get("coinbase") and tx["_height"] == 0):
            # The genesis coinbase is in no index, as in every bitcoin-derived node.
            raise RPCFailure(-5, "No information available about transaction")
        return self.raw[txid]

    def rpc_decoderawtransaction(self, raw: str) -> dict[str, Any]:
        for txid, known in self.raw.items():
            if known == raw:
                return {k: v for k, v in self.transactions[txid].items() if k != "_height"}
        raise RPCFailure(-22, "TX decode failed")

    def rpc_sendtoaddress(
        self,
        address: str,
        amount: Any,
        comment: str = "",
        comment_to: str = "",
        tx_comment: str = "",
    ) -> str:
        if not isinstance(address, str) or not _ADDRESS.fullmatch(address):
            raise RPCFailure(-5, "Invalid Florincoin address")
        if isinstance(amount, bool) or not isinstance(amount, (int, float)) or amount <= 0:
            raise RPCFailure(-3, "Invalid amount")
        if amount + FEE > self.balance:
            raise RPCFailure(-6, "Insufficient funds")
        # As florincoind does: a longer comment is cut, not refused.
        comment_bytes = (tx_comment or "").encode("utf-8")[:MAX_TX_COMMENT_LEN]
        txid = self._new_tx(comment_bytes.decode("utf-8", "replace"))
        self.mempool.append(txid)
        self.balance -= amount + FEE
        entry: dict[str, Any] = {
            "account": "",
            "address": address,
            "category": "send",
            "amount": -amount,
            "vout": 0,
            "fee": -FEE,
            "txid": txid,
            "time": 1_400_000_000,
            "timereceived": 1_400_000_000,
        }
        if comment:
            entry["comment"] = comment
        if comment_to:
            entry["to"] = comment_to
        self.wallet.append(entry)
        return txid

    def rpc_listtransactions(self, account: str = "*", count: int = 10, skip: int = 0) -> list:
        chosen = self.wallet[::-1][skip : skip + count][::-1]
        return [{**e, "confirmations": self._confirmations(e["txid"])} for e in chosen]

    def rpc_getbalance(self, account: str = "*", minconf: int = 1) -> float:
        return round(self.balance, 8)

    def rpc_getaccountaddress(self, account: str) -> str:
        return "FLbVBLcaXGyQ3MXS9xNUFMnx3pkPPWYSg3"


class _QuietSite(Site):
    """florincoind logs no access lines; neither does its stand-in (a test reads the logs)."""

    def log(self, request: Any) -> None:
        pass
