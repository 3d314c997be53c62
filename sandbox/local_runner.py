"""One run end to end on Docker: what Azure ML does on a compute node, for one ``RunDefinition``.

``prepare`` (status Preparing): the run folder, the snapshot unpacked into the working directory,
the runtime copied in, the image checked. ``start`` (Running): the dataset inputs materialised and
planned as mounts, the container created and started. ``wait``: the run folder followed
(history records handed to a callback while the run goes), cancel and time limits applied, the
exit classified (exit code, the script's exception, OOM kill). ``finalize`` (Finalizing): the driver
log, ``logs/``, ``outputs/`` and uploaded files stored in Azurite container ``azureml`` under
``ExperimentRun/dcid.<run_id>/``, the run folder removed.

The container runs as uid 1000, with no capabilities, no Docker socket and no storage credentials;
it is labelled with the run id and removed in every case. No global state: a service hosts one
``LocalRunner`` and calls it from a thread per run.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from sandbox.config import ComputeDefinition, Settings
from sandbox.docker_engine import MANAGED_LABEL, DockerEngine
from sandbox.errors import ImageNotFoundError
from sandbox.fake_mount import (
    DatasetCache,
    Materialized,
    MountSpec,
    dataset_environment_vars,
    own_for_run,
    plan_mount,
)
from sandbox.images import BUILD_COMMAND_HINT
from sandbox.run_definition import RunDefinition, RunStatus
from sandbox.snapshot import extract
from sandbox.storage import BlobStore, Transfer

if TYPE_CHECKING:  # pragma: no cover
    from docker.models.containers import Container

RUN_ID_LABEL = "aml-sandbox.run-id"
EXPERIMENT_LABEL = "aml-sandbox.experiment"
PROJECT_LABEL = "aml-sandbox.project"
RUNTIME_SOURCE = Path(__file__).resolve().parent / "runtime"
RUNTIME_PACKAGE = "aml_sandbox_runtime"
SETUP_MOUNT = "/azureml-setup"
CONTROL_MOUNT = "/azureml-run"
ARTIFACT_CONTAINER = "azureml"
DRIVER_LOG = "azureml-logs/70_driver_log.txt"
IMAGE_BUILD_LOG = "azureml-logs/20_image_build_log.txt"
RUN_UID = 1000
DRIVER_COMMAND = ("import sys; sys.path.insert(0, '/azureml-setup'); "
                  "from aml_sandbox_runtime.driver import main; sys.exit(main())")
STOP_TIMEOUT = 10


def artifact_prefix(run_id: str) -> str:
    return f"ExperimentRun/dcid.{run_id}/"


def working_directory(definition: RunDefinition) -> str:
    """Azure's legacy working directory on the node (PARITY.md 7)."""
    return (f"/mnt/batch/tasks/shared/LS_root/jobs/{definition.workspace['name']}/azureml/{definition.run_id}"
            f"/mounts/workspaceblobstore/azureml/{definition.run_id}")


@dataclass(frozen=True)
class RunFolder:
    """``<state>/runs/<run_id>``: what the run container sees of the host."""

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
    def history(self) -> Path:
        return self.control / "history.jsonl"

    @property
    def driver_log(self) -> Path:
        return self.control / DRIVER_LOG

    def file(self, name: str) -> Path | None:
        """A run file while the run goes (``azureml-logs/...`` in control, ``outputs/...`` in wd)."""
        name = name.lstrip("/")
        if ".." in PurePosixPath(name).parts:
            return None
        for base in (self.control, self.wd, self.control / "artifacts"):
            candidate = base / name
            if candidate.is_file():
                return candidate
        return None

    def list_files(self) -> list[str]:
        names = set()
        for base, prefixes in ((self.control, ("azureml-logs/",)), (self.wd, ("outputs/", "logs/")),
                               (self.control / "artifacts", ("",))):
            if not base.is_dir():
                continue
            for path in base.rglob("*"):
                rel = path.relative_to(base).as_posix()
                if path.is_file() and rel.startswith(prefixes):
                    names.add(rel)
        return sorted(names)


@dataclass
class RunOutcome:
    status: RunStatus
    exit_code: int | None = None
    error: dict[str, Any] | None = None


@dataclass
class StartedRun:
    definition: RunDefinition
    folder: RunFolder
    container: Container
    compute: ComputeDefinition
    mounts: list[MountSpec] = field(default_factory=list)
    materialized: list[Materialized] = field(default_factory=list)

    def release(self) -> None:
        for item in self.materialized:
            item.release()


class HistoryFollower:
    """Reads new complete lines of ``history.jsonl`` since the last call."""

    def __init__(self, path: Path, offset: int = 0) -> None:
        self.path = path
        self.offset = offset

    def read_new(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            data = handle.read()
        end = data.rfind(b"\n")
        if end < 0:
            return []
        self.offset += end + 1
        records = []
        for line in data[: end + 1].splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records


class LocalRunner:
    """Executes runs in containers; one instance per service, no global state."""

    def __init__(self, engine: DockerEngine, store: BlobStore, settings: Settings) -> None:
        self.engine = engine
        self.store = store
        self.settings = settings
        self.cache = DatasetCache(store, settings.home / "cache" / "datasets")

    def folder(self, run_id: str) -> RunFolder:
        return RunFolder(self.settings.home / "runs" / run_id)

    # -- Preparing ---------------------------------------------------------------------------

    def prepare(self, definition: RunDefinition, snapshot: Path, image_build_log: str | None = None) -> RunFolder:
        folder = self.folder(definition.run_id)
        if folder.root.exists():
            shutil.rmtree(folder.root)
        for path in (folder.wd, folder.control / "azureml-logs", folder.control / "artifacts", folder.inputs):
            path.mkdir(parents=True, exist_ok=True)
        extract(snapshot, folder.wd)
        shutil.copytree(RUNTIME_SOURCE, folder.setup / RUNTIME_PACKAGE,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        if image_build_log:
            (folder.control / IMAGE_BUILD_LOG).write_text(image_build_log, encoding="utf-8")
        own_for_run(folder.wd)
        own_for_run(folder.control)
        if self.engine.get_image(definition.image) is None:
            raise ImageNotFoundError(
                definition.image,
                f"The run's environment {definition.environment.get('name')!r} has no image here. "
                f"{BUILD_COMMAND_HINT} (or submit again: the submitting client builds missing images)")
        return folder

    # -- Running -----------------------------------------------------------------------------

    def start(self, definition: RunDefinition, folder: RunFolder, compute: ComputeDefinition) -> StartedRun:
        wd = working_directory(definition)
        mounts: list[MountSpec] = []
        materialized: list[Materialized] = []
        try:
            for spec in definition.input_specs:
                if spec.mode == "direct":
                    continue
                item = self.cache.materialize(spec.name, spec.sources)
                materialized.append(item)
                mounts.append(plan_mount(spec, item, wd, folder.inputs))
            direct = {s.name: s.dataset_id for s in definition.input_specs if s.mode == "direct"}
            self._write_spec(definition, folder, mounts, direct)
            container = self._create_container(definition, folder, compute, mounts, direct)
            container.start()
        except BaseException:
            for item in materialized:
                item.release()
            raise
        return StartedRun(definition, folder, container, compute, mounts, materialized)

    def _write_spec(self, definition: RunDefinition, folder: RunFolder, mounts: list[MountSpec],
                    direct: dict[str, str]) -> None:
        display = definition.display_arguments()
        spec = {
            "run_id": definition.run_id,
            "experiment": definition.experiment,
            "workspace": definition.workspace,
            "script": definition.script,
            "arguments_template": definition.template_arguments(),
            "arguments_display": display,
            "inputs": [m.to_runtime() for m in mounts],
            "direct_inputs": direct,
            "tags": definition.tags,
            "properties": definition.properties,
            "compute_target": definition.compute_target,
            "portal_url": f"{self.settings.service_url}{definition.portal_path}",
            "cleanup_timeout": 300.0,
        }
        path = folder.control / "spec.json"
        path.write_text(json.dumps(spec, indent=2), encoding="utf-8")
        os.chmod(path, 0o644)

    def _create_container(self, definition: RunDefinition, folder: RunFolder, compute: ComputeDefinition,
                          mounts: list[MountSpec], direct: dict[str, str]) -> Container:
        ws = definition.workspace
        env = {
            "AZUREML_RUN_ID": definition.run_id,
            "AZUREML_ARM_SUBSCRIPTION": ws["subscription_id"],
            "AZUREML_ARM_RESOURCEGROUP": ws["resource_group"],
            "AZUREML_ARM_WORKSPACE_NAME": ws["name"],
            "AZUREML_ARM_PROJECT_NAME": definition.experiment,
            "AZUREML_WORKSPACE_ID": ws.get("id", ""),
            "AZUREML_TARGET_TYPE": "amlcompute" if definition.compute_target != "local" else "local",
            "AZUREML_DATASET_ENVIRONMENT_VARS": dataset_environment_vars(mounts) + "".join(
                f",{name}:direct" for name in direct).lstrip(","),
            "AML_SANDBOX_CONTROL_DIR": CONTROL_MOUNT,
            "PYTHONUNBUFFERED": "1",
            "HOME": "/tmp",
            **{str(k): str(v) for k, v in (definition.environment.get("environmentVariables") or {}).items()},
            **definition.environment_variables,
        }
        for mount in mounts:
            env.update(mount.environment())
        env.update({name: dataset_id for name, dataset_id in direct.items()})
        volumes = {
            str(folder.setup): {"bind": SETUP_MOUNT, "mode": "ro"},
            str(folder.control): {"bind": CONTROL_MOUNT, "mode": "rw"},
            str(folder.wd): {"bind": working_directory(definition), "mode": "rw"},
        }
        for mount in mounts:
            host, bind = mount.to_docker_volume()
            volumes[host] = bind
        info = self.engine.info()
        host_memory = info.get("MemTotal") or compute.memory_bytes
        host_cpus = info.get("NCPU") or compute.cores
        labels = {
            MANAGED_LABEL: "true",
            RUN_ID_LABEL: definition.run_id,
            EXPERIMENT_LABEL: definition.experiment,
            PROJECT_LABEL: self.settings.project,
        }
        return self.engine.client.containers.create(
            definition.image,
            command=[definition.interpreter, "-c", DRIVER_COMMAND],
            name=f"aml-run-{definition.run_id}",
            user=f"{RUN_UID}:{RUN_UID}",
            working_dir=working_directory(definition),
            environment=env,
            volumes=volumes,
            labels=labels,
            mem_limit=min(compute.memory_bytes, int(host_memory)),
            memswap_limit=min(compute.memory_bytes, int(host_memory)),
            nano_cpus=int(min(compute.cores, host_cpus) * 1e9),
            shm_size=definition.shm_size or "2g",
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            init=True,
            detach=True,
        )

    def wait(self, started: StartedRun, *, cancel: threading.Event,
             on_history: Callable[[list[dict[str, Any]]], None],
             follower: HistoryFollower | None = None) -> RunOutcome:
        """Follow the run until its container exits; apply cancel and max_run_duration_seconds."""
        import docker.errors
        import requests.exceptions

        follower = follower or HistoryFollower(started.folder.history)
        container = started.container
        deadline = None
        if started.definition.max_run_duration_seconds:
            deadline = time.monotonic() + started.definition.max_run_duration_seconds
        errors: list[dict[str, Any]] = []
        stop_reason: str | None = None
        exit_code: int | None = None

        def pump() -> None:
            records = follower.read_new()
            errors.extend(r for r in records if r.get("kind") == "error")
            if records:
                on_history(records)

        while exit_code is None:
            pump()
            if stop_reason is None and cancel.is_set():
                stop_reason = "canceled"
            if stop_reason is None and deadline is not None and time.monotonic() > deadline:
                stop_reason = "timeout"
            if stop_reason is not None:
                try:
                    container.stop(timeout=STOP_TIMEOUT)
                except docker.errors.APIError:
                    pass
            try:
                result = container.wait(timeout=0.5)
                exit_code = int(result.get("StatusCode", -1))
            except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
                continue
            except docker.errors.NotFound:
                exit_code = -1
        pump()
        oom = False
        try:
            container.reload()
            oom = bool(container.attrs.get("State", {}).get("OOMKilled"))
        except docker.errors.NotFound:
            pass
        return self.classify(started.definition, started.folder, started.compute, exit_code, oom, stop_reason,
                             errors)

    def classify(self, definition: RunDefinition, folder: RunFolder, compute: ComputeDefinition, exit_code: int,
                 oom: bool, stop_reason: str | None, errors: list[dict[str, Any]]) -> RunOutcome:
        """The final status and error of a run from how its container ended and what the script recorded."""
        if stop_reason == "canceled":
            self._append_driver_log(folder, "The run was canceled. Finalizing run...")
            return RunOutcome(RunStatus.CANCELED, exit_code,
                              {"code": "UserError", "message": "The run was canceled by the user."})
        if stop_reason == "timeout":
            message = (f"The run exceeded max_run_duration_seconds={definition.max_run_duration_seconds} and was "
                       "stopped.")
            self._append_driver_log(folder, message)
            return RunOutcome(RunStatus.FAILED, exit_code, {"code": "UserError", "message": message})
        if oom:
            limit = compute.memory_bytes / 1024**3
            message = (f"The run was killed because it ran out of memory: it exceeded the {limit:g} GiB memory "
                       f"limit of compute target '{compute.name}' ({compute.vm_size}), exit code "
                       f"{exit_code} (OOMKilled). Use less memory or a compute target with a larger VM size.")
            self._append_driver_log(folder, message)
            return RunOutcome(RunStatus.FAILED, exit_code, {"code": "UserError", "message": message,
                                                              "type": "OutOfMemory"})
        explicit = [e for e in errors if e.get("explicit")]
        if exit_code == 0 and not explicit:
            return RunOutcome(RunStatus.COMPLETED, 0)
        error = (errors or [{}])[-1]
        if error.get("type") == "DatasetMountValidationException":
            message = f"Dataset initialization failed: DatasetMountValidationException: {error['message']}"
        elif error.get("type"):
            message = f"User program failed with {error['type']}: {error.get('message', '')}"
        elif error.get("explicit"):
            message = error.get("message", "The run was marked as failed")
        elif exit_code in (137, 143, -1):
            message = (f"The run's container was stopped from outside (exit code {exit_code}) before the script "
                       "finished.")
            self._append_driver_log(folder, message)
        else:
            message = f"User program failed with exit code {exit_code}"
        details = {"code": error.get("code", "UserError"), "message": message}
        if error.get("type"):
            details["type"] = error["type"]
        if error.get("traceback"):
            details["traceback"] = error["traceback"]
        return RunOutcome(RunStatus.FAILED, exit_code, details)

    @staticmethod
    def _append_driver_log(folder: RunFolder, message: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        with open(folder.driver_log, "a", encoding="utf-8") as log:
            log.write(f"[{stamp}] {message}\n")

    # -- containers --------------------------------------------------------------------------

    def find_container(self, run_id: str) -> Container | None:
        containers = self.engine.client.containers.list(all=True, filters={"label": f"{RUN_ID_LABEL}={run_id}"})
        return containers[0] if containers else None

    def remove_container(self, run_id: str) -> None:
        self.engine.remove_containers({RUN_ID_LABEL: run_id})

    # -- Finalizing --------------------------------------------------------------------------

    def finalize(self, definition: RunDefinition, folder: RunFolder) -> list[str]:
        """Store the run's files in Azurite; return their names. The run folder is removed afterwards."""
        self.store.ensure_container(ARTIFACT_CONTAINER)
        prefix = artifact_prefix(definition.run_id)
        names = folder.list_files()
        transfers = [Transfer(str(folder.file(name)), prefix + name) for name in names if folder.file(name)]
        failed = [r for r in self.store.upload(ARTIFACT_CONTAINER, transfers, overwrite=True,
                                               content_types=_content_type) if not r.ok]
        if failed:
            raise OSError(f"storing {len(failed)} run files in Azurite failed, e.g. {failed[0].transfer.blob}: "
                          f"{failed[0].error}")
        return names

    def cleanup(self, run_id: str) -> None:
        folder = self.folder(run_id)
        if folder.root.exists():
            shutil.rmtree(folder.root, ignore_errors=True)


def _content_type(blob: str) -> str | None:
    if blob.endswith((".txt", ".log")):
        return "text/plain; charset=utf-8"
    if blob.endswith(".json"):
        return "application/json"
    if blob.endswith(".png"):
        return "image/png"
    return None
