"""The service's snapshot sweep: uploaded-and-never-submitted snapshots go, those of waiting runs stay."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from sandbox.config import Settings
from sandbox.run_definition import RunDefinition, RunStatus
from sandbox.service.executor import Executor
from sandbox.service.store import SqliteRunStore

WAITING = "0f8fad5b-d9cb-469f-a165-70867728950e"
ORPHAN = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
ENDED = "16fd2706-8baf-433b-82eb-8c7fada847da"


def _definition(run_id: str, snapshot_id: str) -> RunDefinition:
    return RunDefinition(
        run_id=run_id, experiment="exp",
        workspace={"name": "aml-sandbox-ws", "subscription_id": "00000000-0000-0000-0000-000000000000",
                   "resource_group": "aml-sandbox-rg"},
        script="train.py", arguments=[], compute_target="cpu-cluster", environment={"name": "env"},
        image="aml-sandbox/azureml:abc", snapshot_id=snapshot_id)


def _executor(tmp_path: Path) -> tuple[Executor, SqliteRunStore]:
    store = SqliteRunStore(tmp_path / "runs.db")
    runner: Any = None  # the sweep never reaches the runner
    return Executor(store, runner, Settings(home=tmp_path / "home")), store


def _upload(executor: Executor, snapshot_id: str, age: float) -> Path:
    path = executor.snapshot_path(snapshot_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x1f\x8b")
    then = time.time() - age
    os.utime(path, (then, then))
    return path


def test_the_sweep_removes_old_unsubmitted_and_finished_snapshots_and_keeps_those_of_waiting_runs(
        tmp_path: Path) -> None:
    executor, store = _executor(tmp_path)
    store.create_run(_definition("exp_1_aaaa", WAITING))  # Starting: its snapshot is still needed
    store.create_run(_definition("exp_2_bbbb", ENDED))
    store.set_status("exp_2_bbbb", RunStatus.COMPLETED)
    waiting, orphan, ended = (_upload(executor, s, 7200) for s in (WAITING, ORPHAN, ENDED))
    fresh = _upload(executor, "5a7e1c4b-8f0d-4c3a-9b6e-2d1f0e9c8b7a", 60)  # being submitted right now

    removed = executor.remove_orphan_snapshots()

    assert removed == sorted([orphan.name, ended.name])
    assert waiting.exists() and fresh.exists()
    assert not orphan.exists() and not ended.exists()


def test_the_sweep_runs_at_start_and_stops_when_told(tmp_path: Path) -> None:
    executor, _ = _executor(tmp_path)
    orphan = _upload(executor, ORPHAN, 7200)
    stop = threading.Event()
    thread = executor.keep_tidy(stop, interval=0.05)
    deadline = time.monotonic() + 5
    while orphan.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    stop.set()
    thread.join(timeout=5)
    assert not orphan.exists(), "the sweep at start did not remove a snapshot uploaded two hours ago"
    assert not thread.is_alive()
