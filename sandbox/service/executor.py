"""Takes submitted runs, queues them per compute target, runs them through ``LocalRunner``.

A compute target's ``max_nodes`` bounds how many of its runs execute at once; the others wait as
``Queued``. Each run has a thread owned by the executor (no module globals): Preparing -> Queued ->
Running (the run's own azureml-core reports to the run history routes with the run token issued here)
-> Finalizing (the driver log to Azurite) -> Completed | Failed | Canceled. A failure anywhere is recorded
on the run with its reason.

Runs outlive this process: containers keep going when the service stops, and :meth:`Executor.recover`
re-attaches to them at start (or marks them Failed with the reason when their container is gone).
"""

from __future__ import annotations

import logging
import threading
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from sandbox.config import ComputeDefinition, Settings
from sandbox.container_spec import RunCredentials
from sandbox.errors import ImageNotFoundError
from sandbox.fake_mount import DatasetMountValidationError
from sandbox.local_runner import LocalRunner, StartedRun
from sandbox.run_definition import RunDefinition, RunStatus
from sandbox.run_folder import RunFolder
from sandbox.run_outcome import RunOutcome
from sandbox.service.run_token import RunTokens
from sandbox.service.store import RunRecord, SqliteRunStore, experiment_id
from sandbox.snapshot import remove_orphans

log = logging.getLogger("aml_sandbox.executor")
#: How often the service looks for snapshots that were uploaded and never submitted.
ORPHAN_SWEEP_SECONDS = 600.0


class ComputeQueue:
    """The nodes of one compute target: a run holds one while it executes."""

    def __init__(self, definition: ComputeDefinition) -> None:
        self.definition = definition
        self._slots = threading.BoundedSemaphore(definition.max_nodes)

    def acquire(self, cancel: threading.Event) -> bool:
        while not cancel.is_set():
            if self._slots.acquire(timeout=0.5):
                return True
        return False

    def try_acquire(self) -> bool:
        """Take a node without waiting (a re-attached run already runs on one)."""
        return self._slots.acquire(blocking=False)

    def release(self) -> None:
        self._slots.release()


@dataclass
class RunHandle:
    run_id: str
    cancel: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None


class Executor:
    """One per service. Owns the per-run threads and the compute queues."""

    def __init__(self, store: SqliteRunStore, runner: LocalRunner, settings: Settings,
                 run_tokens: RunTokens | None = None) -> None:
        self.store = store
        self.runner = runner
        self.settings = settings
        self.run_tokens = run_tokens
        self.queues = {c.name: ComputeQueue(c) for c in settings.compute_targets}
        self._handles: dict[str, RunHandle] = {}
        self._lock = threading.Lock()

    @property
    def snapshots(self) -> Path:
        return self.settings.home / "snapshots"

    def snapshot_path(self, snapshot_id: str) -> Path:
        return self.snapshots / f"{snapshot_id}.tar.gz"

    def remove_orphan_snapshots(self) -> list[str]:
        """Delete snapshots uploaded over an hour ago that no unfinished run uses (uploaded, never submitted)."""
        return remove_orphans(self.snapshots, keep=self.store.snapshot_ids_in_use())

    def keep_tidy(self, stop: threading.Event, interval: float = ORPHAN_SWEEP_SECONDS) -> threading.Thread:
        """Sweep orphan snapshots now and every ``interval`` seconds until ``stop`` is set."""
        def sweep() -> None:
            while True:
                try:
                    removed = self.remove_orphan_snapshots()
                except OSError as exc:
                    log.warning("could not sweep orphan snapshots in %s: %s", self.snapshots, exc)
                else:
                    if removed:
                        log.info("removed %d orphan snapshots: %s", len(removed), ", ".join(removed))
                if stop.wait(interval):
                    return

        thread = threading.Thread(target=sweep, name="snapshot-sweep", daemon=True)
        thread.start()
        return thread

    # -- submit / cancel ---------------------------------------------------------------------

    def validate(self, definition: RunDefinition) -> None:
        if definition.compute_target not in self.queues:
            raise ValueError(f"Compute target {definition.compute_target!r} is not known to the local workspace; "
                             f"known: {sorted(self.queues)}")
        if not self.snapshot_path(definition.snapshot_id).is_file():
            raise ValueError(f"snapshot {definition.snapshot_id!r} was not uploaded; PUT it first")

    def submit(self, definition: RunDefinition, image_build_log: str | None = None) -> RunRecord:
        self.validate(definition)
        if image_build_log:
            (self.snapshots / f"{definition.snapshot_id}.build.log").write_text(image_build_log, encoding="utf-8")
        record = self.store.create_run(definition)
        self._spawn(definition, resume=None)
        return record

    def cancel(self, run_id: str) -> RunRecord:
        record = self.store.get_run(run_id)
        if record.status.is_terminal:
            return record
        with self._lock:
            handle = self._handles.get(run_id)
        if handle is not None:
            self.store.set_status(run_id, RunStatus.CANCEL_REQUESTED)
            handle.cancel.set()
        else:  # nothing executes it (e.g. lost in a restart): end it here
            self.runner.remove_container(run_id)
            self.store.set_status(run_id, RunStatus.CANCELED,
                                  error={"code": "UserError", "message": "The run was canceled by the user."})
        return self.store.get_run(run_id)

    def active(self) -> list[str]:
        with self._lock:
            return sorted(self._handles)

    def _spawn(self, definition: RunDefinition, resume: RunRecord | None, *, holding: bool = False) -> None:
        """Start the run's thread; ``holding``: it already holds a node of its compute target (a re-attached run)."""
        handle = RunHandle(definition.run_id)
        thread = threading.Thread(target=self._execute, args=(definition, handle, resume, holding),
                                  name=f"run-{definition.run_id}", daemon=True)
        handle.thread = thread
        with self._lock:
            self._handles[definition.run_id] = handle
        thread.start()

    # -- one run -----------------------------------------------------------------------------

    def _execute(self, definition: RunDefinition, handle: RunHandle, resume: RunRecord | None,
                 holding: bool) -> None:
        run_id = definition.run_id
        queue = self.queues.get(definition.compute_target)
        started: StartedRun | None = None
        try:
            if resume is not None and resume.status in _ON_A_NODE:
                started = self._reattach(definition, resume)
                if started is None:
                    return
            else:
                self.store.set_status(run_id, RunStatus.PREPARING)
                build_log_path = self.snapshots / f"{definition.snapshot_id}.build.log"
                build_log = build_log_path.read_text(encoding="utf-8") if build_log_path.is_file() else None
                folder = self.runner.prepare(definition, self.snapshot_path(definition.snapshot_id), build_log)
                self.store.set_status(run_id, RunStatus.QUEUED)
                if queue is None or not queue.acquire(handle.cancel):
                    self._finish(definition, RunOutcome(RunStatus.CANCELED, None, {
                        "code": "UserError", "message": "The run was canceled by the user before it started."}),
                        folder)
                    return
                holding = True
                if handle.cancel.is_set():
                    raise _Canceled
                self.store.set_status(run_id, RunStatus.RUNNING)
                try:
                    started = self.runner.start(definition, folder, queue.definition, self._credentials(definition))
                except DatasetMountValidationError as exc:
                    folder.note(f"UserError: {exc}")
                    self._finish(definition, RunOutcome(RunStatus.FAILED, None, {
                        "code": "UserError", "message": str(exc), "type": "DatasetMountValidationException"}),
                        folder)
                    return

            outcome = self.runner.wait(started, cancel=handle.cancel,
                                       reported_error=lambda: self.store.get_run(run_id).error)
            self._finish(definition, outcome, started.folder, started)
        except _Canceled:
            self._finish(definition, RunOutcome(RunStatus.CANCELED, None, {
                "code": "UserError", "message": "The run was canceled by the user."}), self.runner.folder(run_id))
        except ImageNotFoundError as exc:
            self._fail(definition, str(exc), "ImageNotFound")
        except Exception as exc:
            log.error("run %s failed in the sandbox: %s", run_id, traceback.format_exc())
            self._fail(definition, f"The sandbox could not execute the run: {type(exc).__name__}: {exc}",
                       "SystemError")
        finally:
            if started is not None:
                started.release()
            if holding and queue is not None:
                queue.release()
            with self._lock:
                self._handles.pop(run_id, None)

    def _credentials(self, definition: RunDefinition) -> RunCredentials | None:
        """The run's token (its own tree only) and experiment id, for its azureml-core and MLflow."""
        if self.run_tokens is None:
            return None
        return RunCredentials(token=self.run_tokens.issue(definition.run_id, definition.experiment),
                              experiment_id=experiment_id(definition.experiment))

    def _finish(self, definition: RunDefinition, outcome: RunOutcome, folder: RunFolder,
                started: StartedRun | None = None) -> None:
        run_id = definition.run_id
        self.store.set_status(run_id, RunStatus.FINALIZING)
        self.runner.remove_container(run_id)
        try:
            files = self.runner.finalize(definition, folder) if folder.root.exists() else []
        except OSError as exc:
            log.error("run %s: storing files failed: %s", run_id, exc)
            error = {"code": "SystemError", "message": f"The run ended ({outcome.status}) but storing its files in "
                     f"Azurite failed: {exc}. The files stay in {folder.root}."}
            self.store.set_status(run_id, RunStatus.FAILED, error=error, exit_code=outcome.exit_code)
            return
        self.store.add_files(run_id, files)
        self.store.set_status(run_id, outcome.status, error=outcome.error, exit_code=outcome.exit_code)
        self.runner.cleanup(run_id)
        self._forget_snapshot(definition)

    def _fail(self, definition: RunDefinition, message: str, error_type: str) -> None:
        run_id = definition.run_id
        folder = self.runner.folder(run_id)
        if folder.root.exists():
            folder.note(message)
        self.runner.remove_container(run_id)
        try:
            files = self.runner.finalize(definition, folder) if folder.root.exists() else []
            self.store.add_files(run_id, files)
            self.runner.cleanup(run_id)
        except OSError as exc:
            message += f" (its files stay in {folder.root}: {exc})"
        self.store.set_status(run_id, RunStatus.FAILED,
                              error={"code": "SystemError" if error_type == "SystemError" else "UserError",
                                     "message": message, "type": error_type})
        self._forget_snapshot(definition)

    def _forget_snapshot(self, definition: RunDefinition) -> None:
        for path in (self.snapshot_path(definition.snapshot_id),
                     self.snapshots / f"{definition.snapshot_id}.build.log"):
            path.unlink(missing_ok=True)

    # -- restart -----------------------------------------------------------------------------

    def recover(self) -> list[str]:
        """Pick up every unfinished run after a (re)start of the service; return their ids.

        Runs that were on a node take their nodes back first, before any waiting run is queued again, so a
        waiting run never starts beside a re-attached one beyond the target's ``max_nodes``.
        """
        recovered = []
        records = sorted(self.store.unfinished_runs(), key=lambda r: r.status not in _ON_A_NODE)
        for record in records:
            try:
                definition = RunDefinition.from_dict(record.definition)
            except (ValueError, TypeError) as exc:  # stored by an older version with looser rules
                log.error("run %s cannot be recovered: %s", record.run_id, exc)
                self.store.set_status(record.run_id, RunStatus.FAILED, error={
                    "code": "SystemError", "type": "SystemError",
                    "message": f"The workspace service restarted and could not resume the run: {exc}"})
                continue
            if record.status in {RunStatus.STARTING, RunStatus.PREPARING, RunStatus.QUEUED}:
                if not self.snapshot_path(definition.snapshot_id).is_file():
                    self._fail(definition, "The workspace service restarted before the run started, and its "
                               "snapshot is gone; submit it again.", "SystemError")
                    continue
                log.info("re-queueing run %s (%s)", record.run_id, record.status)
                self._spawn(definition, resume=record)
            else:
                log.info("re-attaching to run %s (%s)", record.run_id, record.status)
                queue = self.queues.get(definition.compute_target)
                self._spawn(definition, resume=record, holding=queue is not None and queue.try_acquire())
            recovered.append(record.run_id)
        return recovered

    def _reattach(self, definition: RunDefinition, record: RunRecord) -> StartedRun | None:
        folder = self.runner.folder(definition.run_id)
        container = self.runner.find_container(definition.run_id)
        compute = self.queues[definition.compute_target].definition if definition.compute_target in self.queues \
            else self.settings.compute_targets[0]
        if container is None:  # a stopped container stays until the service removes it: this one was removed
            self._fail(definition, "The run's container was lost while the workspace service restarted; the "
                       "run did not finish. Submit it again.", "SystemError")
            return None
        return StartedRun(definition, folder, container, compute)


#: Statuses of a run whose container was started: after a restart it is re-attached, not queued again.
_ON_A_NODE = frozenset({RunStatus.RUNNING, RunStatus.FINALIZING, RunStatus.CANCEL_REQUESTED})


class _Canceled(Exception):
    pass

