"""``Dataset.File.from_files`` and ``FileDataset`` on the local datastore.

``str(dataset)`` is Azure's JSON form (PARITY.md 1.2): source, definition, and, once the dataset is
saved at submit, the registration block with a null name and version. ``to_path``/``download`` read
Azurite directly; ``mount()`` on this machine materialises a read-only local copy (FUSE mounts are
what Azure does; a copy gives the same paths without root). Not implemented: URLs as paths
(``https://...``), ``partition_format``, tabular datasets (``Dataset.Tabular``) and registration.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import stat
import tempfile
import uuid
from typing import TYPE_CHECKING, Any

from sandbox.aml.data_reference import DataPath
from sandbox.aml.dataset_consumption_config import DOWNLOAD_MODE, MOUNT_MODE, DatasetConsumptionConfig
from sandbox.aml.exceptions import UserErrorException
from sandbox.datapaths import DatastorePath, Resolution, resolve
from sandbox.storage import Transfer

if TYPE_CHECKING:  # pragma: no cover
    from sandbox.aml.datastore import AzureBlobDatastore
    from sandbox.aml.workspace import Workspace


def _normalize_sources(path: Any) -> list[tuple[AzureBlobDatastore, str]]:
    items = path if isinstance(path, list) else [path]
    if not items:
        raise UserErrorException("path is empty; pass (datastore, 'folder'), a DataPath, or a list of them")
    sources: list[tuple[AzureBlobDatastore, str]] = []
    for item in items:
        if isinstance(item, DataPath):
            sources.append((item.datastore, item.path_on_datastore))
        elif isinstance(item, tuple) and len(item) == 2 and hasattr(item[0], "container_name"):
            if not isinstance(item[1], str):
                raise UserErrorException(f"The path in {item!r} must be a string such as 'datasets/cifar10'")
            sources.append((item[0], item[1]))
        elif isinstance(item, str) and "://" in item:
            raise NotImplementedError(
                f"Dataset.File.from_files(path={item!r}): URLs are not supported by the local sandbox; upload the "
                "files to the datastore and pass (datastore, 'path') instead")
        else:
            raise UserErrorException(
                f"Invalid path {item!r}: expected a tuple (datastore, 'relative/path'), a DataPath, or a list of them")
    return sources


class FileDataset:
    """A set of files on a datastore (``azureml.data.FileDataset``)."""

    def __init__(self, sources: list[tuple[AzureBlobDatastore, str]]) -> None:
        self._sources = sources
        self._id: str | None = None
        self._workspace: Workspace | None = None
        self.name: str | None = None
        self.version: int | None = None
        self.description: str | None = None
        self.tags: dict[str, str] = {}

    @property
    def id(self) -> str | None:
        return self._id

    def _datastore_paths(self) -> list[DatastorePath]:
        return [DatastorePath(store.name, store.container_name, path) for store, path in self._sources]

    def _ensure_saved(self, workspace: Workspace) -> str:
        """Save (not register) the dataset, as a submit does: it gets an id and a registration block."""
        if self._id is None:
            self._id = str(uuid.uuid4())
            self._workspace = workspace
        return self._id

    # -- files -------------------------------------------------------------------------------

    def _resolve(self) -> list[tuple[AzureBlobDatastore, Resolution]]:
        results = []
        for (store, _), datastore_path in zip(self._sources, self._datastore_paths(), strict=True):
            store.blob_store.ensure_available()
            results.append((store, resolve(store.blob_store, datastore_path)))
        return results

    def to_path(self) -> list[str]:
        """Paths of the dataset's files relative to its root, each starting with ``/``."""
        return [f.relative for _, resolution in self._resolve() for f in resolution.files]

    def download(self, target_path: str | None = None, overwrite: bool = False,
                 ignore_not_found: bool = False) -> list[str]:
        """Download the files; return their local paths. Existing files raise unless ``overwrite=True``."""
        target = os.path.abspath(target_path) if target_path else tempfile.mkdtemp()
        os.makedirs(target, exist_ok=True)
        resolved = self._resolve()
        if not any(r.files for _, r in resolved) and not ignore_not_found:
            raise UserErrorException(
                f"Cannot download {self._describe()}: the path does not exist on the datastore or holds no files.")
        plan: list[tuple[AzureBlobDatastore, Transfer]] = []
        for store, resolution in resolved:
            for f in resolution.files:
                local = os.path.abspath(os.path.join(target, "." + f.relative))
                if os.path.exists(local) and not overwrite:
                    raise UserErrorException(f'File "{local}" already exists. Set overwrite=True to overwrite it, '
                                             "or choose an empty target path.")
                plan.append((store, Transfer(local, f.blob.name)))
        downloaded: list[str] = []
        for store in {id(s): s for s, _ in plan}.values():
            transfers = [t for s, t in plan if s is store]
            for result in store.blob_store.download(store.container_name, transfers):
                if not result.ok:
                    raise UserErrorException(f"Downloading {result.transfer.blob} failed: {result.error}")
                downloaded.append(result.transfer.local)
        return sorted(downloaded)

    def mount(self, mount_point: str | None = None, **kwargs: Any) -> MountContext:
        """A context manager giving the files at ``mount_point`` (a read-only local copy here)."""
        return MountContext(self, mount_point)

    def _describe(self) -> str:
        return ", ".join(f"('{store.name}', '{path}')" for store, path in self._sources)

    # -- consumption -------------------------------------------------------------------------

    def as_named_input(self, name: str) -> DatasetConsumptionConfig:
        return DatasetConsumptionConfig(name, self)

    def as_mount(self, path_on_compute: str | None = None) -> DatasetConsumptionConfig:
        return DatasetConsumptionConfig(None, self, MOUNT_MODE, path_on_compute)

    def as_download(self, path_on_compute: str | None = None) -> DatasetConsumptionConfig:
        return DatasetConsumptionConfig(None, self, DOWNLOAD_MODE, path_on_compute)

    # -- representation ----------------------------------------------------------------------

    def __repr__(self) -> str:
        content: dict[str, Any] = collections.OrderedDict()
        content["source"] = [f"('{store.name}', '{path}')" for store, path in self._sources]
        content["definition"] = ["GetDatastoreFiles"]
        if self._id is not None:
            registration: dict[str, Any] = collections.OrderedDict(
                [("id", self._id), ("name", self.name), ("version", self.version)])
            if self.description:
                registration["description"] = self.description
            if self.tags:
                registration["tags"] = self.tags
            registration["workspace"] = repr(self._workspace)
            content["registration"] = registration
        return json.dumps(content, indent=2)

    def __str__(self) -> str:
        return f"{type(self).__name__}\n{self.__repr__()}"


class MountContext:
    """``with dataset.mount() as context: context.mount_point`` (also ``start()``/``stop()``)."""

    def __init__(self, dataset: FileDataset, mount_point: str | None) -> None:
        self._dataset = dataset
        self._requested = mount_point
        self._created = False
        self.mount_point = os.path.abspath(mount_point) if mount_point else tempfile.mkdtemp(prefix="tmp")

    def start(self) -> None:
        if os.path.isdir(self.mount_point) and os.listdir(self.mount_point):
            raise UserErrorException("Dataset mount point must be empty, mounting dataset to non-empty folder is "
                                     "not supported.")
        self._created = not os.path.exists(self.mount_point) or self._requested is None
        self._dataset.download(self.mount_point, overwrite=True)
        for root, dirs, files in os.walk(self.mount_point):
            for name in files:
                os.chmod(os.path.join(root, name), stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
            for name in dirs:
                os.chmod(os.path.join(root, name), 0o555)
        os.chmod(self.mount_point, 0o555)

    def stop(self) -> None:
        if not os.path.isdir(self.mount_point):
            return
        for root, dirs, _files in os.walk(self.mount_point):
            os.chmod(root, 0o755)
            for name in dirs:
                os.chmod(os.path.join(root, name), 0o755)
        if self._created:
            shutil.rmtree(self.mount_point, ignore_errors=True)
        else:
            for entry in os.listdir(self.mount_point):
                path = os.path.join(self.mount_point, entry)
                shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)

    def __enter__(self) -> MountContext:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class FileDatasetFactory:
    """``Dataset.File``."""

    @staticmethod
    def from_files(path: Any, validate: bool = True, partition_format: str | None = None,
                   is_file: bool = False) -> FileDataset:
        if partition_format is not None:
            raise NotImplementedError("Dataset.File.from_files(partition_format=...) is not supported by the local "
                                      "sandbox")
        return FileDataset(_normalize_sources(path))

    @staticmethod
    def upload_directory(src_dir: str, target: Any, pattern: str | None = None, overwrite: bool = False,
                         show_progress: bool = True) -> FileDataset:
        if pattern is not None:
            raise NotImplementedError("Dataset.File.upload_directory(pattern=...) is not supported by the local "
                                      "sandbox")
        store, relative = (target if isinstance(target, tuple) else (target, ""))
        store.upload(src_dir, relative or None, overwrite=overwrite, show_progress=show_progress)
        return FileDataset([(store, relative or "/")])


class _Unsupported:
    def __init__(self, what: str) -> None:
        self._what = what

    def __getattr__(self, name: str) -> Any:
        raise NotImplementedError(f"{self._what}.{name} is not supported by the local sandbox; use Dataset.File")


class Dataset:
    """``Dataset.File.from_files(...)``; tabular datasets are not part of the local sandbox."""

    File = FileDatasetFactory

    Tabular = _Unsupported("Dataset.Tabular")
