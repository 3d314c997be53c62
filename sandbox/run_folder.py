"""The run folder ``<state>/runs/<run_id>``: what a run container sees of the host, read without trusting it.

``setup/`` (the runtime, read-only in the container), ``control/`` (``/azureml-run``: the driver log),
``wd/`` (the working directory: ``outputs/``, ``logs/``, which the run's azureml-core uploads itself) and
``inputs/`` (``as_download`` copies) are written by the run's uid, so every name in them is hostile: it
may be a link to a host file, a FIFO, or swapped between two calls. Reads here go from the folder's root
(owned by the service) one component at a time with ``O_NOFOLLOW`` relative to the folder above, so no
link is followed anywhere on the way; the file is opened ``O_NONBLOCK`` (a FIFO never blocks) and used
only when ``fstat`` says it is a regular file.

The service never writes into the run's folders once the container exists: its own lines (a cancel, a
time limit, a skipped file) go to ``service/notes.txt``, a folder never mounted in the
container. Once the container has ended (:meth:`RunFolder.seal`) they are shown after the run's driver
log, and stored that way.
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, NamedTuple

DRIVER_LOG = "azureml-logs/70_driver_log.txt"
IMAGE_BUILD_LOG = "azureml-logs/20_image_build_log.txt"
#: The run files the service serves and stores from the run folder: (folder in the run folder, name prefix).
#: Everything else a run keeps (``outputs/``, ``logs/``, uploads) its own azureml-core sends to run history.
SOURCES = (("control/azureml-logs", "azureml-logs/"),)
#: Files a run can store; more are skipped with a note (a listing must fit in one response).
MAX_FILES = 100_000
#: Folder depth followed below a source; deeper entries are skipped with a note.
MAX_DEPTH = 64
#: Skipped entries named one by one in the notes; the rest are counted.
MAX_NAMED_SKIPS = 20
#: Files are read in chunks of this size, so a large output never sits whole in the service's memory.
CHUNK = 1024 * 1024

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def relative_parts(name: str) -> tuple[str, ...] | None:
    """The components of a run file name, or None when it could leave its folder (``..``, NUL, empty)."""
    parts = tuple(p for p in PurePosixPath(name.lstrip("/")).parts if p != ".")
    if not parts or any(p == ".." or "\x00" in p for p in parts):
        return None
    return parts


def open_regular(root: Path, relative: str) -> BinaryIO | None:
    """``root/relative`` open for reading when it is a regular file reached without following a link; else None.

    ``root`` itself is trusted (the service made it); every component below it is opened ``O_NOFOLLOW``.
    """
    parts = relative_parts(relative)
    if parts is None:
        return None
    try:
        dir_fd = _open_dirs(root, parts[:-1])
    except OSError:
        return None
    try:
        fd = os.open(parts[-1], _FILE_FLAGS, dir_fd=dir_fd)
    except OSError:  # ELOOP (a link), ENXIO (a socket), ENOENT, ...
        return None
    finally:
        os.close(dir_fd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return os.fdopen(fd, "rb")


def _open_dirs(root: Path, parts: tuple[str, ...]) -> int:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts:
            below = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = below
    except BaseException:
        os.close(fd)
        raise
    return fd


@dataclass
class Skipped:
    """What a scan left out: the first ``MAX_NAMED_SKIPS`` by name, the rest only counted (a run can make
    millions of links or FIFOs; the service keeps a bounded note of them)."""

    def __init__(self) -> None:
        self.named: list[str] = []
        self.more = 0

    def add(self, item: str) -> None:
        if len(self.named) < MAX_NAMED_SKIPS:
            self.named.append(item)
        else:
            self.more += 1

    def __iter__(self) -> Iterator[str]:
        return iter(self.named)


class Scan:
    """Regular files found under a run folder's sources (at most ``MAX_FILES``), and what was skipped."""

    def __init__(self) -> None:
        self.files: dict[str, Path] = {}
        self.skipped = Skipped()


class DiskUsage(NamedTuple):
    bytes: int
    entries: int


@dataclass
class RunFile:
    """An open run file (or the driver log with the service's lines after it), sized when opened."""

    parts: list[tuple[BinaryIO, int]]

    @property
    def size(self) -> int:
        return sum(size for _, size in self.parts)

    def chunks(self, start: int = 0) -> Iterator[bytes]:
        """The bytes from ``start`` up to the size taken at opening, in chunks of at most ``CHUNK``; closes the file."""
        try:
            for handle, size in self.parts:
                if start >= size:
                    start -= size
                    continue
                handle.seek(start)
                left, start = size - start, 0
                while left > 0:
                    chunk = handle.read(min(CHUNK, left))
                    if not chunk:
                        break
                    left -= len(chunk)
                    yield chunk
        finally:
            self.close()

    def close(self) -> None:
        for handle, _ in self.parts:
            handle.close()


@dataclass(frozen=True)
class RunFolder:
    """``<state>/runs/<run_id>``: what the run container sees of the host, and the service's notes beside it."""

    root: Path

    @property
    def wd(self) -> Path:
        return self.root / "wd"

    @property
    def control(self) -> Path:
        return self.root / "control"

    @property
    def setup(self) -> Path:
        return self.root / "setup"

    @property
    def inputs(self) -> Path:
        return self.root / "inputs"

    @property
    def service(self) -> Path:
        """The service's own folder: never mounted in the container, never written by the run."""
        return self.root / "service"

    @property
    def notes(self) -> Path:
        return self.service / "notes.txt"

    @property
    def sealed(self) -> bool:
        return (self.service / "ended").is_file()

    # -- the service's lines -------------------------------------------------------------------

    def note(self, message: str) -> None:
        """Add a line of the service's own to the run's driver log (shown after the run's lines once it ends)."""
        self.service.mkdir(mode=0o700, parents=True, exist_ok=True)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        with open(self.notes, "a", encoding="utf-8") as notes:
            notes.write(f"[{stamp}] {message}\n")

    def seal(self) -> None:
        """The container has ended: the run's driver log is complete, the service's lines now follow it."""
        self.service.mkdir(mode=0o700, parents=True, exist_ok=True)
        (self.service / "ended").touch()

    # -- reading the run's files ---------------------------------------------------------------

    def open(self, name: str) -> RunFile | None:
        """A run file while the run goes (``azureml-logs/...``, ``outputs/...``, ``logs/...``, uploaded files)."""
        parts: list[tuple[BinaryIO, int]] = []
        for relative in self._candidates(name):
            handle = open_regular(self.root, relative)
            if handle is not None:
                parts.append((handle, os.fstat(handle.fileno()).st_size))
                break
        if name.lstrip("/") == DRIVER_LOG and self.sealed and self.notes.is_file():
            notes = open(self.notes, "rb")
            parts.append((notes, os.fstat(notes.fileno()).st_size))
        return RunFile(parts) if parts else None

    def list_files(self) -> list[str]:
        return sorted(self.scan().files)

    def scan(self) -> Scan:
        """Every regular file under the sources, by run file name; links, FIFOs and the like are skipped.

        Stops at ``MAX_FILES`` files: memory and time stay bounded whatever the run wrote."""
        scan = Scan()
        for source, prefix in SOURCES:
            walk = self._walk(source, prefix, scan.skipped)
            for name, path in walk:
                if prefix + name in scan.files:
                    continue
                if len(scan.files) >= MAX_FILES:
                    scan.skipped.add(f"{prefix}{name} and the files after it: over the limit of {MAX_FILES} "
                                     "files per run")
                    walk.close()
                    return self._with_notes(scan)
                scan.files[prefix + name] = path
        return self._with_notes(scan)

    def _with_notes(self, scan: Scan) -> Scan:
        if DRIVER_LOG not in scan.files and self.sealed and self.notes.is_file():
            scan.files[DRIVER_LOG] = self.notes
        return scan

    def merged_driver_log(self) -> Path | None:
        """The driver log as stored: the run's lines, then the service's (written to ``service/``)."""
        run_file = self.open(DRIVER_LOG)
        if run_file is None:
            return None
        target = self.service / "70_driver_log.txt"
        self.service.mkdir(mode=0o700, parents=True, exist_ok=True)
        with open(target, "wb") as out:
            for chunk in run_file.chunks():
                out.write(chunk)
        return target

    def disk_usage(self) -> DiskUsage:
        """Bytes the run's writable folders take on disk, and how many entries they hold (links counted as
        themselves, never followed; one folder open per level at a time)."""
        total = entries = 0
        for source in ("control", "wd", "inputs"):
            for _below, info in self._entries(source):
                total += info.st_blocks * 512
                entries += 1
        return DiskUsage(total, entries)

    def remove(self) -> None:
        """Delete the folder (``rmtree`` never follows the links in it)."""
        if self.root.exists():
            shutil.rmtree(self.root, ignore_errors=True)

    def _candidates(self, name: str) -> Iterator[str]:
        parts = relative_parts(name)
        if parts is None:
            return
        joined = "/".join(parts)
        for source, prefix in SOURCES:
            if joined.startswith(prefix) and len(joined) > len(prefix):
                yield f"{source}/{joined[len(prefix):]}"

    def _entries(self, source: str, skipped: Skipped | None = None) -> Iterator[tuple[str, os.stat_result]]:
        """(name below ``source``, lstat) of every entry, depth first, descending only into real folders.

        One folder is open per level (``MAX_DEPTH`` at most); listings are read as they go, never held whole.
        """
        try:
            top = _open_dirs(self.root, tuple(source.split("/")))
        except OSError:
            return  # missing, or a link the run put in place of the folder
        stack: list[tuple[int, Iterator[os.DirEntry[str]], str, int]] = []
        try:
            stack.append((top, os.scandir(top), "", 0))
            while stack:
                fd, listing, below, depth = stack[-1]
                entry = next(listing, None)
                if entry is None:
                    stack.pop()
                    listing.close()  # type: ignore[attr-defined]
                    os.close(fd)
                    continue
                name = below + entry.name
                try:
                    info = entry.stat(follow_symlinks=False)
                    if stat.S_ISDIR(info.st_mode) and depth < MAX_DEPTH:
                        child = os.open(entry.name, _DIR_FLAGS, dir_fd=fd)
                        stack.append((child, os.scandir(child), name + "/", depth + 1))
                    elif stat.S_ISDIR(info.st_mode) and skipped is not None:
                        skipped.add(f"{_shown(source, name)}: deeper than {MAX_DEPTH} folders")
                except OSError as exc:  # changed while we looked (the run still goes)
                    if skipped is not None:
                        skipped.add(f"{_shown(source, name)}: {exc.strerror}")
                    continue
                yield name, info
        finally:
            for fd, listing, _, _ in stack:
                listing.close()  # type: ignore[attr-defined]
                os.close(fd)

    def _walk(self, source: str, prefix: str, skipped: Skipped) -> Iterator[tuple[str, Path]]:
        """(name below source, path) of every regular file; links, FIFOs and the like are skipped."""
        for name, info in self._entries(source, skipped):
            shown = (prefix + name).encode("utf-8", "backslashreplace").decode()
            if not _is_utf8(name):
                skipped.add(f"{shown}: the name is not UTF-8")
            elif stat.S_ISREG(info.st_mode):
                yield name, self.root / source / name
            elif not stat.S_ISDIR(info.st_mode):
                skipped.add(f"{shown} is {_kind(info.st_mode)}, not a regular file")


def _shown(source: str, name: str) -> str:
    return f"{source}/{name}".encode("utf-8", "backslashreplace").decode()


def skipped_notes(skipped: Skipped) -> list[str]:
    """The service's lines for entries not stored: the first ones by name, then a count."""
    lines = [f"Not stored: {item} (the sandbox stores regular files only, up to {MAX_FILES}, and never follows "
             "a link)." for item in skipped.named]
    if skipped.more:
        lines.append(f"Not stored: {skipped.more} more entries (links, FIFOs, files over the limit, ...).")
    return lines


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # os.fsdecode kept undecodable bytes as surrogates
        return False
    return True


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "an unknown kind of file"
