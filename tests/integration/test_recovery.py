"""Runs across restarts of the workspace service, and the run time limit: rows of docs/reliability.md.

The service is stopped and started with docker compose, as a crash or a `docker compose restart` does;
what a run left on the host is changed while the service is down, as only a fault would change it.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from sandbox import aml
from tests.integration.conftest import SandboxEnv
from tests.integration.helpers import (
    ENV,
    driver_log,
    experiment_name,
    submit,
    wait_for_log_line,
    wait_for_status,
    write_script,
)

TICKER = """
    import sys, time
    from azureml.core import Run
    run = Run.get_context()
    for i in range(int(sys.argv[1])):
        print(f"tick {i}", flush=True)
        run.log("tick", i)
        time.sleep(float(sys.argv[2]))
    print("done", flush=True)
    """
FINAL = {"Completed", "Failed", "Canceled"}


def restart_service(stack: SandboxEnv, while_stopped: Callable[[], None] = lambda: None) -> None:
    """Stop the workspace service, call ``while_stopped``, start it again and wait until it answers."""
    stack.compose("stop", "workspace")
    while_stopped()
    stack.compose("start", "workspace")
    deadline = time.monotonic() + 90
    while True:
        try:
            if httpx.get(f"{stack.settings.service_url}/api/health", timeout=3).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError("the workspace service did not answer within 90 s of its start:\n"
                                 + stack.compose("logs", "--tail", "40", "workspace", check=False).stdout)
        time.sleep(0.5)


@contextmanager
def canceled_if_unfinished(*runs: aml.Run) -> Iterator[None]:
    """Whatever the test asserts, its runs do not outlive it (a failed test would leave them to the next one)."""
    try:
        yield
    finally:
        for run in runs:
            if run.get_status() not in FINAL:
                run.cancel()
        for run in runs:
            wait_for_status(run, FINAL, timeout=60)


def containers_of(run: aml.Run) -> list[str]:
    return subprocess.run(["docker", "ps", "-aq", "--filter", f"label=aml-sandbox.run-id={run.id}"],
                          capture_output=True, text=True, check=True).stdout.split()


@pytest.mark.local_only
def test_runs_waiting_in_a_queue_when_the_service_restarts_run_afterwards_or_fail_if_their_snapshot_is_gone(
        workspace_env: SandboxEnv, stack: SandboxEnv, tmp_path: Path, no_leftover_containers: None) -> None:
    write_script(tmp_path / "src", "ticker.py", TICKER)
    experiment = experiment_name("requeue")
    # single-node has one node: the first run holds it, the two others wait Queued behind it.
    first = submit(tmp_path / "src", "ticker.py", [30, 0.5], compute="single-node", experiment=experiment)
    waiting = submit(tmp_path / "src", "ticker.py", [3, 0.1], compute="single-node", experiment=experiment)
    orphan = submit(tmp_path / "src", "ticker.py", [3, 0.1], compute="single-node", experiment=experiment)
    with canceled_if_unfinished(first, waiting, orphan):
        wait_for_log_line(first, "tick 1")
        for run in (waiting, orphan):
            assert wait_for_status(run, {"Queued"} | FINAL) == "Queued"
        snapshot_id = orphan.get_details()["properties"]["ContentSnapshotId"]
        snapshot = stack.settings.home / "snapshots" / f"{snapshot_id}.tar.gz"
        assert snapshot.is_file(), f"the queued run's snapshot is not where the service keeps it ({snapshot})"

        restart_service(stack, while_stopped=snapshot.unlink)

        assert wait_for_status(orphan, FINAL) == "Failed"
        message = orphan.get_details()["error"]["error"]["message"]
        assert "restarted before the run started" in message and "snapshot is gone" in message, message
        assert waiting.get_status() in {"Preparing", "Queued"}, "the queued run did not wait for the first run's node"
        assert wait_for_status(first, FINAL, timeout=180) == "Completed"
        assert wait_for_status(waiting, FINAL, timeout=120) == "Completed", waiting.get_details().get("error")
        assert "tick 2\n" in driver_log(waiting) and "done" in driver_log(waiting)
        assert waiting.get_metrics()["tick"] == [0, 1, 2]
        assert first.get_metrics()["tick"] == list(range(30)), "metrics of the running run lost or doubled"
        spans = [(r.get_details()["startTimeUtc"], r.get_details()["endTimeUtc"]) for r in (first, waiting)]
        assert spans[0][1] <= spans[1][0], f"the one-node target ran two runs at once after the restart: {spans}"


@pytest.mark.local_only
def test_a_run_whose_container_is_gone_after_a_restart_of_the_service_fails_with_the_reason(
        workspace_env: SandboxEnv, stack: SandboxEnv, tmp_path: Path, no_leftover_containers: None) -> None:
    write_script(tmp_path / "src", "forever.py", """
        import time
        print("started", flush=True)
        while True:
            time.sleep(0.2)
        """)
    run = submit(tmp_path / "src", "forever.py")

    def remove_the_container() -> None:
        found = containers_of(run)
        assert len(found) == 1, f"expected the run's one container, found {found}"
        subprocess.run(["docker", "rm", "-f", *found], capture_output=True, check=True)

    with canceled_if_unfinished(run):
        wait_for_log_line(run, "started")
        restart_service(stack, while_stopped=remove_the_container)
        assert wait_for_status(run, FINAL, timeout=60) == "Failed"
    message = run.get_details()["error"]["error"]["message"]
    assert "The run's container was lost while the workspace service restarted" in message, message
    log = driver_log(run)
    assert "started" in log, "the driver log written before the restart was lost"
    assert "container was lost" in log
    assert not containers_of(run)
    assert not (stack.settings.home / "runs" / run.id).exists(), "the run folder was left behind"


@pytest.mark.local_only
def test_a_run_over_its_max_run_duration_seconds_is_stopped_and_fails_naming_the_limit(
        workspace_env: SandboxEnv, tmp_path: Path, no_leftover_containers: None) -> None:
    write_script(tmp_path / "src", "sleeper.py", """
        import time
        for second in range(120):  # two minutes, if nothing stops it
            print(f"second {second}", flush=True)
            time.sleep(1)
        print("THE SCRIPT FINISHED", flush=True)
        """)
    ws = aml.Workspace.from_config()
    config = aml.ScriptRunConfig(source_directory=str(tmp_path / "src"), script="sleeper.py",
                                 compute_target="cpu-cluster", max_run_duration_seconds=5)
    config.run_config.environment = ws.environments[ENV]
    run = aml.Experiment(ws, experiment_name("limit")).submit(config)

    with canceled_if_unfinished(run):
        assert wait_for_status(run, FINAL, timeout=90) == "Failed"
    details = run.get_details()

    message = details["error"]["error"]["message"]
    assert "max_run_duration_seconds=5" in message, message
    assert details["runDefinition"]["maxRunDurationSeconds"] == 5
    log = driver_log(run)
    assert "max_run_duration_seconds=5" in log and "THE SCRIPT FINISHED" not in log
    ran = datetime.fromisoformat(details["endTimeUtc"]) - datetime.fromisoformat(details["startTimeUtc"])
    assert 5 <= ran.total_seconds() < 40, f"the run ran {ran} with a limit of 5 s"
    assert not containers_of(run), "the stopped run's container was left behind"
