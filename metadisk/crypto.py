"""
Convergent encryption, compatible with Storj's file-encryptor.

key        = HMAC-SHA256(convergence_secret, hex(SHA-256(plaintext)))
ciphertext = AES-256-CTR(key), 128-bit big-endian counter starting at 1
filehash   = hex(SHA-256(ciphertext))

Everything here streams: files are read and written in chunks, never held whole.
The blocking file functions are meant to run in a thread pool.
"""

from __future__ import annotations

import ctypes
import hashlib
import hmac
import os
import re
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO, Protocol

from Crypto.Cipher import AES

try:
    # OpenSSL's AES-CTR (through `cryptography`, which Twisted's TLS already requires)
    # runs about 2.5 times as fast as pycryptodome's here, and writes its output straight
    # into the bytes it returns. Both give the same bytes; pycryptodome is the fallback.
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
except ImportError:  # pragma: no cover - cryptography comes with twisted[tls]
    Cipher = None

DEFAULT_CONVERGENCE_SECRET = b"Something old, something new."

# Big enough that per-chunk overhead vanishes, small enough to keep memory flat.
CHUNK_SIZE = 1 << 20
_BLOCK = 16


def convergent_key(secret: bytes, plaintext_sha256_hex: str) -> bytes:
    """The 32-byte AES key of a file whose plaintext has the given SHA-256."""
    return hmac.new(secret, plaintext_sha256_hex.encode("ascii"), hashlib.sha256).digest()


class CtrCipher(Protocol):
    def encrypt(self, data: Any, output: Any = None) -> bytes | None:
        """The data, encrypted (which is decrypted too, in CTR); or into C{output}."""


class _OpenSSLCtr:
    """pycryptodome's C{encrypt(data, output=None)} on OpenSSL's AES-CTR."""

    __slots__ = ("_context",)

    def __init__(self, key: bytes, counter: int) -> None:
        cipher = Cipher(algorithms.AES(key), modes.CTR(counter.to_bytes(16, "big")))
        self._context = cipher.encryptor()

    def encrypt(self, data: Any, output: Any = None) -> bytes | None:
        if output is None:
            return self._context.update(data)
        try:
            # In place (output is data) or not; CTR needs no room beyond the data's length.
            self._context.update_into(data, output)
        except ValueError:
            # Older `cryptography` wants a block more room than CTR writes: copy instead.
            output[: len(data)] = self._context.update(data)
        return None


def ctr_cipher(key: bytes, offset: int = 0) -> CtrCipher:
    """
    An AES-CTR cipher positioned at byte C{offset} of the stream.

    CTR lets us start at any block: the counter of block i is 1 + i, and the
    bytes of a partial first block are consumed by encrypting zeros.
    """
    block, skip = divmod(offset, _BLOCK)
    cipher: CtrCipher
    if Cipher is not None:
        cipher = _OpenSSLCtr(key, 1 + block)
    else:
        cipher = AES.new(key, AES.MODE_CTR, nonce=b"", initial_value=1 + block)
    if skip:
        cipher.encrypt(b"\x00" * skip)
    return cipher


def read_chunks(f: BinaryIO, size: int = CHUNK_SIZE, limit: int | None = None) -> Iterator[bytes]:
    """Yield chunks of C{f} until EOF or until C{limit} bytes were read."""
    remaining = limit
    while remaining is None or remaining > 0:
        want = size if remaining is None else min(size, remaining)
        chunk = f.read(want)
        if not chunk:
            return
        if remaining is not None:
            remaining -= len(chunk)
        yield chunk


def encrypt_file(source: str, destination: str, key: bytes) -> str:
    """
    Encrypt C{source} into C{destination} (blocking) and return the filehash,
    the hex SHA-256 of the ciphertext. The destination is fsynced, so a blob
    that is later recorded in the database survives a crash.
    """
    src = os.open(source, os.O_RDONLY)
    try:
        dst = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            return _encrypt(src, dst, key)
        finally:
            os.close(dst)
    finally:
        os.close(src)


def encrypt_in_place(path: str, key: bytes) -> str:
    """
    Encrypt the file at C{path} over itself (blocking) and return the
    filehash. CTR keeps the length, so each chunk goes back where it was
    read: one pass, no second file, and the pages already cached for the
    plaintext are reused instead of allocating as many again for the blob.
    """
    fd = os.open(path, os.O_RDWR)
    try:
        return _encrypt(fd, fd, key)
    finally:
        os.close(fd)


def _encrypt(src: int, dst: int, key: bytes) -> str:
    """
    Encrypt what C{src} holds into C{dst} at the same offsets (the same
    descriptor: in place), fsync C{dst}, and return the ciphertext's hex
    SHA-256. Writeback is started as it goes, so the fsync has little left.
    """
    cipher = ctr_cipher(key)
    digest = hashlib.sha256()
    # No larger than the file: most are small, and a 1 MiB buffer costs its page faults.
    buffer = bytearray(min(CHUNK_SIZE, os.fstat(src).st_size))
    view = memoryview(buffer)
    offset = 0
    while n := os.preadv(src, [buffer], offset):
        chunk = view[:n]
        cipher.encrypt(chunk, output=chunk)
        digest.update(chunk)
        written = 0
        while written < n:
            written += os.pwrite(dst, chunk[written:], offset + written)
        _start_writeback(dst, offset, n)
        offset += n
    os.fsync(dst)
    return digest.hexdigest()


def _libc_sync_file_range() -> Callable[[int, int, int], None] | None:
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (AttributeError, OSError):
        return None  # not Linux: the fsync at the end does it all
    function.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    write = 2  # SYNC_FILE_RANGE_WRITE: start writing these dirty pages out, do not wait

    def start(fd: int, offset: int, length: int) -> None:
        function(fd, offset, length, write)

    return start


_sync_file_range = _libc_sync_file_range()


def _start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing a range out now (a hint: errors surface at fsync)."""
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, length)


def sha256_file(path: str) -> str:
    """Hex SHA-256 of a file, read in chunks (blocking)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in read_chunks(f):
            digest.update(chunk)
    return digest.hexdigest()


_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


def is_hex64(value: str) -> bool:
    """True for exactly 64 hexadecimal digits (a filehash or a key)."""
    return _HEX64.fullmatch(value) is not None
