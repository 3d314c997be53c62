"""``DataReference`` and ``DataPath``: pointers to a path on a datastore, as azureml-core has them."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from sandbox.aml.datastore import AzureBlobDatastore

_CURRENT_PATHS = {"", ".", "./", "/"}


class DataReference:
    """A reference to data on a datastore; ``str()`` is ``$AZUREML_DATAREFERENCE_<name>``."""

    def __init__(self, datastore: AzureBlobDatastore, data_reference_name: str | None = None,
                 path_on_datastore: str | None = None, mode: str = "mount", path_on_compute: str | None = None,
                 overwrite: bool = False) -> None:
        if mode not in {"mount", "download", "upload"}:
            from sandbox.aml.exceptions import UserErrorException

            raise UserErrorException(f"Invalid mode '{mode}'. Only mount, download and upload are supported.")
        self.datastore = datastore
        self.path_on_datastore = path_on_datastore
        self.mode = mode
        self.path_on_compute = path_on_compute
        self.overwrite = overwrite
        if data_reference_name:
            self.data_reference_name = data_reference_name
        elif path_on_datastore and path_on_datastore not in _CURRENT_PATHS:
            self.data_reference_name = uuid.uuid4().hex
        else:
            self.data_reference_name = datastore.name

    def path(self, path: str | None = None, data_reference_name: str | None = None) -> DataReference:
        if not path or path in _CURRENT_PATHS:
            if data_reference_name:
                return DataReference(self.datastore, data_reference_name=data_reference_name)
            return self
        if not self.path_on_datastore or self.path_on_datastore in _CURRENT_PATHS:
            return DataReference(self.datastore, data_reference_name, path_on_datastore=path)
        return DataReference(self.datastore, data_reference_name, path_on_datastore=f"{self.path_on_datastore}/{path}")

    def _clone(self, **changes: Any) -> DataReference:
        values = {"datastore": self.datastore, "data_reference_name": self.data_reference_name,
                  "path_on_datastore": self.path_on_datastore, "mode": self.mode,
                  "path_on_compute": self.path_on_compute, "overwrite": self.overwrite, **changes}
        return DataReference(**values)

    def as_download(self, path_on_compute: str | None = None, overwrite: bool = False) -> DataReference:
        return self._clone(mode="download", path_on_compute=path_on_compute)

    def as_upload(self, path_on_compute: str | None = None, overwrite: bool = False) -> DataReference:
        return self._clone(mode="upload", path_on_compute=path_on_compute)

    def as_mount(self) -> DataReference:
        return self._clone(mode="mount")

    def __str__(self) -> str:
        return f"$AZUREML_DATAREFERENCE_{self.data_reference_name}"

    def __repr__(self) -> str:
        return self.__str__()


class DataPath:
    """A path on a datastore (``azureml.data.datapath.DataPath``)."""

    def __init__(self, datastore: AzureBlobDatastore | None = None, path_on_datastore: str | None = None,
                 name: str | None = None) -> None:
        if datastore is None:
            from sandbox.aml.exceptions import UserErrorException

            raise UserErrorException("DataPath needs a datastore: DataPath(datastore, path_on_datastore)")
        self.datastore = datastore
        self.path_on_datastore = path_on_datastore or "/"
        self.name = name

    @property
    def datastore_name(self) -> str:
        return self.datastore.name

    def __repr__(self) -> str:
        return f"$AZUREML_DATAREFERENCE_{self.name or self.datastore.name}"
