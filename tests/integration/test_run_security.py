"""A run is hostile input to the root service (issue 16, items 1, 2, 5; issue 17): links, FIFOs, huge files and
huge bodies it makes are never followed, never block, never bloat the service, and nothing outside the run changes."""

from __future__ import annotations

import re
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from azure.storage.blob import ContainerClient

from sandbox.errors import ServiceError
from tests.integration.conftest import SandboxEnv
from tests.integration.helpers import driver_log, submit, wait_for_log_line, wait_for_status, write_script

SECRET = "hostile-test-secret-do-not-leak"


def _plant_victim(env: SandboxEnv) -> Path:
    """A file in the stack's state folder: the service sees it at the same path as the host does."""
    victim = env.settings.home / f"victim-{uuid.uuid4().hex[:8]}.txt"
    victim.write_text(f"{SECRET}\n")
    return victim


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
def test_links_fifos_and_a_1_gib_output_leak_nothing_and_keep_the_service_flat(
        workspace_env: SandboxEnv, tmp_path: Path, no_leftover_containers: None) -> None:
    """The run uploads outputs/ itself, as its own uid, from a container that sees no host file: a link to a
    host path dangles there, a FIFO is set aside with a line in the driver log, a 1 GiB file streams to
    Azurite through the proxy; the root service reads none of it and its memory stays where it was."""
    victim = _plant_victim(workspace_env)
    write_script(tmp_path / "src", "plant.py", f"""
        import os
        os.makedirs("outputs", exist_ok=True)
        os.makedirs("logs", exist_ok=True)
        os.symlink({str(victim)!r}, "outputs/x")
        os.symlink({str(victim.parent)!r}, "outputs/home")
        os.mkfifo("outputs/pipe")
        os.mkfifo("logs/pipe")
        with open("outputs/real.txt", "w") as f:
            f.write("real output")
        with open("outputs/big.bin", "wb") as f:
            f.truncate(1024 ** 3)
        print("planted", flush=True)
        """)
    peak_before = _service_peak_rss_kib(workspace_env)
    run = submit(tmp_path / "src", "plant.py")
    assert wait_for_status(run, {"Completed", "Failed", "Canceled"}, timeout=600) == "Completed", driver_log(run)
    growth_mib = (_service_peak_rss_kib(workspace_env) - peak_before) / 1024
    assert growth_mib < 48, f"the service's peak memory grew by {growth_mib:.0f} MiB during a 1 GiB upload"
    files = set(run._client.files(run.id))
    assert {"outputs/real.txt", "outputs/big.bin"} <= files
    assert not {"outputs/x", "outputs/pipe"} & files
    assert not any(n.startswith("outputs/home") for n in files)
    box = ContainerClient.from_connection_string(workspace_env.settings.connection_string, "azureml")
    prefix = f"ExperimentRun/dcid.{run.id}/"
    if "logs/pipe" in files:  # azureml-core's log streamer names every file of logs/ as it appears: never read
        assert box.get_blob_client(prefix + "logs/pipe").get_blob_properties().size == 0
    assert box.get_blob_client(prefix + "outputs/big.bin").get_blob_properties().size == 1024 ** 3
    small = {b.name: box.download_blob(b.name).readall() for b in box.list_blobs(name_starts_with=prefix)
             if b.size < 1024 ** 2}
    assert small[prefix + "outputs/real.txt"] == b"real output"
    assert all(SECRET.encode() not in data for data in small.values())
    log = driver_log(run)
    assert "Not uploaded: outputs/pipe is a FIFO" in log and "Not uploaded: logs/pipe is a FIFO" in log, log
    assert "Not uploaded: outputs/x is a link to a file that does not exist in the run" in log, log
    assert victim.read_text() == f"{SECRET}\n"


@pytest.mark.local_only
def test_a_driver_log_replaced_by_a_link_never_makes_the_service_write_through_it(
        workspace_env: SandboxEnv, tmp_path: Path, no_leftover_containers: None) -> None:
    victim = _plant_victim(workspace_env)
    write_script(tmp_path / "src", "relink.py", f"""
        import os, time
        print("before the swap", flush=True)
        time.sleep(5)  # the service serves the log meanwhile
        log = "/azureml-run/azureml-logs/70_driver_log.txt"
        os.remove(log)
        os.symlink({str(victim)!r}, log)
        time.sleep(600)
        """)
    run = submit(tmp_path / "src", "relink.py")
    wait_for_log_line(run, "before the swap", timeout=300)
    deadline = time.monotonic() + 120
    while True:  # the log is served until the run swaps it for the link; the link itself never is
        try:
            run._client.read_file(run.id, "azureml-logs/70_driver_log.txt")
        except ServiceError as error:
            assert error.status_code == 404
            break
        assert time.monotonic() < deadline, "the driver log was never swapped"
        time.sleep(0.3)
    run.cancel()
    assert wait_for_status(run, {"Canceled", "Failed", "Completed"}, timeout=120) == "Canceled"
    assert victim.read_text() == f"{SECRET}\n", "the service appended to the file the run's link pointed at"
    log = driver_log(run)
    assert "The run was canceled. Finalizing run..." in log and SECRET not in log
    assert "Not stored: azureml-logs/70_driver_log.txt is a symbolic link" in log


@pytest.mark.local_only
def test_a_100_mib_body_from_a_run_is_refused_without_bloating_the_service(
        workspace_env: SandboxEnv, tmp_path: Path, no_leftover_containers: None) -> None:
    """What the history file's endless line was: the run's channel is HTTP now, and every body is bounded."""
    write_script(tmp_path / "src", "flood.py", """
        import os, urllib.error, urllib.request
        from azureml.core import Run
        run = Run.get_context()
        run.log("before", 1)
        env = os.environ
        url = (f"{env['AZUREML_SERVICE_ENDPOINT']}/metric/v2.0/subscriptions/{env['AZUREML_ARM_SUBSCRIPTION']}"
               f"/resourceGroups/{env['AZUREML_ARM_RESOURCEGROUP']}/providers/Microsoft.MachineLearningServices"
               f"/workspaces/{env['AZUREML_ARM_WORKSPACE_NAME']}/runs/{run.id}/batch")
        body = b'{"values": [' + b" " * (100 * 1024 * 1024) + b"]}"
        request = urllib.request.Request(url, data=body, method="POST", headers={
            "Authorization": "Bearer " + env["AZUREML_RUN_TOKEN"], "Content-Type": "application/json"})
        try:
            print("ANSWER", urllib.request.urlopen(request, timeout=120).status, flush=True)
        except urllib.error.HTTPError as exc:
            print("ANSWER", exc.code, flush=True)
        except OSError as exc:  # the service may close the connection once it has answered
            print("ANSWER closed", type(exc).__name__, flush=True)
        run.log("after", 2)
        """)
    peak_before = _service_peak_rss_kib(workspace_env)
    run = submit(tmp_path / "src", "flood.py")
    assert wait_for_status(run, {"Completed", "Failed", "Canceled"}, timeout=300) == "Completed", driver_log(run)
    growth_mib = (_service_peak_rss_kib(workspace_env) - peak_before) / 1024
    assert growth_mib < 48, f"the service's peak memory grew by {growth_mib:.0f} MiB for a 100 MiB body"
    assert {"before", "after"} <= set(run.get_metrics())
    assert re.search(r"ANSWER (413|closed)", driver_log(run)), driver_log(run)


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
