"""A restart loses no accepted upload: replication finishes after it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from metadisk.store.cache import INDEX, BlobCache
from metadisk.store.shards import sharded
from tests.support import eventually, funded_token, json_of, start_node, test_config, upload


class RestartTests(TestCase):
    async def test_replication_resumes_after_restart(self) -> None:
        base = Path(self.mktemp()).resolve()
        config = test_config(base)
        # Hosts that cannot take anything yet: plain files where their directories should be.
        (base / "hosts").mkdir(parents=True)
        for host in config.effective_hosts:
            Path(host.setting).write_bytes(b"not yet")
        node = await start_node(self, config)
        token = await funded_token(node)
        data = os.urandom(123_456)
        response = await upload(node, data, token)
        self.assertEqual(response.code, 201)
        result = await json_of(response)
        await node.node.sync.idle()
        self.assertEqual(await node.node.sync.queue.pending(), (1, 123_456))
        self.assertEqual((await node.node.store.find(result["filehash"])).uploads, ())
        await node.stop()

        # The hosts come back; the node starts again on the same data dir.
        for host in config.effective_hosts:
            Path(host.setting).unlink()
        again = await start_node(self, config)
        await again.node.sync.kick()  # the queue is due at once after a restart
        record = await again.node.store.find(result["filehash"])
        self.assertEqual(len(record.uploads), 3)
        self.assertEqual(await again.node.sync.queue.pending(), (0, 0))

        # The file still downloads intact, even once it is only on the hosts.
        shutil.rmtree(base / "data" / "blobs")
        (base / "data" / "blobs").mkdir()
        again.node.store.cache.load()
        download = await again.http.get(
            again.url + f"/api/download/{result['filehash']}",
            params={"key": result["key"], "token": token},
        )
        self.assertEqual(await download.content(), data)

    async def test_unmounted_disk_is_not_a_lost_host(self) -> None:
        """
        A local host whose disk is not mounted when the node starts (its mount
        point an empty folder) is unreachable: repair keeps its copies listed
        and nothing is written there. Mounted again, its copies count.
        """
        base = Path(self.mktemp()).resolve()
        config = test_config(base)
        node = await start_node(self, config)
        token = await funded_token(node)
        result = await json_of(await upload(node, os.urandom(10_000), token))
        await node.node.sync.idle()
        await node.stop()

        disk = Path(config.effective_hosts[0].setting)
        disk.rename(base / "disk")
        disk.mkdir()  # the mount point, without its disk
        again = await start_node(self, config)
        self.assertEqual(os.listdir(disk), [])
        repair = await again.node.repair.run_once()
        self.assertEqual((repair.checked, repair.missing, repair.unknown), (3, (), 1))
        record = await again.node.store.find(result["filehash"])
        self.assertEqual(len(record.uploads), 3)
        self.assertEqual(await again.node.sync.queue.pending(), (0, 0))
        self.assertEqual(os.listdir(disk), [])
        await again.stop()

        disk.rmdir()
        (base / "disk").rename(disk)
        mounted = await start_node(self, config)
        repair = await mounted.node.repair.run_once()
        self.assertEqual((repair.checked, repair.missing, repair.unknown), (3, (), 0))

    async def test_flat_layout_of_an_older_node(self) -> None:
        """
        A node from before shards: its cache and its hosts hold their blobs
        flat, and its cache has no index. It listens at once, serves a cached
        blob while the cache is still being checked, and then has every blob
        in its shard, indexed and counted.
        """
        base = Path(self.mktemp()).resolve()
        config = test_config(base)
        node = await start_node(self, config)
        token = await funded_token(node)
        data = os.urandom(20_000)
        result = await json_of(await upload(node, data, token))
        filehash = result["filehash"]
        await node.node.sync.idle()
        await node.stop()

        # The older layout: every blob flat, no index.
        blobs = base / "data" / "blobs"
        folders = [blobs] + [Path(host.setting) for host in config.effective_hosts]
        for folder in folders:
            os.replace(sharded(folder, filehash), folder / filehash)
            (folder / filehash[:2]).rmdir()
        for name in os.listdir(blobs):
            if name.startswith(INDEX):
                (blobs / name).unlink()

        # The check waits until the download is done: it runs after listening.
        checked: Deferred[None] = Deferred()
        check = BlobCache.check

        async def held_check(cache: BlobCache) -> None:
            await checked
            await check(cache)

        self.patch(BlobCache, "check", held_check)
        again = await start_node(self, config)
        download = await again.http.get(
            again.url + f"/api/download/{filehash}", params={"key": result["key"], "token": token}
        )
        self.assertEqual(await download.content(), data)
        self.assertEqual(await again.node.sync.queue.pending(), (0, 0))  # nothing fetched again
        checked.callback(None)

        async def moved() -> bool:
            return all(sharded(folder, filehash).is_file() for folder in folders)

        await eventually(moved)
        await eventually(lambda: again.node.store.cache.used == len(data))
        for folder in folders:
            self.assertFalse((folder / filehash).exists())
