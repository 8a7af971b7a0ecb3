"""
The swappable parts of a node. L{metadisk.tap} is the only place that chooses
their implementations.
"""

from __future__ import annotations

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

    def transaction(work):
        """
        Call C{work(txn)}, an async function given an L{ITransaction}, inside
        one transaction: committed when it returns, rolled back when it raises.
        Fire with what C{work} returned.
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
        """Upload the blob at C{path}; fire with the URL where it now lives."""

    def fetch(filehash: str, url: str, destination: str):
        """Download the blob stored at C{url} into the file C{destination}."""

    def exists(filehash: str, url: str):
        """Fire with True when the blob stored at C{url} is still there."""
