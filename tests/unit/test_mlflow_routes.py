"""MLflow's tracking routes (issue 17 item 3), driven by the REAL mlflow client in a subprocess against the
service app served in-process (uvicorn on a free port), with a real SQLite run store and a stand-in blob
store: what ``mlflow.log_*``, ``autolog()`` and ``end_run()`` send lands in the Azure ML run's own metrics,
tags and files; another run's token, or none, is refused."""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("mlflow", reason="mlflow-skinny is a dev dependency (pip install -e .[dev])")

import uvicorn

from sandbox.config import Settings
from sandbox.docker_engine import DockerEngine
from sandbox.local_runner import LocalRunner
from sandbox.run_definition import RunDefinition, RunStatus
from sandbox.service.api import Services, create_api
from sandbox.service.executor import Executor
from sandbox.service.routes.mlflow import TRACKING_ROOT
from sandbox.service.store import SqliteRunStore
from sandbox.storage import BlobInfo, Transfer, TransferResult

TOKEN = "s" * 43
RUN_ID = "mlflow-exp_1_aaaa1111"
OTHER_RUN_ID = "other-exp_1_bbbb2222"


class FakeBlobs:
    """The blob store's surface the artifact route uses, kept in a folder (no Azurite here)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.containers: set[str] = set()

    def ensure_container(self, name: str) -> None:
        self.containers.add(name)

    def upload(self, container: str, transfers: Iterable[Transfer], *, overwrite: bool,
               content_types: Any = None) -> Iterator[TransferResult]:
        for transfer in transfers:
            target = self.root / container / transfer.blob
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(transfer.local, target)
            yield TransferResult(transfer)

    def list_blobs(self, container: str, prefix: str = "") -> list[BlobInfo]:
        base = self.root / container
        return [BlobInfo(str(p.relative_to(base)), p.stat().st_size, "1") for p in sorted(base.rglob("*"))
                if p.is_file() and str(p.relative_to(base)).startswith(prefix)]

    def blob(self, container: str, name: str) -> bytes:
        return (self.root / container / name).read_bytes()


@dataclass
class Service:
    url: str
    settings: Settings
    store: SqliteRunStore
    services: Services
    blobs: FakeBlobs
    tmp: Path

    @property
    def tracking_uri(self) -> str:
        s = self.settings
        return self.url + TRACKING_ROOT.format(subscription_id=s.subscription_id, resource_group=s.resource_group,
                                               workspace_name=s.workspace_name)

    def token(self, run_id: str) -> str:
        return self.services.run_tokens.issue(run_id, self.store.get_run(run_id).experiment)

    def env(self, run_id: str, token: str | None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env.update({"MLFLOW_TRACKING_URI": self.tracking_uri, "MLFLOW_RUN_ID": run_id,
                    "MLFLOW_EXPERIMENT_NAME": self.store.get_run(run_id).experiment,
                    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
                    "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "HOME": str(self.tmp)})
        if token is not None:
            env["MLFLOW_TRACKING_TOKEN"] = token
        return env

    def mlflow(self, body: str, run_id: str = RUN_ID, token: str | None = "own",
               check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``body`` (after ``import mlflow``) in a fresh interpreter, as the run's own process would."""
        script = self.tmp / f"script-{uuid.uuid4().hex[:6]}.py"
        script.write_text("import mlflow\n" + textwrap.dedent(body), encoding="utf-8")
        env = self.env(run_id, self.token(run_id) if token == "own" else token)
        result = subprocess.run([sys.executable, str(script)], env=env, cwd=self.tmp, capture_output=True,
                                text=True, timeout=240, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"the mlflow script exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
        return result


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _definition(settings: Settings, run_id: str, experiment: str) -> RunDefinition:
    return RunDefinition.from_dict({
        "run_id": run_id, "experiment": experiment, "script": "train.py", "arguments": [],
        "workspace": {"name": settings.workspace_name, "subscription_id": settings.subscription_id,
                      "resource_group": settings.resource_group},
        "compute_target": "cpu-cluster", "environment": {"name": "env"}, "image": "aml-sandbox/azureml:x",
        "snapshot_id": str(uuid.uuid4()), "submitted_by": "alice@laptop"})


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    tmp = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    settings = Settings(home=tmp / "home", service_port=port)
    store = SqliteRunStore(tmp / "runs.db")
    blobs = FakeBlobs(tmp / "blobs")
    runner = LocalRunner(DockerEngine(), blobs, settings)  # type: ignore[arg-type]
    services = Services(store, Executor(store, runner, settings), runner, blobs, TOKEN)  # type: ignore[arg-type]
    for run_id, experiment in ((RUN_ID, "mlflow-exp"), (OTHER_RUN_ID, "other-exp")):
        store.create_run(_definition(settings, run_id, experiment))
        store.set_status(run_id, RunStatus.RUNNING)
    server = uvicorn.Server(uvicorn.Config(create_api(services), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the service app did not start"
        time.sleep(0.05)
    try:
        yield Service(f"http://127.0.0.1:{port}", settings, store, services, blobs, tmp)
    finally:
        server.should_exit = True
        thread.join(10)
        store.close()


def _running_run(service: Service, prefix: str) -> str:
    """A new Running run of the service's store, for a test of its own."""
    run_id = f"{prefix}_{uuid.uuid4().hex[:8]}"
    service.store.create_run(_definition(service.settings, run_id, "mlflow-exp"))
    service.store.set_status(run_id, RunStatus.RUNNING)
    return run_id


def _metrics(service: Service, name: str, run_id: str = RUN_ID) -> list[tuple[Any, int | None]]:
    return [(m.value, m.step) for m in service.store.get_metrics(run_id) if m.name == name]


def test_log_metric_params_tags_and_batch_land_in_the_azure_runs_metrics_and_tags(service: Service) -> None:
    result = service.mlflow("""
        from mlflow.entities import Metric, Param, RunTag
        for step, loss in enumerate([0.9, 0.5, 0.25]):
            mlflow.log_metric("loss", loss, step=step)
        mlflow.log_metric("diverged", float("nan"))
        mlflow.log_param("lr", 0.1)
        mlflow.log_params({"epochs": 3, "optimizer": "sgd"})
        mlflow.set_tag("stage", "unit-test")
        mlflow.log_metrics({"acc": 0.75, "f1": 0.5}, step=7)
        run_id = mlflow.active_run().info.run_id
        mlflow.MlflowClient().log_batch(run_id, metrics=[Metric("batch_m", 2.5, 1700000000123, 4)],
                                        params=[Param("seed", "42")], tags=[RunTag("source", "batch")])
        run = mlflow.get_run(run_id)
        print("PARAMS", sorted(run.data.params.items()))
        print("LOSS", run.data.metrics["loss"], "STATUS", run.info.status)
        mlflow.end_run()
    """)
    assert _metrics(service, "loss") == [(0.9, 0), (0.5, 1), (0.25, 2)]
    (diverged, _), = _metrics(service, "diverged")
    assert math.isnan(diverged)
    assert _metrics(service, "acc") == [(0.75, 7)] and _metrics(service, "f1") == [(0.5, 7)]
    batch, = [m for m in service.store.get_metrics(RUN_ID) if m.name == "batch_m"]
    assert (batch.value, batch.step, batch.time) == (2.5, 4, 1700000000.123)
    tags = service.store.get_run(RUN_ID).tags
    assert {k: tags.get(k) for k in ("lr", "epochs", "optimizer", "stage", "seed", "source")} == {
        "lr": "0.1", "epochs": "3", "optimizer": "sgd", "stage": "unit-test", "seed": "42", "source": "batch"}
    assert "PARAMS [('epochs', '3'), ('lr', '0.1'), ('optimizer', 'sgd'), ('seed', '42')]" in result.stdout
    assert "LOSS 0.25 STATUS RUNNING" in result.stdout
    # end_run() sent FINISHED: recorded and answered back, but the executor alone finishes the Azure ML run
    assert service.store.get_run(RUN_ID).status == RunStatus.RUNNING
    status = service.mlflow(f"print(mlflow.get_run({RUN_ID!r}).info.status)")
    assert status.stdout.strip().endswith("FINISHED")


def test_autolog_with_scikit_learn_sends_its_training_metrics_params_and_model_files(service: Service) -> None:
    pytest.importorskip("sklearn", reason="scikit-learn is a dev dependency")
    pytest.importorskip("pandas", reason="mlflow's sklearn autolog needs pandas")
    run_id = _running_run(service, "autolog")
    result = service.mlflow("""
        from sklearn.linear_model import LogisticRegression
        mlflow.autolog()
        X = [[0.0, 1.0], [1.0, 0.0], [0.1, 0.9], [0.9, 0.2], [0.2, 0.8], [0.8, 0.1]]
        y = [0, 1, 0, 1, 0, 1]
        LogisticRegression(C=0.5, max_iter=50).fit(X, y)
        mlflow.end_run()
    """, run_id=run_id)
    names = {m.name for m in service.store.get_metrics(run_id)}
    assert {"training_accuracy_score", "training_f1_score", "training_score"} <= names, result.stderr[-3000:]
    assert _metrics(service, "training_accuracy_score", run_id) == [(1.0, 0)]
    tags = service.store.get_run(run_id).tags
    assert tags["C"] == "0.5" and tags["max_iter"] == "50" and tags["estimator_name"] == "LogisticRegression"
    files = service.store.get_run(run_id).files or []
    assert {"model/MLmodel", "model/model.pkl", "estimator.html"} <= set(files), files
    mlmodel = service.blobs.blob("azureml", f"ExperimentRun/dcid.{run_id}/model/MLmodel").decode()
    assert "sklearn" in mlmodel and "unexpected error" not in result.stderr.lower()


def test_autolog_inside_the_run_the_script_already_logs_to_sends_its_metrics_there(service: Service) -> None:
    # The usual order in a script: a first log_metric takes up MLFLOW_RUN_ID's run, then autolog logs into it.
    pytest.importorskip("sklearn", reason="scikit-learn is a dev dependency")
    pytest.importorskip("pandas", reason="mlflow's sklearn autolog needs pandas")
    run_id = _running_run(service, "autolog")
    result = service.mlflow("""
        from sklearn.linear_model import LogisticRegression
        mlflow.log_metric("loss", 0.5)
        mlflow.autolog()
        LogisticRegression().fit([[0.0], [1.0], [2.0], [3.0]], [0, 0, 1, 1])
        print("SAME", mlflow.active_run().info.run_id)
        history = mlflow.MlflowClient().get_metric_history(mlflow.active_run().info.run_id, "loss")
        print("HISTORY", [(m.value, m.step) for m in history])
    """, run_id=run_id)
    names = {m.name for m in service.store.get_metrics(run_id)}
    assert {"loss", "training_accuracy_score"} <= names, result.stderr[-3000:]
    # MLflow 3 logs the run's metrics again (with the model's id) when autolog logs the model: stored once.
    assert f"SAME {run_id}" in result.stdout and "HISTORY [(0.5, 0)]" in result.stdout
    assert "unexpected error" not in result.stderr.lower(), result.stderr[-3000:]


def test_log_artifact_stores_the_file_with_the_runs_files(service: Service) -> None:
    (service.tmp / "notes.txt").write_text("hello from mlflow\n")
    service.mlflow("""
        mlflow.log_artifact("notes.txt")
        mlflow.log_artifact("notes.txt", artifact_path="reports/daily")
        print(sorted(f.path for f in mlflow.MlflowClient().list_artifacts(mlflow.active_run().info.run_id)))
    """)
    assert service.blobs.blob("azureml", f"ExperimentRun/dcid.{RUN_ID}/notes.txt") == b"hello from mlflow\n"
    assert service.blobs.blob("azureml", f"ExperimentRun/dcid.{RUN_ID}/reports/daily/notes.txt") == \
        b"hello from mlflow\n"
    assert {"notes.txt", "reports/daily/notes.txt"} <= set(service.store.get_run(RUN_ID).files or [])


def test_a_nested_mlflow_run_becomes_a_child_run_completed_by_end_run(service: Service) -> None:
    service.mlflow("""
        with mlflow.start_run():
            with mlflow.start_run(run_name="fold-1", nested=True):
                mlflow.log_metric("fold_loss", 0.125)
    """)
    child, = [c for c in service.store.get_children(RUN_ID) if c.name == "fold-1"]
    assert child.root_run_id == RUN_ID and child.status == RunStatus.COMPLETED
    assert _metrics(service, "fold_loss", child.run_id) == [(0.125, 0)]
    assert service.store.get_run(RUN_ID).status == RunStatus.RUNNING


def _post(service: Service, route: str, body: dict[str, Any], token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(f"{service.tracking_uri}/api/2.0/mlflow/{route}", json=body, headers=headers, timeout=30)


def test_another_runs_token_is_forbidden_and_no_token_or_the_stack_token_is_unauthenticated(
        service: Service) -> None:
    body = {"run_id": RUN_ID, "key": "intruder", "value": 1.0, "timestamp": 0, "step": 0}
    forbidden = _post(service, "runs/log-metric", body, service.token(OTHER_RUN_ID))
    assert forbidden.status_code == 403 and forbidden.json()["error_code"] == "PERMISSION_DENIED"
    assert OTHER_RUN_ID in forbidden.json()["message"] and RUN_ID in forbidden.json()["message"]
    for token in (None, TOKEN, "not-a-jwt"):
        refused = _post(service, "runs/log-metric", body, token)
        assert refused.status_code == 401 and refused.json()["error_code"] == "UNAUTHENTICATED", token
    assert _metrics(service, "intruder") == []
    # the real client, presenting another run's token, fails loudly and logs nothing
    result = service.mlflow("mlflow.log_metric('intruder', 2.0)", token=service.token(OTHER_RUN_ID), check=False)
    assert result.returncode != 0 and "PERMISSION_DENIED" in result.stderr
    result = service.mlflow("mlflow.log_metric('intruder', 3.0)", token=None, check=False)
    assert result.returncode != 0 and "UNAUTHENTICATED" in result.stderr
    assert _metrics(service, "intruder") == []
    artifact = httpx.put(f"{service.tracking_uri}/api/2.0/mlflow-artifacts/artifacts/ExperimentRun/dcid.{RUN_ID}/x.txt",
                         content=b"x", headers={"Authorization": f"Bearer {service.token(OTHER_RUN_ID)}"})
    assert artifact.status_code == 403 and "x.txt" not in (service.store.get_run(RUN_ID).files or [])


@pytest.mark.parametrize(("route", "body", "wanted"), [
    ("runs/log-metric", {"run_id": RUN_ID, "key": "m", "value": "high", "timestamp": 0}, "value"),
    ("runs/log-metric", {"run_id": RUN_ID, "key": "m", "value": 1, "step": 2 ** 70}, "step"),
    ("runs/log-metric", {"run_id": "../etc", "key": "m", "value": 1}, "run id"),
    ("runs/set-tag", {"run_id": RUN_ID, "key": "k" * 300, "value": "v"}, "key"),
    ("runs/log-batch", {"run_id": RUN_ID, "metrics": [{"key": "m", "value": 1}] * 1001}, "1000"),
    ("runs/update", {"run_id": RUN_ID, "status": "DONE"}, "status"),
])
def test_a_malformed_request_is_refused_naming_the_bad_field(service: Service, route: str, body: dict[str, Any],
                                                             wanted: str) -> None:
    response = _post(service, route, body, service.token(RUN_ID))
    assert response.status_code == 400, response.text
    assert response.json()["error_code"] == "INVALID_PARAMETER_VALUE" and wanted in response.json()["message"]


def test_an_artifact_path_leaving_the_run_is_refused(service: Service) -> None:
    token = service.token(RUN_ID)
    for path in ("a/../../b.txt", "a//b.txt", "./b.txt", "a\\b.txt"):
        response = httpx.put(f"{service.tracking_uri}/api/2.0/mlflow-artifacts/artifacts/ExperimentRun/dcid.{RUN_ID}/"
                             + path.replace(".", "%2E"), content=b"x", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 400 and "relative path" in response.json()["message"], (path, response.text)
    assert not any(".." in f or "\\" in f for f in service.store.get_run(RUN_ID).files or [])


def test_experiments_are_answered_for_the_tokens_own_experiment_only(service: Service) -> None:
    headers = {"Authorization": f"Bearer {service.token(RUN_ID)}"}
    base = f"{service.tracking_uri}/api/2.0/mlflow/experiments"
    own = httpx.get(f"{base}/get-by-name", params={"experiment_name": "mlflow-exp"}, headers=headers).json()
    assert own["experiment"]["name"] == "mlflow-exp"
    assert own["experiment"]["experiment_id"] == service.store.get_run(RUN_ID).experiment_id
    by_id = httpx.get(f"{base}/get", params={"experiment_id": own["experiment"]["experiment_id"]}, headers=headers)
    assert by_id.json() == own
    other = httpx.get(f"{base}/get-by-name", params={"experiment_name": "other-exp"}, headers=headers)
    assert other.status_code == 403 and json.loads(other.text)["error_code"] == "PERMISSION_DENIED"
