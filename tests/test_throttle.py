"""
Bandwidth limits on a Clock: token buckets, the fair split, throttled
download producers and paused upload sockets. No test reads the wall clock.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IConsumer
from twisted.internet.task import Clock, Cooperator
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from metadisk.config import BandwidthConfig, HostConfig
from metadisk.crypto import ctr_cipher
from metadisk.ledger import FREE, BalanceInsufficient
from metadisk.meters import INCOMING, OUTGOING, Meters
from metadisk.store.blocking import in_caller
from metadisk.store.cache import BlobCache
from metadisk.store.cloudsync import CloudSync
from metadisk.store.hosts import Stored, make_host, store_each
from metadisk.throttle import (
    INTERVAL,
    Bandwidth,
    Share,
    Throttle,
    ThrottledReader,
    TokenBucket,
    share_out,
    throttled_reader,
)
from metadisk.web.guard import TokenGuard
from metadisk.web.producers import CHUNK_SIZE, BlobProducer, ConsumerStopped
from metadisk.web.unpaid import UnpaidBudget
from metadisk.web.upload import UploadPolicy, UploadReceiver
from tests.fakes import RecordingRunner
from tests.support import funded_token, json_of, multipart, start_node, test_config, upload

STEP = 0.01  # simulated seconds per turn of the test's loop
TCP_READ = 65536  # what one read of a socket hands the node at most


RCLONE = HostConfig(name="r", kind="rclone", remote="remote:dir")


def run(clock: Clock, seconds: float, each_step: Any = None) -> None:
    """Let C{seconds} of simulated time pass, in small steps."""
    for _ in range(round(seconds / STEP)):
        if each_step is not None:
            each_step()
        clock.advance(STEP)


def feed(clock: Clock, receiver: Any, request: Any, body: bytes, seconds: float) -> list:
    """
    Hand C{body} to an upload's C{receiver} one socket read per step, only
    while the socket is not paused, for C{seconds}; return (seconds since the
    start, bytes handed) at each step.
    """
    start = clock.seconds()
    position = 0
    timeline = []

    def step() -> None:
        nonlocal position
        if not request.transport.paused and position < len(body):
            receiver.dataReceived(body[position : position + TCP_READ])
            position += TCP_READ
            if position >= len(body):
                receiver.bodyReceived()
        timeline.append((clock.seconds() - start, min(position, len(body))))

    run(clock, seconds, step)
    return timeline


def jain(values: list[float]) -> float:
    return sum(values) ** 2 / (len(values) * sum(v * v for v in values))


class Case(SynchronousTestCase):
    def assertNear(self, actual: float, expected: float, tolerance: float) -> None:
        if abs(actual - expected) > tolerance:
            self.fail(f"{actual} is not within {tolerance} of {expected}")


@implementer(IConsumer)
class Sink:
    """A consumer that reads everything at once, or, with C{limit}, pauses its producer."""

    def __init__(self, limit: int | None = None) -> None:
        self.data = bytearray()
        self.writes: list[int] = []
        self.producer: Any = None
        self.limit = limit
        self.buffered = 0
        self.most_buffered = 0
        self.paused = False
        self.written_while_paused = 0

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        if self.paused:
            self.written_while_paused += len(data)
        self.data += data
        self.writes.append(len(data))
        if self.limit is not None:
            self.buffered += len(data)
            self.most_buffered = max(self.most_buffered, self.buffered)
            if self.buffered > self.limit and not self.paused:
                self.paused = True
                self.producer.pauseProducing()

    def read(self, n: int) -> None:
        """The slow reader takes C{n} bytes out of the buffer."""
        self.buffered = max(0, self.buffered - n)
        if self.paused and self.buffered <= self.limit and self.producer is not None:
            self.paused = False
            self.producer.resumeProducing()


def cooperator(clock: Clock) -> Cooperator:
    return Cooperator(scheduler=lambda f: clock.callLater(0, f))


def download(
    clock: Clock, throttle: Throttle, data: bytes, sink: Sink, key: bytes | None = None
) -> Deferred[None]:
    producer = BlobProducer(
        io.BytesIO(data), 0, len(data), key, cooperator(clock), lambda n: None, throttle.share()
    )
    return producer.start(sink)


class TokenBucketTests(Case):
    def test_accrues_up_to_capacity(self) -> None:
        clock = Clock()
        bucket = TokenBucket(1000, 300, clock)
        self.assertEqual(bucket.available(), 0)
        clock.advance(0.1)
        self.assertAlmostEqual(bucket.available(), 100)
        clock.advance(10)
        self.assertEqual(bucket.available(), 300)

    def test_debt_is_paid_first(self) -> None:
        clock = Clock()
        bucket = TokenBucket(1000, 300, clock)
        bucket.spend(500)
        self.assertEqual(bucket.available(), -500)
        clock.advance(0.6)
        self.assertAlmostEqual(bucket.available(), 100)
        bucket.give_back(10_000)
        self.assertEqual(bucket.available(), 300)


class ShareOutTests(Case):
    def test_equal_parts(self) -> None:
        self.assertEqual(share_out(900, [1000, 1000, 1000]), [300, 300, 300])

    def test_what_small_demands_leave_goes_to_the_others(self) -> None:
        self.assertEqual(share_out(900, [100, 1000, 1000]), [100, 400, 400])
        self.assertEqual(share_out(900, [100, 50, 1000]), [100, 50, 750])
        self.assertEqual(share_out(900, [100, 200]), [100, 200])

    def test_never_more_than_available(self) -> None:
        for available, demands in [(10, [7, 7, 7]), (0, [5, 5]), (-40, [5]), (5, [])]:
            grants = share_out(available, demands)
            self.assertLessEqual(sum(grants), max(0, available))
            self.assertTrue(all(0 <= g <= d for g, d in zip(grants, demands, strict=True)))


class UnlimitedTests(Case):
    def test_no_limit_no_share_no_timer(self) -> None:
        """With both limits at 0 nothing is counted, scheduled or slowed."""
        clock = Clock()
        throttle = Throttle(clock)
        self.assertFalse(throttle.limited)
        self.assertIsNone(throttle.share())
        self.assertIsNone(throttled_reader(throttle, lambda: None, lambda: None))
        sink = Sink()
        data = os.urandom(3 * CHUNK_SIZE + 5)
        done = download(clock, throttle, data, sink)
        clock.advance(0)
        self.successResultOf(done)
        self.assertEqual(bytes(sink.data), data)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_one_chunk_is_written_at_once(self) -> None:
        """A blob of one chunk, with no limit, waits for no turn of the reactor."""
        clock = Clock()
        sink = Sink()
        data = os.urandom(CHUNK_SIZE)
        done = download(clock, Throttle(clock), data, sink)
        self.successResultOf(done)  # the clock never moved
        self.assertEqual(bytes(sink.data), data)
        self.assertIsNone(sink.producer)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_one_chunk_short_of_its_record_fails(self) -> None:
        clock = Clock()
        blob = io.BytesIO(b"x" * 10)
        producer = BlobProducer(blob, 0, 100, None, cooperator(clock), lambda n: None)
        sink = Sink()
        self.failureResultOf(producer.start(sink), OSError)
        self.assertTrue(blob.closed)
        self.assertIsNone(sink.producer)
        producer.stopProducing()  # as the request does when it ends: nothing to stop

    def test_stopped_is_cancelled(self) -> None:
        """Stopped by its consumer (a lost connection), a download fails as cancelled."""
        clock = Clock()
        sink = Sink()
        data = os.urandom(3 * CHUNK_SIZE)
        producer = BlobProducer(
            io.BytesIO(data), 0, len(data), None, cooperator(clock), lambda n: None
        )
        done = producer.start(sink)
        producer.stopProducing()  # before its first turn
        self.assertIsInstance(self.failureResultOf(done, ConsumerStopped).value, CancelledError)
        self.assertEqual(bytes(sink.data), b"")
        self.assertIsNone(sink.producer)

    def test_bandwidth_from_config(self) -> None:
        config = BandwidthConfig(rate_incoming=10, per_transfer_outgoing=20)
        bandwidth = Bandwidth.from_config(config, Clock())
        self.assertEqual((bandwidth.incoming.rate, bandwidth.incoming.per_transfer), (10, 0))
        self.assertEqual((bandwidth.outgoing.rate, bandwidth.outgoing.per_transfer), (0, 20))


class GreedyShares:
    """Transfers that take all they are given at every step (fast clients)."""

    def __init__(self, throttle: Throttle, count: int) -> None:
        self.shares: list[Share] = [throttle.share() for _ in range(count)]  # type: ignore[misc]
        self.moved = [0] * count

    def step(self) -> None:
        for i, share in enumerate(self.shares):
            self.moved[i] += share.take(10**9)


class ThrottleTests(Case):
    def test_rate_is_exact(self) -> None:
        """What is handed out by time t is the rate times t, to within one round."""
        clock = Clock()
        throttle = Throttle(clock, rate=100_000)
        greedy = GreedyShares(throttle, 1)
        for seconds in (1, 5, 10):
            run(clock, seconds - clock.seconds(), greedy.step)
            self.assertLessEqual(greedy.moved[0], 100_000 * clock.seconds())
            self.assertGreaterEqual(greedy.moved[0], 100_000 * (clock.seconds() - INTERVAL) - 1)

    def test_fair_among_transfers(self) -> None:
        clock = Clock()
        throttle = Throttle(clock, rate=4 * 2**20)
        greedy = GreedyShares(throttle, 8)
        run(clock, 10, greedy.step)
        total = 4 * 2**20 * 10
        self.assertNear(sum(greedy.moved) / total, 1, 0.01)
        self.assertGreater(jain(greedy.moved), 0.999)

    def test_newcomer_gets_its_part_at_once(self) -> None:
        """A transfer running alone for a while does not keep the newcomer waiting."""
        clock = Clock()
        throttle = Throttle(clock, rate=100_000)
        first = GreedyShares(throttle, 1)
        run(clock, 5, first.step)
        second = GreedyShares(throttle, 1)
        before = first.moved[0]
        run(clock, 4, lambda: (first.step(), second.step()))
        self.assertNear(first.moved[0] - before, 200_000, 10_000)
        self.assertNear(second.moved[0], 200_000, 10_000)

    def test_per_transfer_cap_alone(self) -> None:
        clock = Clock()
        greedy = GreedyShares(Throttle(clock, per_transfer=10_000), 3)
        run(clock, 10, greedy.step)
        for moved in greedy.moved:
            self.assertNear(moved, 100_000, 10_000 * INTERVAL + 1)

    def test_per_transfer_cap_under_the_node_rate(self) -> None:
        clock = Clock()
        greedy = GreedyShares(Throttle(clock, rate=100_000, per_transfer=10_000), 3)
        run(clock, 10, greedy.step)
        for moved in greedy.moved:
            self.assertNear(moved, 100_000, 10_000 * INTERVAL + 1)

    def test_node_rate_under_the_per_transfer_caps(self) -> None:
        clock = Clock()
        greedy = GreedyShares(Throttle(clock, rate=30_000, per_transfer=20_000), 3)
        run(clock, 10, greedy.step)
        for moved in greedy.moved:
            self.assertNear(moved, 100_000, 10_000 * INTERVAL + 1)

    def test_paused_share_takes_nothing_and_timer_stops(self) -> None:
        clock = Clock()
        throttle = Throttle(clock, rate=100_000)
        greedy = GreedyShares(throttle, 2)
        idle = greedy.shares[1]
        idle.pause()
        run(clock, 2, greedy.step)
        self.assertEqual(greedy.moved[1], 0)
        self.assertNear(greedy.moved[0], 200_000, 5_000)
        greedy.shares[0].pause()
        run(clock, 1)
        self.assertEqual(clock.getDelayedCalls(), [])
        idle.resume()
        run(clock, 1, greedy.step)
        self.assertGreater(greedy.moved[1], 0)

    def test_idle_transfer_holds_at_most_its_credit(self) -> None:
        """A transfer that moves nothing stops the rounds once its credit is full."""
        clock = Clock()
        throttle = Throttle(clock, rate=100_000)
        share = throttle.share()
        assert share is not None
        run(clock, 3)
        self.assertEqual(share.balance, share.max_credit)
        self.assertEqual(clock.getDelayedCalls(), [])
        share.close()
        self.assertEqual(throttle.transfers, 0)

    def test_debt_of_a_closed_transfer_is_paid_by_the_others(self) -> None:
        clock = Clock()
        throttle = Throttle(clock, rate=100_000)
        share = throttle.share()
        assert share is not None
        share.spend(50_000)  # bytes that arrived before they were granted
        share.close()
        greedy = GreedyShares(throttle, 1)
        run(clock, 1, greedy.step)
        self.assertLessEqual(greedy.moved[0], 50_000)


class ProducerTests(Case):
    def test_writes_only_what_the_bucket_allows(self) -> None:
        clock = Clock()
        throttle = Throttle(clock, rate=100_000)
        data = os.urandom(300_000)
        sink = Sink()
        done = download(clock, throttle, data, sink)
        for seconds in (0.5, 1, 2):
            run(clock, seconds - clock.seconds())
            self.assertLessEqual(len(sink.data), 100_000 * clock.seconds())
            self.assertGreaterEqual(len(sink.data), 100_000 * (clock.seconds() - INTERVAL))
        run(clock, 1.2)
        self.successResultOf(done)
        self.assertEqual(bytes(sink.data), data)
        self.assertEqual(throttle.transfers, 0)

    def test_decrypts_across_uneven_grants(self) -> None:
        """Grants cut the stream anywhere; CTR decryption does not care."""
        clock = Clock()
        key = bytes(range(32))
        plain = os.urandom(100_003)
        sink = Sink()
        done = download(
            clock, Throttle(clock, rate=33_333), ctr_cipher(key).encrypt(plain), sink, key
        )
        run(clock, 4)
        self.successResultOf(done)
        self.assertEqual(bytes(sink.data), plain)
        self.assertGreater(len(sink.writes), 10)

    def test_fair_among_downloads(self) -> None:
        clock = Clock()
        throttle = Throttle(clock, rate=4 * 2**20)
        sinks = [Sink() for _ in range(8)]
        for sink in sinks:
            download(clock, throttle, b"\0" * (8 * 2**20), sink)
        run(clock, 10)
        sent = [len(sink.data) for sink in sinks]
        self.assertNear(sum(sent) / (4 * 2**20 * 10), 1, 0.01)
        self.assertGreater(jain(sent), 0.999)

    def test_slow_reader_leaves_its_part_to_a_fast_one(self) -> None:
        """The slow reader gets what it reads; the rest goes to the other download."""
        clock = Clock()
        throttle = Throttle(clock, rate=100_000)
        fast, slow = Sink(), Sink(limit=8192)
        download(clock, throttle, b"\0" * 10**6, fast)
        download(clock, throttle, b"\0" * 10**6, slow)
        run(clock, 10, lambda: slow.read(200))  # 20 kB/s
        self.assertNear(len(slow.data), 200_000, 15_000)
        self.assertNear(len(fast.data) + len(slow.data), 10**6, 20_000)

    def test_paused_producer_writes_nothing(self) -> None:
        """A reader that stops reading stops the producer: the node buffers nothing."""
        clock = Clock()
        throttle = Throttle(clock, rate=10**6)
        slow = Sink(limit=50_000)
        download(clock, throttle, b"\0" * (20 * 2**20), slow)
        run(clock, 5)
        self.assertEqual(slow.written_while_paused, 0)
        self.assertLessEqual(slow.most_buffered, 50_000 + CHUNK_SIZE)
        self.assertTrue(slow.paused)
        self.assertEqual(clock.getDelayedCalls(), [])  # nothing runs for a stalled reader
        run(clock, 5, lambda: slow.read(1000))
        self.assertEqual(slow.written_while_paused, 0)
        self.assertLessEqual(slow.most_buffered, 50_000 + CHUNK_SIZE)
        self.assertNear(len(slow.data), 50_000 + 500_000, CHUNK_SIZE)


class Client:
    """A client pushing an upload: one socket read per step while not paused."""

    def __init__(self, reader: ThrottledReader | None, chunk: int = TCP_READ) -> None:
        self.reader = reader
        self.chunk = chunk
        self.holds = 0
        self.sent = 0

    def pause(self) -> None:
        self.holds += 1

    def resume(self) -> None:
        self.holds -= 1

    def step(self) -> None:
        if self.holds == 0:
            self.sent += self.chunk
            assert self.reader is not None
            self.reader.received(self.chunk)


class ReaderTests(Case):
    def clients(self, throttle: Throttle, chunks: list[int]) -> list[Client]:
        clients = []
        for chunk in chunks:
            client = Client(None, chunk)
            client.reader = throttled_reader(throttle, client.pause, client.resume)
            clients.append(client)
        return clients

    def test_socket_paused_to_the_rate(self) -> None:
        clock = Clock()
        (client,) = self.clients(Throttle(clock, rate=1_000_000), [TCP_READ])
        run(clock, 10, client.step)
        self.assertLessEqual(client.sent, 10_000_000 + TCP_READ)
        self.assertGreaterEqual(client.sent, 10_000_000 - 100_000)

    def test_fast_client_does_not_starve_the_others(self) -> None:
        """One client sending 64 KiB reads and three sending 4 KiB ones get equal parts."""
        clock = Clock()
        clients = self.clients(Throttle(clock, rate=1_000_000), [TCP_READ, 4096, 4096, 4096])
        run(clock, 10, lambda: [client.step() for client in clients])
        sent = [client.sent for client in clients]
        self.assertNear(sum(sent) / 10_000_000, 1, 0.02)
        self.assertGreater(jain(sent), 0.99)

    def test_close_lets_go_of_the_socket(self) -> None:
        clock = Clock()
        (client,) = self.clients(Throttle(clock, rate=1000), [TCP_READ])
        client.step()
        self.assertEqual(client.holds, 1)
        assert client.reader is not None
        client.reader.close()
        self.assertEqual(client.holds, 0)
        run(clock, 100)
        self.assertEqual(client.holds, 0)
        self.assertEqual(clock.getDelayedCalls(), [])


class FakeTransport:
    def __init__(self) -> None:
        self.paused = False
        self.pauses = 0

    def pauseProducing(self) -> None:
        assert not self.paused, "paused twice: a hold was not counted"
        self.paused = True
        self.pauses += 1

    def resumeProducing(self) -> None:
        assert self.paused, "resumed while not paused"
        self.paused = False


class FakeRequest:
    def __init__(self) -> None:
        self.transport = FakeTransport()
        self.channel = self
        self.early: list[Any] = []
        self.finished: Deferred[None] = Deferred()

    def getClientAddress(self) -> None:
        return None

    def notifyFinish(self) -> Deferred[None]:
        return self.finished

    def respond_early(self, failure: Any) -> None:
        self.early.append(failure)


class GatedLedger:
    """A ledger whose reservation completes when the test says so."""

    def __init__(self) -> None:
        self.gate: Deferred[None] = Deferred()

    async def reserve(self, token: str, amount: int) -> Any:
        await self.gate
        return FREE


class RefusingLedger:
    async def reserve(self, token: str, amount: int) -> Any:
        raise BalanceInsufficient()


class UploadTests(Case):
    def receiver(self, clock: Clock, rate: int, body_length: int, ledger: Any = None) -> Any:
        base = Path(self.mktemp())
        base.mkdir()

        async def nothing_evictable(filehashes: list[str]) -> set[str]:
            return set()

        policy = UploadPolicy(
            ledger=ledger,
            cache=BlobCache(
                root=base / "cache",
                capacity=2**30,
                evictable=nothing_evictable,
                clock=clock,
                run_blocking=in_caller,
            ),
            meters=Meters(db=None, clock=clock, monthly_limits={}, rate_limits={}),
            guard=TokenGuard(clock, 20, 60),
            max_file_size=2**30,
            temporary=lambda suffix: base / f"upload{suffix}",
            unpaid=UnpaidBudget(2**34),
            incoming=Throttle(clock, rate=rate),
        )
        request = FakeRequest()
        return request, policy

    def test_upload_read_at_the_rate(self) -> None:
        clock = Clock()
        data = os.urandom(2_000_000)
        content_type, body = multipart(("file", "f.bin", data))
        request, policy = self.receiver(clock, 500_000, len(body))
        boundary = content_type.decode().split("boundary=")[1]
        receiver = UploadReceiver(policy, request, len(body), boundary, None)
        timeline = feed(clock, receiver, request, body, 20)
        received = self.successResultOf(receiver.result())
        self.assertEqual(received.size, len(data))
        self.assertEqual(received.path.read_bytes(), data)
        for seconds, position in timeline:
            self.assertLessEqual(position, 500_000 * seconds + TCP_READ)
        finished = next(seconds for seconds, position in timeline if position == len(body))
        self.assertNear(finished, len(body) / 500_000, 0.2)
        self.assertGreater(request.transport.pauses, 10)
        self.assertFalse(request.transport.paused)
        self.assertEqual(policy.incoming.transfers, 0)

    def test_admission_and_throttle_share_the_pause(self) -> None:
        """Credit coming back must not resume a socket an admission step still holds."""
        clock = Clock()
        ledger = GatedLedger()
        content_type, body = multipart(("file", "f.bin", os.urandom(300_000)))
        request, policy = self.receiver(clock, 100_000, len(body), ledger)
        boundary = content_type.decode().split("boundary=")[1]
        receiver = UploadReceiver(policy, request, len(body), boundary, "sometoken")
        self.assertTrue(request.transport.paused)  # the reservation is being made
        # Bytes already in flight arrive anyway: the throttle holds the socket too.
        receiver.dataReceived(body[:TCP_READ])
        run(clock, 3)  # the debt is paid back long ago
        self.assertTrue(request.transport.paused)
        ledger.gate.callback(None)
        self.assertFalse(request.transport.paused)
        receiver.dataReceived(body[TCP_READ:])
        self.assertTrue(request.transport.paused)  # in debt again
        receiver.bodyReceived()
        self.assertFalse(request.transport.paused)
        self.successResultOf(receiver.result())
        self.assertEqual(policy.incoming.transfers, 0)

    def test_answered_early_lets_go_when_finished(self) -> None:
        """A refused upload is still drained at the rate, and its share ends with the request."""
        clock = Clock()
        content_type, body = multipart(("file", "f.bin", os.urandom(300_000)))
        request, policy = self.receiver(clock, 100_000, len(body), RefusingLedger())
        boundary = content_type.decode().split("boundary=")[1]
        receiver = UploadReceiver(policy, request, len(body), boundary, "sometoken")
        self.assertEqual([e.status for e in request.early], [402])
        receiver.dataReceived(body[:TCP_READ])
        self.assertTrue(request.transport.paused)  # the rest is read past, at the rate
        self.assertEqual(policy.incoming.transfers, 1)
        request.finished.callback(None)  # the site finishes an early answer itself
        self.assertFalse(request.transport.paused)
        self.assertEqual(policy.incoming.transfers, 0)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_unlimited_upload_never_paused(self) -> None:
        clock = Clock()
        content_type, body = multipart(("file", "f.bin", os.urandom(500_000)))
        request, policy = self.receiver(clock, 0, len(body))
        boundary = content_type.decode().split("boundary=")[1]
        receiver = UploadReceiver(policy, request, len(body), boundary, None)
        for position in range(0, len(body), TCP_READ):
            receiver.dataReceived(body[position : position + TCP_READ])
        receiver.bodyReceived()
        self.successResultOf(receiver.result())
        # The admission steps (the month's cap; room in the cache once it is all in) were done
        # at once: nothing to wait for, so no pause.
        self.assertEqual(request.transport.pauses, 0)
        self.assertEqual(clock.getDelayedCalls(), [])


class NodeTests(TestCase):
    """The limits wired into a real node: bytes arrive whole (no timing is asserted here)."""

    async def test_throttled_round_trip(self) -> None:
        limit = 8 * 2**20
        config = test_config(
            Path(self.mktemp()).resolve(),
            bandwidth={
                "rate_incoming": limit,
                "rate_outgoing": limit,
                "per_transfer_outgoing": limit // 2,
            },
        )
        node = await start_node(self, config)
        token = await funded_token(node)
        data = os.urandom(600_000)
        response = await upload(node, data, token)
        self.assertEqual(response.code, 201)
        result = await json_of(response)
        url = node.url + f"/api/download/{result['filehash']}"
        plain = await node.http.get(url, params={"key": result["key"], "token": token})
        self.assertEqual(await plain.content(), data)
        ranged = await node.http.get(
            url, params={"key": result["key"], "token": token}, headers={"Range": "bytes=5-9"}
        )
        self.assertEqual(await ranged.content(), data[5:10])
        status = await json_of(await node.http.get(node.url + "/api/status"))
        self.assertEqual(status["bandwidth"]["rate_limits"], {"incoming": limit, "outgoing": limit})
        self.assertGreaterEqual(status["bandwidth"]["total"]["incoming"], len(data))
        self.assertGreaterEqual(status["bandwidth"]["total"]["outgoing"], len(data) + 5)


class FakeHost:
    def __init__(self, name: str, blob: bytes) -> None:
        self.name = name
        self.blob = blob

    def store(self, filehash: str, path: str) -> Deferred[str]:
        return succeed(f"fake://{self.name}/{filehash}")

    def store_all(self, blobs: Sequence[tuple[str, str]]) -> Deferred[list[Stored]]:
        return Deferred.fromCoroutine(store_each(self, blobs))

    def fetch(self, filehash: str, url: str, destination: str, size: int) -> Deferred[None]:
        Path(destination).write_bytes(self.blob)
        return succeed(None)


class FakeCatalog:
    def __init__(self, names: list[str]) -> None:
        self.names = names

    async def hosts_of(self, filehash: str) -> tuple[tuple[str, str], ...]:
        return tuple((name, f"fake://{name}") for name in self.names)


class HostTransferTests(Case):
    def test_one_transfer(self) -> None:
        def one_transfer(**rates: int) -> tuple[int, int]:
            return Bandwidth.from_config(BandwidthConfig(**rates), Clock()).one_transfer()

        self.assertEqual(one_transfer(), (0, 0))
        self.assertEqual(one_transfer(rate_outgoing=4096), (4096, 0))
        self.assertEqual(one_transfer(rate_incoming=10, per_transfer_incoming=5), (0, 5))
        self.assertEqual(
            one_transfer(rate_outgoing=100, per_transfer_outgoing=300, rate_incoming=7), (100, 7)
        )

    def test_rclone_gets_the_limit(self) -> None:
        runner = RecordingRunner()
        for rates, flag in (((9, 0), "--bwlimit=9B:off"), ((0, 5), "--bwlimit=off:5B")):
            host = make_host(RCLONE, Clock(), in_caller, one_transfer=rates)
            host._runner = runner  # what the process runner is asked to run
            self.successResultOf(host.store("a" * 64, "/dev/null"))
            self.assertIn(flag, runner.calls[-1][1])
        unlimited = make_host(RCLONE, Clock(), in_caller)
        unlimited._runner = runner
        self.successResultOf(unlimited.store("a" * 64, "/dev/null"))
        self.assertFalse(any(arg.startswith("--bwlimit") for arg in runner.calls[-1][1]))

    def sync(self, clock: Clock, hosts: list[FakeHost], meters: Meters) -> CloudSync:
        return CloudSync(
            db=None,
            catalog=FakeCatalog([host.name for host in hosts]),
            cache=None,
            hosts=hosts,
            clock=clock,
            run_blocking=in_caller,
            node_id="node",
            copies=1,
            meters=meters,
            unmetered=frozenset({"disk"}),
        )

    def test_host_transfers_count_in_the_meters(self) -> None:
        """Copies to and from remote hosts count; copies to a local directory do not."""
        clock = Clock()
        meters = Meters(db=None, clock=clock, monthly_limits={}, rate_limits={})
        blob = os.urandom(5000)
        path = Path(self.mktemp())
        path.write_bytes(blob)
        remote, disk = FakeHost("cloud", blob), FakeHost("disk", blob)
        sync = self.sync(clock, [remote, disk], meters)
        self.successResultOf(sync._store_all(remote, [("a" * 64, str(path), len(blob))]))
        self.successResultOf(sync._store_all(disk, [("a" * 64, str(path), len(blob))]))
        self.assertEqual(meters.total(OUTGOING), 5000)
        fetched = Path(self.mktemp())
        filehash = hashlib.sha256(blob).hexdigest()
        self.successResultOf(Deferred.fromCoroutine(sync.fetch(filehash, fetched, len(blob))))
        self.assertEqual(meters.total(INCOMING), 5000)


class HostTimeoutTests(TestCase):
    async def test_host_transfers_timed_by_the_limit(self) -> None:
        """
        Under a limit slower than hosts are otherwise allowed, host transfers
        get the time their blob takes at that limit (else a big blob would be
        killed on every try).
        """
        base = Path(self.mktemp()).resolve()
        config = test_config(
            base,
            bandwidth={"per_transfer_outgoing": 50_000},
            hosts=[
                {"name": "cloud", "kind": "rclone", "remote": ":webdav,url='http://127.0.0.1:1':b"}
            ],
            replication={"copies": 1},
        )
        node = await start_node(self, config)
        [host] = node.node.sync._hosts
        self.assertEqual((host.slowest_rate, node.node.sync.slowest_rate), (50_000, 50_000))
        host._runner = runner = RecordingRunner()
        blob = base / "blob"
        blob.write_bytes(b"x" * 1_000_000)
        await host.store("a" * 64, str(blob))
        self.assertEqual(runner.calls[0][2], runner.timeout + 20)
