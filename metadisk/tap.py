"""The twistd plugin's body: command-line options and the node's service."""

from __future__ import annotations

import atexit
import os
import sys
from collections.abc import Sequence
from typing import Any

from twisted.application import app, service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python import usage
from twisted.scripts.twistd import ServerOptions, runApp

from metadisk.config import Config, ConfigError, load_config
from metadisk.datadir import OWNER_ONLY
from metadisk.db import DatabaseUnavailable
from metadisk.logs import LOG_FORMATS, log_observer, offer_log_observer
from metadisk.node import Node, build_node
from metadisk.periodic import Periodic
from metadisk.service import SERVICE
from metadisk.web.connections import ConnectionGuard
from metadisk.web.descriptors import DescriptorBudget, raise_open_file_limit
from metadisk.web.site import MetaDiskSite

METERS_FLUSH_INTERVAL = 1.0
EXPIRY_INTERVAL = 60.0  # seconds between two looks for expired resumable uploads
STATISTICS_INTERVAL = 3600.0  # seconds between two refreshes of the planner's statistics
SWITCH_INTERVAL = 0.0002  # seconds a thread may hold the GIL while another waits (5 ms by default)


class Options(usage.Options):
    synopsis = "[--config FILE] [--listen ENDPOINT] [--data-dir DIR] [--log-format text|json]"
    longdesc = "Run a MetaDisk node. Command-line options override the config file."
    optParameters = [
        ["config", "c", None, "A TOML configuration file."],
        ["listen", "l", None, "Endpoint to listen on, e.g. tcp:8080:interface=127.0.0.1."],
        ["data-dir", "d", None, "Directory of the cache, the SQLite database and the keys."],
        ["log-format", None, "text", "text, or json: one JSON object a line on standard output."],
    ]

    def postOptions(self) -> None:
        if self["log-format"] not in LOG_FORMATS:
            raise usage.UsageError(f"--log-format must be one of {', '.join(LOG_FORMATS)}")


class NodeService(service.MultiService):
    """
    Opens the database and recovers before it listens, so no request ever
    meets a half-started node. A node that cannot start says why in one
    line and stops the reactor.
    """

    log = Logger()
    log_observer: Any = None  # an ILogObserver to offer twistd instead of its text log
    # Under twistd: a node that could not start makes the process exit with status 1,
    # so that a supervisor (systemd's Restart=on-failure) sees the failure.
    exit_on_failure = False

    def __init__(self, config: Config, reactor: Any) -> None:
        super().__init__()
        self.config = config
        self._reactor = reactor
        self.node: Node | None = None
        self.port: Any = None
        self._connections: ConnectionGuard | None = None
        self.private_port: Any = None  # [node] private_listen
        self._private_connections: ConnectionGuard | None = None
        self.started: Deferred[None] | None = None
        self._umask: int | None = None  # the process's, while the node runs with its own

    def setServiceParent(self, parent: Any) -> None:
        if self.log_observer is not None:
            offer_log_observer(parent, self.log_observer)
        super().setServiceParent(parent)

    def startService(self) -> None:
        # Every token and partial upload is in the data dir: what the node creates there is its own.
        self._umask = os.umask(OWNER_ONLY)
        super().startService()
        self.started = Deferred.fromCoroutine(self._start())
        self.started.addErrback(self._failed)

    async def _start(self) -> None:
        node = self.node = await build_node(self.config, self._reactor)
        loops = [
            Periodic("cloud sync", node.sync.kick, self.config.replication.interval, self._reactor),
            Periodic(
                "meters",
                node.meters.flush,
                METERS_FLUSH_INTERVAL,
                self._reactor,
                expected=(DatabaseUnavailable,),
            ),
        ]
        loops.append(
            # As the catalog grows, the planner's picture of it must too (SQLite's; on
            # PostgreSQL autovacuum does it and this is nothing).
            Periodic(
                "statistics",
                node.db.optimize,
                STATISTICS_INTERVAL,
                self._reactor,
                now=False,  # the database was optimized when it was opened
                expected=(DatabaseUnavailable,),
            )
        )
        if node.resumable is not None:
            # Resumable uploads past their expiry: removed and refunded.
            loops.append(
                Periodic(
                    "resumable uploads",
                    node.resumable.expire_due,
                    EXPIRY_INTERVAL,
                    self._reactor,
                    expected=(DatabaseUnavailable,),
                )
            )
        if node.repair is not None and self.config.replication.repair_sample > 0:
            # Checks a sample of stored copies each round and restores lost ones.
            interval = self.config.replication.repair_interval
            loops.append(
                Periodic("repair", node.repair.run_once, interval, self._reactor, now=False)
            )
        for loop in loops:
            loop.setServiceParent(self)
        if node.chain is not None:
            node.chain.setServiceParent(self)  # the chain's reader and publisher loops
        endpoint = serverFromString(self._reactor, self.config.node.listen)
        # One budget of descriptors for the process; each listener counts its own addresses
        # (a flood on the public one must not lock the operator out of the private one).
        budget = DescriptorBudget(self._reactor, raise_open_file_limit())
        self.log.info("open files: up to {limit}", limit=budget.limit)
        self._connections = self._guard(node.site, budget)
        self.port = await endpoint.listen(self._connections)
        # Known only now (port 0 is chosen by listening): no record's URL may lead here.
        node.listening.add(self.port.getHost())
        if node.private_site is not None:
            self._private_connections = self._guard(node.private_site, budget)
            private = serverFromString(self._reactor, self.config.node.private_listen)
            self.private_port = await private.listen(self._private_connections)
            node.listening.add(self.private_port.getHost())
            self.log.info(
                "private API listening on {listen}", listen=self.config.node.private_listen
            )
        self.log.info(
            "MetaDisk node listening on {listen}, data in {data_dir}",
            listen=self.config.node.listen,
            data_dir=str(self.config.node.data_dir.resolve()),
        )
        # The long work on the folders of blobs runs now, while requests are answered.
        node.start_background()

    def _guard(self, site: MetaDiskSite, budget: DescriptorBudget) -> ConnectionGuard:
        # It also knows the open connections, so that stopping can close them.
        return ConnectionGuard(
            site,
            clock=self._reactor,
            budget=budget,
            max_per_address=self.config.node.max_connections_per_address,
            proxies=site.proxies,
        )

    def _failed(self, failure: Any) -> None:
        self.log.critical("the node could not start: {error}", error=failure.getErrorMessage())
        if self.exit_on_failure:
            atexit.register(_exit_failed)
        if self._reactor.running:
            self._reactor.stop()
        else:  # it failed before the reactor ran: stop it as soon as it does
            self._reactor.callWhenRunning(self._reactor.stop)

    async def _stop(self) -> None:
        if self.node is not None:
            # First: the cloud sync timer's stop would wait for its round, copies and all.
            await self.node.sync.stop()
        for port in (self.port, self.private_port):
            if port is not None:
                await port.stopListening()
        for connections in (self._connections, self._private_connections):
            for connection in list(connections.protocols if connections is not None else ()):
                connection.transport.abortConnection()
        if self._connections is not None:
            # Aborted connections are reported lost on the next turn of the reactor.
            await deferLater(self._reactor, 0, lambda: None)
        await super().stopService()
        if self.node is not None:
            await self.node.close()
        if self._umask is not None:
            os.umask(self._umask)

    def stopService(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._stop())


def _exit_failed() -> None:
    # twistd ends with status 0 whatever stopped its reactor; by the time this
    # runs (the interpreter's exit) it has stopped the services and removed its
    # pid file, so only the status is left to set. Registered last, it runs first
    # and skips the other exit handlers: the logs are written as they go.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


def _check_endpoint(reactor: Any, key: str, description: str) -> None:
    """An endpoint Twisted cannot use (or an ssl: certificate it cannot load) is a config error."""
    try:
        serverFromString(reactor, description)
    except Exception as e:  # ValueError; OSError for a certificate file; OpenSSL's Error
        problem = str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"
        raise ConfigError(key, problem) from None


def makeService(options: Options, reactor: Any = None) -> service.IService:
    if reactor is None:
        from twisted.internet import reactor
    # The reactor's thread takes the GIL back sooner after each system call: by default a
    # thread of the pool may keep it 5 ms while every connection waits (docs/architecture.md).
    sys.setswitchinterval(SWITCH_INTERVAL)
    try:
        config = load_config(
            options["config"], listen=options["listen"], data_dir=options["data-dir"]
        )
        _check_endpoint(reactor, "node.listen", config.node.listen)
        if config.node.private_listen:
            _check_endpoint(reactor, "node.private_listen", config.node.private_listen)
    except ConfigError as e:
        raise SystemExit(f"metadisk: {e}") from None
    node_service = NodeService(config, reactor)
    node_service.log_observer = log_observer(options["log-format"])
    node_service.exit_on_failure = True
    return node_service


class _NodeOptions(ServerOptions):
    """twistd's options with the node as its one command, found without plugin discovery."""

    _getPlugins = staticmethod(lambda interface: [SERVICE])


def main(argv: Sequence[str] | None = None) -> None:
    """
    The console script C{metadisk-node [OPTIONS]}: C{twistd -n --pidfile= metadisk
    [OPTIONS]}, whether or not twistd can find the plugin (an editable install
    does not expose C{twisted/plugins} to it).
    """
    arguments = sys.argv[1:] if argv is None else list(argv)
    sys.argv = ["metadisk-node", "--nodaemon", "--pidfile=", SERVICE.tapname, *arguments]
    app.run(runApp, _NodeOptions)
