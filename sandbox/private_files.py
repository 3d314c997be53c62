"""Secrets in the state folder (the stack token, the CA key): written whole, user-only, read without links.

One way to make them, so every secret gets the same care: a 0600 temporary file in the same folder,
fsynced, handed to the state folder's owner when root made it (the service and proxy containers run as
root), then hard-linked into place so that of two processes creating it at once the first one wins and
nobody ever reads half a file; the folder is fsynced after.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path


def create_once(path: Path, data: bytes, *, owner: os.stat_result) -> None:
    """Create ``path`` holding ``data`` (mode 0600, owned as ``owner``) unless it exists; never half-written."""
    temporary = _written(path, data, owner)
    try:
        try:
            os.link(temporary, path)  # fails if it exists: the first creator wins
        except FileExistsError:
            pass
        except OSError as exc:  # a file system without hard links
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                raise
            os.replace(temporary, path)
        fsync_folder(path.parent)
    finally:
        Path(temporary).unlink(missing_ok=True)


def replace_private(path: Path, data: bytes, *, owner: os.stat_result) -> None:
    """Replace ``path`` with ``data`` whole (mode 0600, owned as ``owner``): readers see the old or the new file."""
    temporary = _written(path, data, owner)
    try:
        os.replace(temporary, path)
        fsync_folder(path.parent)
    finally:
        Path(temporary).unlink(missing_ok=True)


def _written(path: Path, data: bytes, owner: os.stat_result) -> str:
    """A 0600 temporary file beside ``path`` holding ``data``, fsynced and owned as ``owner``; its name."""
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        give_to(Path(temporary), owner)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return temporary


def read_private(path: Path, limit: int) -> bytes:
    """At most ``limit`` bytes of ``path``; a link in its place is refused (``OSError``), never followed."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as handle:
        return handle.read(limit)


def give_to(path: Path, owner: os.stat_result) -> None:
    """Files made by root (a stack container) belong to the state folder's owner."""
    if os.geteuid() == 0 and (owner.st_uid, owner.st_gid) != (0, 0):
        os.chown(path, owner.st_uid, owner.st_gid)


def fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
