"""``DatasetConsumptionConfig``: how a dataset reaches the run (direct, mount or download).

In ``ScriptRunConfig(arguments=[...])`` it stands for the materialised path: at submit it becomes
``DatasetConsumptionConfig:<name>`` in the run definition, ``$<name>`` in the driver log, and the
mount path in the script's ``sys.argv`` (PARITY.md 2.1-2.2). Name rules and errors are azureml-core's.
"""

from __future__ import annotations

import logging
import re
import uuid
from typing import TYPE_CHECKING, Any

from sandbox.aml.exceptions import UserErrorException

if TYPE_CHECKING:  # pragma: no cover
    from sandbox.aml.dataset import FileDataset

DIRECT_MODE, DOWNLOAD_MODE, MOUNT_MODE, HDFS_MODE = "direct", "download", "mount", "hdfs"
ARGUMENT_TEMPLATE = "DatasetConsumptionConfig:{}"
PROHIBITED_NAMES = {"path", "ld_library_path", "user", "logname", "home", "pwd", "shell"}
_NAME = re.compile(r"^[a-zA-Z_]+[a-zA-Z0-9_]*$")


def validate_input_name(name: str | None, mode: str = "input") -> str:
    if not name:
        raise UserErrorException(f"Invalid {mode} name. Name cannot be empty or None, please use a valid name.")
    if name.lower() in PROHIBITED_NAMES:
        logging.getLogger().warning(
            f'{mode.capitalize()} name "{name}" has the potential to collide with common environment variable '
            "names and can lead to unexpected behavior. Please consider using a different name. This will result "
            "in an error in future versions of the SDK.")
    if _NAME.search(name):
        return name
    raise UserErrorException(f'Invalid {mode} name "{name}". The name can only be alphanumeric characters and '
                             "underscore, and must not begin with a number.")


class DatasetConsumptionConfig:
    """Represent how to deliver the dataset to a compute target."""

    _SUPPORTED_MODE = frozenset({DIRECT_MODE, DOWNLOAD_MODE, MOUNT_MODE, HDFS_MODE})

    def __init__(self, name: str | None, dataset: FileDataset, mode: str = DIRECT_MODE,
                 path_on_compute: str | None = None) -> None:
        mode = mode.lower()
        if mode not in self._SUPPORTED_MODE:
            raise UserErrorException(f"Invalid mode '{mode}'. Mode can only be mount, download, hdfs, link, or direct")
        if mode == HDFS_MODE:
            raise NotImplementedError("DatasetConsumptionConfig(mode='hdfs') needs a Synapse Spark pool; the local "
                                      "sandbox supports 'mount', 'download' and 'direct'")
        self.dataset = dataset
        if name:
            self._name = validate_input_name(name, "input")
        elif dataset.id:
            self._name = f"input__{str(dataset.id).split('-')[0]}"
        else:
            self._name = f"input__{str(uuid.uuid4()).split('-')[0]}"
        self.arg_val = ARGUMENT_TEMPLATE.format(self._name)
        self.mode = mode
        self.path_on_compute = path_on_compute

    @property
    def name(self) -> str:
        return self._name

    def as_download(self, path_on_compute: str | None = None) -> DatasetConsumptionConfig:
        return DatasetConsumptionConfig(self.name, self.dataset, DOWNLOAD_MODE, path_on_compute)

    def as_mount(self, path_on_compute: str | None = None) -> DatasetConsumptionConfig:
        return DatasetConsumptionConfig(self.name, self.dataset, MOUNT_MODE, path_on_compute)

    def as_hdfs(self) -> DatasetConsumptionConfig:
        return DatasetConsumptionConfig(self.name, self.dataset, HDFS_MODE)

    def _to_definition(self, workspace: Any) -> dict[str, Any]:
        """Plain data for the run definition (the dataset is saved, not registered, as Azure does)."""
        dataset_id = self.dataset._ensure_saved(workspace)
        return {
            "name": self.name,
            "mode": self.mode,
            "path_on_compute": self.path_on_compute,
            "dataset_id": dataset_id,
            "dataset_str": str(self.dataset),
            "sources": [source.to_dict() for source in self.dataset._datastore_paths()],
        }
