"""The workspace's default datastore ``workspaceblobstore``: a blob container on Azurite.

``upload`` reproduces azureml-core's ``AzureBlobDatastore.upload`` (PARITY.md section 3): the
deprecation warning once per process, the console lines, ``overwrite=False`` skipping existing blobs
with Azure's line and a shrinking estimated total, target-path sanitising, and the ``DataReference``
return value. It differs where Azure would lose data silently: a file that fails to upload is
reported and the call raises at the end (blobs appear only when complete, so a re-run with
``overwrite=False`` uploads exactly what is missing); a stopped Azurite is reported within seconds.
Not implemented: SAS-token and identity-based access (the local account key is always used).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from sandbox.aml.data_reference import DataReference
from sandbox.aml.exceptions import UserErrorException
from sandbox.errors import StorageUnavailableError
from sandbox.storage import BlobStore, Transfer

if TYPE_CHECKING:  # pragma: no cover
    from sandbox.aml.workspace import Workspace

module_logger = logging.getLogger("azureml.data.azure_storage_datastore")
_deprecation_logger = logging.getLogger("azureml.data._dataset_deprecation")
_warned: set[str] = set()
_SANITIZE_PREFIX = ("./", "../", "/", "\\", ".\\", "..\\")
DEFAULT_DATASTORE = "workspaceblobstore"


def _warn_deprecation(target: str, replacement: str) -> None:
    """azureml-core's deprecation warning: once per target per process, via logging."""
    if target in _warned:
        return
    _warned.add(target)
    _deprecation_logger.warning(
        f"{target} is deprecated after version 1.0.69. Please use {replacement}. "
        "See Dataset API change notice at https://aka.ms/dataset-deprecation."
    )


def sanitize_target_path(target_path: str | None) -> str:
    """Azure's ``^(\\.*[/\\\\])*`` prefix strip, plus: backslashes become ``/``; ``..`` inside is refused."""
    if not target_path:
        return target_path or ""
    import re

    path = re.sub(r"^(\.*[/\\])*", "", target_path).replace("\\", "/")
    if ".." in path.split("/"):
        raise UserErrorException(
            f"target_path {target_path!r} has a '..' segment inside it; blob names cannot climb folders. "
            f"Use a plain relative path such as {path.replace('../', '')!r}."
        )
    return path


class AzureBlobDatastore:
    """A datastore on a blob container (``azureml.data.azure_storage_datastore.AzureBlobDatastore``)."""

    def __init__(self, workspace: Workspace, name: str, container_name: str, account_name: str,
                 sas_token: str | None = None, account_key: str | None = None, protocol: str | None = None,
                 endpoint: str | None = None, request_session: Any = None, workspace_msi_has_access: bool = False,
                 subscription_id: str | None = None, resource_group: str | None = None,
                 service_data_access_auth_identity: str | None = None) -> None:
        self.workspace = workspace
        self.name = name
        self.datastore_type = "AzureBlob"
        self.container_name = container_name
        self.account_name = account_name
        self.sas_token = sas_token
        self.account_key = account_key
        self.credential_type = "AccountKey" if account_key else ("Sas" if sas_token else "None")
        self.protocol = protocol
        self.endpoint = endpoint
        self.subscription_id = subscription_id
        self.resource_group = resource_group
        self._data_reference = DataReference(datastore=self)
        self._blob_store: BlobStore | None = None

    @classmethod
    def for_workspace(cls, workspace: Workspace) -> AzureBlobDatastore:
        """``workspaceblobstore``: container ``azureml-blobstore-<workspace id>`` in the stack's Azurite."""
        settings = workspace.service_context
        return cls(workspace, DEFAULT_DATASTORE, f"azureml-blobstore-{workspace._workspace_id}",
                   settings.account_name, account_key=settings.account_key, protocol="http",
                   endpoint=settings.blob_endpoint, subscription_id=workspace.subscription_id,
                   resource_group=workspace.resource_group)

    @property
    def blob_store(self) -> BlobStore:
        if self._blob_store is None:
            self._blob_store = BlobStore(self.workspace.service_context)
        return self._blob_store

    # -- references --------------------------------------------------------------------------

    def path(self, path: str | None = None, data_reference_name: str | None = None) -> DataReference:
        return self._data_reference.path(path, data_reference_name)

    def as_mount(self) -> DataReference:
        return self._data_reference.as_mount()

    def as_download(self, path_on_compute: str | None = None) -> DataReference:
        return self._data_reference.as_download(path_on_compute)

    # -- upload ------------------------------------------------------------------------------

    def upload(self, src_dir: str, target_path: str | None = None, overwrite: bool = False,
               show_progress: bool = True) -> DataReference:
        """Upload ``src_dir`` to ``target_path`` in the container; see the module docstring."""
        _warn_deprecation('"Datastore.upload"', '"Dataset.File.upload_directory" to upload your files '
                          '            from a local directory and create FileDataset in single method call')
        target_path = target_path or ""
        self._start_upload_task(self._get_upload_from_dir(src_dir, target_path), overwrite, show_progress)
        return DataReference(datastore=self, path_on_datastore=target_path)

    def upload_files(self, files: list[str], relative_root: str | None = None, target_path: str | None = None,
                     overwrite: bool = False, show_progress: bool = True) -> DataReference:
        """Upload a list of files; blob names are their paths relative to ``relative_root`` (default: common path)."""
        _warn_deprecation('"datastore.upload_files"', '"FileDatasetFactory.upload_directory" instead')
        target_path = target_path or ""
        files = list(files)
        if not files:
            raise UserErrorException("files is empty; pass a list of file paths to upload")
        relative_root = relative_root or os.path.commonpath([os.path.abspath(f) for f in files])
        if os.path.isfile(relative_root):
            relative_root = os.path.dirname(relative_root)
        pairs = self._get_upload_from_files(files, target_path, relative_root, skip_root_check=False)
        self._start_upload_task(pairs, overwrite, show_progress)
        return DataReference(datastore=self, path_on_datastore=target_path)

    def _get_upload_from_dir(self, src_path: str, target_path: str) -> list[tuple[str, str]]:
        src_path = os.fspath(src_path).rstrip("/\\") or "/"
        if not os.path.isdir(src_path):
            raise UserErrorException("src_path must be a directory.")
        pairs: list[tuple[str, str]] = []
        for dirpath, _dirnames, filenames in os.walk(src_path):
            pairs += self._get_upload_from_files(
                [os.path.join(dirpath, f) for f in filenames], target_path, src_path, skip_root_check=True)
        return pairs

    def _get_upload_from_files(self, file_paths: list[str], target_path: str, relative_root: str,
                               skip_root_check: bool) -> list[tuple[str, str]]:
        target_path = sanitize_target_path(target_path)
        pairs = []
        for file_path in file_paths:
            if not skip_root_check and relative_root not in os.path.abspath(file_path) and relative_root != "/":
                raise UserErrorException(f"relative_root: '{relative_root}' is not part of the file_path: "
                                         f"'{file_path}'.")
            if not os.path.isfile(file_path):
                raise UserErrorException(f"'{file_path}' does not point to a file. Please upload the file to "
                                         "cloud first if running in a cloud notebook.")
            unix_path = file_path.replace("\\", "/")
            if relative_root != "/":
                blob = os.path.relpath(os.path.abspath(unix_path), os.path.abspath(relative_root.replace("\\", "/")))
            else:
                blob = os.path.abspath(unix_path).lstrip("/")
            if target_path:
                blob = f"{target_path.rstrip('/')}/{blob}"
            pairs.append((file_path, blob))
        return pairs

    def _start_upload_task(self, pairs: list[tuple[str, str]], overwrite: bool, show_progress: bool) -> int:
        estimated_total = len(pairs)
        console = _progress_logger(show_progress)
        console(f"Uploading an estimated of {estimated_total} files")
        store = self.blob_store
        store.ensure_available()
        store.ensure_container(self.container_name)

        transfers = []
        existing = set() if overwrite else self._existing_blobs([blob for _, blob in pairs])
        for src, blob in pairs:
            if blob in existing:
                estimated_total -= 1
                console(f"Target already exists. Skipping upload for {blob}")
                continue
            transfers.append(Transfer(src, blob))

        count = 0
        failures: list[tuple[str, BaseException]] = []
        storage_down: StorageUnavailableError | None = None
        for result in store.upload(self.container_name, transfers, overwrite=overwrite):
            src = result.transfer.local
            console(f"Uploading {src}")
            if result.ok:
                count += 1
                console(f"Uploaded {src}, {count} files out of an estimated total of {estimated_total}")
                continue
            if _already_exists(result.error):
                console(f"Target already exists. Skipping upload for {result.transfer.blob}")
                continue
            module_logger.error("Upload failed, please make sure target_path does not start with invalid "
                                f"characters. ({src}: {type(result.error).__name__}: {result.error})")
            failures.append((src, result.error))  # type: ignore[arg-type]
            if _is_connection_error(result.error):
                try:
                    store.ensure_available(timeout=5)
                except StorageUnavailableError as exc:
                    storage_down = exc
                    break
        console(f"Uploaded {count} files")
        if storage_down is not None:
            raise StorageUnavailableError(
                storage_down.endpoint,
                f"it stopped answering during the upload: {count} of {estimated_total} files were uploaded, no "
                "partial blob was kept; once it is back, repeat the upload with overwrite=False to upload the rest",
            ) from storage_down
        if failures:
            listing = "\n".join(f"  {src}: {type(err).__name__}: {err}" for src, err in failures[:20])
            more = f"\n  ... and {len(failures) - 20} more" if len(failures) > 20 else ""
            raise UserErrorException(
                f"{len(failures)} of {len(transfers)} files could not be uploaded to {self.name}:\n{listing}{more}\n"
                "No partial blob was kept for them. Fix the cause and repeat the upload with overwrite=False to "
                "upload only the missing files."
            )
        return count

    def _existing_blobs(self, blobs: list[str]) -> set[str]:
        """One listing under the common prefix instead of one request per file."""
        if not blobs:
            return set()
        prefix = os.path.commonprefix(blobs)  # noqa: RUF071 - cut back to the last "/" below
        prefix = prefix[: prefix.rfind("/") + 1] if "/" in prefix else ""
        wanted = set(blobs)
        return {b.name for b in self.blob_store.list_blobs(self.container_name, prefix) if b.name in wanted}

    # -- download ----------------------------------------------------------------------------

    def download(self, target_path: str, prefix: str | None = None, overwrite: bool = False,
                 show_progress: bool = True) -> int:
        """Download the blobs under ``prefix`` into ``target_path``; return how many were downloaded."""
        store = self.blob_store
        store.ensure_available()
        os.makedirs(target_path, exist_ok=True)
        blobs = _filter_conflicting_blobs(store.list_blobs(self.container_name, prefix or ""))
        total = len(blobs)
        if total == 0:
            return 0
        transfers = []
        for blob in blobs:
            file_path = os.path.join(target_path, os.path.normpath(blob))
            if not overwrite and os.path.exists(file_path):
                module_logger.warning(f"Path already exists. Skipping download for {file_path}")
                total -= 1
                continue
            transfers.append(Transfer(file_path, blob))
        console = _progress_logger(show_progress)
        count = 0
        failures = []
        for result in store.download(self.container_name, transfers):
            console(f"Downloading {result.transfer.blob}")
            if result.ok:
                count += 1
                console(f"Downloaded {result.transfer.blob}, {count} files out of an estimated total of {total}")
            else:
                failures.append(result)
        if failures:
            raise UserErrorException(
                f"{len(failures)} files could not be downloaded, e.g. {failures[0].transfer.blob}: "
                f"{failures[0].error}. Repeat the download (overwrite=False skips the files already there)."
            )
        return count

    # -- representation ----------------------------------------------------------------------

    def _as_dict(self, hide_secret: bool = True) -> dict[str, Any]:
        output: dict[str, Any] = OrderedDict(
            [("name", self.name), ("container_name", self.container_name), ("account_name", self.account_name),
             ("protocol", self.protocol), ("endpoint", self.endpoint)])
        if not hide_secret:
            output["credential_type"] = self.credential_type
            output["account_key"] = self.account_key
        return output

    def __repr__(self) -> str:
        return json.dumps(self._as_dict(), indent=2)

    def __str__(self) -> str:
        return self.__repr__()


class Datastore:
    """``Datastore.get(ws, name)`` / ``Datastore.get_default(ws)`` / ``Datastore(ws, name)``."""

    def __new__(cls, workspace: Workspace, name: str | None = None) -> AzureBlobDatastore:  # type: ignore[misc]
        return cls.get(workspace, name) if name else cls.get_default(workspace)

    @staticmethod
    def get(workspace: Workspace, datastore_name: str) -> AzureBlobDatastore:
        stores = workspace.datastores
        if datastore_name not in stores:
            raise UserErrorException(
                f"Datastore {datastore_name!r} was not found in workspace {workspace.name}. The local workspace has: "
                f"{sorted(stores)}."
            )
        return stores[datastore_name]

    @staticmethod
    def get_default(workspace: Workspace) -> AzureBlobDatastore:
        return workspace.get_default_datastore()


def _progress_logger(show_progress: bool):
    def log(message: str) -> None:
        if show_progress:
            sys.stdout.write(f"{message}\n")
        module_logger.info(message)

    return log


def _already_exists(error: BaseException | None) -> bool:
    from azure.core.exceptions import ResourceExistsError

    return isinstance(error, ResourceExistsError)


def _is_connection_error(error: BaseException | None) -> bool:
    from azure.core.exceptions import ServiceRequestError, ServiceResponseError

    return isinstance(error, ServiceRequestError | ServiceResponseError | ConnectionError)


def _filter_conflicting_blobs(blobs: list) -> list[str]:
    """Drop a blob whose name is also a folder of other blobs (it cannot be both a file and a folder)."""
    names = sorted(b.name for b in blobs)
    folders = {name.rsplit("/", 1)[0] for name in names if "/" in name}
    prefixes = set()
    for folder in folders:
        parts = folder.split("/")
        prefixes.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    return [name for name in names if name not in prefixes]
