"""
Bytes from clients that have not paid: an upload whose token has not come
yet (it may come after the file, in the form), or any upload when accounts
are disabled. They go to the incoming folder, never to the cache, under a
node-wide budget and a per-address share of it, so that anonymous sockets
cannot fill the disk or make the cache evict (C{[node] unpaid_upload_bytes}).
"""

from __future__ import annotations

from attrs import define, field

SHARES = 4  # one address may hold a quarter of the budget
# Bytes of each upload not counted: a form that names its token first (the MetaDisk page,
# curl -F token=… -F file=…) pays before its file, with only its first part unpaid.
ALLOWANCE = 4096


@define
class UnpaidBudget:
    total: int
    _held: int = 0
    _by_address: dict[str, int] = field(factory=dict)

    @property
    def share(self) -> int:
        """The most one address may hold."""
        return self.total // SHARES

    @property
    def held(self) -> int:
        return self._held

    def take(self, address: str, n: int) -> bool:
        """Hold C{n} more bytes for C{address}; False (nothing held) when that is over budget."""
        mine = self._by_address.get(address, 0)
        if self._held + n > self.total or mine + n > self.share:
            return False
        self._held += n
        self._by_address[address] = mine + n
        return True

    def give_back(self, address: str, n: int) -> None:
        if n <= 0:
            return
        self._held -= n
        left = self._by_address.get(address, 0) - n
        if left > 0:
            self._by_address[address] = left
        else:
            self._by_address.pop(address, None)
