"""MLflow against the real stack (issue 17 item 3): a host process logs through the real mlflow client AS a
submitted run (its run token, MLFLOW_RUN_ID = the run's id) while the run goes, and once the run has
ended its metrics, params, tags and the logged file are the run's, in the service's API and in Azurite."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

from sandbox.service.auth import token_path
from tests.integration.conftest import SandboxEnv
from tests.integration.helpers import driver_log, submit, wait_for_status, write_script

pytest.importorskip("mlflow", reason="mlflow-skinny is a dev dependency (pip install -e .[dev])")

TRACKING = ("/mlflow/v1.0/subscriptions/{s}/resourceGroups/{rg}/providers/Microsoft.MachineLearningServices"
            "/workspaces/{ws}")


def _log_as_the_run(env: SandboxEnv, run_id: str, run_token: str, folder: Path) -> subprocess.CompletedProcess[str]:
    s = env.settings
    (folder / "notes.txt").write_text("written by mlflow.log_artifact\n", encoding="utf-8")
    script = folder / "log_with_mlflow.py"
    script.write_text(textwrap.dedent("""
        import mlflow
        for step, loss in enumerate([0.8, 0.4, 0.2]):
            mlflow.log_metric("loss", loss, step=step)
        mlflow.log_params({"lr": 0.01, "batch_size": 32})
        mlflow.set_tag("framework", "mlflow")
        mlflow.log_artifact("notes.txt")
        mlflow.end_run()
    """), encoding="utf-8")
    mlflow_env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    tracking = TRACKING.format(s=s.subscription_id, rg=s.resource_group, ws=s.workspace_name)
    mlflow_env.update({
        "MLFLOW_TRACKING_URI": f"{s.service_url}{tracking}",
        "MLFLOW_RUN_ID": run_id, "MLFLOW_TRACKING_TOKEN": run_token, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "HOME": str(folder)})
    return subprocess.run([sys.executable, str(script)], env=mlflow_env, cwd=folder, capture_output=True, text=True,
                          timeout=180, check=False)


@pytest.mark.local_only
def test_mlflow_logging_as_a_running_run_lands_in_its_metrics_tags_and_files(
        workspace_env: SandboxEnv, tmp_path: Path) -> None:
    write_script(tmp_path / "src", "wait.py", "import time\nprint('waiting for mlflow', flush=True)\ntime.sleep(45)\n")
    run = submit(tmp_path / "src", "wait.py")
    assert wait_for_status(run, {"Running", "Completed", "Failed"}, timeout=300) == "Running", driver_log(run)
    settings = workspace_env.settings
    stack_token = token_path(settings.home).read_text().strip()
    api = httpx.Client(base_url=settings.service_url, timeout=30,
                       headers={"Authorization": f"Bearer {stack_token}"})
    issued = api.post(f"/api/runs/{run.id}/token")
    assert issued.status_code == 200, issued.text

    logged = _log_as_the_run(workspace_env, run.id, issued.json()["token"], tmp_path)
    assert logged.returncode == 0, f"{logged.stdout}\n{logged.stderr}"
    assert run.get_status() == "Running", "mlflow.end_run() must not finish the Azure ML run"

    assert wait_for_status(run, {"Completed", "Failed", "Canceled"}, timeout=180) == "Completed", driver_log(run)
    metrics = httpx.get(f"{settings.service_url}/api/runs/{run.id}/metrics", timeout=30).json()
    assert metrics["metrics"]["loss"] == [0.8, 0.4, 0.2]
    assert [m["step"] for m in metrics["series"] if m["name"] == "loss"] == [0, 1, 2]
    tags = api.get(f"/api/runs/{run.id}").json()["tags"]
    assert {k: tags.get(k) for k in ("lr", "batch_size", "framework")} == {
        "lr": "0.01", "batch_size": "32", "framework": "mlflow"}
    content = api.get(f"/api/runs/{run.id}/files/notes.txt")
    assert content.status_code == 200 and content.text == "written by mlflow.log_artifact\n"
    files = httpx.get(f"{settings.service_url}/api/runs/{run.id}/files", timeout=30).json()["files"]
    assert "azureml-logs/70_driver_log.txt" in files, files
    assert "notes.txt" in files, f"what mlflow uploaded is missing from the run's files once it ended: {files}"
