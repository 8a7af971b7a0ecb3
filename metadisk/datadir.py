"""
The data directory holds every token in full (the SQLite database), the
secret key and plaintext partial uploads: nothing in it is for anyone but
the node's own user. The node runs with a umask of L{OWNER_ONLY}, so what it
creates is 0600 (folders 0700), and at start it takes group and others'
permissions off whatever an older version or an operator left there.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Collection, Iterator
from pathlib import Path

from attrs import frozen

OWNER_ONLY = 0o077  # the umask: no permission at all for group and others


@frozen
class Tightened:
    loosened: int  # files and folders that group or others had permissions on
    failed: int  # of those, the ones that could not be changed (not the node user's own)


def _entries(folder: Path, shallow: Collection[Path]) -> Iterator[tuple[str, int]]:
    """
    Every file and folder under C{folder}, itself included, with its mode;
    links not followed, the folders C{shallow} not entered.
    """
    yield str(folder), folder.lstat().st_mode
    pending = [str(folder)]
    skipped = {str(path) for path in shallow}
    while pending:
        with os.scandir(pending.pop()) as entries:
            for entry in entries:
                if entry.is_symlink():
                    continue  # a link's own mode means nothing; its target is not ours to change
                yield entry.path, entry.stat(follow_symlinks=False).st_mode
                if entry.is_dir(follow_symlinks=False) and entry.path not in skipped:
                    pending.append(entry.path)


def tighten(folder: Path, shallow: Collection[Path] = ()) -> Tightened:
    """
    Take group and others' permissions off C{folder} and all it holds, if
    it exists; of the folders C{shallow} (under C{folder}), off the folder
    only: closed, it keeps others out of all it holds, which is tightened
    later (the cache's million blobs are not looked at before the node
    listens).
    """
    if not folder.is_dir():
        return Tightened(0, 0)
    loosened = failed = 0
    for path, mode in _entries(folder, shallow):
        if mode & OWNER_ONLY:
            loosened += 1
            try:
                os.chmod(path, stat.S_IMODE(mode) & ~OWNER_ONLY)
            except OSError:
                failed += 1
    return Tightened(loosened, failed)
