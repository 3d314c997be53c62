"""``Environment``: azureml-core's own class, with the workspace lookups served by the local catalog.

Objects are real ``azureml.core.Environment`` instances (``from_pip_requirements``,
``from_conda_specification``, ``python.conda_dependencies``, ``repr`` are azureml-core's). The
curated environments come from ``sandbox/curated_environments.json``, whose definitions mirror
Azure's (PARITY.md 5); each is served both as ``ws.environments[name]`` and as
``Environment.get(ws, name)``. What an environment installs offline is documented in that file
(torch 2.14.1 / torchvision 0.29.1 here). ``register`` keeps the definition in the sandbox's state
folder, so ``Environment.get`` finds it from any later process. Not implemented: ``build`` on a
remote compute, ``label``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from azureml.core.environment import Environment as _AzureEnvironment

from sandbox import curated

if TYPE_CHECKING:  # pragma: no cover
    from sandbox.aml.workspace import Workspace


class EnvironmentDictionary(dict):
    """``ws.environments``: a KeyError names the environments that exist."""

    def __missing__(self, key: str) -> Any:
        raise KeyError(
            f"Environment {key!r} is not in the local workspace. Known environments: {sorted(self)}. Curated "
            "environments are listed in sandbox/curated_environments.json; your own can be created with "
            "Environment.from_pip_requirements(...) and registered with env.register(ws)."
        )


def _registry(workspace: Workspace) -> Path:
    return workspace.service_context.home / "environments"


def _local(environment: Any) -> Any:
    """azureml-core's constructors return its own class; give the object this one's local lookups."""
    if type(environment) is _AzureEnvironment:
        environment.__class__ = Environment
    return environment


def _from_definition(definition: dict[str, Any]) -> Any:
    return _local(_AzureEnvironment._deserialize_and_add_to_object(json.loads(json.dumps(definition))))


class Environment(_AzureEnvironment):
    """azureml-core's ``Environment``; ``get``/``list``/``register`` use the local catalog and state folder."""

    @staticmethod
    def get(workspace: Workspace, name: str, version: str | None = None, label: str | None = None) -> Any:
        if label is not None:
            raise NotImplementedError("Environment.get(label=...) is not supported by the local sandbox")
        environments = Environment.list(workspace)
        if name not in environments:
            environments[name]  # raises the KeyError naming the known environments
        env = environments[name]
        if version is not None and str(env.version) != str(version):
            registered = _registry(workspace) / name / f"{version}.json"
            if not registered.is_file():
                raise KeyError(f"Environment {name!r} has no version {version!r} in the local workspace "
                               f"(latest: {env.version!r})")
            env = _from_definition(json.loads(registered.read_text(encoding="utf-8")))
        return env

    @staticmethod
    def list(workspace: Workspace) -> EnvironmentDictionary:
        result = EnvironmentDictionary()
        for name, entry in curated.catalog().items():
            result[name] = _from_definition(entry.definition)
        registry = _registry(workspace)
        if registry.is_dir():
            for folder in sorted(p for p in registry.iterdir() if p.is_dir()):
                versions = sorted(folder.glob("*.json"), key=lambda p: int(p.stem) if p.stem.isdigit() else 0)
                if versions:
                    result[folder.name] = _from_definition(json.loads(versions[-1].read_text(encoding="utf-8")))
        return result

    @staticmethod
    def from_pip_requirements(name: str, file_path: str, pip_version: str | None = None) -> Any:
        return _local(_AzureEnvironment.from_pip_requirements(name, file_path, pip_version))

    @staticmethod
    def from_conda_specification(name: str, file_path: str) -> Any:
        return _local(_AzureEnvironment.from_conda_specification(name, file_path))

    @staticmethod
    def from_existing_conda_environment(name: str, conda_environment_name: str) -> Any:
        raise NotImplementedError("Environment.from_existing_conda_environment needs conda on this machine; the "
                                  "local sandbox builds from pip requirements or a conda specification file")

    def register(self, workspace: Workspace) -> Any:
        if self.name.startswith(("AzureML", "Microsoft")):
            from sandbox.aml.exceptions import UserErrorException

            raise UserErrorException(f"Environment name {self.name!r} starts with a prefix reserved for curated "
                                     "environments ('AzureML', 'Microsoft'); choose another name.")
        folder = _registry(workspace) / self.name
        folder.mkdir(parents=True, exist_ok=True)
        existing = [int(p.stem) for p in folder.glob("*.json") if p.stem.isdigit()]
        definition = _AzureEnvironment._serialize_to_dict(self)
        definition["version"] = str(max(existing, default=0) + 1)
        (folder / f"{definition['version']}.json").write_text(json.dumps(definition, indent=2), encoding="utf-8")
        return _from_definition(definition)


def definition_of(environment: Any) -> dict[str, Any]:
    """An environment as plain data (Azure's JSON form), for the run definition."""
    return json.loads(json.dumps(_AzureEnvironment._serialize_to_dict(environment)))

