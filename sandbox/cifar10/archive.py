"""``cifar-10-python.tar.gz``: a reproducible gzip'd tar, padded to an exact size where asked.

The padding is zeros after the tar end-of-archive marker, in stored deflate blocks, so the archive
stays a valid gzip'd tar of the same folder.
"""

from __future__ import annotations

import struct
import tarfile
import zlib
from pathlib import Path
from typing import BinaryIO

from sandbox.cifar10.layout import BASE_FOLDER, FOLDER_FILES

# mtime of every archive member and of the gzip header, so that the same seed gives the same bytes.
ARCHIVE_MTIME = 1_244_000_000
GZIP_LEVEL = 6
_STORED_BLOCK_MAX = 65_535


class _GzipWriter:
    """A gzip member written by hand, so that it can end with stored blocks of padding."""

    def __init__(self, out: BinaryIO, level: int = GZIP_LEVEL) -> None:
        extra_flags = 2 if level == 9 else 4 if level == 1 else 0
        out.write(b"\x1f\x8b\x08\x00" + struct.pack("<I", ARCHIVE_MTIME) + bytes([extra_flags, 3]))
        self._out = out
        self._written = 10
        self._deflate = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
        self._crc = 0
        self._size = 0

    def _emit(self, data: bytes) -> None:
        self._out.write(data)
        self._written += len(data)

    def write(self, data: bytes) -> int:
        self._crc = zlib.crc32(data, self._crc)
        self._size += len(data)
        self._emit(self._deflate.compress(data))
        return len(data)

    def close(self, total_size: int | None = None) -> int:
        """End the member, padded with zeros to ``total_size`` bytes if that is reachable; return its size."""
        if total_size is None:
            self._emit(self._deflate.flush(zlib.Z_FINISH))
        else:
            self._emit(self._deflate.flush(zlib.Z_SYNC_FLUSH))  # byte-aligned, stream still open
            lengths = _stored_block_lengths(total_size - self._written - 8)
            for number, length in enumerate(lengths, 1):
                zeros = bytes(length)
                self._crc = zlib.crc32(zeros, self._crc)
                self._size += length
                final = number == len(lengths)
                self._emit(bytes([final]) + struct.pack("<HH", length, length ^ 0xFFFF) + zeros)
        self._emit(struct.pack("<II", self._crc, self._size & 0xFFFFFFFF))
        return self._written


def _stored_block_lengths(room: int) -> list[int]:
    """Lengths of stored deflate blocks of zeros taking exactly ``room`` bytes (5 per block plus data).

    The zeros total a multiple of 512 where possible, so the tar stream stays block-aligned. With less
    than 5 bytes of room the target size cannot be met: one empty (final) block is written.
    """
    minimum = max(1, -(-room // (_STORED_BLOCK_MAX + 5)))
    count = next(
        (k for k in range(minimum, minimum + 512) if (room - 5 * k) % 512 == 0 and room - 5 * k >= 0),
        minimum,
    )
    zeros = max(0, room - 5 * count)
    lengths = []
    for _ in range(count):
        lengths.append(min(_STORED_BLOCK_MAX, zeros))
        zeros -= lengths[-1]
    return lengths


def write_archive(out: BinaryIO, folder: Path, total_size: int | None = None) -> int:
    """``cifar-10-python.tar.gz`` of ``folder`` (its 8 files under ``cifar-10-batches-py/``); return its size."""
    gzip_stream = _GzipWriter(out)
    with tarfile.open(fileobj=gzip_stream, mode="w|", format=tarfile.GNU_FORMAT) as tar:  # type: ignore[call-overload]
        tar.addfile(_tar_info(BASE_FOLDER, tarfile.DIRTYPE, 0, 0o755))
        for name in FOLDER_FILES:
            path = folder / name
            info = _tar_info(f"{BASE_FOLDER}/{name}", tarfile.REGTYPE, path.stat().st_size, 0o644)
            with open(path, "rb") as handle:
                tar.addfile(info, handle)
    return gzip_stream.close(total_size)


def _tar_info(name: str, kind: bytes, size: int, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.mode, info.mtime = kind, size, mode, ARCHIVE_MTIME
    return info
