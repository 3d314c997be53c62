"""One run end to end on Docker: what Azure ML does on a compute node, for one ``RunDefinition``.

``prepare`` (status Preparing): the run folder, the snapshot unpacked into the working directory,
the runtime copied in, the image checked. ``start`` (Running): the dataset inputs materialised and
planned as mounts, the container created on the run network and started. ``wait``: cancel, time and
disk limits applied, the exit classified (exit code, the error the run reported, OOM kill).
``finalize`` (Finalizing): the driver log (and image build log) stored in Azurite container ``azureml``
under ``ExperimentRun/dcid.<run_id>/``, the run folder removed.

Inside the container the run is azureml-core's own: its metrics, tags, child runs and files (``outputs/``
and ``logs/`` too, uploaded by Azure's context managers at the end) go to the workspace service over HTTP
with the run's token. The service reads only the driver log of the run folder (link-refusing, bounded).

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
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sandbox.config import ComputeDefinition, Settings
from sandbox.container_spec import RUN_ID_LABEL, RunConnection, RunCredentials, run_container_spec, working_directory
from sandbox.docker_engine import DockerEngine
from sandbox.errors import ImageNotFoundError
from sandbox.fake_mount import DatasetCache, Materialized, MountSpec, own_for_run, plan_mount
from sandbox.image_builder import BUILD_COMMAND_HINT
from sandbox.run_definition import RunDefinition
from sandbox.run_folder import DRIVER_LOG, IMAGE_BUILD_LOG, RunFolder, skipped_notes
from sandbox.run_outcome import RunOutcome, classify
from sandbox.snapshot import extract
from sandbox.storage import BlobStore, Transfer, TransferResult

if TYPE_CHECKING:  # pragma: no cover
    from docker.models.containers import Container

RUNTIME_SOURCE = Path(__file__).resolve().parent / "runtime"
RUNTIME_PACKAGE = "aml_sandbox_runtime"
ARTIFACT_CONTAINER = "azureml"
STOP_TIMEOUT = 10
#: What one run may write into its folders: the temporary disk of a STANDARD_D2_V2 node. No quota bounds a
#: bind mount on overlay2 over ext4, so the service measures the folders while the run goes and stops it.
#: Attempts at storing a run's files: a connection that Azurite closed just as a request reused it is not
#: retried by the storage client (reads are never retried there), so finalize sends the failed ones again.
FINALIZE_ATTEMPTS = 2
#: Files and folders a run may make (empty files take no blocks: this bounds what the byte limit cannot).
MAX_RUN_ENTRIES = 1_000_000
MAX_RUN_BYTES = 100 * 1024**3
#: Free space the service keeps on the disk of its state folder: a run is stopped below it.
MIN_FREE_BYTES = 2 * 1024**3
#: Seconds between two measures of a run folder (the free space is checked at every poll).
DISK_CHECK_SECONDS = 10.0


def artifact_prefix(run_id: str) -> str:
    return f"ExperimentRun/dcid.{run_id}/"


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


class LocalRunner:
    """Executes runs in containers; one instance per service, no global state."""

    def __init__(self, engine: DockerEngine, store: BlobStore, settings: Settings, *,
                 max_run_bytes: int = MAX_RUN_BYTES, min_free_bytes: int = MIN_FREE_BYTES,
                 connection: RunConnection | None = None) -> None:
        self.engine = engine
        self.store = store
        self.settings = settings
        self.connection = connection
        self.max_run_bytes = max_run_bytes
        self.min_free_bytes = min_free_bytes
        self.cache = DatasetCache(store, settings.home / "cache" / "datasets")

    def folder(self, run_id: str) -> RunFolder:
        return RunFolder(self.settings.home / "runs" / run_id)

    # -- Preparing ---------------------------------------------------------------------------

    def prepare(self, definition: RunDefinition, snapshot: Path, image_build_log: str | None = None) -> RunFolder:
        folder = self.folder(definition.run_id)
        if folder.root.exists():
            shutil.rmtree(folder.root)
        for path in (folder.wd, folder.control / "azureml-logs", folder.inputs):
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

    def start(self, definition: RunDefinition, folder: RunFolder, compute: ComputeDefinition,
              credentials: RunCredentials | None = None) -> StartedRun:
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
            container = self._create_container(definition, folder, compute, mounts, direct, credentials)
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
        # Written before the container exists, into a folder made a moment ago: created, never followed.
        fd = os.open(folder.control / "spec.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(spec, indent=2))

    def _create_container(self, definition: RunDefinition, folder: RunFolder, compute: ComputeDefinition,
                          mounts: list[MountSpec], direct: dict[str, str],
                          credentials: RunCredentials | None) -> Container:
        info = self.engine.info()
        spec = run_container_spec(definition, folder, compute, mounts, direct, self.settings,
                                  host_memory=int(info.get("MemTotal") or compute.memory_bytes),
                                  host_cpus=float(info.get("NCPU") or compute.cores),
                                  connection=self.connection, credentials=credentials)
        return self.engine.client.containers.create(**spec.to_create_kwargs())

    def wait(self, started: StartedRun, *, cancel: threading.Event,
             reported_error: Callable[[], dict[str, Any] | None] = lambda: None) -> RunOutcome:
        """Wait for the run's container to exit; apply cancel, max_run_duration_seconds and the disk bounds.

        ``reported_error`` gives the error the run reported to run history (azureml-core's ``Run.Error``
        event: the script's exception, or ``run.fail()``), read once the container has exited."""
        import docker.errors
        import requests.exceptions

        container = started.container
        deadline = None
        if started.definition.max_run_duration_seconds:
            deadline = time.monotonic() + started.definition.max_run_duration_seconds
        stop_reason: str | None = None
        stop_message: str | None = None
        exit_code: int | None = None
        next_measure = 0.0

        while exit_code is None:
            if stop_reason is None and cancel.is_set():
                stop_reason = "canceled"
            if stop_reason is None and deadline is not None and time.monotonic() > deadline:
                stop_reason = "timeout"
            if stop_reason is None:
                measure = time.monotonic() >= next_measure
                if measure:
                    next_measure = time.monotonic() + DISK_CHECK_SECONDS
                stop_message = self._over_disk_bounds(started.folder, measure=measure)
                if stop_message:
                    stop_reason = "disk"
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
        oom = False
        try:
            container.reload()
            oom = bool(container.attrs.get("State", {}).get("OOMKilled"))
        except docker.errors.NotFound:
            pass
        error = reported_error()
        return self.classify(started.definition, started.folder, started.compute, exit_code, oom, stop_reason,
                             [error] if error else [], stop_message=stop_message)

    def _over_disk_bounds(self, folder: RunFolder, *, measure: bool) -> str | None:
        """Why the run must stop for what it wrote (None when it may go on)."""
        free = shutil.disk_usage(folder.root).free
        if free < self.min_free_bytes:
            return (f"The run was stopped: the disk of the sandbox's state folder has {free / 1024**3:.1f} GiB free, "
                    f"below the {self.min_free_bytes / 1024**3:g} GiB the sandbox keeps free (this run's folders "
                    f"hold {folder.disk_usage().bytes / 1024**3:.1f} GiB). Write less, or free space on that disk.")
        if not measure:
            return None
        used = folder.disk_usage()
        if used.bytes > self.max_run_bytes:
            return (f"The run was stopped: its folders (the working directory with outputs/ and logs/, and "
                    f"uploaded files) hold {used.bytes / 1024**3:.1f} GiB, over the limit of "
                    f"{self.max_run_bytes / 1024**3:g} GiB per run (a STANDARD_D2_V2 node's temporary disk). "
                    "Write less into them.")
        if used.entries > MAX_RUN_ENTRIES:
            return (f"The run was stopped: its folders hold {used.entries:,} files and folders, over the limit of "
                    f"{MAX_RUN_ENTRIES:,} per run. Write fewer, larger files (an archive, a table).")
        return None

    @staticmethod
    def classify(definition: RunDefinition, folder: RunFolder, compute: ComputeDefinition, exit_code: int,
                 oom: bool, stop_reason: str | None, errors: list[dict[str, Any]], *,
                 stop_message: str | None = None) -> RunOutcome:
        """:func:`sandbox.run_outcome.classify`, with its line added to the driver log (in the service's notes)."""
        outcome = classify(definition, compute, exit_code, oom, stop_reason, errors, stop_message=stop_message)
        if outcome.note:
            folder.note(outcome.note)
        return outcome

    # -- containers --------------------------------------------------------------------------

    def find_container(self, run_id: str) -> Container | None:
        containers = self.engine.client.containers.list(all=True, filters={"label": f"{RUN_ID_LABEL}={run_id}"})
        return containers[0] if containers else None

    def remove_container(self, run_id: str) -> None:
        self.engine.remove_containers({RUN_ID_LABEL: run_id})

    # -- Finalizing --------------------------------------------------------------------------

    def finalize(self, definition: RunDefinition, folder: RunFolder) -> list[str]:
        """Store the run's regular files in Azurite; return their names. The run folder is removed afterwards.

        Call it once the container is removed: nothing changes the folder any more, so the files the scan
        found (every folder on the way real, no link followed) are the files uploaded. Links, FIFOs and the
        like are skipped, each with a line in the driver log; the driver log is stored with the service's
        lines after the run's.
        """
        folder.seal()
        scan = folder.scan()
        for line in skipped_notes(scan.skipped):
            folder.note(line)
        merged = folder.merged_driver_log()
        if merged is not None:
            scan.files[DRIVER_LOG] = merged
        self.store.ensure_container(ARTIFACT_CONTAINER)
        prefix = artifact_prefix(definition.run_id)
        transfers = [Transfer(str(path), prefix + name) for name, path in sorted(scan.files.items())]
        failed: list[TransferResult] = []
        for _attempt in range(FINALIZE_ATTEMPTS):  # overwrite=True: sending a file again is harmless
            failed = [r for r in self.store.upload(ARTIFACT_CONTAINER, transfers, overwrite=True,
                                                   content_types=_content_type) if not r.ok]
            if not failed:
                break
            transfers = [r.transfer for r in failed]
        if failed:
            raise OSError(f"storing {len(failed)} run files in Azurite failed, e.g. {failed[0].transfer.blob}: "
                          f"{failed[0].error}")
        return sorted(scan.files)

    def cleanup(self, run_id: str) -> None:
        self.folder(run_id).remove()


def _content_type(blob: str) -> str | None:
    if blob.endswith((".txt", ".log")):
        return "text/plain; charset=utf-8"
    if blob.endswith(".json"):
        return "application/json"
    if blob.endswith(".png"):
        return "image/png"
    return None
