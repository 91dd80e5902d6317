"""The data dir is its owner's alone: directories 0700, files 0600.

The ``appliance`` command (the one entry point of the web, worker and inference services
and of every CLI command) sets the umask to 0077 before anything else, so whatever they
create is private; SQLite gives a database's ``-wal`` and ``-shm`` files the database's
own mode. ``appliance init`` (which the installer runs on every upgrade) brings an older
data dir in line, and ``appliance doctor`` names whatever is still readable by others.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

#: No access for the group or others.
PRIVATE_UMASK = 0o077


def restrict_umask() -> None:
    """Make everything this process (and its children) creates private to its user."""
    os.umask(PRIVATE_UMASK)


def _walk(root: Path) -> Iterator[tuple[Path, int]]:
    """``root`` and everything under it with its mode; symbolic links are not followed
    (a linked models directory is someone else's to manage)."""
    try:
        yield root, root.lstat().st_mode
    except FileNotFoundError:
        return
    for directory, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(directory, name)
            try:
                mode = path.lstat().st_mode
            except FileNotFoundError:  # removed while we looked (a finished -wal file)
                continue
            if not stat.S_ISLNK(mode):
                yield path, mode


def loose_paths(root: Path) -> list[tuple[Path, int]]:
    """Paths under ``root`` that the group or others may use, with their permission bits."""
    return [(path, stat.S_IMODE(mode)) for path, mode in _walk(root) if mode & 0o077]


def make_private(root: Path) -> list[Path]:
    """Remove the group's and others' permissions from ``root`` and everything in it.

    Returns the paths changed. A path this user may not change (another owner, a
    read-only mount) is left as it is, for ``appliance doctor`` to report.
    """
    changed = []
    for path, mode in _walk(root):
        if mode & 0o077:
            try:
                os.chmod(path, stat.S_IMODE(mode) & ~0o077)
            except OSError:  # another owner, or a read-only mount
                continue
            changed.append(path)
    return changed


@contextlib.contextmanager
def private_file(path: Path) -> Iterator[BinaryIO]:
    """Write ``path`` in one step, mode 0600 whatever the umask: the block writes a hidden
    temporary file beside it, which replaces ``path`` once synced to disk (a reader sees
    the old file or the whole new one), or is removed when the block fails."""
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o600)
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
