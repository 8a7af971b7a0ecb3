"""
A node assembled from its parts. This is the one place that chooses
implementations (database, hosts, chain) from the configuration.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from attrs import define, field
from treq.client import HTTPClient
from twisted.internet import defer
from twisted.internet.task import Cooperator
from twisted.logger import Logger
from twisted.web.client import Agent

from metadisk.chain.codec import MAX_MANIFEST_SIZE
from metadisk.chain.manifest_lane import Announcements, ManifestLane
from metadisk.chain.manifests import ManifestStore, gives_public_urls
from metadisk.chain.queue import ChainQueue
from metadisk.chain.service import ChainService, chain_sync
from metadisk.config import Config
from metadisk.datadir import Tightened, tighten
from metadisk.db import open_database
from metadisk.httpclient import quiet_pool
from metadisk.interfaces import IDatabase
from metadisk.ledger import Ledger
from metadisk.meters import INCOMING, OUTGOING, Meters
from metadisk.metrics import Metrics
from metadisk.store.blocking import RunBlocking, in_thread_pool
from metadisk.store.cache import BlobCache
from metadisk.store.catalog import Catalog
from metadisk.store.claims import ClaimFetcher, Claims
from metadisk.store.cloudsync import CloudSync
from metadisk.store.files import FileStore, evictable
from metadisk.store.hosts import SLOWEST_RATE, make_host
from metadisk.store.hosts.local import LocalDirectoryHost
from metadisk.store.hosts.publicnet import (
    AddressPolicy,
    ListeningAddresses,
    PublicEndpoints,
    public_agent,
)
from metadisk.store.hosts.url import URLHost
from metadisk.store.repair import Repair
from metadisk.store.resumable import ResumableTable
from metadisk.throttle import Bandwidth
from metadisk.web.accounts import AccountsAPI
from metadisk.web.addresses import TrustedProxies
from metadisk.web.files import FilesAPI
from metadisk.web.guard import TokenGuard
from metadisk.web.resumable import ResumableUploads
from metadisk.web.root import NodeRoot
from metadisk.web.site import CORS, MetaDiskSite
from metadisk.web.tus import TusAPI, TusIntake
from metadisk.web.unpaid import UnpaidBudget
from metadisk.web.upload import UploadPolicy

BLOBS = "blobs"  # the cache's folder in the data directory
CLAIM_TIMEOUT = 30.0  # seconds for a local host's folder to answer at start


def read_or_create(path: Path, make: Callable[[], str]) -> str:
    """The text of C{path}; on first use, C{make()} written there, readable by the owner only."""
    try:
        return path.read_text("ascii").strip()
    except FileNotFoundError:
        value = make()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(value + "\n")
        return value


def _report(tightened: Tightened, folder: Path) -> None:
    where = str(folder.resolve())
    if tightened.loosened > tightened.failed:
        Node.log.warn(
            "data directory {data_dir} was open to others: group and others' permissions"
            " taken off {n} files and folders",
            data_dir=where,
            n=tightened.loosened - tightened.failed,
        )
    if tightened.failed:
        Node.log.error(
            "data directory {data_dir}: {n} files or folders open to others could not be"
            " changed (another user's?)",
            data_dir=where,
            n=tightened.failed,
        )


def node_identity(config: Config) -> tuple[str, str]:
    """(node id, secret key): generated into the data dir on first start."""
    config.node.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    node_id = read_or_create(config.node.data_dir / "node_id", lambda: secrets.token_hex(8))
    secret_key = config.node.secret_key or read_or_create(
        config.node.data_dir / "secret_key", lambda: secrets.token_urlsafe(32)
    )
    return node_id, secret_key


def manifest_store(
    config: Config,
    catalog: Catalog,
    cache: BlobCache,
    sync: CloudSync,
    reactor: Any,
    run_blocking: RunBlocking,
) -> ManifestStore | None:
    """
    Where v0.3 manifests go (with format 0.2 too: those made before are still
    announced); None (every record inline) if no host could serve one.
    """
    if config.chain.kind == "none":
        return None
    if not any(gives_public_urls(host) for host in config.effective_hosts):
        if config.chain.format != "auto":
            return None
        Node.log.warn(
            "[chain] format is auto, but no host gives its copies a public URL (a local"
            " host's public_url, a WebDAV or HTTP rclone remote, plowshare): records are"
            " published inline, as with format 0.2"
        )
        return None
    return ManifestStore(
        catalog=catalog,
        cache=cache,
        sync=sync,
        clock=reactor,
        run_blocking=run_blocking,
        publish_wait=config.chain.publish_wait,
    )


@define(kw_only=True)
class Node:
    config: Config
    db: IDatabase
    ledger: Ledger
    meters: Meters
    store: FileStore
    guard: TokenGuard
    site: MetaDiskSite
    secret_key: str
    metrics: Metrics = field(factory=Metrics)
    chain: ChainService | None = None  # None: the chain is disabled
    repair: Repair | None = None  # run by the node's service (tap.py)
    private_site: MetaDiskSite | None = None  # for [node] private_listen; None: not set
    resumable: ResumableUploads | None = None  # expired by the node's service (tap.py)
    # Where the node listens, once it does: the URLs of records must not lead there.
    listening: ListeningAddresses = field(factory=ListeningAddresses)
    # Their folders of the flat layout are moved into shards once the node listens.
    local_hosts: list[LocalDirectoryHost] = field(factory=list)
    _run_blocking: RunBlocking | None = None
    _background: list[defer.Deferred[Any]] = field(factory=list)

    log = Logger()

    @property
    def sync(self) -> CloudSync:
        return self.store.sync

    def start_background(self) -> None:
        """
        Once the node listens: the long work on folders of blobs (the
        cache's check, the move of flat folders into shards), while requests
        are answered.
        """
        self.store.start_checks()
        for host in self.local_hosts:
            moving = defer.Deferred.fromCoroutine(host.move_flat())
            moving.addErrback(
                lambda f, name=host.name: self.log.failure(
                    "host {host}: moving its blobs into shards failed", f, host=name
                )
            )
            self._background.append(moving)
        if self._run_blocking is not None:
            blobs = self.config.node.data_dir / BLOBS
            tightening = self._run_blocking(tighten, blobs)
            tightening.addCallback(_report, blobs)
            tightening.addErrback(
                lambda f: self.log.failure("cannot tighten {blobs}", f, blobs=str(blobs))
            )
            self._background.append(tightening)

    async def close(self) -> None:
        """
        Cancel the host transfers in flight, write the cache's index and the
        meters, close the database.
        """
        for host in self.local_hosts:
            host.stop_moving()
        await defer.gatherResults(self._background)  # each move ends after its batch
        # Both cancel what they have in flight, and then wait for it to end.
        await defer.gatherResults(
            [
                defer.Deferred.fromCoroutine(self.sync.stop()),
                defer.Deferred.fromCoroutine(self.store.stop()),
            ]
        )
        try:
            await self.store.cache.close()
        except Exception:
            self.log.failure("could not write the cache's index at shutdown")
        try:
            await self.ledger.flush()  # the downloads' charges still due
        except Exception:
            self.log.failure("could not settle the last transfers at shutdown")
        try:
            await self.meters.flush()
        except Exception:
            self.log.failure("could not write the bandwidth meters at shutdown")
        await self.db.close()


async def build_node(
    config: Config,
    reactor: Any,
    *,
    run_blocking: RunBlocking | None = None,
    cooperator: Cooperator | None = None,
) -> Node:
    """Open the database, recover from any crash, and wire the parts together."""
    run_blocking = run_blocking or in_thread_pool(reactor)
    metrics = Metrics()  # this node's own registry: several nodes may share a process
    # Before anything is opened there: what an older node or an operator left open is closed.
    # The cache's folder is closed, and what it holds tightened once the node listens.
    data_dir = config.node.data_dir
    _report(await run_blocking(tighten, data_dir, [data_dir / BLOBS]), data_dir)
    node_id, secret_key = node_identity(config)
    db = await open_database(config.effective_database_url, reactor)
    ledger = Ledger(db, reactor, node_id, metrics)
    refunded = await ledger.refund_abandoned()
    if refunded:
        Node.log.info("refunded {n} transfers cut short by the last stop", n=refunded)
    meters = Meters(
        db=db,
        clock=reactor,
        monthly_limits={
            INCOMING: config.bandwidth.monthly_incoming,
            OUTGOING: config.bandwidth.monthly_outgoing,
        },
        rate_limits={
            INCOMING: config.bandwidth.rate_incoming,
            OUTGOING: config.bandwidth.rate_outgoing,
        },
    )
    await meters.flush()
    catalog = Catalog(db)
    claims = Claims(db)
    cache = BlobCache(
        root=config.node.data_dir / BLOBS,
        capacity=config.storage.capacity,
        evictable=evictable(catalog, claims, config.replication.copies),
        clock=reactor,
        run_blocking=run_blocking,
    )
    bandwidth = Bandwidth.from_config(config.bandwidth, reactor)
    # rclone limits its own transfers to a host; no other host tool can. Host
    # transfers are timed by the slowest rate they may run at.
    one_transfer = bandwidth.one_transfer()
    slowest = min([SLOWEST_RATE, *(rate for rate in one_transfer if rate)])
    hosts = [
        make_host(host, reactor, run_blocking, one_transfer=one_transfer, slowest_rate=slowest)
        for host in config.effective_hosts
    ]
    for host in hosts:
        if isinstance(host, LocalDirectoryHost):
            # A folder that holds none of its recorded copies may be an unmounted disk.
            holds_copies = await catalog.holds_copies(host.name)
            try:
                await host.claim(holds_copies).addTimeout(CLAIM_TIMEOUT, reactor)
            except defer.TimeoutError:
                # A hung mount: the node starts all the same, the host answers as it can.
                Node.log.error("host {host}: its folder did not answer", host=host.name)
    # Copies to a local directory cross no network: they do not count as bandwidth.
    local = frozenset(host.name for host in config.effective_hosts if host.kind == "local")
    # The chain's RPC goes where the operator said (https is verified); no idle connections
    # kept, so a stopped node leaves none behind.
    http = HTTPClient(Agent(reactor, pool=quiet_pool(reactor)))
    # The URLs of records from the chain are strangers': public addresses only.
    listening = ListeningAddresses()
    policy = AddressPolicy(config.chain.fetch_allowed_networks, listening)
    strangers = public_agent(reactor, PublicEndpoints(reactor=reactor, policy=policy))
    urls = URLHost(strangers, config.storage.capacity, reactor)
    sync = CloudSync(
        db=db,
        catalog=catalog,
        cache=cache,
        hosts=hosts,
        clock=reactor,
        run_blocking=run_blocking,
        node_id=node_id,
        copies=config.replication.copies,
        meters=meters,
        unmetered=local,
        metrics=metrics,
        url_fetcher=urls,
        slowest_rate=slowest,
    )
    chain_queue = ChainQueue(db, config.chain.publish_wait)
    # Manifests are written to a file of their own while they are read, not to the cache;
    # what a fetch cut short by the last stop left there is of no use.
    await run_blocking(shutil.rmtree, config.node.data_dir / "manifests", True)
    lane = ManifestLane(
        announcements=Announcements(db),
        urls=URLHost(strangers, MAX_MANIFEST_SIZE, reactor),
        clock=reactor,
        run_blocking=run_blocking,
        directory=config.node.data_dir / "manifests",
        metrics=metrics,
        slowest_rate=slowest,
    )
    chain, chain_status = chain_sync(
        config.chain,
        db,
        catalog,
        chain_queue,
        reactor,
        http,
        node_id,
        lane,
        manifest_store(config, catalog, cache, sync, reactor, run_blocking),
    )
    metrics.watch(meters, sync, cache, [host.name for host in hosts])
    claim_fetcher = ClaimFetcher(
        claims=claims,
        urls=urls,
        clock=reactor,
        run_blocking=run_blocking,
        largest=config.storage.capacity,
        meters=meters,
        metrics=metrics,
        slowest_rate=slowest,
    )
    store = FileStore(
        db=db,
        catalog=catalog,
        claims=claims,
        cache=cache,
        sync=sync,
        claim_fetcher=claim_fetcher,
        clock=reactor,
        run_blocking=run_blocking,
        convergence_secret=config.crypto.convergence_secret,
        incoming=config.node.data_dir / "incoming",
        recorded=chain_queue.add,  # the chain's queue, in the transaction that records a file
    )
    await store.recover()
    await sync.queue.resume()
    guard = TokenGuard(reactor, config.accounts.guess_limit, config.accounts.guess_window)
    ledger_if_enabled = ledger if config.accounts.enabled else None
    unpaid = UnpaidBudget(config.node.unpaid_upload_bytes)
    if ledger_if_enabled is None and unpaid.share < config.storage.max_file_size:
        Node.log.warn(
            "accounts are disabled: every upload is unpaid, so none larger than an address's"
            " share of [node] unpaid_upload_bytes ({share} bytes) is accepted",
            share=unpaid.share,
        )
    files_api = FilesAPI(
        store=store,
        ledger=ledger_if_enabled,
        meters=meters,
        guard=guard,
        cooperator=cooperator or Cooperator(scheduler=lambda f: reactor.callLater(0, f)),
        max_file_size=config.storage.max_file_size,
        chain_status=chain_status,
        outgoing=bandwidth.outgoing,
    )
    accounts_api = (
        AccountsAPI(ledger, guard, secret_key, private_only=bool(config.node.private_listen))
        if config.accounts.enabled
        else None
    )
    resumable = ResumableUploads(
        table=ResumableTable(db),
        store=store,
        ledger=ledger_if_enabled,
        cache=cache,
        meters=meters,
        guard=guard,
        unpaid=unpaid,
        clock=reactor,
        run_blocking=run_blocking,
        node_id=node_id,
        folder=config.node.data_dir / "resumable",
        expiry=config.uploads.resumable_expiry,
        per_token=config.uploads.resumable_per_token,
        max_file_size=config.storage.max_file_size,
    )
    await resumable.recover()
    tus = TusIntake(resumable, guard, bandwidth.incoming)
    root = NodeRoot(
        files=files_api,
        accounts=accounts_api,
        tus=TusAPI(tus, config.storage.max_file_size),
        metrics=metrics,
    )
    policy = UploadPolicy(
        ledger=ledger_if_enabled,
        cache=cache,
        meters=meters,
        guard=guard,
        max_file_size=config.storage.max_file_size,
        temporary=store.temporary,
        unpaid=unpaid,
        incoming=bandwidth.incoming,
    )
    proxies = TrustedProxies(config.node.trusted_proxies)
    site = MetaDiskSite(
        root.resource(),
        upload_policy=policy,
        guard=guard,
        cors=CORS(config.node.cors_origins),
        reactor=reactor,
        metrics=metrics,
        header_timeout=config.node.header_timeout,
        proxies=proxies,
        tus=tus,
    )
    repair = Repair(
        db=db,
        sync=sync,
        cache=cache,
        hosts=hosts,
        clock=reactor,
        run_blocking=run_blocking,
        sample=config.replication.repair_sample,
    )
    # The local-only listener of the private API: the same resources, on a site marked private.
    private_site = (
        MetaDiskSite(
            root.resource(),
            upload_policy=policy,
            guard=guard,
            cors=site.cors,
            reactor=reactor,
            metrics=metrics,
            private=True,
            header_timeout=config.node.header_timeout,
            proxies=proxies,
            tus=tus,
        )
        if config.node.private_listen
        else None
    )
    return Node(
        config=config,
        db=db,
        ledger=ledger,
        meters=meters,
        store=store,
        guard=guard,
        site=site,
        secret_key=secret_key,
        metrics=metrics,
        chain=chain,
        repair=repair,
        private_site=private_site,
        listening=listening,
        resumable=resumable,
        local_hosts=[host for host in hosts if isinstance(host, LocalDirectoryHost)],
        run_blocking=run_blocking,
    )
