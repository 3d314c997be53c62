"""A run is hostile input to the root service (issue 16, items 1, 2, 5): links, FIFOs and endless lines it plants
are never followed, never block, never bloat the service, and nothing outside the run folder changes."""

from __future__ import annotations

import re
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob import ContainerClient

from sandbox.errors import ServiceError
from tests.integration.conftest import SandboxEnv
from tests.integration.helpers import driver_log, submit, wait_for_status, write_script

SECRET = "hostile-test-secret-do-not-leak"


def _plant_victim(env: SandboxEnv) -> Path:
    """A file in the stack's state folder: the service sees it at the same path as the host does."""
    victim = env.settings.home / f"victim-{uuid.uuid4().hex[:8]}.txt"
    victim.write_text(f"{SECRET}\n")
    return victim


def _wait_for_file(run: Any, name: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while name not in run._client.files(run.id):
        assert time.monotonic() < deadline, f"{name} never appeared in run {run.id}: {run._client.files(run.id)}"
        assert run.get_status() not in {"Completed", "Failed", "Canceled"}, driver_log(run)
        time.sleep(0.3)


def _stored_blobs(env: SandboxEnv, run_id: str) -> dict[str, bytes]:
    box = ContainerClient.from_connection_string(env.settings.connection_string, "azureml")
    prefix = f"ExperimentRun/dcid.{run_id}/"
    return {b.name[len(prefix):]: box.download_blob(b.name).readall() for b in box.list_blobs(name_starts_with=prefix)}


def _a_plain_run_completes(tmp_path: Path) -> None:
    write_script(tmp_path / "plain", "ok.py", "print('plain run ok')\n")
    run = submit(tmp_path / "plain", "ok.py")
    assert wait_for_status(run, {"Completed", "Failed", "Canceled"}, timeout=180) == "Completed", driver_log(run)


def _service_peak_rss_kib(env: SandboxEnv) -> int:
    ids = subprocess.run(["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={env.settings.project}",
                          "--filter", "label=com.docker.compose.service=workspace"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert ids, "the workspace service container is not running"
    script = ("import glob\nprint(max(int(l.split()[1]) for f in glob.glob('/proc/[0-9]*/status') "
              "for l in open(f) if l.startswith('VmHWM')))")
    out = subprocess.run(["docker", "exec", ids[0], "python", "-c", script], capture_output=True, text=True,
                         check=True).stdout
    return int(out)


@pytest.mark.local_only
def test_links_and_fifos_in_outputs_are_neither_served_nor_stored(
        workspace_env: SandboxEnv, tmp_path: Path, no_leftover_containers: None) -> None:
    victim = _plant_victim(workspace_env)
    write_script(tmp_path / "src", "plant.py", f"""
        import os, sys, time
        os.makedirs("outputs", exist_ok=True)
        os.makedirs("logs", exist_ok=True)
        os.symlink({str(victim)!r}, "outputs/x")
        os.symlink({str(victim.parent)!r}, "outputs/home")
        os.symlink({str(victim)!r}, "/azureml-run/artifacts/y")
        os.mkfifo("logs/pipe")
        with open("outputs/real.txt", "w") as f:
            f.write("real output")
        while not os.path.exists("outputs/stop"):
            time.sleep(0.2)
            if time.time() > {time.time() + 170}:
                break
        """)
    run = submit(tmp_path / "src", "plant.py")
    _wait_for_file(run, "outputs/real.txt")
    client = run._client
    live = client.files(run.id)
    assert not {"outputs/x", "y", "logs/pipe"} & set(live) and not any(n.startswith("outputs/home") for n in live)
    for name in ("outputs/x", "y", f"outputs/home/{victim.name}", "logs/pipe"):
        with pytest.raises(ServiceError) as error:
            client.read_file(run.id, name)
        assert error.value.status_code == 404, name
    assert client.read_file(run.id, "outputs/real.txt")[0] == b"real output"
    run.cancel()
    assert wait_for_status(run, {"Canceled", "Failed", "Completed"}, timeout=120) == "Canceled"
    stored = _stored_blobs(workspace_env, run.id)
    assert "outputs/real.txt" in stored and not {"outputs/x", "y", "logs/pipe"} & set(stored)
    assert all(SECRET.encode() not in data for data in stored.values())
    log = driver_log(run)
    assert "Not stored: outputs/x is a symbolic link" in log and "Not stored: logs/pipe is a FIFO" in log
    assert victim.read_text() == f"{SECRET}\n"


@pytest.mark.local_only
def test_a_driver_log_replaced_by_a_link_never_makes_the_service_write_through_it(
        workspace_env: SandboxEnv, tmp_path: Path, no_leftover_containers: None) -> None:
    victim = _plant_victim(workspace_env)
    write_script(tmp_path / "src", "relink.py", f"""
        import os, time
        print("before the swap", flush=True)
        log = "/azureml-run/azureml-logs/70_driver_log.txt"
        os.remove(log)
        os.symlink({str(victim)!r}, log)
        os.makedirs("outputs", exist_ok=True)
        open("outputs/swapped", "w").close()
        time.sleep(600)
        """)
    run = submit(tmp_path / "src", "relink.py")
    _wait_for_file(run, "outputs/swapped")
    with pytest.raises(ServiceError) as error:  # the link is not served while the run goes
        run._client.read_file(run.id, "azureml-logs/70_driver_log.txt")
    assert error.value.status_code == 404
    run.cancel()
    assert wait_for_status(run, {"Canceled", "Failed", "Completed"}, timeout=120) == "Canceled"
    assert victim.read_text() == f"{SECRET}\n", "the service appended to the file the run's link pointed at"
    log = driver_log(run)
    assert "The run was canceled. Finalizing run..." in log and SECRET not in log
    assert "Not stored: azureml-logs/70_driver_log.txt is a symbolic link" in log


@pytest.mark.local_only
def test_a_history_fifo_never_stalls_the_run_and_other_runs_go_on(
        workspace_env: SandboxEnv, tmp_path: Path, no_leftover_containers: None) -> None:
    write_script(tmp_path / "src", "fifo.py", """
        import os, time
        history = "/azureml-run/history.jsonl"
        os.remove(history)
        os.mkfifo(history)
        os.makedirs("outputs", exist_ok=True)
        open("outputs/fifo-planted", "w").close()
        time.sleep(600)
        """)
    run = submit(tmp_path / "src", "fifo.py")
    _wait_for_file(run, "outputs/fifo-planted")
    time.sleep(2)  # a few polls of the history
    _a_plain_run_completes(tmp_path)
    run.cancel()
    assert wait_for_status(run, {"Canceled", "Failed", "Completed"}, timeout=90) == "Canceled"
    assert "history.jsonl is not a regular file" in driver_log(run)


@pytest.mark.local_only
def test_a_100_mib_history_line_is_skipped_without_bloating_the_service(
        workspace_env: SandboxEnv, tmp_path: Path, no_leftover_containers: None) -> None:
    write_script(tmp_path / "src", "endless.py", """
        import os, time
        from azureml.core import Run
        run = Run.get_context()
        run.log("before", 1)
        block = b"x" * (1024 * 1024)
        with open("/azureml-run/history.jsonl", "ab") as history:
            for _ in range(100):
                history.write(block)
            history.flush()
            time.sleep(5)  # the service polls the endless line meanwhile
            history.write(b"\\n")
        run.log("after", 2)
        print("done writing", flush=True)
        """)
    peak_before = _service_peak_rss_kib(workspace_env)
    run = submit(tmp_path / "src", "endless.py")
    assert wait_for_status(run, {"Completed", "Failed", "Canceled"}, timeout=300) == "Completed", driver_log(run)
    growth_mib = (_service_peak_rss_kib(workspace_env) - peak_before) / 1024
    assert growth_mib < 48, f"the service's peak memory grew by {growth_mib:.0f} MiB while it read the history"
    assert {"before", "after"} <= set(run.get_metrics())
    log = driver_log(run)
    assert "done writing" in log and "skipped: longer than 65536 bytes" in log


@pytest.mark.local_only
def test_run_containers_carry_a_pid_limit_and_ulimits(
        workspace_env: SandboxEnv, tmp_path: Path, no_leftover_containers: None) -> None:
    write_script(tmp_path / "src", "limits.py", """
        import resource
        print("NPROC", resource.getrlimit(resource.RLIMIT_NPROC), flush=True)
        print("NOFILE", resource.getrlimit(resource.RLIMIT_NOFILE), flush=True)
        print("PIDS", open("/sys/fs/cgroup/pids/pids.max").read().strip()
              if __import__("os").path.exists("/sys/fs/cgroup/pids/pids.max")
              else open("/sys/fs/cgroup/pids.max").read().strip(), flush=True)
        """)
    run = submit(tmp_path / "src", "limits.py")
    assert wait_for_status(run, {"Completed", "Failed", "Canceled"}, timeout=180) == "Completed", driver_log(run)
    log = driver_log(run)
    nproc = re.search(r"NPROC \((\d+), (\d+)\)", log)
    nofile = re.search(r"NOFILE \((\d+), (\d+)\)", log)
    assert nproc and nproc[1] == nproc[2] and 0 < int(nproc[1]) <= 16384, log
    assert nofile and nofile[1] == nofile[2] and 0 < int(nofile[1]) <= 65536, log
    assert "PIDS 4096" in log


@pytest.mark.parity
def test_the_same_dataset_mounted_under_two_names_reaches_the_script_under_both(
        workspace_env: SandboxEnv, tmp_path: Path, no_leftover_containers: None) -> None:
    from sandbox import aml

    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("same data")
    store = aml.Workspace.from_config().get_default_datastore()
    store.upload(src_dir=str(data), target_path="twice", show_progress=False)
    dataset = aml.Dataset.File.from_files(path=(store, "twice"))
    write_script(tmp_path / "src", "both.py", """
        import os, sys
        for path in sys.argv[1:]:
            print("SEEN", sorted(os.listdir(path)), flush=True)
        """)
    run = submit(tmp_path / "src", "both.py", [dataset.as_named_input("one").as_mount(),
                                                dataset.as_named_input("two").as_mount()])
    assert wait_for_status(run, {"Completed", "Failed", "Canceled"}, timeout=180) == "Completed", driver_log(run)
    assert driver_log(run).count("['a.txt']") == 2
