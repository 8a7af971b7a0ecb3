"""Convergent encryption: known answers (file-encryptor's format) and streaming equivalence."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from metadisk.crypto import (
    CHUNK_SIZE,
    DEFAULT_CONVERGENCE_SECRET,
    convergent_key,
    ctr_cipher,
    encrypt_file,
    is_hex64,
    sha256_file,
)

# (plaintext, key, filehash, first 16 bytes of ciphertext), computed with the
# `cryptography` package's AES-CTR (counter block 1), not with pycryptodome.
VECTORS = [
    (
        b"hello world\n",
        "6e0ced7ee29f5bf4cec792f3aff17b19596332b4da017575400a2808f4a55382",
        "58e128cb2c71951e0a86b57ed9e3ef38b39ad28187e2db0b4af23c9f671b4587",
        "5fda6ef19e55bd8aad4d4ec9",
    ),
    (
        bytes(range(256)) * 5,
        "cad93df7ac50562666e8fe9b31c7c5b16d58e0b74fd18921b914b18d0f5b7ae1",
        "d02f0d7267469df7c0bcbd7781a00003b485b80f9649377f8ca23a5a80edbaf2",
        "c43562bafa4a277ae467f860e39d68fa",
    ),
    (
        b"",
        "db1e68eb95e8dcf0164289309c3989f2ab007eddaeb39363d8f000ee0fc2f5ce",
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "",
    ),
]


class KnownAnswerTests(SynchronousTestCase):
    def test_vectors(self) -> None:
        for plaintext, key_hex, filehash, head in VECTORS:
            key = convergent_key(DEFAULT_CONVERGENCE_SECRET, hashlib.sha256(plaintext).hexdigest())
            self.assertEqual(key.hex(), key_hex)
            ciphertext = ctr_cipher(key).encrypt(plaintext)
            self.assertEqual(len(ciphertext), len(plaintext))
            self.assertEqual(hashlib.sha256(ciphertext).hexdigest(), filehash)
            self.assertEqual(ciphertext[: len(bytes.fromhex(head))].hex(), head)

    def test_secret_changes_key(self) -> None:
        digest = hashlib.sha256(b"x").hexdigest()
        self.assertNotEqual(convergent_key(b"private", digest), convergent_key(b"other", digest))


class StreamingTests(SynchronousTestCase):
    def test_encrypt_file_matches_one_shot(self) -> None:
        """A file of several chunks encrypts to exactly the one-shot ciphertext."""
        base = Path(self.mktemp())
        base.mkdir()
        plaintext = os.urandom(2 * CHUNK_SIZE + 12345)
        source, blob = base / "plain", base / "blob"
        source.write_bytes(plaintext)
        key = convergent_key(DEFAULT_CONVERGENCE_SECRET, sha256_file(str(source)))
        filehash = encrypt_file(str(source), str(blob), key)
        expected = ctr_cipher(key).encrypt(plaintext)
        self.assertEqual(blob.read_bytes(), expected)
        self.assertEqual(filehash, hashlib.sha256(expected).hexdigest())
        self.assertEqual(sha256_file(str(blob)), filehash)

    def test_seek_anywhere(self) -> None:
        """Decrypting from any offset gives the same bytes as decrypting from the start."""
        key = bytes(range(32))
        plaintext = os.urandom(1000)
        ciphertext = ctr_cipher(key).encrypt(plaintext)
        for offset in (0, 1, 15, 16, 17, 31, 32, 500, 999):
            self.assertEqual(
                ctr_cipher(key, offset).encrypt(ciphertext[offset:]), plaintext[offset:]
            )


class HexTests(SynchronousTestCase):
    def test_is_hex64(self) -> None:
        self.assertTrue(is_hex64("ab" * 32))
        self.assertTrue(is_hex64("AB" * 32))
        for bad in (
            "ab" * 31,
            "ab" * 33,
            "zz" * 32,
            "ab " * 21 + "a",
            "../" * 21 + "a",
            "",
            "\u0661" * 64,  # Arabic-Indic digits are digits, not hex
        ):
            self.assertFalse(is_hex64(bad), bad)
