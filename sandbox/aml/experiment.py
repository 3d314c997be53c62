"""``Experiment(workspace, name).submit(config)``: what azureml-core does at submit, then the hand-over.

At submit, as azureml-core does: the arguments' ``DatasetConsumptionConfig`` objects become
``DatasetConsumptionConfig:<name>`` (their datasets are saved, not registered), misuse raises Azure's
errors, the ``source_directory`` is snapshotted with Azure's rules and limits. Then, on the host
side, the environment's image is resolved (built offline if it is missing, with progress on the
console and the log kept as ``azureml-logs/20_image_build_log.txt``), and the snapshot and the run
definition go to the workspace service, which executes the run. ``submit`` returns at once, with
the run ``Starting``; the run goes on after the control script exits.
"""

from __future__ import annotations

import getpass
import io
import json
import os
import re
import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from sandbox.aml.dataset import FileDataset
from sandbox.aml.dataset_consumption_config import DatasetConsumptionConfig
from sandbox.aml.exceptions import SnapshotException, UserErrorException
from sandbox.errors import ServiceError
from sandbox.run_definition import RunDefinition, new_run_id
from sandbox.service.client import ServiceClient

if TYPE_CHECKING:  # pragma: no cover
    from sandbox.aml.run import Run
    from sandbox.aml.workspace import Workspace

_NAME = re.compile(r"^[a-zA-Z0-9][\w\-]{0,254}$")


class Experiment:
    """An experiment of the local workspace (``azureml.core.Experiment``)."""

    def __init__(self, workspace: Workspace, name: str, _skip_name_validation: bool = False, _id: str | None = None,
                 _archived_time: str | None = None, _create_in_cloud: bool = True, _experiment_dto: Any = None,
                 **kwargs: Any) -> None:
        if not _skip_name_validation and (not isinstance(name, str) or not _NAME.match(name)):
            raise UserErrorException("Experiment name must be between 1 and 255 characters long. Its first "
                                     "character has to be alphanumeric, and the rest may contain hyphens and "
                                     "underscores. No whitespace is allowed.")
        self._workspace = workspace
        self._name = name
        self._id = _id

    @property
    def workspace(self) -> Workspace:
        return self._workspace

    @property
    def name(self) -> str:
        return self._name

    @property
    def id(self) -> str | None:
        return self._id

    def __repr__(self) -> str:
        return f"Experiment(Name: {self._name},\nWorkspace: {self._workspace.name})"

    def __str__(self) -> str:
        return self.__repr__()

    def get_portal_url(self) -> str:
        return f"{self._workspace.service_context.service_url}/experiments/{self._name}/runs"

    # -- runs --------------------------------------------------------------------------------

    def submit(self, config: Any, tags: dict[str, str] | None = None, **kwargs: Any) -> Run:
        """Submit a ``ScriptRunConfig``; returns the run (``Starting``) as soon as the service has it."""
        from azureml.core import ScriptRunConfig

        if not isinstance(config, ScriptRunConfig):
            raise UserErrorException(f"Experiment.submit needs a ScriptRunConfig locally; got {type(config).__name__}")
        return _Submission(self, config, tags or {}).submit()

    def get_runs(self, type: str | None = None, tags: Any = None, properties: Any = None,
                 include_children: bool = False) -> Iterator[Run]:
        from sandbox.aml.run import Run

        for record in ServiceClient(self._workspace.service_context).list_runs(self._name):
            run = Run(self, record["runId"], _record=record)
            if tags and not _matches(record.get("tags") or {}, tags):
                continue
            if properties and not _matches(record.get("properties") or {}, properties):
                continue
            yield run

    @staticmethod
    def list(workspace: Workspace, experiment_name: str | None = None, view_type: str = "ActiveOnly",
             tags: Any = None) -> list[Experiment]:
        names = Experiment._list_names(workspace)
        return [Experiment(workspace, n) for n in names if experiment_name in (None, n)]

    @staticmethod
    def _list_names(workspace: Workspace) -> list[str]:
        return [e["name"] for e in ServiceClient(workspace.service_context).list_experiments()]


def _matches(values: dict[str, Any], wanted: Any) -> bool:
    if isinstance(wanted, str):
        return wanted in values
    return all(values.get(k) == v for k, v in dict(wanted).items())


class _Submission:
    """One submit: arguments, snapshot, image, hand-over."""

    def __init__(self, experiment: Experiment, config: Any, tags: dict[str, str]) -> None:
        self.experiment = experiment
        self.workspace = experiment.workspace
        self.config = config
        self.tags = tags

    def submit(self) -> Run:
        from sandbox import snapshot
        from sandbox.aml.environment import definition_of
        from sandbox.aml.run import Run

        config = self.config
        arguments, inputs = self._arguments(list(config.arguments or []))
        target = self._compute_target()
        script = config.script
        if config.command:
            raise NotImplementedError("ScriptRunConfig(command=...) is not supported by the local sandbox; use "
                                      "script= and arguments=")
        if not script:
            raise UserErrorException("ScriptRunConfig needs script='<file in source_directory>'")
        source_directory = config.source_directory or "."
        if not os.path.isfile(os.path.join(source_directory, script)):
            raise UserErrorException(
                f"The script {script!r} was not found in source_directory {source_directory!r} "
                f"({os.path.abspath(os.path.join(source_directory, script))}). Check script= and source_directory=.")
        environment = definition_of(config.run_config.environment)
        image, interpreter, build_log = self._image(environment)
        try:
            home = self.workspace.service_context.home
            snap = snapshot.take(source_directory, home / "snapshots" / "manifests", home / "tmp")
        except snapshot.SnapshotLimitError as exc:
            raise SnapshotException(str(exc)) from None
        run_id = new_run_id(self.experiment.name)
        ws = self.workspace
        definition = RunDefinition(
            run_id=run_id,
            experiment=self.experiment.name,
            workspace={"name": ws.name, "subscription_id": ws.subscription_id, "resource_group": ws.resource_group,
                       "id": ws._workspace_id},
            script=script,
            arguments=arguments,
            compute_target=target,
            environment=environment,
            image=image,
            interpreter=interpreter,
            snapshot_id=snap.snapshot_id,
            inputs=inputs,
            environment_variables={str(k): str(v) for k, v in
                                   (config.run_config.environment_variables or {}).items()},
            max_run_duration_seconds=config.run_config.max_run_duration_seconds,
            shm_size=getattr(config.run_config.docker, "shm_size", None),
            tags=dict(self.tags),
            submitted_by=f"{getpass.getuser()}@{socket.gethostname()}",
        )
        client = ServiceClient(ws.service_context)
        try:
            client.upload_snapshot(snap.snapshot_id, snap.archive)
            record = client.submit(definition.to_dict(), build_log)
        except ServiceError as exc:
            raise UserErrorException(f"The workspace service refused the run: {exc.message}") from exc
        finally:
            snap.archive.unlink(missing_ok=True)
        return Run(self.experiment, run_id, _record=record)

    def _arguments(self, arguments: list[Any]) -> tuple[list[Any], list[dict[str, Any]]]:
        """Azure's ``_update_args_and_io``: placeholders for inputs, its errors for misuse."""
        from sandbox.aml.data_reference import DataReference

        result: list[Any] = []
        inputs: dict[str, dict[str, Any]] = {}
        for value in arguments:
            if isinstance(value, FileDataset):
                raise UserErrorException(
                    "Dataset cannot be used directly in a run. If you are using a FileDataset and would like to "
                    "mount or download the dataset, please call the as_mount or the as_download methods on the "
                    "dataset object. If you would like to use the direct mode, please call the as_named_input method "
                    "on the dataset object to convert the dataset into a DatasetConsumptionConfig. Please visit our "
                    "public documentation for more information on these methods and classes at https://docs."
                    "microsoft.com/en-us/python/api/azureml-core/azureml.data.output_dataset_config."
                    "outputfiledatasetconfig?view=azure-ml-py.")
            if isinstance(value, DatasetConsumptionConfig):
                if value.name not in inputs:
                    inputs[value.name] = value._to_definition(self.workspace)
                result.append(value.arg_val)
            elif isinstance(value, DataReference):
                raise TypeError("Object of type 'DataReference' is not JSON serializable")
            elif type(value).__module__.startswith("azureml."):
                raise UserErrorException(
                    f"{type(value).__name__} from azureml-core cannot be used with --target local: build the "
                    "dataset with the names connect('local') returns")
            else:
                try:
                    json.dumps(value)
                except TypeError:
                    raise TypeError(f"Object of type '{type(value).__name__}' is not JSON serializable") from None
                result.append(value)
        return result, list(inputs.values())

    def _compute_target(self) -> str:
        target = self.config.run_config.target
        name = target if isinstance(target, str) else getattr(target, "name", str(target))
        known = self.workspace.compute_targets
        if name not in known:
            raise UserErrorException(
                f"Compute target {name!r} was not found in the local workspace {self.workspace.name!r}. Known "
                f"compute targets: {sorted(known)} (set AML_SANDBOX_COMPUTE_TARGETS to add one, e.g. "
                f"'{name}:1:STANDARD_D2_V2').")
        return name

    def _image(self, environment: dict[str, Any]) -> tuple[str, str, str | None]:
        """Resolve the environment's image on the host (build it if missing); return (image, python, log)."""
        from sandbox.docker_engine import DockerEngine
        from sandbox.images import ImageBuilder, environment_recipe

        engine = DockerEngine()
        python = environment.get("python") or {}
        if python.get("userManagedDependencies"):
            return self._user_managed_image(engine, environment)
        recipe = environment_recipe(environment)
        if engine.get_image(recipe.reference) is not None:
            return recipe.reference, "python", None
        log = io.StringIO()
        print(f"Building the image for environment {environment.get('name')!r} ({recipe.reference}); the first "
              "build takes a few minutes, later submits reuse it.", flush=True)
        ImageBuilder(engine, self.workspace.service_context, log=log).resolve(recipe)
        return recipe.reference, "python", log.getvalue()

    @staticmethod
    def _user_managed_image(engine: Any, environment: dict[str, Any]) -> tuple[str, str, str | None]:
        """``user_managed_dependencies=True``: the environment's own image and interpreter, used as they are."""
        docker = environment.get("docker") or {}
        image = docker.get("baseImage")
        interpreter = (environment.get("python") or {}).get("interpreterPath") or "python"
        if not image:
            raise UserErrorException("A user-managed environment needs env.docker.base_image: the image that has "
                                     "every package the script needs")
        if engine.get_image(image) is None:
            ok, reason = engine.pull(image)
            if not ok:
                raise UserErrorException(
                    f"The environment's base image {image!r} is not on this machine and cannot be pulled ({reason}). "
                    "Build or load it locally (docker build / docker load) under that name, then submit again.")
        return image, interpreter, None
