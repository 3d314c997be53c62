"""azureml-core's own ``Run`` inside a run, against the service's run history routes (issue 17).

The app runs in-process (uvicorn on a free 127.0.0.1 port, a real SqliteRunStore); the client is the
REAL azureml-core in a subprocess with Azure's run environment variables, so the routes answer what
azureml-core's deserialisers and read-back rules need, not what we think they need.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import requests
import uvicorn

from sandbox.config import Settings
from sandbox.run_definition import RunDefinition, RunStatus
from sandbox.service.api import Services, create_api
from sandbox.service.routes.common import WORKSPACE_SCOPE
from sandbox.service.store import SqliteRunStore, experiment_id

pytest.importorskip("azureml.core", reason="the contract is checked against the real azureml-core client")

SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"
RESOURCE_GROUP = "aml-sandbox-rg"
WORKSPACE = "aml-sandbox-ws"
EXPERIMENT = "exp"
RUN = "exp_1700000000_aaaaaaaa"
OTHER = "exp_1700000001_bbbbbbbb"
WS = WORKSPACE_SCOPE.format(subscription_id=SUBSCRIPTION, resource_group=RESOURCE_GROUP, workspace_name=WORKSPACE)


def _definition(run_id: str) -> RunDefinition:
    return RunDefinition(
        run_id=run_id, experiment=EXPERIMENT,
        workspace={"name": WORKSPACE, "subscription_id": SUBSCRIPTION, "resource_group": RESOURCE_GROUP},
        script="train.py", arguments=[], compute_target="cpu-cluster", environment={"name": "env"},
        image="aml-sandbox/azureml:abc", snapshot_id="0f8fad5b-d9cb-469f-a165-70867728950e")


@dataclass
class Service:
    url: str
    store: SqliteRunStore
    services: Services
    home: Path

    def token(self, run_id: str) -> str:
        return self.services.run_tokens.issue(run_id, EXPERIMENT)

    def run_env(self, run_id: str, token: str) -> dict[str, str]:
        """What a run container gets on Azure, and nothing of this process's environment but PATH."""
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.home), "NO_PROXY": "*",
                "AZUREML_RUN_ID": run_id, "AZUREML_ARM_SUBSCRIPTION": SUBSCRIPTION,
                "AZUREML_ARM_RESOURCEGROUP": RESOURCE_GROUP, "AZUREML_ARM_WORKSPACE_NAME": WORKSPACE,
                "AZUREML_ARM_PROJECT_NAME": EXPERIMENT, "AZUREML_EXPERIMENT_ID": experiment_id(EXPERIMENT),
                "AZUREML_SERVICE_ENDPOINT": self.url, "AZUREML_DISCOVERY_SERVICE_ENDPOINT": self.url + "/discovery",
                "AZUREML_RUN_TOKEN": token}


class _StoredFiles:
    """Azurite's container of run files, listed as azure-storage-blob lists it: one page, no continuation.
    No run has stored a file until a test adds blob names to :attr:`names`."""

    def __init__(self, home: Path) -> None:
        self.settings = Settings(home=home)  # the account the artifact routes sign for
        self.names: list[str] = []

    def container(self, name: str) -> Any:
        assert name == "azureml", name
        return SimpleNamespace(list_blobs=self._list)

    def _list(self, *, name_starts_with: str, results_per_page: int) -> Any:
        page = [SimpleNamespace(name=n, etag="0x1", creation_time=None)
                for n in sorted(self.names) if n.startswith(name_starts_with)][:results_per_page]
        return _Pages([page] if page else [])


class _Pages:
    """``ItemPaged.by_page()``: an iterator of pages with the token of the next one."""

    def __init__(self, pages: list[list[Any]]) -> None:
        self._pages = iter(pages)
        self.continuation_token: str | None = None

    def by_page(self, *, continuation_token: str | None = None) -> _Pages:
        return self

    def __iter__(self) -> _Pages:
        return self

    def __next__(self) -> list[Any]:
        return next(self._pages)


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    store = SqliteRunStore(tmp_path / "runs.db")
    for run_id in (RUN, OTHER):
        store.create_run(_definition(run_id))
        store.set_status(run_id, RunStatus.RUNNING)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    executor = SimpleNamespace(settings=SimpleNamespace(home=tmp_path, service_port=port))
    services = Services(store, executor, runner=None, blobs=_StoredFiles(tmp_path),  # type: ignore[arg-type]
                        token="stack-token-" + "x" * 32)
    app = create_api(services, allowed_hosts={f"127.0.0.1:{port}"})
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the in-process service did not start"
        time.sleep(0.05)
    home = tmp_path / "home"
    home.mkdir()
    try:
        yield Service(f"http://127.0.0.1:{port}", store, services, home)
    finally:
        server.should_exit = True
        thread.join(10)
        store.close()
        sock.close()


SCRIPT = r'''
import json
from azureml.core import Run

run = Run.get_context()
out = {"module": type(run).__module__, "id": run.id}
for step, value in enumerate([0.5, 0.4, 0.3]):
    run.log("loss", value, step=step)
run.log("acc", 0.9)
run.log("bad", float("nan"))
run.log_list("curve", [1, 2, 3])
run.log_row("one_row", epoch=1, acc=0.5)
run.log_row("rows", epoch=1, acc=0.5)
run.log_row("rows", epoch=2, acc=0.75)
run.log_table("table", {"x": [1, 2, 3], "y": [0.1, 0.2, 0.3]})
run.tag("flag")
run.tag("owner", "me")
run.set_tags({"a": "1", "b": 2})
run.add_properties({"p": "v"})
child = run.child_run(name="kid")
child.log("child_loss", 1.5)
child.log("child_loss", 1.25)
child.complete()
run.flush()
out["metrics"] = run.get_metrics()
out["tags"] = run.get_tags()
out["properties"] = run.get_properties()
out["details_run_id"] = run.get_details()["runId"]
out["child_id"] = child.id
out["child_parent"] = child.parent.id
out["child_status"] = child.get_status()
out["child_metrics"] = child.get_metrics()
out["children"] = [c.id for c in run.get_children()]
print("RESULT " + json.dumps(out))
'''


def _run_client(service: Service, script: str, run_id: str, token: str) -> subprocess.CompletedProcess[str]:
    path = service.home / "client.py"
    path.write_text(script, encoding="utf-8")
    return subprocess.run([sys.executable, str(path)], env=service.run_env(run_id, token), cwd=service.home,
                          capture_output=True, text=True, timeout=180)


def _result(process: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    lines = [line for line in process.stdout.splitlines() if line.startswith("RESULT ")]
    assert process.returncode == 0 and lines, \
        f"azureml-core failed:\n{process.stdout[-3000:]}\n{process.stderr[-5000:]}"
    return json.loads(lines[-1][len("RESULT "):])


def test_azureml_core_run_logs_tags_and_makes_a_child_run_through_the_routes(service: Service) -> None:
    out = _result(_run_client(service, SCRIPT, RUN, service.token(RUN)))

    assert out["module"].startswith("azureml.core") and out["id"] == RUN
    metrics = out["metrics"]
    assert metrics["loss"] == [0.5, 0.4, 0.3] and metrics["acc"] == 0.9
    assert math.isnan(metrics["bad"])
    assert metrics["curve"] == [1, 2, 3]
    assert metrics["one_row"] == {"epoch": 1, "acc": 0.5}
    assert metrics["rows"] == {"epoch": [1, 2], "acc": [0.5, 0.75]}
    assert metrics["table"] == {"x": [1, 2, 3], "y": [0.1, 0.2, 0.3]}
    assert out["tags"] == {"flag": None, "owner": "me", "a": "1", "b": "2"}
    assert out["properties"] == {"p": "v"}
    assert out["details_run_id"] == RUN
    assert out["child_parent"] == RUN and out["children"] == [out["child_id"]]
    assert out["child_status"] == "Completed" and out["child_metrics"] == {"child_loss": [1.5, 1.25]}

    # ... and the run store holds all of it: the steps, the child with its root, the submitted run's status.
    loss = [(m.value, m.step) for m in service.store.get_metrics(RUN, "loss")]
    assert loss == [(0.5, 0), (0.4, 1), (0.3, 2)]
    record = service.store.get_run(RUN)
    assert record.tags == {"flag": None, "owner": "me", "a": "1", "b": "2"} and record.properties == {"p": "v"}
    assert record.status is RunStatus.RUNNING  # the executor owns a submitted run's status
    child = service.store.get_run(out["child_id"])
    # azureml-core names a child "<parent name>><name>" (a submitted run has no name)
    assert (child.parent_run_id, child.root_run_id, child.name, child.status) == (RUN, RUN, ">kid", RunStatus.COMPLETED)
    assert [m.value for m in service.store.get_metrics(child.run_id)] == [1.5, 1.25]
    assert [c.run_id for c in record.children] == [child.run_id]
    assert [r.run_id for r in service.store.list_runs(EXPERIMENT)] == [OTHER, RUN]  # children are not listed
    listed = requests.get(f"{service.url}/api/runs/{RUN}", timeout=10,
                          headers={"Authorization": f"Bearer {service.services.token}"}).json()
    assert [c["runId"] for c in listed["children"]] == [child.run_id] and listed["rootRunId"] == RUN


def _calls(service: Service) -> list[tuple[str, str, dict[str, Any] | None]]:
    base = f"{service.url}/history/v1.0{WS}"
    return [
        ("GET", f"{base}/experimentids/{experiment_id(EXPERIMENT)}/runs/{RUN}", None),
        ("PATCH", f"{base}/experiments/{EXPERIMENT}/runs/{RUN}", {"runId": RUN, "tags": {"evil": "1"}}),
        ("PATCH", f"{base}/experiments/{EXPERIMENT}/runs/{RUN}_kid",
         {"runId": f"{RUN}_kid", "parentRunId": RUN, "status": "NotStarted"}),
        ("POST", f"{base}/experiments/{EXPERIMENT}/runs/{RUN}/events",
         {"name": "Microsoft.MachineLearning.Run.Error", "data": {"RunId": RUN}}),
        ("GET", f"{base}/experiments/{EXPERIMENT}/runs/{RUN}/details", None),
        ("GET", f"{base}/experiments/{EXPERIMENT}/runs/{RUN}/token", None),
        ("POST", f"{service.url}/metric/v2.0{WS}/runs/{RUN}/batch",
         {"values": [{"name": "evil", "columns": {"evil": "double"},
                      "properties": {"uxMetricType": "azureml.v1.scalar"}, "value": [{"data": {"evil": 1.0}}]}]}),
        ("POST", f"{service.url}/metric/v2.0{WS}/runs/{RUN}/full", {"metricName": "loss"}),
    ]


@pytest.mark.parametrize(("token_of", "status"), [(OTHER, 403), (None, 401), ("forged", 401)])
def test_another_runs_token_or_none_is_refused_and_changes_nothing(service: Service, token_of: str | None,
                                                                   status: int) -> None:
    service.store.add_metrics(RUN, [{"name": "loss", "type": "scalar", "value": 0.5}])
    before = service.store.get_run(RUN).to_dict()
    headers = {}
    if token_of == "forged":
        headers["Authorization"] = "Bearer " + service.token(RUN)[:-4] + "AAAA"
    elif token_of is not None:
        headers["Authorization"] = "Bearer " + service.token(token_of)
    for method, url, body in _calls(service):
        response = requests.request(method, url, json=body, headers=headers, timeout=10)
        assert response.status_code == status, (method, url, response.text)
        assert response.json()["error"]["code"] in {"Forbidden", "AuthenticationFailed"}
    assert service.store.get_run(RUN).to_dict() == before
    assert [m.name for m in service.store.get_metrics(RUN)] == ["loss"]
    assert [r.run_id for r in service.store.list_runs(include_children=True)] == [OTHER, RUN]


def test_azureml_core_with_another_runs_token_fails_with_forbidden(service: Service) -> None:
    process = _run_client(service, "from azureml.core import Run\nRun.get_context()\n", RUN, service.token(OTHER))
    assert process.returncode != 0 and "Forbidden" in process.stderr, process.stderr[-3000:]


def test_discovery_names_every_service_at_the_address_the_caller_used(service: Service) -> None:
    answer = requests.get(service.url + "/discovery", timeout=10).json()
    for key in ("api", "history", "modelmanagement", "experimentation", "hyperdrive", "studio", "catalog",
                "pipelines"):
        assert answer[key] == service.url


def test_a_metric_batch_with_a_bad_value_stores_the_good_ones_and_names_the_bad(service: Service) -> None:
    url = f"{service.url}/metric/v2.0{WS}/runs/{RUN}/batch"
    scalar = {"uxMetricType": "azureml.v1.scalar"}
    body = {"values": [
        {"name": "ok", "columns": {"ok": "int"}, "properties": scalar, "value": [{"data": {"ok": 1}, "step": 7}]},
        {"name": "big", "columns": {"big": "int"}, "properties": scalar, "value": [{"data": {"big": 2 ** 70}}]},
        {"name": "cm", "properties": {"uxMetricType": "azureml.v2.confusion_matrix"}, "value": [{"data": {"cm": "x"}}]},
    ]}
    response = requests.post(url, json=body, headers={"Authorization": "Bearer " + service.token(RUN)}, timeout=10)
    assert response.status_code == 200
    errors = {e["metric"]["name"]: e["errorResponse"]["error"]["message"] for e in response.json()["errors"]}
    assert set(errors) == {"big", "cm"} and "64 bits" in errors["big"] and "confusion_matrix" in errors["cm"]
    assert [(m.name, m.value, m.step) for m in service.store.get_metrics(RUN)] == [("ok", 1, 7)]


LOG_SCRIPT = r'''
import json
from azureml.core import Run

print("RESULT " + json.dumps(Run.get_context().get_details()["logFiles"]))
'''


def test_get_details_lists_the_runs_log_files_with_read_urls(service: Service) -> None:
    blobs = service.services.blobs
    mine = f"ExperimentRun/dcid.{RUN}/"
    blobs.names.extend([mine + "azureml-logs/70_driver_log.txt", mine + "logs/azureml/executionlogs.txt",
                        mine + "user_logs/std_log.txt", mine + "outputs/model.pkl", mine + "logsbook.txt",
                        f"ExperimentRun/dcid.{OTHER}/azureml-logs/70_driver_log.txt"])

    log_files = _result(_run_client(service, LOG_SCRIPT, RUN, service.token(RUN)))

    # azureml-logs/ and logs/ from the details route; user_logs/ is azureml-core's own prefix lookup
    assert set(log_files) == {"azureml-logs/70_driver_log.txt", "logs/azureml/executionlogs.txt",
                              "user_logs/std_log.txt"}
    account = blobs.settings.account_name
    for name, url in log_files.items():
        base, _, sas = url.partition("?")
        assert base == f"https://{account}.blob.core.windows.net/azureml/{mine}{name}"
        assert "sp=r&" in sas and "sig=" in sas  # read only
    by_id = requests.get(f"{service.url}/history/v1.0{WS}/experimentids/{experiment_id(EXPERIMENT)}/runs/{RUN}/details",
                         headers={"Authorization": "Bearer " + service.token(RUN)}, timeout=10)
    assert by_id.status_code == 200 and set(by_id.json()["logFiles"]) == {"azureml-logs/70_driver_log.txt",
                                                                          "logs/azureml/executionlogs.txt"}
