"""``Workspace`` of the local stack, with azureml-core's call signatures.

``Workspace.from_config()`` needs no Azure configuration: the sandbox's settings (``AML_SANDBOX_*``
variables, ``~/.aml-sandbox/stack.json``, defaults matching ``aml-sandbox up``) say where Azurite and
the workspace service are. A ``config.json`` found the way Azure ML looks for it (``path``, then
``.azureml/``, ``aml_config/`` and the folder itself, walking up) supplies the workspace's name,
subscription and resource group, so ``repr(ws)`` matches the real workspace.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sandbox.aml.exceptions import UserErrorException
from sandbox.config import Settings

if TYPE_CHECKING:  # pragma: no cover
    from sandbox.aml.compute import ComputeTarget
    from sandbox.aml.datastore import AzureBlobDatastore
    from sandbox.aml.environment import EnvironmentDictionary

module_logger = logging.getLogger(__name__)
_CONFIG_DIRS = (".azureml", "aml_config", None)
_CONFIG_FILES = ("config.json", "project.json")


def _find_config(path: str | os.PathLike[str] | None, file_name: str | None) -> Path | None:
    start = Path(path or ".").expanduser().resolve()
    if start.is_file():
        return start
    names = (file_name,) if file_name else _CONFIG_FILES
    for directory in _CONFIG_DIRS:
        for name in names:
            for folder in (start, *start.parents):
                candidate = folder / directory / name if directory else folder / name
                if candidate.is_file():
                    return candidate
    return None


class Workspace:
    """The local workspace: a blob datastore on Azurite, curated environments, compute targets."""

    def __init__(self, subscription_id: str, resource_group: str, workspace_name: str, auth: Any = None,
                 _location: str | None = None, _disable_service_check: bool = False,
                 _workspace_id: str | None = None, sku: str = "basic", tags: dict | None = None,
                 _cloud: str = "AzureCloud", _settings: Settings | None = None) -> None:
        if auth is not None:
            module_logger.warning("Workspace(auth=...) is ignored by the local sandbox (no authentication)")
        settings = _settings or Settings.from_env()
        self._settings = replace(settings, subscription_id=subscription_id, resource_group=resource_group,
                                 workspace_name=workspace_name)
        self._subscription_id = subscription_id
        self._resource_group = resource_group
        self._workspace_name = workspace_name
        self._workspace_id = _workspace_id or self._settings.workspace_id
        self._location = _location or "local"
        self.sku = sku
        self.tags = tags or {}

    # -- construction ------------------------------------------------------------------------

    @staticmethod
    def from_config(path: str | None = None, auth: Any = None, _logger: logging.Logger | None = None,
                    _file_name: str | None = None) -> Workspace:
        """The local workspace; names from a ``config.json`` when one is found, else the sandbox's."""
        settings = Settings.from_env()
        found = _find_config(path, _file_name)
        if found is None and path is not None and not Path(path).exists():
            raise UserErrorException(
                f"The workspace configuration file config.json, could not be found in {path} or its parent "
                "directories. Please check whether the workspace configuration file exists, or provide "
                "the full path to the configuration file as an argument."
            )
        names = {
            "subscription_id": settings.subscription_id,
            "resource_group": settings.resource_group,
            "workspace_name": settings.workspace_name,
        }
        if found is not None:
            try:
                data = json.loads(found.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                raise UserErrorException(f"The workspace configuration file {found} is not valid JSON: {exc}") from exc
            for key in names:
                if isinstance(data.get(key), str) and data[key]:
                    names[key] = data[key]
            (_logger or module_logger).info("Found the config file in: %s", found)
        return Workspace(names["subscription_id"], names["resource_group"], names["workspace_name"], auth=auth,
                         _settings=settings)

    @staticmethod
    def get(name: str, auth: Any = None, subscription_id: str | None = None, resource_group: str | None = None,
            location: str | None = None, cloud: str = "AzureCloud", id: str | None = None) -> Workspace:
        settings = Settings.from_env()
        return Workspace(subscription_id or settings.subscription_id, resource_group or settings.resource_group,
                         name, auth=auth, _location=location, _settings=settings)

    # -- identity ----------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._workspace_name

    @property
    def subscription_id(self) -> str:
        return self._subscription_id

    @property
    def resource_group(self) -> str:
        return self._resource_group

    @property
    def location(self) -> str:
        return self._location

    @property
    def service_context(self) -> Settings:
        """Where this workspace's stack lives (the sandbox's settings)."""
        return self._settings

    def get_details(self) -> dict[str, Any]:
        return {
            "id": f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}/providers/"
                  f"Microsoft.MachineLearningServices/workspaces/{self.name}",
            "name": self.name,
            "location": self.location,
            "workspaceid": self._workspace_id,
            "sku": self.sku,
            "discoveryUrl": self._settings.service_url,
        }

    # -- datastores, environments, compute ---------------------------------------------------

    def get_default_datastore(self) -> AzureBlobDatastore:
        from sandbox.aml.datastore import AzureBlobDatastore

        return AzureBlobDatastore.for_workspace(self)

    @property
    def datastores(self) -> dict[str, AzureBlobDatastore]:
        default = self.get_default_datastore()
        return {default.name: default}

    @property
    def environments(self) -> EnvironmentDictionary:
        from sandbox.aml.environment import Environment

        return Environment.list(self)

    @property
    def compute_targets(self) -> dict[str, ComputeTarget]:
        from sandbox.aml.compute import ComputeTarget

        return {d.name: ComputeTarget(self, d) for d in self._settings.compute_targets}

    @property
    def experiments(self) -> dict[str, Any]:
        from sandbox.aml.experiment import Experiment

        return {name: Experiment(self, name) for name in Experiment._list_names(self)}

    def __repr__(self) -> str:
        return (f"Workspace.create(name='{self._workspace_name}', subscription_id='{self._subscription_id}', "
                f"resource_group='{self._resource_group}')")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Workspace) and (self.subscription_id, self.resource_group, self.name) == (
            other.subscription_id, other.resource_group, other.name)

    def __hash__(self) -> int:
        return hash((self.subscription_id, self.resource_group, self.name))
