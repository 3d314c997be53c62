"""The run folder ``<state>/runs/<run_id>``: what a run container sees of the host, read without trusting it.

``setup/`` (the runtime, read-only in the container), ``control/`` (``/azureml-run``: driver log, history,
uploaded files), ``wd/`` (the working directory: ``outputs/``, ``logs/``) and ``inputs/`` (``as_download``
copies) are written by the run's uid, so every name in them is hostile: it may be a link to a host file, a
FIFO, or swapped between two calls. Reads here go from the folder's root (owned by the service) one
component at a time with ``O_NOFOLLOW`` relative to the folder above, so no link is followed anywhere on
the way; the file is opened ``O_NONBLOCK`` (a FIFO never blocks) and used only when ``fstat`` says it is
a regular file.

The service never writes into the run's folders once the container exists: its own lines (a cancel, a
time limit, a skipped file or history line) go to ``service/notes.txt``, a folder never mounted in the
container. Once the container has ended (:meth:`RunFolder.seal`) they are shown after the run's driver
log, and stored that way.
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

DRIVER_LOG = "azureml-logs/70_driver_log.txt"
IMAGE_BUILD_LOG = "azureml-logs/20_image_build_log.txt"
HISTORY = "control/history.jsonl"
#: Where the run files a user sees come from: (folder in the run folder, the name prefix it serves).
SOURCES = (("control/azureml-logs", "azureml-logs/"), ("wd/outputs", "outputs/"), ("wd/logs", "logs/"),
           ("control/artifacts", ""))
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
class Scan:
    """Regular files found under a run folder's sources, and what was skipped (with the reason)."""

    files: dict[str, Path] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    bytes: int = 0


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
        """Every regular file under the sources, by run file name; links, FIFOs and the like are skipped."""
        scan = Scan()
        for source, prefix in SOURCES:
            for name, path, size in self._walk(source, prefix, scan.skipped):
                if prefix + name in scan.files:
                    continue
                if len(scan.files) >= MAX_FILES:
                    scan.skipped.append(f"{prefix}{name}: over the limit of {MAX_FILES} files per run")
                    continue
                scan.files[prefix + name] = path
                scan.bytes += size
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

    def disk_usage(self) -> int:
        """Bytes the run's writable folders take on disk (links counted as themselves, never followed)."""
        total = 0
        for source in ("control", "wd", "inputs"):
            try:
                stack = [_open_dirs(self.root, (source,))]
            except OSError:
                continue
            while stack:
                fd = stack.pop()
                try:
                    with os.scandir(fd) as entries:
                        for entry in entries:
                            try:
                                info = entry.stat(follow_symlinks=False)
                                total += info.st_blocks * 512
                                if stat.S_ISDIR(info.st_mode):
                                    stack.append(os.open(entry.name, _DIR_FLAGS, dir_fd=fd))
                            except OSError:
                                continue  # changed while we looked
                finally:
                    os.close(fd)
        return total

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

    def _walk(self, source: str, prefix: str, skipped: list[str]) -> Iterator[tuple[str, Path, int]]:
        """(name below source, path, size) of every regular file, descending only into real folders."""
        try:
            top = _open_dirs(self.root, tuple(source.split("/")))
        except OSError:
            return  # missing, or a link the run put in place of the folder
        stack: list[tuple[int, str, int]] = [(top, "", 0)]
        try:
            while stack:
                fd, below, depth = stack.pop()
                files: list[tuple[str, Path, int]] = []
                try:
                    with os.scandir(fd) as entries:
                        listing = sorted(entries, key=lambda e: e.name)
                    for entry in listing:
                        name = below + entry.name
                        shown = (prefix + name).encode("utf-8", "backslashreplace").decode()
                        try:
                            mode = entry.stat(follow_symlinks=False).st_mode
                            if not _is_utf8(entry.name):
                                skipped.append(f"{shown}: the name is not UTF-8")
                            elif stat.S_ISDIR(mode) and depth >= MAX_DEPTH:
                                skipped.append(f"{shown}: deeper than {MAX_DEPTH} folders")
                            elif stat.S_ISDIR(mode):
                                stack.append((os.open(entry.name, _DIR_FLAGS, dir_fd=fd), name + "/", depth + 1))
                            elif stat.S_ISREG(mode):
                                size = entry.stat(follow_symlinks=False).st_size
                                files.append((name, self.root / source / name, size))
                            else:
                                skipped.append(f"{shown} is {_kind(mode)}, not a regular file")
                        except OSError as exc:  # changed while we looked (the run still goes)
                            skipped.append(f"{shown}: {exc.strerror}")
                finally:
                    os.close(fd)
                yield from files
        finally:
            for fd, _, _ in stack:
                os.close(fd)


def skipped_notes(skipped: list[str]) -> list[str]:
    """The service's lines for entries not stored: the first ones by name, then a count."""
    lines = [f"Not stored: {item} (the sandbox stores regular files only and never follows a link)."
             for item in skipped[:MAX_NAMED_SKIPS]]
    if len(skipped) > MAX_NAMED_SKIPS:
        lines.append(f"Not stored: {len(skipped) - MAX_NAMED_SKIPS} more entries that are not regular files.")
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
