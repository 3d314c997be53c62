"""Directory listings of dataset mounts in name order, as blobfuse gives them on Azure.

A FUSE mount of a blob container lists entries in blob-name order; a bind mount lists them in the
host filesystem's order (a hash order on ext4). The script runs in this process, so ``os.listdir``
and ``os.scandir`` are wrapped to sort what they return for paths inside a dataset mount only.
"""

from __future__ import annotations

import os
from typing import Any


class _SortedScandir:
    """What ``os.scandir`` returns (an iterator and a context manager), over sorted entries."""

    def __init__(self, entries: list[os.DirEntry]) -> None:
        self._entries = iter(entries)

    def __iter__(self) -> _SortedScandir:
        return self

    def __next__(self) -> os.DirEntry:
        return next(self._entries)

    def __enter__(self) -> _SortedScandir:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def close(self) -> None:
        return None


def install(mount_points: list[str]) -> None:
    if not mount_points:
        return
    roots = [os.path.realpath(p) for p in mount_points]
    original_listdir, original_scandir = os.listdir, os.scandir

    def inside(path: Any) -> bool:
        if isinstance(path, int):
            return False
        try:
            real = os.path.realpath(os.fsdecode(os.fspath(path)))
        except TypeError:
            return False
        return any(real == root or real.startswith(root + os.sep) for root in roots)

    def listdir(path: Any = ".") -> list[Any]:
        entries = original_listdir(path)
        return sorted(entries) if inside(path) else entries

    def scandir(path: Any = ".") -> Any:
        if not inside(path):
            return original_scandir(path)
        with original_scandir(path) as iterator:
            return _SortedScandir(sorted(iterator, key=lambda entry: entry.name))

    os.listdir = listdir
    os.scandir = scandir
