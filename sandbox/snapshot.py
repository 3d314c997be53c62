"""Snapshot of a run's ``source_directory``, with Azure ML's ignore rules, limits and messages (PARITY.md 6).

``.amlignore`` in the folder wins, else ``.gitignore`` (gitwildmatch syntax); with neither, nothing
is excluded. The whole non-ignored folder may hold at most 300 MB; at most 2000 files may be added or
changed since the previous snapshot of the same folder (``AML_SNAPSHOT_NO_FILE_LIMIT`` lifts that);
25 MB or more gives Azure's warning. The run executes from the snapshot, never the live folder.

The service treats an uploaded archive as hostile: :func:`check_archive` (at upload) and :func:`extract`
stop at the same 300 MB of files, at :data:`MAX_MEMBERS` members and at a bounded tar stream, before
the data is in memory or on disk. :func:`remove_orphans` deletes snapshots uploaded but never submitted.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import tarfile
import tempfile
import time
import uuid
import warnings
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

#: azureml-core's limits (azureml/_restclient/constants.py): 300 MB of files, 2000 added or changed files.
SNAPSHOT_MAX_SIZE_BYTES = 300 * 1024 * 1024
SNAPSHOT_MAX_FILES = 2000
ONE_MB = 1024 * 1024
WARNING_SIZE_MB = 25
#: The service's bounds on an uploaded archive (Azure counts files client-side only): members of one
#: snapshot, and the tar headers and padding allowed per member on top of the 300 MB of files.
MAX_MEMBERS = 100_000
_TAR_OVERHEAD_PER_MEMBER = 2048
MAX_TAR_STREAM_BYTES = SNAPSHOT_MAX_SIZE_BYTES + MAX_MEMBERS * _TAR_OVERHEAD_PER_MEMBER + ONE_MB
#: An upload larger than this cannot unpack to 300 MB of files or less (gzip never grows data by much).
MAX_ARCHIVE_BYTES = MAX_TAR_STREAM_BYTES + MAX_TAR_STREAM_BYTES // 100
#: One read of the tar stream (a header, a long name): larger means a crafted archive.
_MAX_READ = 4 * ONE_MB
#: Uploaded snapshots no run refers to are removed after this long.
ORPHAN_AGE_SECONDS = 3600.0
_SNAPSHOT_FILE = re.compile(r"(?P<id>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"
                            r"\.(?:tar\.gz|tar\.part|build\.log)")
_FRAME = "===================================================================="


class SnapshotLimitError(Exception):
    """Raised with Azure's framed message; the facade turns it into azureml's SnapshotException."""


def size_limit_message(source: str | os.PathLike[str]) -> str:
    """azureml-core's framed message for a snapshot over 300 MB (SnapshotsClient._validate_snapshot_size)."""
    return (f"{_FRAME}\n\nWhile attempting to take snapshot of {source}\n"
            f"Your total snapshot size exceeds the limit of {SNAPSHOT_MAX_SIZE_BYTES / ONE_MB} MB.\n"
            f"Please see http://aka.ms/aml-largefiles on how to work with large files.\n\n{_FRAME}\n\n")


@dataclass(frozen=True)
class Snapshot:
    """A packed snapshot: ``archive`` is a .tar.gz the caller removes when done."""

    snapshot_id: str
    archive: Path
    files: tuple[str, ...]
    size: int


def _ignore_spec(directory: Path):
    import pathspec

    for name in (".amlignore", ".gitignore"):
        path = directory / name
        if path.is_file():
            return pathspec.PathSpec.from_lines("gitwildmatch", path.read_text(encoding="utf-8").splitlines())
    return None


def collect(directory: Path) -> list[tuple[str, Path, int]]:
    """(relative posix path, absolute path, size) of every file the snapshot takes."""
    spec = _ignore_spec(directory)
    found: list[tuple[str, Path, int]] = []
    for root, dirs, files in os.walk(directory):
        rel_root = os.path.relpath(root, directory)
        rel_root = "" if rel_root == "." else rel_root.replace(os.sep, "/") + "/"
        if spec is not None:
            dirs[:] = [d for d in dirs if not spec.match_file(f"{rel_root}{d}/")]
        dirs.sort()
        for name in sorted(files):
            rel = f"{rel_root}{name}"
            if spec is not None and spec.match_file(rel):
                continue
            path = Path(root) / name
            try:
                size = path.stat().st_size
                if not os.access(path, os.R_OK):
                    raise PermissionError(path)
            except OSError:
                print(f"Cannot access file, so excluded from snapshot: {path}")
                continue
            found.append((rel, path, size))
    return found


def _manifest_path(cache_dir: Path, directory: Path) -> Path:
    key = hashlib.sha256(str(directory.resolve()).encode()).hexdigest()[:32]
    return cache_dir / f"{key}.json"


def take(source_directory: str | os.PathLike[str], cache_dir: Path, work_dir: Path | None = None) -> Snapshot:
    """Check the limits, pack the snapshot (in ``work_dir``), remember its manifest for the next file-count check."""
    directory = Path(source_directory).resolve()
    if not directory.is_dir():
        raise FileNotFoundError(f"source_directory {str(source_directory)!r} is not a directory "
                                f"(resolved to {directory}); pass the folder that holds your script")
    files = collect(directory)
    total = sum(size for _, _, size in files)
    if total > SNAPSHOT_MAX_SIZE_BYTES:
        raise SnapshotLimitError(size_limit_message(source_directory))
    manifest_file = _manifest_path(cache_dir, directory)
    manifest = {rel: [size, path.stat().st_mtime_ns] for rel, path, size in files}
    previous = {}
    if manifest_file.is_file():
        try:
            previous = json.loads(manifest_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            previous = {}
    changed = sum(1 for rel, entry in manifest.items() if previous.get(rel) != entry)
    if changed > SNAPSHOT_MAX_FILES and not os.environ.get("AML_SNAPSHOT_NO_FILE_LIMIT"):
        raise SnapshotLimitError(
            f"{_FRAME}\n\nWhile attempting to take snapshot of {source_directory}\n"
            f"Your project exceeds the file limit of {SNAPSHOT_MAX_FILES}.\n\n{_FRAME}\n\n")
    if total >= WARNING_SIZE_MB * ONE_MB:
        warnings.warn(f"Submitting {source_directory} directory for run. The size of the directory >= "
                      f"{WARNING_SIZE_MB} MB, so it can take a few minutes.", stacklevel=3)

    if work_dir is not None:
        work_dir.mkdir(parents=True, exist_ok=True)
    handle, archive_name = tempfile.mkstemp(prefix="aml-snapshot-", suffix=".tar.gz", dir=work_dir)
    os.close(handle)
    archive = Path(archive_name)
    try:
        with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
            for rel, path, _ in files:
                tar.add(path, arcname=rel, recursive=False)
    except BaseException:
        archive.unlink(missing_ok=True)
        raise
    cache_dir.mkdir(parents=True, exist_ok=True)
    manifest_file.write_text(json.dumps(manifest), encoding="utf-8")
    return Snapshot(str(uuid.uuid4()), archive, tuple(rel for rel, _, _ in files), total)


class _BoundedStream:
    """The decompressed tar stream, read forward only, refusing to pass ``limit`` bytes or to read more than
    4 MiB at once: a crafted archive (a gzip bomb, a huge pax header) stops before tarfile holds it.

    tarfile steps back one byte after each member; the last bytes read are kept to answer that, because
    gzip would decompress the whole stream again from the start for every backward seek.
    """

    _KEEP = 4096

    def __init__(self, raw: IO[bytes], limit: int, source: str) -> None:
        self._raw = raw
        self._limit = limit
        self._source = source
        self._pos = 0
        self._pending = b""  # bytes at _pos that were read from raw already (after a step back)
        self._recent = b""  # the last bytes read from raw, ending at raw's position

    def read(self, size: int = -1) -> bytes:
        if size < 0 or size > _MAX_READ:
            raise SnapshotLimitError(f"snapshot {self._source}: a tar header or read of {size} bytes is larger than "
                                     f"{_MAX_READ} bytes; the archive was not made by the client")
        if self._pos + size > self._limit:
            raise SnapshotLimitError(size_limit_message(self._source))
        data, self._pending = self._pending[:size], self._pending[size:]
        if len(data) < size:
            fresh = self._raw.read(size - len(data))
            self._recent = (self._recent + fresh)[-self._KEEP:]
            data += fresh
        self._pos += len(data)
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        target = offset + (self._pos if whence == os.SEEK_CUR else 0)
        raw_pos = self._pos + len(self._pending)
        if whence not in (os.SEEK_SET, os.SEEK_CUR) or not 0 <= target <= self._limit:
            raise SnapshotLimitError(size_limit_message(self._source))
        if target >= raw_pos:
            self._raw.seek(target)
            self._pending, self._recent = b"", b""
        elif raw_pos - target <= len(self._recent):
            self._pending = self._recent[len(self._recent) - (raw_pos - target):]
        else:
            raise ValueError(f"snapshot {self._source} is not a plain tar.gz (it needs reading backwards)")
        self._pos = target
        return target

    def tell(self) -> int:
        return self._pos


def _members(tar: tarfile.TarFile, source: str, max_bytes: int, max_members: int) -> Iterator[tarfile.TarInfo]:
    """The archive's members, each checked: a relative name inside the folder, the count and the files'
    total size within the limits (checked from the headers, before any content is read)."""
    total = 0
    for count, member in enumerate(tar, start=1):
        if count > max_members:
            raise SnapshotLimitError(f"snapshot {source} has more than {max_members} members; the service unpacks at "
                                     f"most {max_members} (Azure's file limit is {SNAPSHOT_MAX_FILES} changed files)")
        parts = Path(member.name).parts
        if member.name.startswith(("/", "\\")) or ".." in parts or "\x00" in member.name or len(member.name) > 4096:
            raise ValueError(f"snapshot member {member.name[:200]!r} would land outside the working directory")
        if member.isfile():
            total += member.size
            if total > max_bytes:
                raise SnapshotLimitError(size_limit_message(source))
        yield member


def _open(archive: Path, max_bytes: int, max_members: int) -> tuple[gzip.GzipFile, tarfile.TarFile]:
    raw = gzip.open(archive, "rb")
    stream = _BoundedStream(raw, max_bytes + max_members * _TAR_OVERHEAD_PER_MEMBER + ONE_MB, archive.name)
    try:
        return raw, tarfile.open(fileobj=stream, mode="r:")  # type: ignore[call-overload]
    except BaseException:
        raw.close()
        raise


def check_archive(archive: Path, *, max_bytes: int = SNAPSHOT_MAX_SIZE_BYTES,
                  max_members: int = MAX_MEMBERS) -> int:
    """Read an uploaded snapshot through without unpacking it; return the size of its files.

    :class:`SnapshotLimitError` with Azure's message when the files pass 300 MB (or the members
    :data:`MAX_MEMBERS`); ValueError for a member outside the folder or an archive that is not a tar.gz.
    """
    raw, tar = _open(archive, max_bytes, max_members)
    with raw, tar:
        try:
            return sum(m.size for m in _members(tar, archive.name, max_bytes, max_members) if m.isfile())
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise ValueError(f"snapshot {archive.name} is not a readable .tar.gz: {exc}") from None


def extract(archive: Path, destination: Path, *, max_bytes: int = SNAPSHOT_MAX_SIZE_BYTES,
            max_members: int = MAX_MEMBERS) -> list[str]:
    """Unpack a snapshot safely: regular files and folders only, no absolute paths, nothing outside ``destination``,
    at most ``max_bytes`` of files and ``max_members`` members (it stops at the limit, before writing past it)."""
    destination.mkdir(parents=True, exist_ok=True)
    root = destination.resolve()
    names = []
    raw, tar = _open(archive, max_bytes, max_members)
    with raw, tar:
        for member in _members(tar, archive.name, max_bytes, max_members):
            target = (root / member.name).resolve()
            if root != target and root not in target.parents:
                raise ValueError(f"snapshot member {member.name!r} would land outside the working directory")
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
            elif member.isfile():
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None
                with source, open(target, "wb") as handle:
                    shutil.copyfileobj(source, handle, ONE_MB)
                os.chmod(target, 0o755 if member.mode & 0o111 else 0o644)
                names.append(member.name)
    return names


def remove_orphans(directory: Path, keep: Collection[str], *, older_than: float = ORPHAN_AGE_SECONDS,
                   now: float | None = None) -> list[str]:
    """Delete snapshots (``<id>.tar.gz``, partial uploads, build logs) older than ``older_than`` seconds whose
    id is not in ``keep`` (the snapshots of unfinished runs); return the names removed.

    Only regular files named like a snapshot are touched (never links, folders such as ``manifests/``
    or other names), so the sweep is safe to run at start and periodically.
    """
    now = time.time() if now is None else now
    removed = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    for entry in entries:
        match = _SNAPSHOT_FILE.fullmatch(entry.name)
        if match is None or match["id"] in keep or not entry.is_file(follow_symlinks=False):
            continue
        try:
            if now - entry.stat(follow_symlinks=False).st_mtime < older_than:
                continue
            os.unlink(entry.path)
        except FileNotFoundError:
            continue
        removed.append(entry.name)
    return sorted(removed)
