"""/metrics: the node's Prometheus metrics, scraped after real traffic."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from metadisk.crypto import DEFAULT_CONVERGENCE_SECRET, convergent_key
from metadisk.db import open_database
from metadisk.ledger import Ledger
from metadisk.metrics import Metrics
from metadisk.store.shards import sharded
from tests.support import (
    RunningNode,
    eventually,
    funded_token,
    json_of,
    local_host,
    start_node,
    test_config,
    upload,
)


class Scrape:
    """The samples of one scrape, looked up by name and labels."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = list(text_string_to_metric_families(text))
        self.samples = [s for family in self.families for s in family.samples]

    def value(self, name: str, **labels: str) -> float | None:
        for sample in self.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
        return None


async def scrape(node: RunningNode) -> Scrape:
    response = await node.http.get(node.url + "/metrics")
    assert response.code == 200, response.code
    content_type = response.headers.getRawHeaders(b"content-type")[0]
    assert content_type.startswith(b"text/plain; version=0.0.4"), content_type
    return Scrape((await response.content()).decode("utf-8"))


class RegistryTests(SynchronousTestCase):
    def test_each_node_has_its_own_registry(self) -> None:
        # Two in one process: no "Duplicated timeseries" from a shared global registry.
        first, second = Metrics(), Metrics()
        first.chain(10, 2)
        self.assertEqual(first.registry.get_sample_value("metadisk_chain_height"), 10)
        self.assertEqual(second.registry.get_sample_value("metadisk_chain_height"), 0)

    def test_every_metric_is_named_metadisk(self) -> None:
        names = [family.name for family in Metrics().registry.collect()]
        self.assertGreater(len(names), 15)
        for name in names:
            self.assertTrue(name.startswith("metadisk_"), name)

    def test_unknown_methods_do_not_become_labels(self) -> None:
        metrics = Metrics()
        metrics.request_done("other", "BREW", "405", 0, 0, 0.1)
        value = metrics.registry.get_sample_value(
            "metadisk_http_requests_total", {"route": "other", "method": "other", "status": "405"}
        )
        self.assertEqual(value, 1)


class LedgerMetricsTests(TestCase):
    async def test_charges_and_refunds_are_counted_once(self) -> None:
        path = Path(self.mktemp()).resolve()
        path.mkdir()
        db = await open_database(f"sqlite:///{path / 'db.sqlite'}", reactor)
        self.addCleanup(db.close)
        metrics = Metrics()
        ledger = Ledger(db, reactor, "node", metrics)
        token = await ledger.new_token()
        await ledger.deposit(token, 1000)
        reservation = await ledger.reserve(token, 100)
        await ledger.settle(reservation, 60)
        await ledger.settle(reservation, 60)  # idempotent: not counted twice
        await ledger.refund(await ledger.reserve(token, 50))

        def value(name: str) -> float | None:
            return metrics.registry.get_sample_value(name)

        self.assertEqual(value("metadisk_ledger_charged_bytes_total"), 60)
        self.assertEqual(value("metadisk_ledger_refunded_bytes_total"), 90)
        self.assertEqual(await ledger.balance(token), 940)


class ScrapeTests(TestCase):
    async def test_traffic_shows_in_the_metrics(self) -> None:
        node = await start_node(self)
        token = await funded_token(node)
        data = os.urandom(200_000)
        response = await upload(node, data, token)
        self.assertEqual(response.code, 201)
        answer = await json_of(response)
        filehash, key = answer["filehash"], answer["key"]
        response = await node.http.get(
            node.url + f"/api/download/{filehash}", params={"key": key, "token": token}
        )
        self.assertEqual(await response.content(), data)
        response = await node.http.get(node.url + "/api/find/" + "0" * 64)
        self.assertEqual(response.code, 404)
        await node.node.sync.idle()  # replication done: the cloud queue is empty

        # 4 x B for the upload, B for a download from the cache: the download's charge is
        # committed with the ledger's next batch of settlements.
        async def charged() -> bool:
            scraped = await scrape(node)
            return scraped.value("metadisk_ledger_charged_bytes_total") == 5 * len(data)

        await eventually(charged)
        s = await scrape(node)
        requests = "metadisk_http_requests_total"
        download = "/api/download/{filehash}"
        self.assertEqual(s.value(requests, route="/api/upload", method="POST", status="201"), 1)
        self.assertEqual(s.value(requests, route=download, method="GET", status="200"), 1)
        self.assertEqual(
            s.value(requests, route="/api/find/{filehash}", method="GET", status="404"), 1
        )
        self.assertEqual(s.value("metadisk_http_sent_bytes_total", route=download), len(data))
        self.assertGreater(
            s.value("metadisk_http_received_bytes_total", route="/api/upload"), len(data)
        )
        self.assertEqual(
            s.value("metadisk_http_request_duration_seconds_count", route="/api/upload"), 1
        )
        self.assertGreater(s.value("metadisk_ledger_refunded_bytes_total"), 0)
        self.assertGreaterEqual(
            s.value("metadisk_bandwidth_bytes_total", direction="incoming"), len(data)
        )
        self.assertGreaterEqual(
            s.value("metadisk_bandwidth_bytes_total", direction="outgoing"), len(data)
        )
        for direction in ("incoming", "outgoing"):
            self.assertEqual(s.value("metadisk_transfers_running", direction=direction), 0)
            self.assertEqual(s.value("metadisk_throttle_waits_total", direction=direction), 0)
        self.assertEqual(s.value("metadisk_queue_length", queue="cloud"), 0)
        for outcome in ("fetched", "failed"):
            self.assertEqual(s.value("metadisk_chain_manifests_total", outcome=outcome), 0)
        self.assertEqual(s.value("metadisk_cache_used_bytes"), len(data))
        self.assertEqual(s.value("metadisk_cache_capacity_bytes"), 64 * 2**20)
        for host in ("local1", "local2", "local3"):
            self.assertEqual(s.value("metadisk_host_healthy", host=host), 1)
        for family in s.families:
            self.assertTrue(family.name.startswith("metadisk_"), family.name)
        self.assertNotIn(token, s.text)
        self.assertNotIn(key, s.text)
        self.assertNotIn(filehash, s.text)

    async def test_gauges_and_counters_others_set(self) -> None:
        node = await start_node(self)
        metrics: Metrics = node.node.metrics
        metrics.chain(1234, 5)
        metrics.throttled("outgoing", 0.25)
        metrics.queue("blockchain", 3, 900)
        metrics.host_repairs.labels("local2").inc()
        s = await scrape(node)
        self.assertEqual(s.value("metadisk_chain_height"), 1234)
        self.assertEqual(s.value("metadisk_chain_lag_blocks"), 5)
        self.assertEqual(s.value("metadisk_throttle_waits_total", direction="outgoing"), 1)
        self.assertEqual(
            s.value("metadisk_throttle_wait_seconds_total", direction="outgoing"), 0.25
        )
        self.assertEqual(s.value("metadisk_queue_length", queue="blockchain"), 3)
        self.assertEqual(s.value("metadisk_queue_bytes", queue="blockchain"), 900)
        self.assertEqual(s.value("metadisk_host_repairs_total", host="local2"), 1)
        # A scrape is counted when it is done: the first one shows in the second.
        s = await scrape(node)
        self.assertEqual(
            s.value("metadisk_http_requests_total", route="/metrics", method="GET", status="200"), 1
        )

    async def test_host_failures(self) -> None:
        base = Path(self.mktemp()).resolve()
        base.mkdir(parents=True)
        blocker = base / "not-a-directory"
        blocker.write_bytes(b"")
        good = [local_host(f"local{i}", base / "hosts" / f"local{i}") for i in (1, 2, 3)]
        hosts = [local_host("broken", blocker / "sub"), *good]
        node = await start_node(self, test_config(base, hosts=hosts))
        token = await funded_token(node)
        data = b"fragile" * 1000
        filehash = (await json_of(await upload(node, data, token)))["filehash"]
        await node.node.sync.idle()
        s = await scrape(node)
        # At least once: on a slow machine the retry (seconds later) may have run too.
        self.assertGreaterEqual(
            s.value("metadisk_host_failures_total", host="broken", operation="store"), 1
        )

        # A corrupt copy on the first host that holds it: counted, and the next host serves.
        record = await node.node.store.find(filehash)
        first_host = record.uploads[0][0]
        sharded(base / "hosts" / first_host, filehash).write_bytes(b"garbage")
        node.node.store.cache.discard(filehash)
        key = convergent_key(DEFAULT_CONVERGENCE_SECRET, hashlib.sha256(data).hexdigest()).hex()
        response = await node.http.get(
            node.url + f"/api/download/{filehash}", params={"key": key, "token": token}
        )
        self.assertEqual(await response.content(), data)
        s = await scrape(node)
        self.assertEqual(
            s.value("metadisk_host_failures_total", host=first_host, operation="corrupt"), 1
        )
