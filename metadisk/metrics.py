"""
The node's Prometheus metrics, served at C{/metrics}.

Each node has its own L{CollectorRegistry}, never prometheus-client's global
one: several nodes in one process (the tests) must not collide. The parts of
the node are handed the L{Metrics} object and call its one-line hooks; the
figures that live elsewhere (the cloud queue in the database, the bandwidth
meters, the cache) are read when C{/metrics} is scraped.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, Protocol

from attrs import define, field
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from metadisk import routes

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # text/plain; version=0.0.4; charset=utf-8
INCOMING = "incoming"
OUTGOING = "outgoing"
DIRECTIONS = (INCOMING, OUTGOING)
_METHODS = {"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"}
# Up to ten minutes: a request may be a transfer of gigabytes.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 600)


def transfer_direction(method: bytes, route: str) -> str | None:
    """
    C{"incoming"} for an upload, C{"outgoing"} for a download, else None;
    C{route}: the request's template (L{metadisk.routes.route_of}).
    """
    if (method, route) in (
        (b"POST", routes.UPLOAD),
        (b"POST", routes.TUS),
        (b"PATCH", routes.TUS_UPLOAD),
    ):
        return INCOMING
    if method == b"GET" and route == routes.DOWNLOAD:
        return OUTGOING
    return None


class _Meters(Protocol):
    monthly_limits: dict[str, int]

    def total(self, direction: str) -> int: ...
    def current(self, direction: str) -> int: ...
    def rate(self, direction: str) -> int: ...


@define(eq=False)  # the registry keeps collectors in a dict
class MetersCollector:
    """The bandwidth meters of C{/api/status}, read at each scrape."""

    _meters: _Meters

    def describe(self) -> list[Metric]:
        return list(self._families(lambda direction: 0))

    def collect(self) -> list[Metric]:
        return list(self._families(None))

    def _families(self, fixed: Callable[[str], int] | None) -> Iterator[Metric]:
        m = self._meters
        figures: Sequence[tuple[Any, str, str, Callable[[str], int]]] = (
            (
                CounterMetricFamily,
                "metadisk_bandwidth_bytes",
                "Bytes moved since the node was created (survives restarts)",
                m.total,
            ),
            (
                GaugeMetricFamily,
                "metadisk_bandwidth_month_bytes",
                "Bytes moved in the current calendar month (UTC)",
                m.current,
            ),
            (
                GaugeMetricFamily,
                "metadisk_bandwidth_month_limit_bytes",
                "Monthly transfer cap in bytes; 0 means none",
                lambda d: m.monthly_limits.get(d, 0),
            ),
            (
                GaugeMetricFamily,
                "metadisk_bandwidth_rate_bytes_per_second",
                "Transfer rate over the last few seconds",
                m.rate,
            ),
        )
        for family, name, documentation, value in figures:
            metric = family(name, documentation, labels=["direction"])
            for direction in DIRECTIONS:
                metric.add_metric([direction], (fixed or value)(direction))
            yield metric


Refresh = Callable[[], Awaitable[None]]


@define
class Metrics:
    """Every metric of one node, and the hooks the parts of the node call."""

    registry: CollectorRegistry = field(factory=CollectorRegistry)
    _refreshers: list[Refresh] = field(factory=list)

    requests: Counter = field(init=False)
    request_duration: Histogram = field(init=False)
    received_bytes: Counter = field(init=False)
    sent_bytes: Counter = field(init=False)
    transfers_running: Gauge = field(init=False)
    throttle_waits: Counter = field(init=False)
    throttle_wait_seconds: Counter = field(init=False)
    queue_length: Gauge = field(init=False)
    queue_bytes: Gauge = field(init=False)
    host_failures: Counter = field(init=False)
    host_repairs: Counter = field(init=False)
    host_healthy: Gauge = field(init=False)
    chain_height: Gauge = field(init=False)
    chain_lag: Gauge = field(init=False)
    manifests: Counter = field(init=False)
    manifests_pending: Gauge = field(init=False)
    ledger_charged: Counter = field(init=False)
    ledger_refunded: Counter = field(init=False)
    cache_used: Gauge = field(init=False)
    cache_capacity: Gauge = field(init=False)

    log = Logger()

    def __attrs_post_init__(self) -> None:
        r = self.registry
        route = ["route"]
        self.requests = Counter(
            "metadisk_http_requests",
            "HTTP requests by route, method and status ('aborted': the client went away)",
            ["route", "method", "status"],
            registry=r,
        )
        self.request_duration = Histogram(
            "metadisk_http_request_duration_seconds",
            "Time from a request's headers to the end of its answer",
            route,
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.received_bytes = Counter(
            "metadisk_http_received_bytes", "Request body bytes received", route, registry=r
        )
        self.sent_bytes = Counter(
            "metadisk_http_sent_bytes", "Response body bytes sent", route, registry=r
        )
        self.transfers_running = Gauge(
            "metadisk_transfers_running",
            "Uploads (incoming) and downloads (outgoing) in progress",
            ["direction"],
            registry=r,
        )
        self.throttle_waits = Counter(
            "metadisk_throttle_waits",
            "Times a transfer was paused by the bandwidth throttle",
            ["direction"],
            registry=r,
        )
        self.throttle_wait_seconds = Counter(
            "metadisk_throttle_wait_seconds",
            "Time transfers spent paused by the bandwidth throttle",
            ["direction"],
            registry=r,
        )
        self.queue_length = Gauge(
            "metadisk_queue_length",
            "Files waiting in a queue (cloud, blockchain)",
            ["queue"],
            registry=r,
        )
        self.queue_bytes = Gauge(
            "metadisk_queue_bytes", "Bytes of the files waiting in a queue", ["queue"], registry=r
        )
        self.host_failures = Counter(
            "metadisk_host_failures",
            "Failed operations on a file host (store, fetch, corrupt: a copy that did not hash)",
            ["host", "operation"],
            registry=r,
        )
        self.host_repairs = Counter(
            "metadisk_host_repairs", "Copies put back on a host by repair", ["host"], registry=r
        )
        self.host_healthy = Gauge(
            "metadisk_host_healthy",
            "1 if the host is being used, 0 while it backs off",
            ["host"],
            registry=r,
        )
        self.chain_height = Gauge(
            "metadisk_chain_height", "Block height the node has synced to", registry=r
        )
        self.chain_lag = Gauge(
            "metadisk_chain_lag_blocks", "Blocks the node is behind the chain's tip", registry=r
        )
        self.manifests = Counter(
            "metadisk_chain_manifests",
            "v0.3 manifests read from the chain: fetched (records kept) or failed (invalid)",
            ["outcome"],
            registry=r,
        )
        self.manifests_pending = Gauge(
            "metadisk_chain_manifests_pending",
            "v0.3 manifests announced on the chain and not fetched yet",
            registry=r,
        )
        self.ledger_charged = Counter(
            "metadisk_ledger_charged_bytes", "Credit kept for transfers (bytes)", registry=r
        )
        self.ledger_refunded = Counter(
            "metadisk_ledger_refunded_bytes",
            "Credit reserved for transfers and given back (bytes)",
            registry=r,
        )
        self.cache_used = Gauge("metadisk_cache_used_bytes", "Bytes in the blob cache", registry=r)
        self.cache_capacity = Gauge(
            "metadisk_cache_capacity_bytes", "Capacity of the blob cache", registry=r
        )
        for direction in DIRECTIONS:
            # Present from the start, so a dashboard sees 0 rather than nothing.
            self.transfers_running.labels(direction)
            self.throttle_waits.labels(direction)
            self.throttle_wait_seconds.labels(direction)
        for outcome in ("fetched", "failed"):
            self.manifests.labels(outcome)
        for queue in ("cloud", "blockchain"):
            self.queue_length.labels(queue)
            self.queue_bytes.labels(queue)

    # Hooks for the parts of the node.

    def request_done(
        self, route: str, method: str, status: str, received: int, sent: int, duration: float
    ) -> None:
        method = method if method in _METHODS else "other"  # a client chooses it: bound it
        self.requests.labels(route, method, status).inc()
        self.request_duration.labels(route).observe(max(0.0, duration))
        self.received_bytes.labels(route).inc(received)
        self.sent_bytes.labels(route).inc(sent)

    def settled(self, charged: int, refunded: int) -> None:
        """A reservation of the ledger was closed."""
        self.ledger_charged.inc(max(0, charged))
        self.ledger_refunded.inc(max(0, refunded))

    def host_failed(self, host: str, operation: str, times: int = 1) -> None:
        self.host_failures.labels(host, operation).inc(times)

    def throttled(self, direction: str, seconds: float) -> None:
        """A transfer waited C{seconds} for the bandwidth throttle."""
        self.throttle_waits.labels(direction).inc()
        self.throttle_wait_seconds.labels(direction).inc(max(0.0, seconds))

    def queue(self, name: str, count: int, size: int) -> None:
        self.queue_length.labels(name).set(count)
        self.queue_bytes.labels(name).set(size)

    def chain(self, height: int, lag: int) -> None:
        self.chain_height.set(height)
        self.chain_lag.set(max(0, lag))

    # Scraping.

    def before_scrape(self, refresh: Refresh) -> None:
        """Run C{refresh} (which sets gauges) before each scrape."""
        self._refreshers.append(refresh)

    def watch(self, meters: _Meters, sync: Any, cache: Any, hosts: Sequence[str]) -> None:
        """Read the node's meters, cloud queue, hosts and cache at each scrape."""
        self.registry.register(MetersCollector(meters))
        self.before_scrape(_NodeGauges(self, sync, cache, tuple(hosts)))

    async def exposition(self) -> bytes:
        for refresh in self._refreshers:
            try:
                await refresh()
            except Exception:
                # A scrape still answers, with the last known values.
                self.log.failure("could not refresh the metrics")
        return generate_latest(self.registry)

    async def render(self, request: IRequest) -> bytes:
        body = await self.exposition()
        request.setHeader(b"Content-Type", CONTENT_TYPE.encode("ascii"))
        return body


@define
class _NodeGauges:
    """Figures read from the node's parts at scrape time."""

    _metrics: Metrics
    _sync: Any  # CloudSync: pending(), unhealthy()
    _cache: Any  # BlobCache: used, capacity
    _hosts: tuple[str, ...]

    async def __call__(self) -> None:
        count, size = await self._sync.queue.pending()
        self._metrics.queue("cloud", count, size)
        unhealthy = set(self._sync.unhealthy())
        for host in self._hosts:
            self._metrics.host_healthy.labels(host).set(0 if host in unhealthy else 1)
        self._metrics.cache_used.set(self._cache.used)
        self._metrics.cache_capacity.set(self._cache.capacity)
