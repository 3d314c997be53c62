"""The workspace service as docker compose runs it (issue 10): queueing, restarts, the token, the run page,
run history that persists, the CLI, Ctrl-C during streaming."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from sandbox import aml
from sandbox.errors import ServiceUnavailableError
from sandbox.service.auth import read_token
from tests.integration.conftest import REPO, SandboxEnv, free_port, inspect, run_containers
from tests.integration.helpers import (
    driver_log,
    experiment_name,
    page,
    submit,
    tcp_listeners,
    wait_for_log_line,
    write_script,
)

TICKER = """
    import sys, time
    from azureml.core import Run
    run = Run.get_context()
    count = int(sys.argv[1])
    for i in range(count):
        print(f"tick {i}", flush=True)
        run.log("tick", i)
        time.sleep(float(sys.argv[2]))
    print("done", flush=True)
    """


@pytest.mark.local_only
def test_one_node_target_runs_one_at_a_time_and_queues_the_rest(
        workspace_env: SandboxEnv, tmp_path: Path, no_leftover_containers: None) -> None:
    write_script(tmp_path / "src", "ticker.py", TICKER)
    experiment = experiment_name("queue")
    runs = [submit(tmp_path / "src", "ticker.py", [6, 0.5], compute="single-node", experiment=experiment)
            for _ in range(3)]
    seen_queued_two = False
    max_running = 0
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        statuses = [r.get_status() for r in runs]
        max_running = max(max_running, statuses.count("Running"))
        seen_queued_two |= statuses.count("Running") == 1 and statuses.count("Queued") == 2
        if all(s in {"Completed", "Failed", "Canceled"} for s in statuses):
            break
        time.sleep(0.25)
    assert [r.get_status() for r in runs] == ["Completed"] * 3
    assert seen_queued_two, "never saw one run Running and two Queued"
    assert max_running == 1
    found = list(aml.Experiment(aml.Workspace.from_config(), experiment).get_runs())
    assert [r.id for r in found] == [r.id for r in reversed(runs)], "get_runs lists the newest first"
    history = [r.get_details() for r in runs]
    spans = sorted((d["startTimeUtc"], d["endTimeUtc"]) for d in history)
    assert spans[0][1] <= spans[1][0] and spans[1][1] <= spans[2][0], f"runs overlapped: {spans}"


@pytest.mark.local_only
def test_a_run_survives_a_restart_of_the_service(
        workspace_env: SandboxEnv, stack: SandboxEnv, tmp_path: Path, no_leftover_containers: None) -> None:
    write_script(tmp_path / "src", "ticker.py", TICKER)
    run = submit(tmp_path / "src", "ticker.py", [16, 0.5])
    wait_for_log_line(run, "tick 2")
    stack.compose("restart", "workspace")
    details = run.wait_for_completion(show_output=False)
    assert details["status"] == "Completed"
    log = driver_log(run)
    assert all(f"tick {i}\n" in log for i in range(16)) and "done" in log
    assert run.get_metrics()["tick"] == list(range(16)), "metrics lost or doubled across the restart"


@pytest.mark.local_only
def test_calls_without_the_token_are_refused_and_start_nothing(
        workspace_env: SandboxEnv, stack: SandboxEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        no_leftover_containers: None) -> None:
    import uuid

    from sandbox.service.client import ServiceClient

    base = stack.settings.service_url
    before = run_containers(stack.settings.project)
    runs_before = httpx.get(f"{base}/api/runs").json()
    definition = {"definition": {"run_id": "x_1_abcdef12", "experiment": "x", "workspace": {}, "script": "a.py",
                                 "arguments": [], "compute_target": "cpu-cluster", "environment": {},
                                 "image": "aml-sandbox/azureml:x", "snapshot_id": "0" * 8}}
    for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": "Basic abc"}):
        assert httpx.post(f"{base}/api/runs", json=definition, headers=headers).status_code == 401
        assert httpx.put(f"{base}/api/snapshots/{'0' * 8}-0000-0000-0000-{'0' * 12}", content=b"x",
                         headers=headers).status_code == 401
        assert httpx.post(f"{base}/api/runs/x_1_abcdef12/cancel", headers=headers).status_code == 401
    token = {"Authorization": f"Bearer {read_token(stack.settings.home)}"}
    malformed = httpx.post(f"{base}/api/runs", content=b"{not json", headers=token)
    assert malformed.status_code == 400 and "not JSON" in malformed.text, malformed.text

    # A complete definition as the facade sends it (its snapshot uploaded), kept instead of submitted.
    write_script(tmp_path / "src", "a.py", "print('accepted')\n")
    sent: list[dict] = []

    def keep(self: ServiceClient, definition: dict, image_build_log: str | None = None) -> dict:
        sent.append(definition)
        raise RuntimeError("kept, not submitted")

    monkeypatch.setattr(ServiceClient, "submit", keep)
    with pytest.raises(RuntimeError, match="kept, not submitted"):
        submit(tmp_path / "src", "a.py")
    (valid,) = sent
    bad_id = httpx.post(f"{base}/api/runs", json={"definition": {**valid, "run_id": "../../etc"}}, headers=token)
    assert bad_id.status_code == 400 and "run_id" in bad_id.text and "../../etc" in bad_id.text, bad_id.text
    unknown = str(uuid.uuid4())
    no_snapshot = httpx.post(f"{base}/api/runs", json={"definition": {**valid, "snapshot_id": unknown}},
                             headers=token)
    assert no_snapshot.status_code == 400 and unknown in no_snapshot.text, no_snapshot.text
    assert httpx.get(f"{base}/api/runs").json() == runs_before
    assert run_containers(stack.settings.project) == before
    token_file = stack.settings.home / "token"
    assert token_file.stat().st_mode & 0o777 == 0o600

    # The same definition with its own run id is accepted: only the run id made it invalid above.
    accepted = httpx.post(f"{base}/api/runs", json={"definition": valid}, headers=token)
    assert accepted.status_code == 201, accepted.text
    run = aml.Run(aml.Experiment(aml.Workspace.from_config(), valid["experiment"]), valid["run_id"])
    assert run.wait_for_completion()["status"] == "Completed"


@pytest.mark.local_only
def test_service_and_azurite_listen_on_loopback_only(stack: SandboxEnv) -> None:
    for service, port in (("workspace", stack.settings.service_port), ("azurite", stack.settings.azurite_port)):
        (container_id,) = stack.compose("ps", "-q", service).stdout.split()
        attrs = inspect(container_id)
        bindings = [b for spec in attrs["HostConfig"]["PortBindings"].values() for b in spec]
        assert {b["HostIp"] for b in bindings} == {"127.0.0.1"}, (service, bindings)
        # What the kernel listens on for the published port: loopback only, and something does listen.
        assert tcp_listeners(port) == {"127.0.0.1"}, (service, tcp_listeners(port))
        with socket.socket() as sock:
            sock.settimeout(2)
            assert sock.connect_ex(("127.0.0.1", port)) == 0, f"{service} does not answer on 127.0.0.1:{port}"


@pytest.mark.local_only
def test_the_run_page_shows_the_driver_log_growing(
        workspace_env: SandboxEnv, tmp_path: Path, no_leftover_containers: None) -> None:
    write_script(tmp_path / "src", "ticker.py", TICKER)
    run = submit(tmp_path / "src", "ticker.py", [20, 0.4])
    url = run.get_portal_url()
    wait_for_log_line(run, "tick 1")
    first = page(url)
    time.sleep(2.5)
    second = page(url)
    assert run.id in first and "Running" in first
    assert second.count("tick ") > first.count("tick "), "the page did not show new driver-log lines"
    run.wait_for_completion()
    final = page(url)
    assert "Completed" in final and "tick 19" in final
    assert "<svg" in final, "the list metric 'tick' has a chart"
    assert f'href="/api/runs/{run.id}/files/azureml-logs/70_driver_log.txt"' in final
    runs_page = page(f"{workspace_env.settings.service_url}/experiments/{run.experiment.name}/runs")
    assert run.id in runs_page
    for asset in ("http://", "https://"):  # nothing is loaded from the internet
        assert f'src="{asset}' not in final and f"href=\"{asset}" not in final


@pytest.mark.local_only
def test_cli_lists_shows_follows_and_cancels_runs(
        workspace_env: SandboxEnv, tmp_path: Path, no_leftover_containers: None) -> None:
    write_script(tmp_path / "src", "ticker.py", TICKER)
    experiment = experiment_name("cli")
    done = submit(tmp_path / "src", "ticker.py", [3, 0.1], experiment=experiment)
    follow = workspace_env.cli("runs", "logs", done.id, "--follow", timeout=120)
    assert "tick 2" in follow.stdout and follow.stdout.rstrip().endswith(f"{done.id}: Completed")
    listing = workspace_env.cli("runs", "list", "--experiment", experiment)
    assert done.id in listing.stdout and "Completed" in listing.stdout
    shown = json.loads(workspace_env.cli("runs", "show", done.id).stdout)
    assert shown["status"] == "Completed" and shown["metrics"]["tick"] == [0, 1, 2]
    running = submit(tmp_path / "src", "ticker.py", [200, 0.5], experiment=experiment)
    wait_for_log_line(running, "tick 0")
    assert workspace_env.cli("runs", "cancel", running.id).returncode == 0
    final = workspace_env.cli("logs", running.id, "--follow", check=False, timeout=120)
    assert final.stdout.rstrip().endswith(f"{running.id}: Canceled")


@pytest.mark.parity
def test_ctrl_c_during_wait_stops_the_streaming_not_the_run(
        workspace_env: SandboxEnv, tmp_path: Path, no_leftover_containers: None) -> None:
    write_script(tmp_path / "src", "ticker.py", TICKER)
    run = submit(tmp_path / "src", "ticker.py", [12, 0.5])
    waiter = tmp_path / "wait.py"
    waiter.write_text(textwrap.dedent(f"""
        from sandbox import aml
        from sandbox.aml.exceptions import ExperimentExecutionException
        ws = aml.Workspace.from_config()
        run = aml.Run(aml.Experiment(ws, {run.experiment.name!r}), {run.id!r})
        try:
            run.wait_for_completion(show_output=True)
        except ExperimentExecutionException as exc:
            print("INTERRUPTED:", exc.message)
        """))
    process = subprocess.Popen([sys.executable, str(waiter)], env=workspace_env.env, cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_log_line(run, "tick 2")
    time.sleep(1.5)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert "Streaming azureml-logs/70_driver_log.txt" in out
    assert "INTERRUPTED: The output streaming for the run interrupted." in out, err
    assert run.get_status() in {"Running", "Finalizing", "Completed"}
    assert run.wait_for_completion()["status"] == "Completed"


@pytest.mark.local_only
def test_a_stopped_service_gives_one_clear_message(workspace_env: SandboxEnv, monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    port = free_port()
    monkeypatch.setenv("AML_SANDBOX_SERVICE_PORT", str(port))
    ws = aml.Workspace.from_config()
    with pytest.raises(ServiceUnavailableError) as error:
        aml.Run(aml.Experiment(ws, "nothing-here"), "nothing-here_1_abcdef12")
    assert f"http://127.0.0.1:{port}" in str(error.value) and "aml-sandbox up" in str(error.value)
    write_script(tmp_path / "src", "a.py", "print(1)\n")
    with pytest.raises(ServiceUnavailableError):
        submit(tmp_path / "src", "a.py")


@pytest.mark.local_only
def test_run_history_survives_down_and_up(workspace_env: SandboxEnv, stack: SandboxEnv, tmp_path: Path,
                                          no_leftover_containers: None) -> None:
    write_script(tmp_path / "src", "ticker.py", TICKER)
    run = submit(tmp_path / "src", "ticker.py", [3, 0.1])
    run.wait_for_completion()
    assert "The local stack is stopped" in stack.cli("down").stdout
    stack.cli("up", timeout=600)
    again = aml.Run(aml.Experiment(aml.Workspace.from_config(), run.experiment.name), run.id)
    assert again.get_status() == "Completed"
    assert again.get_metrics()["tick"] == [0, 1, 2]
    assert "tick 2" in driver_log(again)
    assert run.id in page(again.get_portal_url())


@pytest.mark.local_only
def test_a_run_whose_image_is_missing_fails_naming_the_command_that_builds_it(
        workspace_env: SandboxEnv, stack: SandboxEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        no_leftover_containers: None) -> None:
    write_script(tmp_path / "src", "a.py", "print(1)\n")
    # The submitting client finds the image; then it is gone before the service prepares the run.
    monkeypatch.setattr("sandbox.aml.experiment._Submission._image",
                        lambda self, env: ("aml-sandbox/azureml:does-not-exist", "python", None))
    run = submit(tmp_path / "src", "a.py")
    details = run.wait_for_completion(raise_on_error=False)
    assert details["status"] == "Failed"
    assert "aml-sandbox images build" in details["error"]["error"]["message"]


BIG_OUTPUT = """
    import os
    os.makedirs("outputs", exist_ok=True)
    for i in range(40000):  # a driver log of about 3 MB
        print(f"line {i:05d} " + "x" * 60)
    block = os.urandom(1024 * 1024)
    with open("outputs/big.bin", "wb") as handle:
        for _ in range(400):
            handle.write(block)
    print("the end")
    """


@pytest.mark.local_only
def test_large_files_and_long_logs_are_streamed_not_held_in_memory(
        workspace_env: SandboxEnv, stack: SandboxEnv, tmp_path: Path, no_leftover_containers: None) -> None:
    """A 400 MiB output downloads whole while the service's peak memory stays flat; the page shows a long log's end."""
    write_script(tmp_path / "src", "big.py", BIG_OUTPUT)
    run = submit(tmp_path / "src", "big.py")
    assert run.wait_for_completion()["status"] == "Completed"
    pid = _service_pid(stack)
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets the process's peak RSS (VmHWM) to its RSS now
    before = _memory_kib(pid, "VmRSS")
    run.download_file("outputs/big.bin", str(tmp_path / "big.bin"))
    assert (tmp_path / "big.bin").stat().st_size == 400 * 1024 * 1024
    peak = _memory_kib(pid, "VmHWM")
    print(f"the service's peak memory grew by {(peak - before) / 1024:.1f} MiB while sending a 400 MiB file")
    assert peak - before < 64 * 1024, f"the service's memory grew by {(peak - before) // 1024} MiB for a 400 MiB file"

    html = page(run.get_portal_url())
    assert "the end" in html and "line 39999" in html
    assert "line 00000 " not in html, "the page holds the whole 3 MB log"
    assert "bytes are not shown here" in html
    full_log = driver_log(run)
    assert "line 00000 " in full_log and "the end" in full_log, "the downloadable driver log is whole"


def _service_pid(stack: SandboxEnv) -> int:
    """The host pid of the workspace service's Python process."""
    container = f"{stack.settings.project}-workspace-1"
    listing = subprocess.run(["docker", "top", container, "-eo", "pid,args"], capture_output=True, text=True,
                             check=True).stdout.splitlines()[1:]
    pids = [int(line.split()[0]) for line in listing if line.split()[1] == "python" and "sandbox.service" in line]
    assert len(pids) == 1, listing
    return pids[0]


def _memory_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")
