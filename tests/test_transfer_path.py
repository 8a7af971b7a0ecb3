"""
The fast transfer path: encryption over the received file itself, OpenSSL's
AES-CTR giving exactly pycryptodome's bytes, and local-directory hosts that
copy in the kernel (and fall back to a buffer where the kernel cannot).
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from unittest import mock

from Crypto.Cipher import AES
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from metadisk import crypto
from metadisk.crypto import CHUNK_SIZE, ctr_cipher, encrypt_in_place
from metadisk.store import blocking
from metadisk.store.hosts import HostError, local


def reference_ctr(key: bytes, data: bytes) -> bytes:
    """file-encryptor's AES-256-CTR: pycryptodome, 128-bit counter from 1."""
    return AES.new(key, AES.MODE_CTR, nonce=b"", initial_value=1).encrypt(data)


class EncryptInPlaceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.base = Path(self.mktemp())
        self.base.mkdir()

    def test_multi_chunk_file(self) -> None:
        """The file becomes its ciphertext, same length; the filehash is returned."""
        plaintext = os.urandom(2 * CHUNK_SIZE + 12345)
        path = self.base / "upload.part"
        path.write_bytes(plaintext)
        key = os.urandom(32)
        filehash = encrypt_in_place(str(path), key)
        expected = reference_ctr(key, plaintext)
        self.assertEqual(path.read_bytes(), expected)
        self.assertEqual(filehash, hashlib.sha256(expected).hexdigest())

    def test_empty_file(self) -> None:
        path = self.base / "empty.part"
        path.write_bytes(b"")
        self.assertEqual(encrypt_in_place(str(path), os.urandom(32)), hashlib.sha256().hexdigest())
        self.assertEqual(path.read_bytes(), b"")

    def test_missing_file(self) -> None:
        with self.assertRaises(FileNotFoundError):
            encrypt_in_place(str(self.base / "nothing"), os.urandom(32))


class CipherTests(SynchronousTestCase):
    def test_same_bytes_as_pycryptodome_from_any_offset(self) -> None:
        key = os.urandom(32)
        plaintext = os.urandom(5000)
        expected = reference_ctr(key, plaintext)
        for offset in (0, 1, 15, 16, 17, 4095, 4999):
            self.assertEqual(ctr_cipher(key, offset).encrypt(plaintext[offset:]), expected[offset:])

    def test_into_a_buffer_in_place(self) -> None:
        key = os.urandom(32)
        plaintext = os.urandom(3000)
        buffer = bytearray(plaintext)
        view = memoryview(buffer)
        cipher = ctr_cipher(key)
        self.assertIsNone(cipher.encrypt(view[:1000], output=view[:1000]))
        cipher.encrypt(view[1000:], output=view[1000:])
        self.assertEqual(bytes(buffer), reference_ctr(key, plaintext))

    def test_pycryptodome_fallback(self) -> None:
        """Without `cryptography`, pycryptodome does the same, from any offset."""
        key = os.urandom(32)
        plaintext = os.urandom(1000)
        expected = reference_ctr(key, plaintext)
        with mock.patch.object(crypto, "Cipher", None):
            for offset in (0, 7, 16, 999):
                cipher = ctr_cipher(key, offset)
                self.assertNotIsInstance(cipher, crypto._OpenSSLCtr)
                self.assertEqual(cipher.encrypt(plaintext[offset:]), expected[offset:])


class LocalCopyTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.base = Path(self.mktemp())
        self.base.mkdir()
        self.content = os.urandom(3 * (1 << 20) + 17)
        self.source = self.base / "blob"
        self.source.write_bytes(self.content)
        self.destination = self.base / "copy"

    def test_kernel_copy(self) -> None:
        local._copy(self.source, self.destination)
        self.assertEqual(self.destination.read_bytes(), self.content)
        self.assertEqual(sorted(p.name for p in self.base.iterdir()), ["blob", "copy"])

    def test_falls_back_where_the_kernel_cannot(self) -> None:
        """Another filesystem (EXDEV) or no copy_file_range: the copy goes through a buffer."""
        for error in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP):
            failing = mock.Mock(side_effect=OSError(error, os.strerror(error)))
            with mock.patch.object(local.os, "copy_file_range", failing, create=True):
                local._copy(self.source, self.destination)
            self.assertTrue(failing.called)
            self.assertEqual(self.destination.read_bytes(), self.content)
            self.destination.unlink()

    def test_empty_blob(self) -> None:
        self.source.write_bytes(b"")
        local._copy(self.source, self.destination)
        self.assertEqual(self.destination.read_bytes(), b"")

    def test_error_mid_copy_leaves_nothing(self) -> None:
        """A failure after some bytes went across is a host error, and no partial file stays."""
        real = os.copy_file_range
        calls = []

        def flaky(src: int, dst: int, count: int) -> int:
            calls.append(count)
            if len(calls) == 1:
                return real(src, dst, 1 << 20)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        with mock.patch.object(local.os, "copy_file_range", flaky):
            with self.assertRaises(HostError):
                local._copy(self.source, self.destination)
        self.assertEqual(sorted(p.name for p in self.base.iterdir()), ["blob"])


class OlderCryptographyTests(SynchronousTestCase):
    def test_update_into_wanting_more_room(self) -> None:
        """An older `cryptography`, whose update_into refuses an exact-size buffer: same bytes."""
        key = os.urandom(32)
        plaintext = os.urandom(4000)
        cipher = ctr_cipher(key)
        if not isinstance(cipher, crypto._OpenSSLCtr):
            raise SkipTest("pycryptodome is doing the work here")
        context = cipher._context
        strict = mock.Mock(wraps=context)
        strict.update_into.side_effect = ValueError("buffer must be at least 4015 bytes")
        cipher._context = strict
        buffer = bytearray(plaintext)
        cipher.encrypt(memoryview(buffer), output=memoryview(buffer))
        self.assertEqual(bytes(buffer), reference_ctr(key, plaintext))


class ShortKernelCopyTests(SynchronousTestCase):
    def test_a_kernel_copy_that_stops_short_is_finished_by_hand(self) -> None:
        """copy_file_range answering 0 before the end (some filesystems do): the rest is read."""
        base = Path(self.mktemp())
        base.mkdir()
        content = os.urandom(3 * (1 << 20) + 5)
        (base / "blob").write_bytes(content)
        real = os.copy_file_range
        calls = []

        def short(src: int, dst: int, count: int) -> int:
            calls.append(count)
            return real(src, dst, 1 << 20) if len(calls) == 1 else 0

        with mock.patch.object(local.os, "copy_file_range", short):
            local._copy(base / "blob", base / "copy")
        self.assertEqual((base / "copy").read_bytes(), content)
        self.assertEqual(len(calls), 2)


class BatchFlushTests(SynchronousTestCase):
    """A batch of copies is made durable together: per filesystem, not per file."""

    def setUp(self) -> None:
        self.base = Path(self.mktemp())
        self.base.mkdir()
        self.copies = []
        for i in range(20):
            source = self.base / f"blob{i}"
            source.write_bytes(os.urandom(1000))
            destination = self.base / "host" / f"{i:02x}" / f"blob{i}"
            self.copies.append((source, destination))
        (self.base / "host").mkdir()
        self.fsyncs: list[int] = []
        self.syncfs_calls: list[int] = []

    def fsync(self, fd: int, real: Callable[[int], None] = os.fsync) -> None:
        self.fsyncs.append(fd)
        real(fd)

    def need_syncfs(self) -> None:
        if blocking._syncfs is None or os.major(os.stat(self.base).st_dev) == 0:
            raise SkipTest("no syncfs here, or no block device under this folder")

    def test_one_flush_for_the_bytes_one_for_the_renames(self) -> None:
        """Twenty small copies: two syncfs of their filesystem, no fsync of each file or shard."""
        self.need_syncfs()
        real = blocking._syncfs

        def syncfs(fd: int) -> int:
            self.syncfs_calls.append(fd)
            return real(fd)

        with (
            mock.patch.object(blocking, "_syncfs", syncfs),
            mock.patch.object(blocking.os, "fsync", self.fsync),
        ):
            outcome = local._copy_all(self.copies)
        self.assertEqual(outcome, [None] * 20)
        self.assertEqual((len(self.syncfs_calls), self.fsyncs), (2, []))
        for source, destination in self.copies:
            self.assertEqual(destination.read_bytes(), source.read_bytes())

    def test_a_failed_flush_fails_the_whole_batch(self) -> None:
        """The disk refuses the flush: no copy of the batch is put in place, none is left half."""
        self.need_syncfs()
        with mock.patch.object(blocking, "_syncfs", lambda fd: ctypes.set_errno(errno.EIO) or -1):
            outcome = local._copy_all(self.copies)
        self.assertEqual({type(e) for e in outcome}, {HostError})
        self.assertIn("Input/output error", str(outcome[0]))
        self.assertEqual(list((self.base / "host").rglob("blob*")), [])

    def test_no_syncfs_where_no_block_device_is_under(self) -> None:
        """tmpfs, like NFS and FUSE, has no block device: an fsync of each, no syncfs."""
        if not Path("/dev/shm").is_dir() or os.major(os.stat("/dev/shm").st_dev) != 0:
            raise SkipTest("no tmpfs at /dev/shm")
        folder = Path(tempfile.mkdtemp(dir="/dev/shm"))
        self.addCleanup(shutil.rmtree, folder)
        paths = [folder / f"f{i}" for i in range(3)]
        for path in paths:
            path.write_bytes(b"x")
        with (
            mock.patch.object(blocking, "_syncfs", self.syncfs_calls.append),
            mock.patch.object(blocking.os, "fsync", self.fsync),
        ):
            blocking.sync_together([*paths, folder])
        self.assertEqual((self.syncfs_calls, len(self.fsyncs)), ([], 4))

    def test_without_syncfs_each_is_flushed(self) -> None:
        """Where the system has no syncfs: an fsync of each copy and each folder."""
        with (
            mock.patch.object(blocking, "_syncfs", None),
            mock.patch.object(blocking.os, "fsync", self.fsync),
        ):
            outcome = local._copy_all(self.copies)
        self.assertEqual(outcome, [None] * 20)
        self.assertEqual(len(self.fsyncs), 20 + 20 + 1)  # the copies, their shards, the host
        for source, destination in self.copies:
            self.assertEqual(destination.read_bytes(), source.read_bytes())
