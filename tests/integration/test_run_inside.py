"""Inside a run, ``Run.get_context()`` is azureml-core's own, reporting over HTTP to the stack (issue 17).

Real Docker, real Azurite, the service as compose runs it: a submitted script logs every metric type, tags,
properties, a file, an image and a child run; a DataLoader worker and a subprocess log through
``Run.get_context()`` too; ``outputs/`` is uploaded from inside. All of it shows from the host. A run's token
reaches its own tree only: another run cannot be read or written with it, nor without a token.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest

from sandbox import aml
from sandbox.service.auth import read_token
from tests.integration.conftest import SandboxEnv
from tests.integration.helpers import driver_log, experiment_name, submit, wait_for_status, write_script

#: A 1x1 PNG, written by the script for log_image (no plotting library needed).
PNG = ("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
       "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")

TRAIN = f"""
import os, subprocess, sys
from azureml.core import Run
from torch.utils.data import DataLoader, Dataset

run = Run.get_context()
print("RUN TYPE", type(run).__module__, type(run).__name__)
assert type(run).__module__.startswith("azureml.core"), type(run)
for step, value in enumerate([0.5, 0.4, 0.3]):
    run.log("loss", value, step=step)
run.log_list("curve", [1, 2, 3])
run.log_row("rows", epoch=1, acc=0.5)
run.log_row("rows", epoch=2, acc=0.75)
run.log_table("table", {{"x": [1, 2], "y": [0.1, 0.2]}})
with open("plot.png", "wb") as handle:
    handle.write(bytes.fromhex("{PNG}"))
run.log_image("plot", path="plot.png")
run.tag("owner", "inside")
run.set_tags({{"stage": "switch"}})
run.add_properties({{"source": "azureml-core"}})
with open("notes.txt", "w") as handle:
    handle.write("uploaded from inside\\n")
run.upload_file("uploads/notes.txt", "notes.txt")
child = run.child_run(name="kid")
child.log("child_loss", 1.5)
child.complete()
os.makedirs("outputs", exist_ok=True)
with open("outputs/result.txt", "w") as handle:
    handle.write("done\\n")


class Items(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, index):
        Run.get_context().log("worker_item", float(index))  # in a forked DataLoader worker
        return index


print("items", sorted(int(x) for x in DataLoader(Items(), num_workers=2)))
subprocess.run([sys.executable, "child.py"], check=True)
print("parent", run.parent, "children", [c.id for c in run.get_children()])
"""

CHILD = """
from azureml.core import Run
Run.get_context().log("from_subprocess", 1.0)
"""


@pytest.mark.parity
def test_the_runs_own_azureml_core_run_logs_everything_and_the_host_sees_it(
        workspace_env: SandboxEnv, tmp_path: Path) -> None:
    source = tmp_path / "src"
    write_script(source, "child.py", CHILD)
    run = submit(source, write_script(source, "train.py", TRAIN).name, experiment=experiment_name("inside"))
    status = wait_for_status(run, {"Completed", "Failed", "Canceled"}, timeout=600)
    log = driver_log(run)
    assert status == "Completed", log
    assert "RUN TYPE azureml.core.run _SubmittedRun" in log and "items [0, 1, 2, 3]" in log
    # azureml-core's own _RunBase._kill prints these, counting its run objects (no sandbox line in between)
    assert re.search(r"\n\d+ items cleaning up\.\.\.\nCleanup took [0-9.e-]+ seconds\n", log), log
    assert "aml-sandbox:" not in log, log  # every process's records were sent

    host = aml.Run(run.experiment, run.id)
    metrics = host.get_metrics()
    assert metrics["loss"] == [0.5, 0.4, 0.3] and metrics["curve"] == [1, 2, 3]
    assert metrics["rows"] == {"epoch": [1, 2], "acc": [0.5, 0.75]}
    assert metrics["table"] == {"x": [1, 2], "y": [0.1, 0.2]}
    assert metrics["plot"] == f"aml://artifactId/ExperimentRun/dcid.{run.id}/plot.png"
    assert sorted(metrics.get("worker_item", [])) == [0.0, 1.0, 2.0, 3.0], (metrics, log)  # each worker's, once
    assert metrics["from_subprocess"] == 1.0  # a new interpreter's, flushed at its exit
    assert host.get_tags() == {"owner": "inside", "stage": "switch"}
    assert host.get_properties()["source"] == "azureml-core"
    files = host.get_file_names()
    for name in ("uploads/notes.txt", "plot.png", "outputs/result.txt", "azureml-logs/70_driver_log.txt"):
        assert name in files, files
    assert any(name.startswith("logs/azureml/") for name in files), files  # streamed by azureml-core

    api = f"http://127.0.0.1:{workspace_env.settings.service_port}/api"
    owner = {"Authorization": f"Bearer {read_token(workspace_env.settings.home)}"}
    record = httpx.get(f"{api}/runs/{run.id}", headers=owner, timeout=30).json()
    assert [c["status"] for c in record["children"]] == ["Completed"], record["children"]
    child_id = record["children"][0]["runId"]
    assert httpx.get(f"{api}/runs/{child_id}/metrics", timeout=30).json()["metrics"] == {"child_loss": 1.5}
    page = httpx.get(f"http://127.0.0.1:{workspace_env.settings.service_port}/runs/{run.id}", timeout=30).text
    assert child_id in page  # child runs listed on the parent's page


PROBE = """
import json, os, sys, urllib.error, urllib.request

other = sys.argv[1]
env = os.environ
scope = (f"subscriptions/{env['AZUREML_ARM_SUBSCRIPTION']}/resourceGroups/{env['AZUREML_ARM_RESOURCEGROUP']}"
         f"/providers/Microsoft.MachineLearningServices/workspaces/{env['AZUREML_ARM_WORKSPACE_NAME']}")
base = f"{env['AZUREML_SERVICE_ENDPOINT']}/history/v1.0/{scope}/experiments/{env['AZUREML_ARM_PROJECT_NAME']}/runs/"
answers = {}
for label, token in (("own token", env["AZUREML_RUN_TOKEN"]), ("no token", None)):
    for verb, body in (("GET", None), ("PATCH", {"runId": other, "tags": {"evil": "1"}})):
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = "Bearer " + token
        request = urllib.request.Request(base + other, method=verb, headers=headers,
                                         data=json.dumps(body).encode() if body else None)
        try:
            answers[f"{label} {verb}"] = urllib.request.urlopen(request, timeout=30).status
        except urllib.error.HTTPError as exc:
            answers[f"{label} {verb}"] = exc.code
print("ANSWERS " + json.dumps(answers))
"""

WAIT = """
import time
for _ in range(120):
    time.sleep(1)
"""


@pytest.mark.local_only
def test_a_runs_token_neither_reads_nor_writes_another_run_and_no_token_is_refused(
        workspace_env: SandboxEnv, tmp_path: Path) -> None:
    experiment = experiment_name("tokens")
    source = tmp_path / "src"
    write_script(source, "wait.py", WAIT)
    write_script(source, "probe.py", PROBE)
    victim = submit(source, "wait.py", experiment=experiment)
    try:
        wait_for_status(victim, {"Running"}, timeout=600)
        prober = submit(source, "probe.py", [victim.id], experiment=experiment)
        assert wait_for_status(prober, {"Completed", "Failed"}, timeout=600) == "Completed", driver_log(prober)
        line = next(x for x in driver_log(prober).splitlines() if x.startswith("ANSWERS "))
        answers = json.loads(line[len("ANSWERS "):])
        assert answers == {"own token GET": 403, "own token PATCH": 403, "no token GET": 401, "no token PATCH": 401}
        assert "evil" not in aml.Run(victim.experiment, victim.id).get_tags()
    finally:
        victim.cancel()
