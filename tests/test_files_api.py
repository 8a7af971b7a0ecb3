"""The files API over a real socket: every route, every documented error, and the ledger."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

from twisted.trial.unittest import TestCase

from metadisk.crypto import DEFAULT_CONVERGENCE_SECRET, convergent_key, ctr_cipher
from metadisk.store.files import FileStore
from metadisk.store.shards import sharded
from metadisk.web import delivery
from metadisk.web.guard import TokenGuard
from tests.support import (
    Conversation,
    body_of,
    eventually,
    funded_token,
    header_of,
    json_of,
    local_host,
    multipart,
    raw_http,
    start_node,
    status_line,
    test_config,
    upload,
)


async def balance(node, token: str) -> int:
    response = await node.http.get(node.url + f"/accounts/token/balance/{token}")
    return (await json_of(response))["balance"]


class UploadDownloadTests(TestCase):
    async def test_round_trip(self) -> None:
        """An upload returns the convergent filehash and key; download gives the bytes back."""
        node = await start_node(self)
        token = await funded_token(node)
        data = os.urandom(300_000)
        response = await upload(node, data, token, name="report.pdf")
        self.assertEqual(response.code, 201)
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["application/json"])
        result = await json_of(response)
        key = convergent_key(DEFAULT_CONVERGENCE_SECRET, hashlib.sha256(data).hexdigest())
        ciphertext = ctr_cipher(key).encrypt(data)
        self.assertEqual(result["key"], key.hex())
        self.assertEqual(result["filehash"], hashlib.sha256(ciphertext).hexdigest())

        url = node.url + f"/api/download/{result['filehash']}"
        plain = await node.http.get(url, params={"key": result["key"], "token": token})
        self.assertEqual(plain.code, 200)
        self.assertEqual(await plain.content(), data)
        self.assertEqual(
            plain.headers.getRawHeaders("content-disposition"),
            [f'attachment; filename="{result["filehash"][:7]}_report.pdf"'],
        )
        self.assertEqual(plain.headers.getRawHeaders("accept-ranges"), ["bytes"])
        self.assertEqual(plain.length, len(data))

        cipher = await node.http.get(url, params={"token": token})
        self.assertEqual(await cipher.content(), ciphertext)

    async def test_costs(self) -> None:
        """Upload costs 4 x size; a cached download costs its size; HEAD and find are free."""
        node = await start_node(self)
        token = await funded_token(node, 10_000_000)
        data = os.urandom(100_000)
        result = await json_of(await upload(node, data, token))
        self.assertEqual(await balance(node, token), 10_000_000 - 4 * 100_000)
        url = node.url + f"/api/download/{result['filehash']}"
        await (await node.http.get(url, params={"key": result["key"], "token": token})).content()
        self.assertEqual(await balance(node, token), 10_000_000 - 5 * 100_000)
        head = await raw_http(
            node.port,
            f"HEAD /api/download/{result['filehash']}?token={token} HTTP/1.1\r\n"
            "Host: x\r\n\r\n".encode(),
        )
        self.assertEqual(status_line(head), 200)
        self.assertEqual(header_of(head, b"content-length"), b"100000")
        self.assertEqual(head.split(b"\r\n\r\n", 1)[1], b"")
        await node.http.get(node.url + f"/api/find/{result['filehash']}")
        self.assertEqual(await balance(node, token), 10_000_000 - 5 * 100_000)

    async def test_deduplication(self) -> None:
        """The same file twice: same filehash and key, charged each time, stored once."""
        node = await start_node(self)
        token = await funded_token(node, 10_000_000)
        data = os.urandom(50_000)
        first = await json_of(await upload(node, data, token, name="a.bin"))
        second = await json_of(await upload(node, data, token, name="b.bin"))
        self.assertEqual(first, second)
        self.assertEqual(await balance(node, token), 10_000_000 - 8 * 50_000)
        self.assertEqual(node.node.store.cache.used, 50_000)
        record = await json_of(await node.http.get(node.url + f"/api/find/{first['filehash']}"))
        self.assertEqual(record["filename"], first["filehash"][:7] + "_a.bin")

    async def test_ranges(self) -> None:
        node = await start_node(self)
        token = await funded_token(node, 10_000_000)
        data = os.urandom(10_000)
        result = await json_of(await upload(node, data, token))
        url = node.url + f"/api/download/{result['filehash']}"
        before = await balance(node, token)
        for header, start, end in (
            ("bytes=0-0", 0, 0),
            ("bytes=17-4095", 17, 4095),
            ("bytes=9000-", 9000, 9999),
            ("bytes=-100", 9900, 9999),
            ("bytes=5000-999999", 5000, 9999),
        ):
            response = await node.http.get(
                url,
                params={"key": result["key"], "token": token},
                headers={"Range": header},
            )
            self.assertEqual(response.code, 206, header)
            self.assertEqual(
                response.headers.getRawHeaders("content-range"), [f"bytes {start}-{end}/10000"]
            )
            self.assertEqual(await response.content(), data[start : end + 1], header)
        served = 1 + (4095 - 17 + 1) + 1000 + 100 + 5000
        self.assertEqual(await balance(node, token), before - served)
        for bad in ("bytes=10000-", "bytes=5-2", "bytes=-0", "bytes=abc", "items=0-1", "bytes=-"):
            response = await node.http.get(url, params={"token": token}, headers={"Range": bad})
            self.assertEqual(response.code, 416, bad)
            self.assertEqual(await json_of(response), {"error": "invalid-range"})
            self.assertEqual(response.headers.getRawHeaders("content-range"), ["bytes */10000"])
        self.assertEqual(await balance(node, token), before - served)

    async def test_find(self) -> None:
        node = await start_node(self)
        token = await funded_token(node)
        result = await json_of(await upload(node, b"x" * 1000, token, name="../../etc/pass\x07wd"))
        record = await json_of(await node.http.get(node.url + f"/api/find/{result['filehash']}"))
        self.assertEqual(
            sorted(record), ["datetime", "filehash", "filename", "filesize", "uploads", "version"]
        )
        self.assertEqual(record["filename"], result["filehash"][:7] + "_passwd")
        self.assertEqual(record["filesize"], 1000)
        self.assertEqual(record["version"], "0.2")
        self.assertTrue(record["datetime"].isdigit())
        missing = await node.http.get(node.url + "/api/find/" + "0" * 64)
        self.assertEqual((missing.code, await json_of(missing)), (404, {"error": "File not found"}))

    async def test_replicated_to_three_hosts(self) -> None:
        """
        After the 201, replication starts at once: every local host gets the
        blob. Its record names them with their public URL, if a web server
        serves the folder, else with none: never a path of this machine's.
        """
        base = Path(self.mktemp()).resolve()
        hosts = [local_host(f"local{i}", base / "hosts" / f"local{i}") for i in (1, 2, 3)]
        hosts[0]["public_url"] = "https://files.example/one"
        node = await start_node(self, test_config(base, hosts=hosts))
        token = await funded_token(node)
        result = await json_of(await upload(node, b"replicate me", token))
        await node.node.sync.idle()
        record = await node.node.store.find(result["filehash"])
        self.assertEqual(
            sorted(record.uploads),
            [
                (
                    "local1",
                    f"https://files.example/one/{result['filehash'][:2]}/{result['filehash']}",
                ),
                ("local2", ""),
                ("local3", ""),
            ],
        )
        for host in node.node.config.effective_hosts:
            self.assertTrue(sharded(Path(host.setting), result["filehash"]).is_file())
        count, _ = await node.node.sync.queue.pending()
        self.assertEqual(count, 0)

    async def test_evicted_blob_is_fetched_and_costs_double(self) -> None:
        """A blob gone from the cache comes back from a host, verified, at twice the cost."""
        node = await start_node(self)
        token = await funded_token(node, 10_000_000)
        data = os.urandom(20_000)
        result = await json_of(await upload(node, data, token))
        await node.node.sync.idle()
        node.node.store.cache.discard(result["filehash"])
        before = await balance(node, token)
        response = await node.http.get(
            node.url + f"/api/download/{result['filehash']}",
            params={"key": result["key"], "token": token},
        )
        self.assertEqual(await response.content(), data)
        self.assertEqual(await balance(node, token), before - 2 * 20_000)
        self.assertIn(result["filehash"], node.node.store.cache)

    async def test_corrupt_copy_skipped(self) -> None:
        """A host whose copy does not hash to the filehash is skipped for the next one."""
        node = await start_node(self)
        token = await funded_token(node)
        data = os.urandom(5000)
        result = await json_of(await upload(node, data, token))
        await node.node.sync.idle()
        node.node.store.cache.discard(result["filehash"])
        record = await node.node.store.find(result["filehash"])
        first_host = next(
            h for h in node.node.config.effective_hosts if h.name == record.uploads[0][0]
        )
        sharded(Path(first_host.setting), result["filehash"]).write_bytes(b"garbage")
        response = await node.http.get(
            node.url + f"/api/download/{result['filehash']}",
            params={"key": result["key"], "token": token},
        )
        self.assertEqual(await response.content(), data)

    async def test_no_copy_anywhere_refunds(self) -> None:
        """502 error-downloading-file when no host has a good copy; the charge is refunded."""
        node = await start_node(self)
        token = await funded_token(node)
        result = await json_of(await upload(node, b"lost" * 1000, token))
        await node.node.sync.idle()
        node.node.store.cache.discard(result["filehash"])
        for host in node.node.config.effective_hosts:
            sharded(Path(host.setting), result["filehash"]).write_bytes(b"corrupt")
        before = await balance(node, token)
        response = await node.http.get(
            node.url + f"/api/download/{result['filehash']}", params={"token": token}
        )
        self.assertEqual(response.code, 502)
        self.assertEqual(await json_of(response), {"error": "error-downloading-file"})
        self.assertEqual(await balance(node, token), before)


class KeptAliveDownloadTests(TestCase):
    async def test_the_next_request_does_not_wait_for_the_acknowledgement(self) -> None:
        """
        On a kept-alive connection a download's response ends once its bytes are handed
        to the socket; its charge waits for the client's TCP to acknowledge them.
        """
        acknowledged: list[int | None] = [0]  # what the kernel says the client acknowledged
        self.patch(delivery, "acknowledged_bytes", lambda sock: acknowledged[0])
        node = await start_node(self)
        token = await funded_token(node)
        data = os.urandom(5000)
        result = await json_of(await upload(node, data, token))
        before = await balance(node, token)
        conversation = await Conversation.open(node.port)
        self.addCleanup(conversation.close)
        answer = await conversation.ask(
            b"GET /api/download/%s?key=%s&token=%s HTTP/1.1\r\nHost: x\r\n\r\n"
            % (result["filehash"].encode(), result["key"].encode(), token.encode())
        )
        self.assertEqual((status_line(answer), answer[-len(data) :]), (200, data))
        # Nothing acknowledged yet: the next request is answered all the same...
        status = await conversation.ask(b"GET /api/status HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(status_line(status), 200)
        # ...while the download's credit is still held for it, unsettled.
        held = "SELECT amount FROM reservations"
        self.assertEqual(await node.node.db.query(held), [(len(data),)])  # cached: 1x
        acknowledged[0] = 2**40  # everything (the count is capped at what was written)

        async def settled() -> bool:
            return not await node.node.db.query(held)

        await eventually(settled)
        self.assertEqual(await balance(node, token), before - len(data))


class DownloadErrorTests(TestCase):
    async def test_errors(self) -> None:
        node = await start_node(self)
        token = await funded_token(node, 4000)
        result = await json_of(await upload(node, b"y" * 200, token))
        # Leave 100 bytes of credit: not enough for the 200-byte download.
        await node.http.post(
            node.url + f"/accounts/token/withdraw/{token}",
            json={"bytes": 4000 - 4 * 200 - 100},
            headers={"Authentication": node.secret},
        )
        base = node.url + "/api/download/"
        cases = [
            (base + "nothex", {}, 400, {"error": "invalid-filehash"}),
            (base + "ab" * 31, {}, 400, {"error": "invalid-filehash"}),
            (base + "ab" * 33, {}, 400, {"error": "invalid-filehash"}),
            (base + result["filehash"], {"key": "zz"}, 400, {"error": "invalid-key"}),
            (base + result["filehash"], {"key": "ab" * 31}, 400, {"error": "invalid-key"}),
            (base + "0" * 64, {"token": token}, 404, {"error": "file-not-found"}),
            (base + result["filehash"], {}, 401, {"error": "token-required"}),
            (base + result["filehash"], {"token": "nosuchtoken"}, 401, {"error": "invalid-token"}),
            (base + result["filehash"], {"token": "bad token!"}, 401, {"error": "invalid-token"}),
            (base + result["filehash"], {"token": token}, 402, {"error": "balance-insufficient"}),
        ]
        for url, params, code, body in cases:
            response = await node.http.get(url, params=params)
            self.assertEqual((response.code, await json_of(response)), (code, body), (url, params))
        self.assertEqual(await balance(node, token), 100)

    async def test_an_unknown_token_is_counted_in_the_reactors_thread(self) -> None:
        """
        SQLite runs a transaction's work in a thread of its own: the guess of
        a download's unknown token is counted after it, in the reactor's
        thread, where the rest of the guard's state is used.
        """
        node = await start_node(self)
        token = await funded_token(node)
        result = await json_of(await upload(node, b"y" * 200, token))
        threads = []
        count = TokenGuard.unknown_token

        def unknown_token(guard: TokenGuard, address: object) -> None:
            threads.append(threading.current_thread())
            count(guard, address)

        self.patch(TokenGuard, "unknown_token", unknown_token)
        response = await node.http.get(
            node.url + "/api/download/" + result["filehash"], params={"token": "nosuchtoken"}
        )
        self.assertEqual(response.code, 401)
        self.assertEqual(threads, [threading.main_thread()])

    async def test_wrong_key_gives_garbage_not_a_crash(self) -> None:
        node = await start_node(self)
        token = await funded_token(node)
        result = await json_of(await upload(node, b"secret" * 100, token))
        response = await node.http.get(
            node.url + f"/api/download/{result['filehash']}",
            params={"key": "00" * 32, "token": token},
        )
        self.assertEqual(response.code, 200)
        body = await response.content()
        self.assertEqual(len(body), 600)
        self.assertNotEqual(body, b"secret" * 100)

    async def test_unknown_route_and_method(self) -> None:
        node = await start_node(self)
        response = await node.http.get(node.url + "/nowhere")
        self.assertEqual((response.code, await json_of(response)), (404, {"error": "not-found"}))
        response = await node.http.get(node.url + "/api/nowhere")
        self.assertEqual((response.code, await json_of(response)), (404, {"error": "not-found"}))
        answer = await raw_http(node.port, b"GET /api HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(status_line(answer), 308)
        self.assertTrue(header_of(answer, b"location").endswith(b"/api/"))
        response = await node.http.delete(node.url + "/api/status")
        self.assertEqual(response.code, 405)
        self.assertEqual(await json_of(response), {"error": "method-not-allowed"})

    async def test_page_and_metrics_are_read_only(self) -> None:
        """The page's files and /metrics refuse a write with 405, not 404."""
        node = await start_node(self)
        for method, path in [("POST", "/"), ("PUT", "/app.js"), ("DELETE", "/metrics")]:
            response = await node.http.request(method, node.url + path)
            self.assertEqual(
                (response.code, await json_of(response)), (405, {"error": "method-not-allowed"})
            )
            self.assertEqual(response.headers.getRawHeaders("allow"), ["GET, HEAD"])
        answer = await raw_http(node.port, b"TRACE /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(status_line(answer), 405)
        response = await node.http.post(node.url + "/nowhere")
        self.assertEqual(response.code, 404)


class UploadErrorTests(TestCase):
    async def test_no_file(self) -> None:
        node = await start_node(self)
        token = await funded_token(node)
        content_type, body = multipart(("token", None, token.encode()))
        response = await node.http.post(
            node.url + "/api/upload", data=body, headers={"Content-Type": content_type}
        )
        self.assertEqual((response.code, await json_of(response)), (400, {"error": "no-file"}))
        response = await node.http.post(
            node.url + "/api/upload", data=b"plain", headers={"Content-Type": "text/plain"}
        )
        self.assertEqual((response.code, await json_of(response)), (400, {"error": "no-file"}))

    async def test_token_errors(self) -> None:
        node = await start_node(self)
        response = await upload(node, b"data", None)
        self.assertEqual(
            (response.code, await json_of(response)), (401, {"error": "token-required"})
        )
        response = await upload(node, b"data", "unknownToken123")
        self.assertEqual(
            (response.code, await json_of(response)), (401, {"error": "invalid-token"})
        )
        poor = await funded_token(node, 15)
        response = await upload(node, b"data", poor)  # 4 bytes of file, but 4 x Content-Length
        self.assertEqual(
            (response.code, await json_of(response)), (402, {"error": "balance-insufficient"})
        )
        self.assertEqual(await balance(node, poor), 15)
        self.assertEqual(os.listdir(node.node.store.incoming), [])
        self.assertEqual(node.node.store.cache.used, 0)

    async def test_token_in_query(self) -> None:
        node = await start_node(self)
        token = await funded_token(node, 10_000_000)
        content_type, body = multipart(("file", "q.txt", b"query token"))
        response = await node.http.post(
            node.url + "/api/upload",
            params={"token": token},
            data=body,
            headers={"Content-Type": content_type},
        )
        self.assertEqual(response.code, 201)
        self.assertEqual(await balance(node, token), 10_000_000 - 4 * len(b"query token"))

    async def test_token_after_file(self) -> None:
        """A token that arrives after the file still pays; an unknown one discards the upload."""
        node = await start_node(self)
        token = await funded_token(node, 10_000_000)
        content_type, body = multipart(
            ("file", "late.txt", b"late token"), ("token", None, token.encode())
        )
        response = await node.http.post(
            node.url + "/api/upload", data=body, headers={"Content-Type": content_type}
        )
        self.assertEqual(response.code, 201)
        self.assertEqual(await balance(node, token), 10_000_000 - 40)
        content_type, body = multipart(
            ("file", "x.txt", b"unpaid"), ("token", None, b"nosuchtoken")
        )
        response = await node.http.post(
            node.url + "/api/upload", data=body, headers={"Content-Type": content_type}
        )
        self.assertEqual(
            (response.code, await json_of(response)), (401, {"error": "invalid-token"})
        )
        self.assertEqual(os.listdir(node.node.store.incoming), [])

    async def test_malformed_multipart(self) -> None:
        node = await start_node(self)
        token = await funded_token(node)
        content_type, body = multipart(("token", None, token.encode()), ("file", "a", b"12345"))
        for broken in (body[: len(body) // 2], body.replace(b"--\r\n", b"")):
            response = await node.http.post(
                node.url + "/api/upload", data=broken, headers={"Content-Type": content_type}
            )
            self.assertEqual(response.code, 400)
            self.assertEqual(await json_of(response), {"error": "bad-request"})
        two = multipart(("token", None, token.encode()), ("file", "a", b"1"), ("file", "b", b"2"))
        response = await node.http.post(
            node.url + "/api/upload", data=two[1], headers={"Content-Type": two[0]}
        )
        self.assertEqual((response.code, await json_of(response)), (400, {"error": "bad-request"}))
        self.assertEqual(os.listdir(node.node.store.incoming), [])

    async def test_too_large_before_the_body(self) -> None:
        """413 is decided from Content-Length: the answer comes before any body byte is sent."""
        node = await start_node(self)
        size = node.node.config.storage.max_file_size + 10 * 2**20
        request = (
            f"POST /api/upload HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\nExpect: 100-continue\r\n\r\n"
        ).encode()
        answer = await raw_http(node.port, request)
        self.assertEqual(status_line(answer), 413)
        self.assertEqual(body_of(answer), {"error": "file-too-large"})
        self.assertNotIn(b"100 Continue", answer)

    async def test_too_large_while_streaming(self) -> None:
        """A file part larger than max_file_size is refused as it streams in."""
        config = test_config(Path(self.mktemp()).resolve(), storage={"max_file_size": 1000})
        node = await start_node(self, config)
        token = await funded_token(node)
        response = await upload(node, os.urandom(20_000), token)
        self.assertEqual(
            (response.code, await json_of(response)), (413, {"error": "file-too-large"})
        )
        self.assertEqual(os.listdir(node.node.store.incoming), [])

        # The answer goes out at once; the refund of the reservation follows it.
        async def refunded() -> bool:
            return await balance(node, token) == 10**9

        await eventually(refunded)

    async def test_length_required(self) -> None:
        node = await start_node(self)
        request = (
            b"POST /api/upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\n\r\n0\r\n\r\n"
        )
        answer = await raw_http(node.port, request)
        self.assertEqual(status_line(answer), 411)
        self.assertEqual(body_of(answer), {"error": "length-required"})

    async def test_storage_full(self) -> None:
        """507 when the cache holds only blobs the hosts do not have yet."""
        base = Path(self.mktemp()).resolve()
        config = test_config(base, storage={"capacity": 100_000, "max_file_size": 60_000})
        # Hosts that cannot take anything: the cache may evict nothing.
        (base / "hosts").mkdir(parents=True)
        for host in config.effective_hosts:
            Path(host.setting).write_bytes(b"not a directory")
        node = await start_node(self, config)
        token = await funded_token(node)
        self.assertEqual((await upload(node, os.urandom(50_000), token)).code, 201)
        before = await balance(node, token)
        response = await upload(node, os.urandom(50_000), token)
        self.assertEqual((response.code, await json_of(response)), (507, {"error": "storage-full"}))
        self.assertEqual(await balance(node, token), before)

    async def test_cache_evicts_replicated_blobs(self) -> None:
        """A full cache makes room by evicting blobs already on all their hosts, oldest first."""
        config = test_config(
            Path(self.mktemp()).resolve(), storage={"capacity": 200_000, "max_file_size": 60_000}
        )
        node = await start_node(self, config)
        token = await funded_token(node)
        hashes = []
        for _ in range(5):
            result = await json_of(await upload(node, os.urandom(50_000), token))
            hashes.append(result["filehash"])
            await node.node.sync.idle()
        cache = node.node.store.cache
        self.assertNotIn(hashes[0], cache)
        self.assertIn(hashes[-1], cache)
        self.assertLessEqual(cache.used, 200_000)

    async def test_dropped_connection_loses_nothing(self) -> None:
        """A client that goes away mid-upload is not charged and leaves nothing behind."""
        node = await start_node(self)
        token = await funded_token(node)
        content_type, body = multipart(
            ("token", None, token.encode()), ("file", "a", os.urandom(200_000))
        )
        head = (
            f"POST /api/upload HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
            f"Content-Type: {content_type.decode()}\r\n\r\n"
        ).encode()
        answer = await raw_http(node.port, head + body[:100_000], close_after_send=True)
        self.assertEqual(answer, b"")

        async def refunded() -> bool:
            return await balance(node, token) == 10**9

        await eventually(refunded)
        self.assertEqual(os.listdir(node.node.store.incoming), [])


class StatusTests(TestCase):
    async def test_status(self) -> None:
        config = test_config(
            Path(self.mktemp()).resolve(),
            bandwidth={"monthly_incoming": 10**12, "rate_outgoing": 4 * 2**20},
        )
        node = await start_node(self, config)
        token = await funded_token(node)
        await upload(node, os.urandom(10_000), token)
        status = await json_of(await node.http.get(node.url + "/api/status"))
        bandwidth = status["bandwidth"]
        self.assertEqual(sorted(bandwidth), ["current", "limits", "rate", "rate_limits", "total"])
        self.assertGreater(bandwidth["total"]["incoming"], 10_000)
        self.assertEqual(bandwidth["current"]["incoming"], bandwidth["total"]["incoming"])
        self.assertEqual(bandwidth["limits"], {"incoming": 10**12, "outgoing": 0})
        self.assertEqual(bandwidth["rate_limits"], {"incoming": 0, "outgoing": 4 * 2**20})
        self.assertEqual(status["storage"]["used"], 10_000)
        self.assertEqual(status["storage"]["capacity"], config.storage.capacity)
        self.assertEqual(status["storage"]["max_file_size"], config.storage.max_file_size)
        self.assertEqual(sorted(status["sync"]), ["blockchain_queue", "cloud_queue", "manifests"])
        self.assertEqual(status["sync"]["manifests"], {"pending": 0, "records": 0})
        self.assertEqual(status["datacoin"], status["florincoin"])
        self.assertEqual(status["metachains"], {"coin": "none", "address": None, "block": 0})
        self.assertEqual(
            status["datacoin"], {"balance": 0, "address": None, "coin": "none", "block": 0}
        )

    async def test_monthly_cap(self) -> None:
        config = test_config(Path(self.mktemp()).resolve(), bandwidth={"monthly_outgoing": 5000})
        node = await start_node(self, config)
        token = await funded_token(node)
        result = await json_of(await upload(node, os.urandom(4000), token))
        url = node.url + f"/api/download/{result['filehash']}"
        self.assertEqual((await node.http.get(url, params={"token": token})).code, 200)
        before = await balance(node, token)
        response = await node.http.get(url, params={"token": token})
        self.assertEqual(response.code, 503)
        self.assertEqual(await json_of(response), {"error": "transfer-limit-reached"})
        self.assertGreater(int(response.headers.getRawHeaders("retry-after")[0]), 0)
        self.assertEqual(await balance(node, token), before)


class AccountsDisabledTests(TestCase):
    async def test_free_transfers(self) -> None:
        config = test_config(Path(self.mktemp()).resolve(), accounts={"enabled": False})
        node = await start_node(self, config)
        response = await upload(node, b"free", None)
        self.assertEqual(response.code, 201)
        result = await json_of(response)
        download = await node.http.get(
            node.url + f"/api/download/{result['filehash']}", params={"key": result["key"]}
        )
        self.assertEqual(await download.content(), b"free")
        response = await node.http.post(node.url + "/accounts/token/new")
        self.assertEqual(response.code, 404)


class InternalErrorTests(TestCase):
    async def test_unexpected_failure_is_500_without_detail(self) -> None:
        node = await start_node(self)

        async def broken(store: FileStore, filehash: str) -> None:
            raise RuntimeError("disk on fire at /secret/path")

        self.patch(FileStore, "find", broken)
        response = await node.http.get(node.url + "/api/find/" + "a" * 64)
        self.assertEqual(response.code, 500)
        self.assertEqual(await json_of(response), {"error": "internal-error"})
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
