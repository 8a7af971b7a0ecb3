"""
Convergent encryption, compatible with Storj's file-encryptor.

key        = HMAC-SHA256(convergence_secret, hex(SHA-256(plaintext)))
ciphertext = AES-256-CTR(key), 128-bit big-endian counter starting at 1
filehash   = hex(SHA-256(ciphertext))

Everything here streams: files are read and written in chunks, never held whole.
The blocking file functions are meant to run in a thread pool.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Iterator
from typing import BinaryIO

from Crypto.Cipher import AES

DEFAULT_CONVERGENCE_SECRET = b"Something old, something new."

# Big enough that per-chunk overhead vanishes, small enough to keep memory flat.
CHUNK_SIZE = 1 << 20
_BLOCK = 16


def convergent_key(secret: bytes, plaintext_sha256_hex: str) -> bytes:
    """The 32-byte AES key of a file whose plaintext has the given SHA-256."""
    return hmac.new(secret, plaintext_sha256_hex.encode("ascii"), hashlib.sha256).digest()


def ctr_cipher(key: bytes, offset: int = 0):
    """
    An AES-CTR cipher positioned at byte C{offset} of the stream.

    CTR lets us start at any block: the counter of block i is 1 + i, and the
    bytes of a partial first block are consumed by encrypting zeros.
    """
    block, skip = divmod(offset, _BLOCK)
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
    cipher = ctr_cipher(key)
    digest = hashlib.sha256()
    buffer = bytearray(CHUNK_SIZE)
    view = memoryview(buffer)
    with open(source, "rb") as src, open(destination, "wb") as dst:
        while True:
            n = src.readinto(buffer)
            if not n:
                break
            chunk = view[:n]
            cipher.encrypt(chunk, output=chunk)
            digest.update(chunk)
            dst.write(chunk)
        dst.flush()
        os.fsync(dst.fileno())
    return digest.hexdigest()


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
