"""The data directory is the node user's alone."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from metadisk.datadir import Tightened, tighten


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


class TightenTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.root = Path(self.mktemp())
        self.data = self.root / "data"
        (self.data / "blobs" / "ab").mkdir(parents=True)
        self.database = self.data / "metadisk.sqlite"
        self.database.write_bytes(b"tokens")
        self.blob = self.data / "blobs" / "ab" / "blob"
        self.blob.write_bytes(b"ciphertext")
        self.script = self.data / "tool"
        self.script.write_bytes(b"#!/bin/sh\n")
        for path in [self.data, *self.data.rglob("*")]:  # owner only, whatever the umask
            path.chmod(0o700 if path.is_dir() else 0o600)

    def test_group_and_others_lose_every_permission(self) -> None:
        for folder in (self.data, self.data / "blobs", self.data / "blobs" / "ab"):
            folder.chmod(0o755)
        self.database.chmod(0o644)
        self.blob.chmod(0o666)
        self.script.chmod(0o775)
        self.assertEqual(tighten(self.data), Tightened(loosened=6, failed=0))
        self.assertEqual(mode(self.data), 0o700)
        self.assertEqual(mode(self.data / "blobs" / "ab"), 0o700)
        self.assertEqual(mode(self.database), 0o600)
        self.assertEqual(mode(self.blob), 0o600)
        self.assertEqual(mode(self.script), 0o700)  # the owner's own bits are left as they were
        self.assertEqual(tighten(self.data), Tightened(0, 0))  # the next start finds nothing

    def test_a_shallow_folder_is_closed_not_entered(self) -> None:
        """The cache's folder: closed before the node listens, what it holds tightened after."""
        blobs = self.data / "blobs"
        blobs.chmod(0o755)
        self.blob.chmod(0o644)
        self.assertEqual(tighten(self.data, shallow=[blobs]), Tightened(loosened=1, failed=0))
        self.assertEqual(mode(blobs), 0o700)
        self.assertEqual(mode(self.blob), 0o644)
        self.assertEqual(tighten(blobs), Tightened(loosened=1, failed=0))
        self.assertEqual(mode(self.blob), 0o600)

    def test_links_are_not_followed(self) -> None:
        outside = self.root / "outside"
        outside.mkdir()
        (outside / "file").write_bytes(b"not the node's")
        outside.chmod(0o755)
        (outside / "file").chmod(0o644)
        (self.data / "to-folder").symlink_to(outside)
        (self.data / "to-file").symlink_to(outside / "file")
        tighten(self.data)
        self.assertEqual(mode(outside), 0o755)
        self.assertEqual(mode(outside / "file"), 0o644)

    def test_a_missing_folder(self) -> None:
        self.assertEqual(tighten(self.root / "nowhere"), Tightened(0, 0))

    def test_what_cannot_be_changed_is_counted(self) -> None:
        self.database.chmod(0o644)
        real_chmod = os.chmod

        def chmod(path: str, mode: int) -> None:
            if path == str(self.database):
                raise PermissionError(1, "Operation not permitted", path)
            real_chmod(path, mode)

        self.patch(os, "chmod", chmod)
        self.assertEqual(tighten(self.data), Tightened(loosened=1, failed=1))
