"""The twistd plugin's body: command-line options and the node's service."""

from __future__ import annotations

import sys
from typing import Any

from twisted.application import service
from twisted.application.internet import TimerService
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.protocols.policies import WrappingFactory
from twisted.python import usage

from metadisk.config import Config, ConfigError, load_config
from metadisk.node import Node, build_node

METERS_FLUSH_INTERVAL = 1.0


class Options(usage.Options):
    synopsis = "[--config FILE] [--listen ENDPOINT] [--data-dir DIR]"
    longdesc = "Run a MetaDisk node. Command-line options override the config file."
    optParameters = [
        ["config", "c", None, "A TOML configuration file."],
        ["listen", "l", None, "Endpoint to listen on, e.g. tcp:8080:interface=127.0.0.1."],
        ["data-dir", "d", None, "Directory of the cache, the SQLite database and the keys."],
    ]


def _logged(log: Logger, what: str, work: Any) -> Any:
    """A periodic task that reports its failures instead of stopping its loop for good."""

    def run() -> Deferred:
        d = Deferred.fromCoroutine(work())
        return d.addErrback(lambda f: log.failure(what, f))

    return run


class NodeService(service.MultiService):
    """
    Opens the database and recovers before it listens, so no request ever
    meets a half-started node. A node that cannot start says why in one
    line and stops the reactor.
    """

    log = Logger()

    def __init__(self, config: Config, reactor: Any) -> None:
        super().__init__()
        self.config = config
        self._reactor = reactor
        self.node: Node | None = None
        self.port: Any = None
        self._connections: WrappingFactory | None = None
        self.started: Deferred[None] | None = None

    def startService(self) -> None:
        super().startService()
        self.started = Deferred.fromCoroutine(self._start())
        self.started.addErrback(self._failed)

    async def _start(self) -> None:
        node = self.node = await build_node(self.config, self._reactor)
        flush = _logged(self.log, "could not write the bandwidth meters", node.meters.flush)
        for timer in (
            TimerService(self.config.sync_interval, node.sync.kick),
            TimerService(METERS_FLUSH_INTERVAL, flush),
        ):
            timer.clock = self._reactor
            timer.setServiceParent(self)
        endpoint = serverFromString(self._reactor, self.config.listen)
        # Wrapped to know the open connections, so that stopping can close them.
        self._connections = WrappingFactory(node.site)
        self.port = await endpoint.listen(self._connections)
        self.log.info(
            "MetaDisk node listening on {listen}, data in {data_dir}",
            listen=self.config.listen,
            data_dir=str(self.config.data_dir.resolve()),
        )

    def _failed(self, failure: Any) -> None:
        self.log.critical("the node could not start: {error}", error=failure.getErrorMessage())
        print(f"metadisk: the node could not start: {failure.getErrorMessage()}", file=sys.stderr)
        if self._reactor.running:
            self._reactor.stop()

    async def _stop(self) -> None:
        if self.port is not None:
            await self.port.stopListening()
        if self._connections is not None:
            for connection in list(self._connections.protocols):
                connection.transport.abortConnection()
            # Aborted connections are reported lost on the next turn of the reactor.
            await deferLater(self._reactor, 0, lambda: None)
        await super().stopService()
        if self.node is not None:
            await self.node.close()

    def stopService(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._stop())


def makeService(options: Options, reactor: Any = None) -> service.IService:
    if reactor is None:
        from twisted.internet import reactor
    try:
        config = load_config(
            options["config"], listen=options["listen"], data_dir=options["data-dir"]
        )
        serverFromString(reactor, config.listen)
    except ConfigError as e:
        raise SystemExit(f"metadisk: {e}") from None
    except ValueError as e:
        raise SystemExit(f"metadisk: config error: node.listen: {e}") from None
    return NodeService(config, reactor)
