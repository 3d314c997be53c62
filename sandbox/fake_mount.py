"""``as_mount()`` without FUSE: the dataset's datastore path materialised on the host, bound read-only.

The blobs a dataset stands for are fetched from Azurite into a host cache, one immutable *version*
folder per listing (names, etags, sizes). An unchanged dataset is the same version: nothing is
fetched again. A changed one gets a new version where unchanged files are hard links to the
previous version and only new or changed blobs are downloaded (concurrently, streamed). The version
folder is bind-mounted read-only into the run container at ``/tmp/tmp`` + 8 random characters (or
``path_on_compute``), so writes fail with EROFS as on Azure; ``as_download`` gets a writable copy.
Runs hold a shared lock on the version they use, so cleaning old versions never pulls data from
under a running script.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

from sandbox.datapaths import DatastorePath, ResolvedFile, resolve
from sandbox.storage import BlobStore, Transfer

MOUNT_VALIDATION_MESSAGE = ("Dataset initialization failed: DatasetMountValidationException: Cannot mount dataset. "
                            "Source of the dataset is either not accessible or does not contain any data.")
_MKDTEMP_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_"
KEEP_VERSIONS = 2


class DatasetMountValidationError(Exception):
    """The dataset's path holds no data (Azure's DatasetMountValidationException)."""

    def __init__(self, name: str, sources: list[DatastorePath]) -> None:
        self.name = name
        self.sources = sources
        where = ", ".join(f"('{s.datastore}', '{s.path}')" for s in sources)
        super().__init__(f"{MOUNT_VALIDATION_MESSAGE} Input '{name}': {where} has no files on the datastore.")


def mount_point_name(rng: random.Random | None = None) -> str:
    """``/tmp/tmp`` + 8 characters, as ``tempfile.mkdtemp()`` names them on Azure's nodes."""
    rng = rng or random.SystemRandom()
    return "/tmp/tmp" + "".join(rng.choice(_MKDTEMP_CHARS) for _ in range(8))


@dataclass(frozen=True)
class InputSpec:
    """One dataset input of a run, as plain data."""

    name: str
    mode: str  # "mount" | "download" | "direct"
    sources: tuple[DatastorePath, ...]
    dataset_id: str
    dataset_str: str
    path_on_compute: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InputSpec:
        return cls(data["name"], data["mode"], tuple(DatastorePath.from_dict(s) for s in data["sources"]),
                   data["dataset_id"], data["dataset_str"], data.get("path_on_compute"))


@dataclass
class Materialized:
    """A dataset version on the host."""

    path: Path
    single_file: str | None
    fetched: int
    reused: int
    lock: IO[str] | None = field(default=None, repr=False)

    def release(self) -> None:
        if self.lock is not None:
            fcntl.flock(self.lock, fcntl.LOCK_UN)
            self.lock.close()
            self.lock = None


@dataclass(frozen=True)
class MountSpec:
    """How one input appears in the container."""

    name: str
    mode: str
    host_path: str
    mount_point: str  # where it is bound in the container
    value: str  # what the script gets ($input): the mount point, or the file in it
    read_only: bool
    single_file: bool
    dataset_str: str

    def to_runtime(self) -> dict[str, Any]:
        return {"name": self.name, "mode": self.mode, "path": self.value, "mount_point": self.mount_point,
                "single_file": self.single_file, "dataset_str": self.dataset_str}

    def environment(self) -> dict[str, str]:
        return {self.name: self.value, self.name.upper(): self.value,
                f"AZUREML_DATAREFERENCE_{self.name}": self.value}


class DatasetCache:
    """Materialises datastore paths under ``root`` (``<state>/cache/datasets``)."""

    def __init__(self, store: BlobStore, root: Path) -> None:
        self.store = store
        self.root = root

    def materialize(self, name: str, sources: tuple[DatastorePath, ...]) -> Materialized:
        resolutions = [(source, resolve(self.store, source)) for source in sources]
        files: list[tuple[DatastorePath, ResolvedFile]] = [(s, f) for s, r in resolutions for f in r.files]
        if not files:
            raise DatasetMountValidationError(name, list(sources))
        single = resolutions[0][1].single_file and len(files) == 1
        key_source = json.dumps([s.to_dict() for s in sources], sort_keys=True)
        dataset_dir = self.root / hashlib.sha256(key_source.encode()).hexdigest()[:24]
        listing = sorted((s.container, f.blob.name, f.blob.etag, f.blob.size, f.relative) for s, f in files)
        version = hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:24]
        version_dir = dataset_dir / "versions" / version
        (dataset_dir / "versions").mkdir(parents=True, exist_ok=True)
        with _locked(dataset_dir / "materialize.lock"):
            fetched = reused = 0
            if not (version_dir / ".complete").exists():
                fetched, reused = self._build_version(dataset_dir, version_dir, files)
            else:
                reused = len(files)
                os.utime(version_dir)
            lease = open(dataset_dir / "versions" / f"{version}.lease", "a")
            fcntl.flock(lease, fcntl.LOCK_SH)
            self._prune(dataset_dir, keep=version)
        data_dir = version_dir / "data"
        relative = PurePosixPath(files[0][1].relative.lstrip("/")).name if single else None
        return Materialized(data_dir, relative, fetched, reused, lease)

    def _build_version(self, dataset_dir: Path, version_dir: Path,
                       files: list[tuple[DatastorePath, ResolvedFile]]) -> tuple[int, int]:
        previous = self._previous_manifest(dataset_dir)
        staging = version_dir.with_name(version_dir.name + f".tmp-{os.getpid()}-{time.monotonic_ns()}")
        data = staging / "data"
        data.mkdir(parents=True)
        manifest: dict[str, list[Any]] = {}
        downloads: dict[str, list[Transfer]] = {}
        reused = 0
        for source, f in files:
            relative = f.relative.lstrip("/")
            if ".." in PurePosixPath(relative).parts:
                continue  # a blob name that would escape the folder is never written
            target = data / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            manifest[relative] = [source.container, f.blob.name, f.blob.etag, f.blob.size]
            old = previous.get(relative)
            if old and old[0] == manifest[relative] and Path(old[1]).is_file():
                os.link(old[1], target)
                reused += 1
            else:
                downloads.setdefault(source.container, []).append(Transfer(str(target), f.blob.name))
        fetched = 0
        for container, transfers in downloads.items():
            for result in self.store.download(container, transfers):
                if not result.ok:
                    shutil.rmtree(staging, ignore_errors=True)
                    raise OSError(f"fetching {result.transfer.blob} from the datastore failed: {result.error}")
                fetched += 1
        (staging / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
        (staging / ".complete").write_text("", encoding="utf-8")
        for root, dirs, names in os.walk(staging):
            os.chmod(root, 0o755)
            for item in names:
                os.chmod(os.path.join(root, item), 0o644)
            dirs.sort()
        if version_dir.exists():  # another process finished the same version first
            shutil.rmtree(staging, ignore_errors=True)
        else:
            os.replace(staging, version_dir)
        return fetched, reused

    @staticmethod
    def _previous_manifest(dataset_dir: Path) -> dict[str, tuple[list[Any], str]]:
        versions = [p for p in (dataset_dir / "versions").iterdir() if p.is_dir() and (p / ".complete").exists()]
        if not versions:
            return {}
        latest = max(versions, key=lambda p: p.stat().st_mtime)
        manifest = json.loads((latest / "manifest.json").read_text(encoding="utf-8"))
        return {rel: (entry, str(latest / "data" / rel)) for rel, entry in manifest.items()}

    @staticmethod
    def _prune(dataset_dir: Path, keep: str) -> None:
        versions = sorted((p for p in (dataset_dir / "versions").iterdir() if p.is_dir()),
                          key=lambda p: p.stat().st_mtime, reverse=True)
        for stale in versions[KEEP_VERSIONS:]:
            if stale.name == keep or ".tmp-" in stale.name:
                continue
            lease_path = stale.with_name(stale.name + ".lease")
            with open(lease_path, "a") as lease:
                try:
                    fcntl.flock(lease, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a run is using it
                shutil.rmtree(stale, ignore_errors=True)
            lease_path.unlink(missing_ok=True)


def plan_mount(spec: InputSpec, materialized: Materialized, working_dir: str, run_inputs_dir: Path,
               rng: random.Random | None = None) -> MountSpec:
    """Where ``spec`` goes in the container; ``as_download`` copies the data into the run folder first."""
    if spec.path_on_compute:
        mount_point = spec.path_on_compute if spec.path_on_compute.startswith("/") else \
            str(PurePosixPath(working_dir) / spec.path_on_compute)
    else:
        mount_point = mount_point_name(rng)
    host_path = str(materialized.path)
    read_only = spec.mode == "mount"
    if not read_only:
        copy = run_inputs_dir / spec.name
        shutil.copytree(materialized.path, copy, dirs_exist_ok=False)
        own_for_run(copy)
        host_path = str(copy)
    value = f"{mount_point}/{materialized.single_file}" if materialized.single_file else mount_point
    return MountSpec(spec.name, spec.mode, host_path, mount_point, value, read_only,
                     materialized.single_file is not None, spec.dataset_str)


def dataset_environment_vars(mounts: list[MountSpec]) -> str:
    """``AZUREML_DATASET_ENVIRONMENT_VARS``: ``name:mode,name2:mode2``."""
    return ",".join(f"{m.name}:{m.mode}" for m in mounts)


def own_for_run(path: Path, uid: int = 1000, gid: int = 1000) -> None:
    """Give a folder to the run's non-root user (or make it writable when we cannot chown)."""
    for root, dirs, files in os.walk(path):  # links are neither followed nor changed
        for item in [root, *(os.path.join(root, d) for d in dirs), *(os.path.join(root, f) for f in files)]:
            if os.path.islink(item):
                continue
            try:
                os.chown(item, uid, gid, follow_symlinks=False)
            except PermissionError:
                os.chmod(item, 0o777 if os.path.isdir(item) else 0o666)


class _locked:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.handle: IO[str] | None = None

    def __enter__(self) -> None:
        self.handle = open(self.path, "a")
        fcntl.flock(self.handle, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        assert self.handle is not None
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()
