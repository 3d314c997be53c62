"""What an untrusted run cannot do through the run-side routes (history, metrics, artifacts, MLflow): write
with the token of a run that has finished, make unbounded child runs, or make the service hold unbounded
bytes in MLflow's in-memory state.

The service app runs in-process (``fastapi.testclient``) over a real SqliteRunStore; no Docker, no Azurite:
every refusal here happens before the blob store is touched.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient

from sandbox.config import Settings
from sandbox.run_definition import RunDefinition, RunStatus
from sandbox.service import store as store_module
from sandbox.service.api import Services, create_api
from sandbox.service.routes.common import WORKSPACE_SCOPE
from sandbox.service.routes.mlflow import TRACKING_ROOT
from sandbox.service.routes.mlflow.state import MlflowState
from sandbox.service.store import SqliteRunStore, experiment_id

SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"
RESOURCE_GROUP = "aml-sandbox-rg"
WORKSPACE = "aml-sandbox-ws"
EXPERIMENT = "exp"
RUN = "exp_1700000000_aaaaaaaa"
STACK_TOKEN = "stack-token-" + "x" * 32
SCOPE = dict(subscription_id=SUBSCRIPTION, resource_group=RESOURCE_GROUP, workspace_name=WORKSPACE)
WS = WORKSPACE_SCOPE.format(**SCOPE)
HISTORY = f"/history/v1.0{WS}/experiments/{EXPERIMENT}/runs"
MLFLOW = TRACKING_ROOT.format(**SCOPE) + "/api/2.0/mlflow"


class _NoBlobs:
    """The blob store: a route that reaches it here has gone past a refusal it should have made."""

    def __init__(self, home: Path) -> None:
        self.settings = Settings(home=home)

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the blob store was used ({name}) by a request that should have been refused")


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    store = SqliteRunStore(tmp_path / "runs.db")
    store.create_run(RunDefinition(
        run_id=RUN, experiment=EXPERIMENT,
        workspace={"name": WORKSPACE, "subscription_id": SUBSCRIPTION, "resource_group": RESOURCE_GROUP},
        script="train.py", arguments=[], compute_target="cpu-cluster", environment={"name": "env"},
        image="aml-sandbox/azureml:abc", snapshot_id="0f8fad5b-d9cb-469f-a165-70867728950e"))
    store.set_status(RUN, RunStatus.RUNNING)
    executor = SimpleNamespace(settings=SimpleNamespace(home=tmp_path, service_port=0))
    services = Services(store, executor, runner=None, blobs=_NoBlobs(tmp_path),  # type: ignore[arg-type]
                        token=STACK_TOKEN)
    with TestClient(create_api(services, allowed_hosts={"testserver"})) as test_client:
        yield test_client
    store.close()


def _services(client: TestClient) -> Services:
    return client.app.state.services  # type: ignore[attr-defined,no-any-return]


def _auth(client: TestClient, run_id: str = RUN) -> dict[str, str]:
    record = _services(client).store.get_run(run_id)
    token = _services(client).run_tokens.issue(run_id, EXPERIMENT, root_run_id=record.root_run_id)
    return {"Authorization": f"Bearer {token}"}


def _scalar(name: str) -> dict[str, Any]:
    return {"values": [{"name": name, "columns": {name: "double"}, "properties": {"uxMetricType": "azureml.v1.scalar"},
                        "value": [{"data": {name: 1.0}}]}]}


#: Every route a run writes through, as (method, path, JSON body or raw bytes).
WRITES: list[tuple[str, str, Any]] = [
    ("PATCH", f"{HISTORY}/{RUN}", {"runId": RUN, "tags": {"late": "1"}}),
    ("PATCH", f"/history/v1.0{WS}/experimentids/{experiment_id(EXPERIMENT)}/runs/{RUN}",
     {"runId": RUN, "properties": {"late": "1"}}),
    ("PATCH", f"{HISTORY}/late-child", {"runId": "late-child", "parentRunId": RUN}),
    ("POST", f"{HISTORY}/{RUN}/events", {"name": "Microsoft.MachineLearning.Run.Error", "data": {"RunId": RUN}}),
    ("POST", f"/metric/v2.0{WS}/runs/{RUN}/batch", _scalar("late")),
    ("POST", f"/artifact/v2.0{WS}/artifacts/batch/metadata/ExperimentRun/dcid.{RUN}",
     {"paths": [{"path": "outputs/late.txt"}]}),
    ("POST", f"{MLFLOW}/runs/log-metric", {"run_id": RUN, "key": "late", "value": 1.0, "timestamp": 1, "step": 0}),
    ("POST", f"{MLFLOW}/runs/log-parameter", {"run_id": RUN, "key": "late", "value": "1"}),
    ("POST", f"{MLFLOW}/runs/set-tag", {"run_id": RUN, "key": "late", "value": "1"}),
    ("POST", f"{MLFLOW}/runs/log-batch", {"run_id": RUN, "params": [{"key": "late", "value": "1"}]}),
    ("POST", f"{MLFLOW}/runs/update", {"run_id": RUN, "status": "FINISHED", "run_name": "late"}),
    ("POST", f"{MLFLOW}/runs/create", {"experiment_id": experiment_id(EXPERIMENT)}),
    ("POST", f"{MLFLOW}/logged-models", {"source_run_id": RUN, "name": "late"}),
    ("PUT", f"{MLFLOW.removesuffix('/mlflow')}/mlflow-artifacts/artifacts/ExperimentRun/dcid.{RUN}/late.txt",
     b"late bytes"),
]


def _send(client: TestClient, method: str, path: str, body: Any, headers: dict[str, str]) -> Any:
    if isinstance(body, bytes):
        return client.request(method, path, content=body, headers=headers)
    return client.request(method, path, json=body, headers=headers)


@pytest.mark.parametrize("ended", [RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELED])
@pytest.mark.parametrize(("method", "path", "body"), WRITES,
                         ids=[f"{m} {'/'.join(p.split('/')[-2:])}" for m, p, _b in WRITES])
def test_the_token_of_a_finished_run_no_longer_writes(client: TestClient, ended: RunStatus, method: str, path: str,
                                                       body: Any) -> None:
    store = _services(client).store
    headers = _auth(client)
    store.set_status(RUN, ended)
    before = store.get_run(RUN).to_dict()

    response = _send(client, method, path, body, headers)

    assert response.status_code == 403, response.text
    expected = f"run {RUN} is {ended}: its run token no longer writes"
    answer = response.json()
    if "/mlflow/" in path:  # MLflow's error shape, which its client reads
        assert answer["error_code"] == "PERMISSION_DENIED" and expected in answer["message"]
    else:  # Azure's
        assert answer["error"]["code"] == "Forbidden" and expected in answer["error"]["message"]
    assert store.get_run(RUN).to_dict() == before
    assert store.get_metrics(RUN) == [] and store.get_children(RUN) == []
    assert _services(client).mlflow.all_models() == [] and _services(client).mlflow.status(RUN) is None


def test_the_token_of_a_finished_run_still_reads_it(client: TestClient) -> None:
    store = _services(client).store
    store.add_metrics(RUN, [{"name": "loss", "type": "scalar", "value": 0.5}])
    headers = _auth(client)
    store.set_status(RUN, RunStatus.COMPLETED)

    assert client.get(f"{HISTORY}/{RUN}", headers=headers).json()["status"] == "Completed"
    full = client.post(f"/metric/v2.0{WS}/runs/{RUN}/full", json={"metricName": "loss"}, headers=headers)
    assert full.status_code == 200, full.text
    got = client.get(f"{MLFLOW}/runs/get", params={"run_id": RUN}, headers=headers)
    assert got.status_code == 200 and got.json()["run"]["info"]["status"] == "FINISHED"


def test_a_child_run_completes_itself_while_its_root_runs_and_not_after(client: TestClient) -> None:
    store = _services(client).store
    created = client.patch(f"{HISTORY}/kid", json={"runId": "kid", "parentRunId": RUN}, headers=_auth(client))
    assert created.status_code == 200, created.text
    child_token = _auth(client, "kid")  # what the child's azureml-core gets from the token route
    complete = {"name": "Microsoft.MachineLearning.Run.Completed", "data": {"RunId": "kid"}}

    assert client.post(f"{HISTORY}/kid/events", json=complete, headers=child_token).status_code == 200
    assert store.get_run("kid").status is RunStatus.COMPLETED
    assert client.patch(f"{HISTORY}/kid", json={"tags": {"after": "child ended"}},
                        headers=child_token).status_code == 200  # the root still runs

    store.set_status(RUN, RunStatus.COMPLETED)
    late = client.patch(f"{HISTORY}/kid", json={"tags": {"late": "1"}}, headers=child_token)
    assert late.status_code == 403 and f"run {RUN} is Completed" in late.json()["error"]["message"]
    assert "late" not in store.get_run("kid").tags


def test_child_runs_per_root_are_bounded_and_the_refusal_names_the_limit(client: TestClient,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "MAX_CHILD_RUNS", 3)
    headers = _auth(client)
    for run_id, parent in (("kid-1", RUN), ("kid-2", RUN), ("grandkid", "kid-1")):  # descendants all count
        answer = client.patch(f"{HISTORY}/{run_id}", json={"runId": run_id, "parentRunId": parent}, headers=headers)
        assert answer.status_code == 200, answer.text

    refused = client.patch(f"{HISTORY}/kid-4", json={"runId": "kid-4", "parentRunId": "kid-2"}, headers=headers)
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"]["code"] == "Conflict"
    assert f"run {RUN} already has 3 child runs" in refused.json()["error"]["message"]
    nested = client.post(f"{MLFLOW}/runs/create", json={}, headers=headers)
    assert nested.status_code == 409 and nested.json()["error_code"] == "RESOURCE_CONFLICT"
    assert "3 child runs" in nested.json()["message"]
    assert len(_services(client).store.list_runs(include_children=True)) == 4


def test_a_plain_get_run_does_not_load_children_and_the_lists_that_show_them_still_do(
        client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    store = _services(client).store
    for number in range(5):
        store.create_child_run(f"kid-{number}", RUN)
    calls: list[dict[str, Any]] = []
    original = store.get_children

    def counting(run_id: str, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return original(run_id, **kwargs)

    monkeypatch.setattr(store, "get_children", counting)
    headers = _auth(client)

    assert client.get(f"{HISTORY}/{RUN}", headers=headers).status_code == 200
    assert client.post(f"/metric/v2.0{WS}/runs/{RUN}/batch", json=_scalar("loss"), headers=headers).status_code == 200
    assert calls == []  # neither the run GET nor a write read the children

    listed = client.get(f"/api/runs/{RUN}", headers={"Authorization": f"Bearer {STACK_TOKEN}"}).json()
    assert [c["runId"] for c in listed["children"]] == [f"kid-{n}" for n in range(5)]
    assert calls == [{"limit": store_module.MAX_LISTED_CHILDREN}]

    pages, token = [], None
    while True:
        params = {"$top": "2", **({"$continuationToken": token} if token else {})}
        page = client.get(f"{HISTORY}/{RUN}/children", params=params, headers=headers).json()
        pages.append([dto["runId"] for dto in page["value"]])
        token = page["continuationToken"]
        if token is None:
            break
    assert pages == [["kid-0", "kid-1"], ["kid-2", "kid-3"], ["kid-4"]]
    bad = client.get(f"{HISTORY}/{RUN}/children", params={"$continuationToken": "x" * 50}, headers=headers)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "BadRequest"


@pytest.mark.parametrize(("route", "body", "named"), [
    ("log-parameter", {"key": "prompt", "value": "p" * 6001}, ["'prompt'", "6000 characters"]),
    ("set-tag", {"key": "notes", "value": "t" * 8001}, ["'notes'", "8000 characters"]),
    ("set-tag", {"key": "k" * 251, "value": "1"}, ["kkk", "250 characters"]),
    ("log-batch", {"params": [{"key": "ok", "value": "1"}, {"key": "big", "value": "b" * 6001}]},
     ["params[1].value", "'big'", "6000 characters"]),
    ("log-batch", {"tags": [{"key": "big", "value": "b" * 8001}]}, ["'big'", "8000 characters"]),
    ("log-metric", {"key": "m" * 251, "value": 1.0, "timestamp": 1, "step": 0}, ["key=", "250 characters"]),
])
def test_mlflow_values_over_mlflows_limits_are_refused_naming_the_key_and_the_limit(
        client: TestClient, route: str, body: dict[str, Any], named: list[str]) -> None:
    response = client.post(f"{MLFLOW}/runs/{route}", json={"run_id": RUN, **body}, headers=_auth(client))

    assert response.status_code == 400, response.text
    answer = response.json()
    assert answer["error_code"] == "INVALID_PARAMETER_VALUE"
    for part in named:
        assert part in answer["message"], answer["message"]
    store = _services(client).store
    assert store.get_run(RUN).tags == {} and store.get_metrics(RUN) == []


def test_mlflow_values_at_mlflows_limits_are_kept(client: TestClient) -> None:
    headers = _auth(client)
    assert client.post(f"{MLFLOW}/runs/log-parameter", json={"run_id": RUN, "key": "p" * 250, "value": "v" * 6000},
                       headers=headers).status_code == 200
    assert client.post(f"{MLFLOW}/runs/set-tag", json={"run_id": RUN, "key": "t", "value": "v" * 8000},
                       headers=headers).status_code == 200
    assert _services(client).store.get_run(RUN).tags == {"p" * 250: "v" * 6000, "t": "v" * 8000}


def test_logged_models_cannot_make_the_service_hold_more_than_its_byte_bound(client: TestClient) -> None:
    state = _services(client).mlflow = MlflowState(max_bytes=400_000)
    headers = _auth(client)
    models = []
    for number in range(3):
        created = client.post(f"{MLFLOW}/logged-models", json={"source_run_id": RUN, "name": f"m{number}"},
                              headers=headers)
        assert created.status_code == 200, created.text
        model_id = created.json()["model"]["info"]["model_id"]
        models.append(model_id)
        for batch in range(2):  # 2 x 10 tags of 8000 characters: about 160 kB per model
            tags = [{"key": f"t{batch}-{i}", "value": "v" * 8000} for i in range(10)]
            answer = client.patch(f"{MLFLOW}/logged-models/{model_id}/tags", json={"tags": tags}, headers=headers)
            assert answer.status_code == 200, answer.text
        assert state.models.bytes <= 400_000

    too_long = client.patch(f"{MLFLOW}/logged-models/{models[-1]}/tags", headers=headers,
                            json={"tags": [{"key": "huge", "value": "v" * 8001}]})
    assert too_long.status_code == 400 and "'huge'" in too_long.json()["message"]
    # The oldest model was forgotten to stay within the bound; the newest are kept whole.
    assert client.get(f"{MLFLOW}/logged-models/{models[0]}", headers=headers).status_code == 404
    newest = client.get(f"{MLFLOW}/logged-models/{models[-1]}", headers=headers).json()["model"]
    assert len(newest["info"]["tags"]) == 20


# -- run events and the bodies of the run history routes ----------------------------------------

def _event(name: str, run_id: str = RUN, **data: Any) -> dict[str, Any]:
    return {"name": f"Microsoft.MachineLearning.Run.{name}", "data": {"RunId": run_id, **data}}


def test_events_per_run_are_bounded_and_a_child_run_still_starts_and_completes(
        client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "MAX_RUN_EVENTS", 4)
    store = _services(client).store
    headers = _auth(client)
    assert client.patch(f"{HISTORY}/kid", json={"runId": "kid", "parentRunId": RUN}, headers=headers).status_code == 200
    for _ in range(4):
        assert client.post(f"{HISTORY}/kid/events", json=_event("Heartbeat", "kid"), headers=headers).status_code == 200

    refused = client.post(f"{HISTORY}/kid/events", json=_event("Warning", "kid"), headers=headers)
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"]["code"] == "Conflict"
    assert "run kid already has 4 run events" in refused.json()["error"]["message"]
    for name in ("Start", "Completed"):  # what child.complete() needs still lands
        answer = client.post(f"{HISTORY}/kid/events", json=_event(name, "kid"), headers=headers)
        assert answer.status_code == 200, answer.text
    assert store.get_run("kid").status is RunStatus.COMPLETED
    assert client.post(f"{HISTORY}/kid/events", json=_event("Error", "kid"), headers=headers).status_code == 409
    assert len(store.get_events("kid")) == 6

    for _ in range(4):
        client.post(f"{HISTORY}/{RUN}/events", json=_event("Heartbeat"), headers=headers)
    late = client.post(f"{HISTORY}/{RUN}/events", json=_event("Error", ErrorResponse={"error": {"message": "x"}}),
                       headers=headers)
    assert late.status_code == 409 and f"run {RUN} already has 4 run events" in late.json()["error"]["message"]
    assert store.get_run(RUN).error is None


def test_an_error_event_keeps_at_most_the_bounded_message(client: TestClient) -> None:
    error = {"error": {"code": "UserError", "message": "m" * (store_module.MAX_ERROR_MESSAGE + 5000)}}
    answer = client.post(f"{HISTORY}/{RUN}/events", json=_event("Error", ErrorResponse=error), headers=_auth(client))
    assert answer.status_code == 200, answer.text
    assert _services(client).store.get_run(RUN).error == {"code": "UserError",
                                                          "message": "m" * store_module.MAX_ERROR_MESSAGE}


def _big_json(size: int) -> bytes:
    return b'{"runId": "' + RUN.encode() + b'", "tags": {"k": "' + b"x" * size + b'"}}'


#: The run history routes that read a body: (method, path, what the refusal calls the body).
BODIES = [("PATCH", f"{HISTORY}/{RUN}", "a run PATCH (CreateRunDto)"),
          ("PATCH", f"/history/v1.0{WS}/experimentids/{experiment_id(EXPERIMENT)}/runs/{RUN}",
           "a run PATCH (CreateRunDto)"),
          ("POST", f"{HISTORY}/{RUN}/events", "a run event (BaseEventDto)")]


@pytest.mark.parametrize("streamed", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize(("method", "path", "what"), BODIES, ids=["patch", "patch-by-id", "event"])
def test_a_history_body_over_the_routes_limit_is_413_naming_the_limit(client: TestClient, method: str, path: str,
                                                                      what: str, streamed: bool) -> None:
    from sandbox.service.routes.bodies import SMALL_BODY

    body = _big_json(SMALL_BODY)
    before = _services(client).store.get_run(RUN).to_dict()
    content: Any = iter([body[i:i + 65536] for i in range(0, len(body), 65536)]) if streamed else body
    response = client.request(method, path, content=content, headers={**_auth(client),
                                                                        "Content-Type": "application/json"})

    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert error["code"] == "RequestEntityTooLarge"
    assert f"larger than {SMALL_BODY} bytes, the limit for {what}" in error["message"]
    assert _services(client).store.get_run(RUN).to_dict() == before and _services(client).store.get_events(RUN) == []


@pytest.mark.parametrize("raw", [b"{not json", b'{"tags": NaN}', b"[1, 2]"], ids=["broken", "nan", "array"])
@pytest.mark.parametrize(("method", "path", "what"), BODIES, ids=["patch", "patch-by-id", "event"])
def test_a_history_body_that_is_not_a_json_object_is_400(client: TestClient, method: str, path: str, what: str,
                                                         raw: bytes) -> None:
    response = client.request(method, path, content=raw, headers={**_auth(client),
                                                                   "Content-Type": "application/json"})

    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "BadRequest" and f"The body of {what}" in error["message"]


@pytest.mark.parametrize(("path", "body"), [
    (f"{HISTORY}/{RUN}", {"runId": RUN, "tags": {"k": ["a"]}}),
    (f"{HISTORY}/{RUN}", {"runId": RUN, "properties": {"k": ["a"]}}),
    (f"{HISTORY}/kid", {"runId": "kid", "parentRunId": RUN, "tags": {"k": ["a"]}}),
], ids=["tags", "properties", "child-tags"])
def test_a_tag_or_property_that_is_not_a_scalar_is_400_naming_it(client: TestClient, path: str,
                                                                   body: dict[str, Any]) -> None:
    field = "tags" if "tags" in body else "properties"
    response = client.patch(path, json=body, headers=_auth(client))

    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "BadRequest" and f"{field}['k']" in error["message"], error["message"]
    store = _services(client).store
    assert store.get_run(RUN).tags == {} and store.get_run(RUN).properties == {} and store.get_children(RUN) == []
