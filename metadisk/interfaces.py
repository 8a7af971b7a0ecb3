"""
The swappable parts of a node. L{metadisk.node} is the only place that chooses
their implementations.
"""

from __future__ import annotations

from collections.abc import Sequence

from zope.interface import Attribute, Interface


class ITransaction(Interface):
    """Statements run inside one database transaction."""

    def query(sql: str, params: tuple = ()):
        """Run a statement and fire with its rows, a list of tuples."""

    def execute(sql: str, params: tuple = ()):
        """Run a statement and fire with the number of rows it changed."""


class IDatabase(Interface):
    """
    A SQL database. Statements use C{?} placeholders and the SQL that SQLite
    and PostgreSQL share; each implementation adapts them to its driver.
    When the database cannot be reached, calls fail with
    L{metadisk.db.DatabaseUnavailable}.
    """

    dialect = Attribute("'sqlite' or 'postgresql'")

    def query(sql: str, params: tuple = ()):
        """Run one statement on its own and fire with its rows."""

    def execute(sql: str, params: tuple = ()):
        """Run one statement on its own and fire with the number of rows changed."""

    def transaction(work, *, brief=False):
        """
        Call C{work(txn)}, an async function given an L{ITransaction}, inside
        one transaction: committed when it returns, rolled back when it raises.
        Fire with what C{work} returned. C{brief}: the work is a few statements
        on rows found by an index (a request's), which an implementation may
        run without a hop to another thread.
        """

    def read(work, *, brief=False):
        """
        L{transaction} for C{work} that only reads: its statements see one
        snapshot, and it waits for no write (SQLite's write lock, the writes
        queued before it).
        """

    def optimize():
        """
        Keep the query planner's statistics current, at a bounded cost: run
        when the database is opened and then periodically. Fire when done.
        """

    def close():
        """Close every connection; fire when done."""


class IFileHost(Interface):
    """
    A place that keeps blobs (ciphertext), one object per blob, named by its
    filehash. Every call fails with L{metadisk.store.hosts.HostError} when
    the host cannot do what was asked.
    """

    name = Attribute("The host's name, unique in the node's configuration.")

    def store(filehash: str, path: str):
        """
        Upload the blob at C{path}; fire with the URL where it now lives, for
        the record, or "" when it has none to give (a local directory that no
        web server serves).
        """

    def store_all(blobs: Sequence[tuple[str, str]]):
        """
        Upload several blobs, C{(filehash, path)} pairs, as one job where the
        host can make it one (one tool run, one flush to stable storage);
        fire with what L{store} gives for each, in order: its URL, or the
        L{metadisk.store.hosts.HostError} that kept it off the host.
        """

    def fetch(filehash: str, url: str, destination: str, size: int):
        """
        Download the blob stored at C{url} into the file C{destination}.
        C{size} is the blob's size by its record, by which a host bounds the
        download (its time, or its bytes where it can count them).
        """

    def exists(filehash: str, url: str):
        """Fire with True when the blob stored at C{url} is still there."""


class IChain(Interface):
    """
    A blockchain node reached by JSON-RPC, seen as the entries of docs/protocol.md
    section 5: one entry per transaction, published and read back block by
    block. Calls fail with L{metadisk.chain.rpc.ChainError}: L{RPCError} when
    the node refused (nothing happened), L{ChainUnavailable} when there was no
    usable answer (it may or may not have happened).
    """

    coin = Attribute("The chain's name in /api/status, e.g. 'florincoin' or 'litecoin'.")
    max_entry = Attribute("The most bytes one entry may take.")

    def block_count():
        """Fire with the height of the chain's tip."""

    def block_hash(height: int):
        """Fire with the hash of the block at C{height}."""

    def block(block_hash: str):
        """Fire with the L{metadisk.chain.adapter.ChainBlock} of that hash and its entries."""

    def prepare(entry: str, tag: str):
        """
        Fire with a L{metadisk.chain.adapter.Ticket} for a transaction
        carrying C{entry}; C{tag} is a wallet-local label unique to it.
        """

    def send(ticket):
        """
        Broadcast the ticket's transaction; fire with its txid. Fails with
        L{metadisk.chain.adapter.ChainBusy} (nothing sent) while the node
        takes no more unconfirmed transactions from this wallet.
        """

    def abandon(ticket):
        """The ticket will not be sent: give back what it holds (locked coins)."""

    def recover(ticket):
        """
        For a send whose outcome is unknown (no answer, or a crash): fire
        with the txid if the transaction went out, None if it did not.
        """

    def wallet():
        """Fire with (balance, address) of the node's wallet."""
