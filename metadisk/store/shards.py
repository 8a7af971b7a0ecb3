"""
Folders of blobs named by filehash, sharded by the hash's first two digits
(C{ab/abcdef…}, as Tahoe-LAFS does): no folder holds more than about 1/256th
of the blobs, so a lookup, a listing or a rename never works through a
million entries. Folders of the older flat layout are moved into shards.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

from metadisk.crypto import is_hex64

_SHARD = re.compile(r"[0-9a-f]{2}")


def remove(path: str | Path) -> None:
    """Remove a leftover file or folder (what a crash, or a tool, left behind)."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def sharded(root: Path, filehash: str) -> Path:
    """Where the blob C{filehash} lives under C{root}."""
    return root / filehash[:2] / filehash


def flat(root: Path, filehash: str) -> Path:
    """Where the older layout kept it: a blob not yet moved is found there."""
    return root / filehash


def is_shard(name: str) -> bool:
    return _SHARD.fullmatch(name) is not None


def shards(root: Path) -> Iterator[Path]:
    """The shard folders under C{root} (a missing root has none)."""
    try:
        with os.scandir(root) as entries:
            folders = [Path(e.path) for e in entries if is_shard(e.name) and e.is_dir()]
    except FileNotFoundError:
        return iter(())
    return iter(sorted(folders))


def move_into_shard(root: Path, filehash: str) -> Path:
    """
    Move a blob of the flat layout into its shard. One rename: at every
    moment the blob is in one place or the other, so a crash loses nothing
    and the next start moves what is left. A blob found in both places
    (a copy written into the shard before the move) is the same bytes: the
    flat one replaces it.
    """
    destination = sharded(root, filehash)
    destination.parent.mkdir(exist_ok=True)
    source = flat(root, filehash)
    os.replace(source, destination)
    # Two links to one file (a copy made by linking): the rename does nothing.
    source.unlink(missing_ok=True)
    return destination


def flat_blobs(root: Path, limit: int) -> list[str]:
    """
    Up to C{limit} filehashes of the blobs still in C{root} itself (the flat
    layout). Taken in batches, the listing closed before they move: a folder
    is not renamed out of while it is read.
    """
    found: list[str] = []
    try:
        with os.scandir(root) as entries:
            for entry in entries:
                if is_hex64(entry.name) and entry.is_file(follow_symlinks=False):
                    found.append(entry.name)
                    if len(found) >= limit:
                        break
    except FileNotFoundError:
        pass
    return found
