"""MLflow inside a run lands in the same run, as on Azure (issue 17, item 3).

The run container gets ``MLFLOW_TRACKING_URI`` (the service's MLflow routes), ``MLFLOW_RUN_ID`` and the run
token as ``MLFLOW_TRACKING_TOKEN``: plain ``mlflow-skinny`` logs metrics, params, tags, artifacts and
``autolog()`` with scikit-learn into the run, also in an environment without azureml-core (the script still
runs, and the driver log says that nothing sent ``outputs/``). With ``azureml-mlflow`` installed, azureml-core's
run history context manager hands MLflow to it, as on Azure: an ``azureml://`` tracking URI, reached over HTTPS
(``https://<region>.api.azureml.ms`` through the stack's proxy), artifacts through run history's routes.
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from sandbox import target
from sandbox.service.auth import read_token
from tests.integration.conftest import SandboxEnv
from tests.integration.helpers import driver_log, submit_with, write_script

#: The dev dependencies' pins (requirements.lock): the wheelhouse fetches them for the image.
PACKAGES = ["mlflow-skinny==3.17.2", "scikit-learn==1.9.1", "pandas==3.1.1"]

TRAIN = """
import mlflow
import numpy as np
from sklearn.linear_model import LogisticRegression

try:
    import azureml.core  # noqa: F401
    print("azureml-core present")
except ImportError:
    print("no azureml-core here")
# The first call takes up the run MLFLOW_RUN_ID names (the Azure ML run); autolog then logs into it. (Had
# autolog come first, it would take up that run itself and end it after fit(), as MLflow does anywhere.)
for step, loss in enumerate([0.8, 0.4]):
    mlflow.log_metric("loss", loss, step=step)
mlflow.log_params({"lr": 0.01, "batch_size": 32})
mlflow.set_tag("framework", "mlflow")
with open("notes.txt", "w") as handle:
    handle.write("written by mlflow.log_artifact\\n")
mlflow.log_artifact("notes.txt")
mlflow.autolog()
LogisticRegression().fit(np.array([[0.0], [1.0], [2.0], [3.0]]), np.array([0, 0, 1, 1]))
print("mlflow done", mlflow.active_run().info.run_id == __import__("os").environ["AZUREML_RUN_ID"])
"""


@pytest.mark.parity
def test_mlflow_and_autolog_inside_a_run_without_azureml_core_land_in_the_run(
        workspace_env: SandboxEnv, tmp_path: Path, no_leftover_containers: None) -> None:
    from azureml.core.conda_dependencies import CondaDependencies

    aml = target.connect("local")
    env = aml.Environment(f"mlflow-only-{os.getpid()}")
    env.python.conda_dependencies = CondaDependencies.create(pip_packages=PACKAGES)  # no azureml package at all
    write_script(tmp_path / "src", "train.py", TRAIN)
    run = submit_with(tmp_path / "src", "train.py", env, "mlflow-inside")
    details = run.wait_for_completion(raise_on_error=False)
    log = driver_log(run)
    assert details["status"] == "Completed", (details.get("error"), log[-3000:])
    assert "no azureml-core here" in log and "mlflow done True" in log
    assert "aml-sandbox: the run's outputs/ and logs/ were not sent to run history: azureml-core is not installed" \
        in log

    metrics = run.get_metrics()
    Path("/tmp/mlflow_dbg.txt").write_text(repr(metrics) + "\n" + log)
    Path("/tmp/mlflow_dbg.txt").write_text(repr(metrics) + "\n" + log)
    assert metrics.get("loss") == [0.8, 0.4], (metrics, log[-4000:])
    assert metrics["training_accuracy_score"] == 1.0, metrics  # autolog's, from the fit above
    api = httpx.Client(base_url=workspace_env.settings.service_url, timeout=30,
                       headers={"Authorization": f"Bearer {read_token(workspace_env.settings.home)}"})
    tags = api.get(f"/api/runs/{run.id}").json()["tags"]
    assert {k: tags.get(k) for k in ("lr", "batch_size", "framework", "estimator_name")} == {
        "lr": "0.01", "batch_size": "32", "framework": "mlflow", "estimator_name": "LogisticRegression"}, tags
    assert "notes.txt" in run.get_file_names()
    assert api.get(f"/api/runs/{run.id}/files/notes.txt").text == "written by mlflow.log_artifact\n"


AZUREML_MLFLOW_TRAIN = """
import os
import mlflow

print("tracking", os.environ["MLFLOW_TRACKING_URI"].split("/")[0])
for step, loss in enumerate([0.9, 0.3]):
    mlflow.log_metric("loss", loss, step=step)
mlflow.log_param("lr", 0.02)
mlflow.set_tag("plugin", "azureml-mlflow")
with open("plugin.txt", "w") as handle:
    handle.write("through azureml-mlflow\\n")
mlflow.log_artifact("plugin.txt")
print("azureml-mlflow done")
"""


@pytest.mark.parity
def test_an_environment_with_azureml_mlflow_logs_through_its_azureml_tracking_uri(
        workspace_env: SandboxEnv, tmp_path: Path, no_leftover_containers: None) -> None:
    from azureml.core.conda_dependencies import CondaDependencies

    aml = target.connect("local")
    env = aml.Environment(f"azureml-mlflow-{os.getpid()}")
    # As the Azure ML examples write it: azureml-defaults (azureml-core here) and azureml-mlflow, which brings
    # the mlflow-skinny it supports.
    env.python.conda_dependencies = CondaDependencies.create(
        pip_packages=["azureml-defaults", "azureml-mlflow==1.62.0.post6"])
    write_script(tmp_path / "src", "train.py", AZUREML_MLFLOW_TRAIN)
    run = submit_with(tmp_path / "src", "train.py", env, "azureml-mlflow")
    details = run.wait_for_completion(raise_on_error=False)
    log = driver_log(run)
    assert details["status"] == "Completed", (details.get("error"), log[-3000:])
    assert "tracking azureml:" in log and "azureml-mlflow done" in log, log[-3000:]

    assert run.get_metrics().get("loss") == [0.9, 0.3], log[-3000:]
    api = httpx.Client(base_url=workspace_env.settings.service_url, timeout=30,
                       headers={"Authorization": f"Bearer {read_token(workspace_env.settings.home)}"})
    tags = api.get(f"/api/runs/{run.id}").json()["tags"]
    assert {k: tags.get(k) for k in ("lr", "plugin", "mlflow.source.name")} == {
        "lr": "0.02", "plugin": "azureml-mlflow", "mlflow.source.name": "train.py"}, tags
    assert api.get(f"/api/runs/{run.id}/files/plugin.txt").text == "through azureml-mlflow\n"
