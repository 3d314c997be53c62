"""One run in a container, as Azure ML runs it on a node (issue 9): failures, inputs, outputs, reuse, cancel."""

from __future__ import annotations

import json
import os
import re
import subprocess
import textwrap
from pathlib import Path

import pytest

from sandbox import aml
from sandbox.aml.exceptions import ActivityFailedException
from sandbox.service.auth import read_token
from tests.integration.conftest import SandboxEnv, inspect, run_containers
from tests.integration.helpers import driver_log, submit, wait_for_log_line, wait_for_status, write_script


@pytest.mark.parity
def test_a_script_that_raises_fails_the_run_with_the_users_exception(
        workspace_env: SandboxEnv, tmp_path: Path, no_leftover_containers: None) -> None:
    write_script(tmp_path / "src", "fail.py", """
        import sys
        print("about to fail", flush=True)

        def helper(value):
            raise ValueError(f"boom {value}")

        if __name__ == "__main__":
            helper(42)
        """)
    run = submit(tmp_path / "src", "fail.py")
    with pytest.raises(ActivityFailedException) as error:
        run.wait_for_completion(show_output=False)
    message = str(error.value)
    assert "User program failed with ValueError: boom 42" in message
    assert '"code": "UserError"' in message and "https://aka.ms/azureml-run-troubleshooting" in message
    assert run.get_status() == "Failed"
    log = driver_log(run)
    assert "about to fail" in log
    traceback = log[log.index("Traceback (most recent call last):"):]
    assert re.search(r'File "[^"]*/fail\.py", line 8, in <module>\n', traceback)
    assert re.search(r'File "[^"]*/fail\.py", line 5, in helper\n', traceback)
    assert "ValueError: boom 42\n" in traceback
    assert "context_manager_injector" not in traceback.split("ValueError: boom 42")[0]
    assert traceback.index("ValueError: boom 42") < traceback.index("The experiment failed. Finalizing run...")
    assert run.get_details()["error"]["error"]["message"] == "User program failed with ValueError: boom 42"


@pytest.mark.parity
def test_a_non_zero_exit_fails_the_run(workspace_env: SandboxEnv, tmp_path: Path,
                                       no_leftover_containers: None) -> None:
    write_script(tmp_path / "src", "exit3.py", "import sys\nsys.exit(3)\n")
    run = submit(tmp_path / "src", "exit3.py")
    details = run.wait_for_completion(raise_on_error=False)
    assert details["status"] == "Failed"
    assert "SystemExit: 3" in details["error"]["error"]["message"]


@pytest.mark.parity
def test_mounted_and_downloaded_inputs_arrive_intact_mount_read_only_download_writable(
        workspace_env: SandboxEnv, tmp_path: Path, no_leftover_containers: None) -> None:
    data = tmp_path / "payload"
    files = {"top.txt": b"top", "a/b/c/deep.txt": b"deep" * 100, "empty.bin": b"",
             "donn\u00e9es/na\u00efve \u00fc.txt": "caf\u00e9 \u2615".encode()}
    for name, content in files.items():
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        (data / name).write_bytes(content)
    ws = aml.Workspace.from_config()
    store = ws.get_default_datastore()
    store.upload(src_dir=str(data), target_path="inputs/payload", show_progress=False)
    store.upload(src_dir=str(data), target_path="inputs/scratch", show_progress=False)
    first = aml.Dataset.File.from_files(path=(store, "inputs/payload"))
    second = aml.Dataset.File.from_files(path=[(store, "inputs/scratch")])
    write_script(tmp_path / "src", "inspect_inputs.py", """
        import hashlib, json, os, sys
        from azureml.core import Run
        run = Run.get_context()

        def listing(root):
            found = {}
            for folder, _dirs, names in os.walk(root):
                for name in names:
                    path = os.path.join(folder, name)
                    found[os.path.relpath(path, root)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
            return found

        mount, copy = sys.argv[2], sys.argv[4]
        result = {"argv": sys.argv[1:], "mount": listing(mount), "copy": listing(copy),
                  "input_datasets": run.input_datasets,
                  "env": {k: os.environ.get(k) for k in ("input", "INPUT", "AZUREML_DATAREFERENCE_input",
                                                         "AZUREML_DATASET_ENVIRONMENT_VARS", "scratch")}}
        try:
            open(os.path.join(mount, "new.txt"), "w").write("x")
            result["mount_write"] = "allowed"
        except OSError as exc:
            result["mount_write"] = str(exc)
        with open(os.path.join(copy, "top.txt"), "a") as handle:
            handle.write(" changed")
        result["copy_write"] = open(os.path.join(copy, "top.txt")).read()
        print("RESULT " + json.dumps(result, ensure_ascii=True))
        """)
    run = submit(tmp_path / "src", "inspect_inputs.py", [
        "--mount", first.as_named_input("input").as_mount(),
        "--copy", second.as_named_input("scratch").as_download()])
    assert run.wait_for_completion()["status"] == "Completed"
    log = driver_log(run)
    result = json.loads(log.split("RESULT ", 1)[1].splitlines()[0])
    import hashlib

    expected = {name: hashlib.sha256(content).hexdigest() for name, content in files.items()}
    assert result["mount"] == expected
    assert result["copy"] == expected
    mount, copy = result["argv"][1], result["argv"][3]
    assert re.fullmatch(r"/tmp/tmp[a-z0-9_]{8}", mount) and re.fullmatch(r"/tmp/tmp[a-z0-9_]{8}", copy)
    assert "Read-only file system" in result["mount_write"]
    assert result["copy_write"] == "top changed"
    assert result["input_datasets"] == {"input": mount, "scratch": copy}
    assert result["env"]["input"] == result["env"]["INPUT"] == result["env"]["AZUREML_DATAREFERENCE_input"] == mount
    assert result["env"]["AZUREML_DATASET_ENVIRONMENT_VARS"] == "input:mount,scratch:download"
    assert f"Mounting input to {mount}." in log and f"Downloading scratch to {copy}" in log
    assert f"Downloaded scratch to {copy} as folder." in log


@pytest.mark.parity
def test_only_outputs_and_logs_are_kept(workspace_env: SandboxEnv, tmp_path: Path,
                                        no_leftover_containers: None) -> None:
    write_script(tmp_path / "src", "write.py", """
        import os
        from azureml.core import Run
        run = Run.get_context()
        open("outputs/result.txt", "w").write("kept")
        os.makedirs("logs", exist_ok=True)
        open("logs/progress.log", "w").write("kept too")
        open("scratch.txt", "w").write("not kept")
        run.log("accuracy", 0.5)
        run.log("loss", 2.0)
        run.log("loss", 1.0)
        run.log_list("curve", [1, 2, 3])
        run.log_row("table", epoch=1, acc=0.1)
        run.log_row("table", epoch=2, acc=0.2)
        run.tag("stage", "test")
        run.upload_file("extra/notes.txt", "outputs/result.txt")
        open("plot.png", "wb").write(bytes.fromhex("89504e470d0a1a0a"))
        run.log_image("loss_plot", path="plot.png")
        """)
    (tmp_path / "src" / "big_local_file.bin").write_bytes(b"0")
    run = submit(tmp_path / "src", "write.py")
    run.wait_for_completion()
    files = run.get_file_names()
    kept = {"outputs/result.txt", "logs/progress.log", "extra/notes.txt", "azureml-logs/70_driver_log.txt"}
    assert kept <= set(files)
    assert not any(name.endswith(("scratch.txt", "write.py", "big_local_file.bin")) for name in files)
    target = tmp_path / "down" / "result.txt"
    run.download_file("outputs/result.txt", str(target))
    assert target.read_text() == "kept"
    metrics = run.get_metrics()
    # azureml-core's own log_image: the file keeps its path, the metric names it
    assert metrics.pop("loss_plot") == f"aml://artifactId/ExperimentRun/dcid.{run.id}/plot.png"
    assert metrics == {"accuracy": 0.5, "loss": [2.0, 1.0], "curve": [1, 2, 3],
                       "table": {"epoch": [1, 2], "acc": [0.1, 0.2]}}
    assert "plot.png" in files
    run.download_files(prefix="outputs", output_directory=str(tmp_path / "all"))
    assert (tmp_path / "all" / "outputs" / "result.txt").read_text() == "kept"
    assert run.get_tags()["stage"] == "test"
    assert any(name.startswith("logs/azureml/") and name.endswith("_azureml.log") for name in files)


@pytest.mark.local_only
def test_second_submit_reuses_the_image_and_the_unchanged_data(
        workspace_env: SandboxEnv, tmp_path: Path, no_leftover_containers: None) -> None:
    data = tmp_path / "payload"
    data.mkdir()
    (data / "a.bin").write_bytes(os.urandom(4096))
    ws = aml.Workspace.from_config()
    ws.get_default_datastore().upload(src_dir=str(data), target_path="reuse", show_progress=False)
    dataset = aml.Dataset.File.from_files(path=(ws.get_default_datastore(), "reuse"))
    write_script(tmp_path / "src", "ls.py", "import os, sys\nprint(sorted(os.listdir(sys.argv[1])))\n")
    runs = [submit(tmp_path / "src", "ls.py", [dataset.as_named_input("input").as_mount()]) for _ in range(1)]
    runs[0].wait_for_completion()
    cache = workspace_env.settings.home / "cache" / "datasets"
    cached = sorted(cache.rglob("a.bin"))
    inode = cached[-1].stat().st_ino
    second = submit(tmp_path / "src", "ls.py", [dataset.as_named_input("input").as_mount()])
    second.wait_for_completion()
    assert "azureml-logs/20_image_build_log.txt" not in second.get_file_names()
    assert sorted(cache.rglob("a.bin")) == cached, "unchanged data made a new cache version"
    assert cached[-1].stat().st_ino == inode, "unchanged data was fetched again"
    assert "['a.bin']" in driver_log(second)


def _start_forever(tmp_path: Path, before: str = "") -> aml.Run:
    """A run that runs ``before`` (Python lines), prints 'started' and never ends, once it has started."""
    forever = """
        import time
        print("started", flush=True)
        while True:
            time.sleep(0.2)
        """
    write_script(tmp_path / "src", "forever.py", textwrap.dedent(before) + textwrap.dedent(forever))
    run = submit(tmp_path / "src", "forever.py")
    wait_for_log_line(run, "started")
    return run


def _container_of(run: aml.Run) -> str:
    found = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=aml-sandbox.run-id={run.id}"],
                           capture_output=True, text=True, check=True).stdout.split()
    assert len(found) == 1, f"expected one container for run {run.id}, found {found}"
    return found[0]


@pytest.mark.parity
def test_cancel_ends_the_run_canceled_with_no_container_left(
        workspace_env: SandboxEnv, tmp_path: Path, no_leftover_containers: None) -> None:
    run = _start_forever(tmp_path)
    assert run_containers(workspace_env.settings.project)
    run.cancel()
    assert wait_for_status(run, {"Canceled", "Failed", "Completed"}, timeout=60) == "Canceled"
    assert not run_containers(workspace_env.settings.project)
    assert "started" in driver_log(run)


PRIVILEGES = """
    import json, os
    status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
    seen = {key: status[key].strip() for key in ("NoNewPrivs", "CapEff", "CapPrm", "CapBnd", "CapAmb")}
    seen.update(uid=os.getuid(), gid=os.getgid(), socket=os.path.exists("/var/run/docker.sock"))
    print("PRIVILEGES " + json.dumps(seen), flush=True)
    """


@pytest.mark.local_only
def test_a_run_container_has_no_privileges_no_docker_socket_and_no_storage_key(
        workspace_env: SandboxEnv, stack: SandboxEnv, tmp_path: Path, no_leftover_containers: None) -> None:
    run = _start_forever(tmp_path, before=PRIVILEGES)
    attrs = inspect(_container_of(run))
    host = attrs["HostConfig"]
    assert {"no-new-privileges", "no-new-privileges:true"} & set(host.get("SecurityOpt") or []), host["SecurityOpt"]
    assert host["CapDrop"] == ["ALL"] and not host.get("CapAdd") and not host["Privileged"]
    assert attrs["Config"]["User"] == "1000:1000"
    assert host["Memory"] == int(7.0 * 1024**3)  # cpu-cluster: STANDARD_D2_V2, 7 GiB, 2 cores
    assert host["NanoCpus"] == 2 * 10**9
    assert host["ShmSize"] == 2 * 1024**3
    assert not any("docker.sock" in m["Source"] or "docker.sock" in m["Destination"] for m in attrs["Mounts"])
    environment = "\n".join(attrs["Config"]["Env"])
    for secret in (workspace_env.settings.account_key, read_token(stack.settings.home), "AccountKey="):
        assert secret and secret not in environment, "a storage key or the stack token is in the run's environment"

    seen = json.loads(driver_log(run).split("PRIVILEGES ", 1)[1].splitlines()[0])
    assert seen["NoNewPrivs"] == "1", seen
    assert seen["CapEff"] == seen["CapPrm"] == seen["CapBnd"] == seen["CapAmb"] == "0" * 16, seen
    assert (seen["uid"], seen["gid"], seen["socket"]) == (1000, 1000, False), seen
    run.cancel()
    assert wait_for_status(run, {"Canceled", "Failed", "Completed"}, timeout=60) == "Canceled"


@pytest.mark.local_only
def test_a_killed_container_ends_the_run_failed_with_a_reason(
        workspace_env: SandboxEnv, tmp_path: Path, no_leftover_containers: None) -> None:
    run = _start_forever(tmp_path)
    subprocess.run(["docker", "kill", _container_of(run)], check=True, capture_output=True)
    assert wait_for_status(run, {"Failed", "Completed", "Canceled"}, timeout=60) == "Failed"
    error = run.get_details()["error"]["error"]["message"]
    assert "stopped from outside" in error and "137" in error
    assert not run_containers(workspace_env.settings.project)


@pytest.mark.parity
def test_a_new_environment_is_built_once_with_its_build_log_and_reused(
        workspace_env: SandboxEnv, tmp_path: Path, no_leftover_containers: None,
        capsys: pytest.CaptureFixture[str]) -> None:
    from sandbox.docker_engine import DockerEngine
    from sandbox.images import environment_recipe

    marker = f"{os.getpid()}-{tmp_path.name}"[-20:]
    (tmp_path / "requirements.txt").write_text("six==1.17.0\n")
    env = aml.Environment.from_pip_requirements(f"env-{marker}", str(tmp_path / "requirements.txt"))
    env.environment_variables = {"BUILD_MARKER": marker}  # not part of the image: same hash as any six-only env
    ws = aml.Workspace.from_config()
    recipe = environment_recipe(json.loads(json.dumps(aml.environment.definition_of(env))))
    engine = DockerEngine()
    if engine.get_image(recipe.reference) is not None:  # an earlier session built it: start from scratch
        engine.client.images.remove(recipe.reference, force=True)
    write_script(tmp_path / "src", "six_check.py", """
        import os, sys, six
        print("six", six.__version__, "python", sys.version.split()[0], os.environ["BUILD_MARKER"])
        """)

    def run_once() -> aml.Run:
        config = aml.ScriptRunConfig(source_directory=str(tmp_path / "src"), script="six_check.py",
                                     compute_target="cpu-cluster", environment=env)
        run = aml.Experiment(ws, "env-build").submit(config)
        assert run.wait_for_completion()["status"] == "Completed"
        return run

    first = run_once()
    console = capsys.readouterr().out
    assert "Building the image for environment" in console and "pip install from the wheelhouse" in console
    assert "azureml-logs/20_image_build_log.txt" in first.get_file_names()
    build_log = first._client.read_file(first.id, "azureml-logs/20_image_build_log.txt")[0].decode()
    assert "Successfully installed six-1.17.0" in build_log
    assert "six 1.17.0 python 3.11" in driver_log(first) and marker in driver_log(first)
    image = engine.get_image(recipe.reference)
    image_id = image.id
    assert not image.attrs["Config"].get("Volumes"), "the image declares volumes: each run would leave them behind"

    second = run_once()
    assert "Building the image" not in capsys.readouterr().out
    assert "azureml-logs/20_image_build_log.txt" not in second.get_file_names()
    assert engine.get_image(recipe.reference).id == image_id


@pytest.mark.parity
def test_path_on_compute_places_the_data_where_asked(workspace_env: SandboxEnv, tmp_path: Path,
                                                     no_leftover_containers: None) -> None:
    (tmp_path / "payload").mkdir()
    (tmp_path / "payload" / "x.txt").write_text("x")
    ws = aml.Workspace.from_config()
    ws.get_default_datastore().upload(src_dir=str(tmp_path / "payload"), target_path="poc", show_progress=False)
    dataset = aml.Dataset.File.from_files(path=(ws.get_default_datastore(), "poc"))
    write_script(tmp_path / "src", "where.py", """
        import os, sys
        print("ARGS", sys.argv[1:], os.path.isfile(os.path.join(sys.argv[1], "x.txt")),
              os.path.isfile(os.path.join(sys.argv[2], "x.txt")), os.getcwd())
        """)
    run = submit(tmp_path / "src", "where.py", [dataset.as_named_input("fixed").as_mount("/data/fixed"),
                                                dataset.as_named_input("rel").as_download("inputs/rel")])
    assert run.wait_for_completion()["status"] == "Completed"
    line = next(x for x in driver_log(run).splitlines() if x.startswith("ARGS"))
    cwd = line.rsplit(" ", 1)[1]
    assert line == f"ARGS ['/data/fixed', '{cwd}/inputs/rel'] True True {cwd}"
