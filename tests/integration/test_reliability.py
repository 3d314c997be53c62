"""Faults and bad input: nothing lost, nothing left behind (issue 11). Each test is a row of docs/reliability.md."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from azure.storage.blob import ContainerClient

from sandbox import aml
from sandbox.aml.exceptions import UserErrorException
from sandbox.config import Settings
from sandbox.service.auth import read_token
from tests.integration import leftovers
from tests.integration.conftest import (
    SandboxEnv,
    azurite_container,
    free_port,
    inspect,
    remove_container,
    require_docker,
    run_containers,
)
from tests.integration.helpers import driver_log, page, submit, wait_for_status, write_script


def _container(settings: Settings, name: str) -> ContainerClient:
    return ContainerClient.from_connection_string(settings.connection_string, name)


# -- upload -------------------------------------------------------------------------------------------


@pytest.mark.local_only
def test_a_file_that_vanishes_during_upload_is_reported_and_the_rest_arrives(
        local_workspace: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "src"
    folder.mkdir()
    for index in range(100):
        (folder / f"f{index:03d}.txt").write_text(str(index))
    original = ContainerClient.upload_blob
    vanished: list[str] = []
    lock = threading.Lock()

    def delete_some_then_upload(self: ContainerClient, name: str, *args: object, **kwargs: object) -> object:
        with lock:
            if not vanished:
                for index in range(90, 100):
                    target = folder / f"f{index:03d}.txt"
                    target.unlink()
                    vanished.append(target.name)
        return original(self, name, *args, **kwargs)

    monkeypatch.setattr(ContainerClient, "upload_blob", delete_some_then_upload)
    datastore = aml.Workspace.from_config().get_default_datastore()
    with pytest.raises(UserErrorException) as error:
        datastore.upload(src_dir=str(folder), target_path="v", show_progress=False)
    message = error.value.message
    assert re.search(r"\b10 of 100 files could not be uploaded", message)
    assert "FileNotFoundError" in message and "overwrite=False" in message
    names = {b.name for b in _container(local_workspace, datastore.container_name).list_blobs()}
    assert names == {f"v/f{i:03d}.txt" for i in range(90)}


@pytest.mark.parity
def test_unicode_spaces_and_empty_files_upload_with_their_names(local_workspace: Settings, tmp_path: Path) -> None:
    files = {"na\u00efve file.txt": b"x", "dir with space/\u00fc\u00f1\u00ee.bin": b"\x00\x01", "empty.bin": b"",
             "\u65e5\u672c/\u30c7\u30fc\u30bf.csv": b"a,b\n"}
    for name, content in files.items():
        (tmp_path / "src" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "src" / name).write_bytes(content)
    datastore = aml.Workspace.from_config().get_default_datastore()
    datastore.upload(src_dir=str(tmp_path / "src"), target_path="u", show_progress=False)
    box = _container(local_workspace, datastore.container_name)
    assert {b.name: b.size for b in box.list_blobs()} == {f"u/{n}": len(c) for n, c in files.items()}
    assert box.download_blob("u/dir with space/\u00fc\u00f1\u00ee.bin").readall() == b"\x00\x01"


@pytest.mark.local_only
def test_a_target_path_climbing_out_with_dotdot_inside_is_refused(local_workspace: Settings, tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.txt").write_text("a")
    datastore = aml.Workspace.from_config().get_default_datastore()
    with pytest.raises(UserErrorException, match=r"target_path 'a/\.\./b' has a '\.\.' segment"):
        datastore.upload(src_dir=str(tmp_path / "src"), target_path="a/../b")
    assert not _container(local_workspace, datastore.container_name).exists() or \
        not list(_container(local_workspace, datastore.container_name).list_blobs())


UPLOAD_AND_REPORT_PEAK = """
import resource, sys
from sandbox import aml
store = aml.Workspace.from_config().get_default_datastore()
store.upload(src_dir=sys.argv[1], target_path=sys.argv[2], show_progress=False)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


@pytest.mark.local_only
def test_a_1_gib_upload_is_streamed_and_memory_stays_flat(local_workspace: Settings, tmp_path: Path) -> None:
    small, large = tmp_path / "small", tmp_path / "large"
    small.mkdir()
    large.mkdir()
    (small / "one.bin").write_bytes(os.urandom(1024 * 1024))
    chunk = os.urandom(16 * 1024 * 1024)
    with open(large / "big.bin", "wb") as handle:
        for _ in range(64):
            handle.write(chunk)
    env = {**os.environ}
    peaks = {}
    for name, folder in (("small", small), ("large", large)):
        result = subprocess.run([sys.executable, "-c", UPLOAD_AND_REPORT_PEAK, str(folder), name], env=env,
                                capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        peaks[name] = int(result.stdout.split()[-1]) / 1024  # MiB
    box = _container(local_workspace, aml.Workspace.from_config().get_default_datastore().container_name)
    assert box.get_blob_client("large/big.bin").get_blob_properties().size == 1024**3
    growth = peaks["large"] - peaks["small"]
    assert growth < 150, f"uploading 1 GiB grew the process by {growth:.0f} MiB (peaks {peaks})"


@pytest.mark.local_only
def test_azurite_killed_mid_upload_reports_clearly_and_a_rerun_completes_the_set(tmp_path: Path) -> None:
    """A dedicated Azurite (fixed port, so a restart keeps it), killed while 200 files go up."""
    from sandbox import azurite

    port = free_port()
    container = azurite_container(port)
    try:
        env = {**os.environ, "AML_SANDBOX_HOME": str(tmp_path / "home"),
               "AML_SANDBOX_BLOB_ENDPOINT": f"http://127.0.0.1:{port}/devstoreaccount1"}
        settings = Settings.from_env(env)
        azurite.wait_until_ready(settings)
        folder = tmp_path / "src"
        folder.mkdir()
        digests = {}
        for index in range(200):
            content = os.urandom(512 * 1024)
            (folder / f"part-{index:03d}.bin").write_bytes(content)
            digests[f"k/part-{index:03d}.bin"] = hashlib.sha256(content).hexdigest()
        script = textwrap.dedent("""
            import sys
            from sandbox import aml
            from sandbox.target import error_message
            store = aml.Workspace.from_config().get_default_datastore()
            try:
                store.upload(src_dir=sys.argv[1], target_path="k", overwrite=False)
            except Exception as exc:
                print("ERROR:", type(exc).__name__, error_message(exc))
                sys.exit(1)
            """)
        process = subprocess.Popen([sys.executable, "-c", script, str(folder)], env=env, cwd=tmp_path,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        box = ContainerClient.from_connection_string(settings.connection_string,
                                                     f"azureml-blobstore-{settings.workspace_id}")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if box.exists() and sum(1 for _ in box.list_blobs()) >= 40:
                    break
            except Exception:
                pass
            time.sleep(0.05)
        container.get_wrapped_container().kill()
        out, _err = process.communicate(timeout=120)
        assert process.returncode == 1
        assert "ERROR: StorageUnavailableError" in out
        assert f"http://127.0.0.1:{port}/devstoreaccount1" in out and "overwrite=False" in out
        reported = int(re.search(r": (\d+) of 200 files were uploaded", out).group(1))
        assert 0 < reported < 200

        container.get_wrapped_container().start()
        azurite.wait_until_ready(settings)
        # Azurite saves its metadata every few seconds, so a kill may lose the newest blobs (or the container):
        # what matters is that whatever exists is complete, and that a re-run completes the set.
        survivors = list(box.list_blobs()) if box.exists() else []
        for blob in survivors:  # whatever exists is complete: no partial blob
            data = box.download_blob(blob.name).readall()
            assert hashlib.sha256(data).hexdigest() == digests[blob.name], f"{blob.name} is partial"
        rerun = subprocess.run([sys.executable, "-c", script, str(folder)], env=env, cwd=tmp_path,
                               capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
        if survivors:
            assert "Target already exists. Skipping upload for k/part-" in rerun.stdout
        assert {b.name for b in box.list_blobs()} == set(digests)
        for name in list(digests)[::37]:
            assert hashlib.sha256(box.download_blob(name).readall()).hexdigest() == digests[name]
    finally:
        remove_container(container)


# -- submit and run -----------------------------------------------------------------------------------


@pytest.mark.parity
def test_a_syntax_error_fails_the_run_with_pythons_message(
        workspace_env: SandboxEnv, tmp_path: Path, no_leftover_containers: None) -> None:
    write_script(tmp_path / "src", "broken.py", "print('ok')\ndef broken(:\n    pass\n")
    run = submit(tmp_path / "src", "broken.py")
    details = run.wait_for_completion(raise_on_error=False)
    assert details["status"] == "Failed"
    assert details["error"]["error"]["message"].startswith("User program failed with SyntaxError:")
    log = driver_log(run)
    assert re.search(r'File "[^"]*broken\.py", line 2\n', log) and "SyntaxError" in log
    assert "Traceback" not in log.split("Script type = None")[1].split("SyntaxError")[0]


@pytest.mark.parity
def test_a_dataset_path_that_does_not_exist_fails_before_the_script_starts(
        workspace_env: SandboxEnv, tmp_path: Path, no_leftover_containers: None) -> None:
    ws = aml.Workspace.from_config()
    dataset = aml.Dataset.File.from_files(path=(ws.get_default_datastore(), "datasets/nothing-here"))
    write_script(tmp_path / "src", "never.py", "print('THE SCRIPT RAN')\n")
    run = submit(tmp_path / "src", "never.py", [dataset.as_named_input("input").as_mount()])
    details = run.wait_for_completion(raise_on_error=False)
    assert details["status"] == "Failed"
    message = details["error"]["error"]["message"]
    assert ("Dataset initialization failed: DatasetMountValidationException: Cannot mount dataset. Source of the "
            "dataset is either not accessible or does not contain any data.") in message
    log = driver_log(run)
    assert "DatasetMountValidationException" in log and "THE SCRIPT RAN" not in log


@pytest.mark.local_only
def test_an_out_of_memory_kill_fails_the_run_with_a_message_that_says_so(
        workspace_env: SandboxEnv, tmp_path: Path, no_leftover_containers: None) -> None:
    write_script(tmp_path / "src", "hog.py", """
        print("allocating", flush=True)
        blocks = []
        while True:
            blocks.append(bytearray(256 * 1024 * 1024))
            for i in range(0, len(blocks[-1]), 4096):
                blocks[-1][i] = 1
        """)
    run = submit(tmp_path / "src", "hog.py", compute="small-memory")  # STANDARD_A1_V2: 2 GiB
    details = run.wait_for_completion(raise_on_error=False)
    assert details["status"] == "Failed"
    message = details["error"]["error"]["message"]
    assert "ran out of memory" in message and "2 GiB" in message and "small-memory" in message
    assert "OOMKilled" in message
    assert "ran out of memory" in driver_log(run)


FOUR_WAY = """
import os, sys, time
from sandbox import aml
tag = sys.argv[1]
ws = aml.Workspace.from_config()
store = ws.get_default_datastore()
os.makedirs(f"data-{tag}", exist_ok=True)
open(f"data-{tag}/only-{tag}.txt", "w").write(tag)
store.upload(src_dir=f"data-{tag}", target_path=f"four/{tag}", show_progress=False)
dataset = aml.Dataset.File.from_files(path=(store, f"four/{tag}"))
config = aml.ScriptRunConfig(source_directory=sys.argv[2], script="whoami.py", compute_target="cpu-cluster",
                             arguments=["--data", dataset.as_named_input("input").as_mount(), "--tag", tag])
config.run_config.environment = ws.environments["AzureML-PyTorch-1.6-CPU"]
run = aml.Experiment(ws, f"four-{tag}").submit(config)
print("RUN", run.id, flush=True)
"""


@pytest.mark.local_only
def test_four_runs_from_four_processes_each_see_only_their_own_mount_logs_and_metrics(
        workspace_env: SandboxEnv, tmp_path: Path, no_leftover_containers: None) -> None:
    write_script(tmp_path / "src", "whoami.py", """
        import os, sys, time
        from azureml.core import Run
        run = Run.get_context()
        tag = sys.argv[4]
        print("LISTING", tag, sorted(os.listdir(sys.argv[2])), flush=True)
        run.log("who", int(tag))
        time.sleep(2)
        """)
    tags = ["1", "2", "3", "4"]
    processes = [subprocess.Popen([sys.executable, "-c", FOUR_WAY, tag, str(tmp_path / "src")],
                                  env=workspace_env.env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for tag in tags]
    run_ids = {}
    for tag, process in zip(tags, processes, strict=True):
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
        run_ids[tag] = out.split("RUN ", 1)[1].split()[0]
    ws = aml.Workspace.from_config()
    for tag, run_id in run_ids.items():
        run = aml.Run(aml.Experiment(ws, f"four-{tag}"), run_id)
        assert run.wait_for_completion()["status"] == "Completed"
        log = driver_log(run)
        assert f"LISTING {tag} ['only-{tag}.txt']" in log
        assert all(f"only-{other}.txt" not in log for other in tags if other != tag)
        assert run.get_metrics() == {"who": int(tag)}


# -- secrets ------------------------------------------------------------------------------------------


@pytest.mark.local_only
def test_the_account_key_and_the_token_appear_nowhere_a_user_looks(
        workspace_env: SandboxEnv, stack: SandboxEnv, tmp_path: Path, no_leftover_containers: None) -> None:
    secrets = [workspace_env.settings.account_key, read_token(stack.settings.home)]
    write_script(tmp_path / "src", "env.py", """
        import json, os
        from azureml.core import Run
        run = Run.get_context()
        print(json.dumps(dict(os.environ), indent=1))
        run.log("seen", len(os.environ))
        """)
    run = submit(tmp_path / "src", "env.py")
    run.wait_for_completion()
    places = {
        "driver log": driver_log(run),
        "run page": page(run.get_portal_url()),
        "run record": json.dumps(run.get_details()),
        "cli show": workspace_env.cli("runs", "show", run.id).stdout,
        "cli status": workspace_env.cli("status").stdout,
        "service log": stack.compose("logs", "workspace").stdout,
    }
    for place, text in places.items():
        for secret in secrets:
            assert secret not in text, f"a secret appears in the {place}"
    env_seen = json.loads(driver_log(run).split("Script type = None\n", 1)[1].split("\n}\n", 1)[0] + "\n}")
    assert not any("AccountKey" in v or "BlobEndpoint" in v for v in env_seen.values())


# -- afterwards ----------------------------------------------------------------------------------------


@pytest.mark.local_only
def test_nothing_is_left_behind_after_runs(workspace_env: SandboxEnv, stack: SandboxEnv, tmp_path: Path) -> None:
    volumes_before = _volumes()
    (tmp_path / "payload").mkdir()
    (tmp_path / "payload" / "x.txt").write_text("x")
    store = aml.Workspace.from_config().get_default_datastore()
    store.upload(src_dir=str(tmp_path / "payload"), target_path="left", show_progress=False)
    dataset = aml.Dataset.File.from_files(path=(store, "left"))
    write_script(tmp_path / "src", "ok.py", "import os, sys\nprint(os.listdir(sys.argv[1]), os.listdir(sys.argv[2]))\n")
    run = submit(tmp_path / "src", "ok.py", [dataset.as_named_input("mounted").as_mount(),
                                            dataset.as_named_input("copied").as_download()])
    assert wait_for_status(run, {"Completed", "Failed", "Canceled"}) == "Completed"
    assert "['x.txt'] ['x.txt']" in driver_log(run), "the run did not see its inputs"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (stack.settings.home / "runs" / run.id).exists():
        time.sleep(0.2)
    assert not run_containers(stack.settings.project)
    runs_dir = stack.settings.home / "runs"
    active = json.loads(subprocess.run(["curl", "-s", f"{stack.settings.service_url}/api/health"],
                                       capture_output=True, text=True).stdout)["activeRuns"]
    leftover = [p.name for p in runs_dir.iterdir()] if runs_dir.exists() else []
    assert sorted(leftover) == sorted(active), f"run folders left behind: {leftover}"
    snapshots = [p.name for p in (stack.settings.home / "snapshots").glob("*.tar.gz")]
    assert not snapshots, f"snapshots left behind: {snapshots}"
    assert not list((workspace_env.settings.home / "tmp").glob("*")), "temporary snapshot archives left behind"
    mounts = Path("/proc/mounts").read_text()
    assert str(stack.settings.home) not in mounts, "a mount of the state folder is left on the host"
    new_volumes = _volumes() - volumes_before
    assert not new_volumes, f"anonymous Docker volumes left behind by a run: {sorted(new_volumes)}"


def _volumes() -> set[str]:
    """Anonymous volumes (what a run container leaves if its image declares a VOLUME); other stacks' named
    volumes come and go with the tests that run beside this one."""
    listing = subprocess.run(["docker", "volume", "ls", "-q"], capture_output=True, text=True, check=True)
    return {name for name in listing.stdout.split() if re.fullmatch(r"[0-9a-f]{64}", name)}


@pytest.mark.local_only
def test_what_a_killed_test_session_left_is_removed_by_the_next_session() -> None:
    """A container claimed by a session that died (here: a finished process) goes, with its anonymous volume."""
    require_docker()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    command = ["docker", "run", "-d", "-v", "/scratch", "--label", "aml-sandbox.test=true",
               "aml-sandbox/debian:bookworm", "sleep", "300"]
    created = subprocess.run(command, capture_output=True, text=True, check=True)
    container = created.stdout.strip()
    volume = inspect(container)["Mounts"][0]["Name"]
    leftovers.claim("container", container, pid=int(dead.stdout))
    try:
        assert f"container {container}" in leftovers.sweep()
        assert subprocess.run(["docker", "inspect", container], capture_output=True).returncode != 0
        assert volume not in _volumes(), "the container's anonymous volume was left behind"
    finally:
        leftovers.remove("container", container)
