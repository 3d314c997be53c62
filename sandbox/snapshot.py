"""Snapshot of a run's ``source_directory``, with Azure ML's ignore rules, limits and messages (PARITY.md 6).

``.amlignore`` in the folder wins, else ``.gitignore`` (gitwildmatch syntax); with neither, nothing
is excluded. The whole non-ignored folder may hold at most 300 MB; at most 2000 files may be added or
changed since the previous snapshot of the same folder (``AML_SNAPSHOT_NO_FILE_LIMIT`` lifts that);
25 MB or more gives Azure's warning. The run executes from the snapshot, never the live folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

SNAPSHOT_MAX_SIZE_BYTES = 300 * 1024 * 1024
SNAPSHOT_MAX_FILES = 2000
ONE_MB = 1024 * 1024
WARNING_SIZE_MB = 25
_FRAME = "===================================================================="


class SnapshotLimitError(Exception):
    """Raised with Azure's framed message; the facade turns it into azureml's SnapshotException."""


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
        raise SnapshotLimitError(
            f"{_FRAME}\n\nWhile attempting to take snapshot of {source_directory}\n"
            f"Your total snapshot size exceeds the limit of {SNAPSHOT_MAX_SIZE_BYTES / ONE_MB} MB.\n"
            f"Please see http://aka.ms/aml-largefiles on how to work with large files.\n\n{_FRAME}\n\n")
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


def extract(archive: Path, destination: Path) -> list[str]:
    """Unpack a snapshot safely: regular files and folders only, no absolute paths, nothing outside ``destination``."""
    destination.mkdir(parents=True, exist_ok=True)
    root = destination.resolve()
    names = []
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            parts = Path(member.name).parts
            if member.name.startswith(("/", "\\")) or ".." in parts:
                raise ValueError(f"snapshot member {member.name!r} would land outside the working directory")
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
                    shutil.copyfileobj(source, handle, 1024 * 1024)
                os.chmod(target, 0o755 if member.mode & 0o111 else 0o644)
                names.append(member.name)
    return names
