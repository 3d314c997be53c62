"""MLflow's run and experiment routes, answered from the Azure ML run history (the run store).

An MLflow run inside an Azure ML run IS that run (``MLFLOW_RUN_ID`` = the Azure ML run id, as Azure sets
it): metrics become the run's scalar metrics (step and time kept), tags its tags, and params its tags
too. Azure ML's run history has no params of its own for a v1 run and the issue's users read them with
``run.get_tags()``; Azure's studio shows MLflow params apart, under "Params" (Azure/azureml-examples#1123
also reports that ``run.get_details()`` does not list them), so putting them among the tags is this
emulation's choice, stated in docs/parity.md. ``runs/update`` never finishes an executor's run (every
``mlflow.end_run()`` and interpreter exit sends FINISHED): its status is recorded and answered back.

``runs/create`` (``mlflow.start_run(nested=True)``, or a start without ``MLFLOW_RUN_ID``) makes a child run
of the run named by ``mlflow.parentRunId`` or, without it, of the token's own run: a run token may only act
on its own run tree, and Azure ML shows nested MLflow runs as child runs. A child run's status is its
own: ``end_run()`` completes it.

Not implemented: ``runs/search``, ``runs/delete``/``restore``, ``experiments/create``/``search``,
``metrics/get-history``, params answered by ``runs/get`` after a service restart (they stay in the tags).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from fastapi import APIRouter, Query, Request

from sandbox.service.records import present
from sandbox.service.routes.common import services
from sandbox.service.routes.mlflow.state import mlflow_state
from sandbox.service.routes.mlflow.wire import (
    MAX_BATCH_METRICS,
    MAX_BATCH_PARAMS,
    MAX_BATCH_TAGS,
    MAX_BATCH_TOTAL,
    MAX_PARAM_VALUE,
    MAX_TAG_VALUE,
    MLFLOW_STATUSES,
    Body,
    Claims,
    MlflowError,
    MlflowRoute,
    WriteClaims,
    bad,
    experiment_object,
    int64,
    key_values,
    metric_record,
    run_id_of,
    run_object,
    scoped_run,
    text,
)
from sandbox.service.run_record import ChildRunLimitError, RunEventLimitError, RunRecord, experiment_id

router = APIRouter(route_class=MlflowRoute)
#: The root azureml-mlflow builds for MLflow 2 and 3 clients (plain MLflow uses the tracking URI it is given).
AZUREML_MLFLOW_ROOT = "/mlflow/v2.0/"
#: Values per page of a metric's history (MLflow's own server default is 25,000).
HISTORY_PAGE = 25_000
API = "/api/2.0/mlflow"
#: ``runs/update`` status -> the run event that gives a child run that status.
_CHILD_EVENTS = {"RUNNING": "Start", "FINISHED": "Completed", "FAILED": "Failed", "KILLED": "Canceled"}


def _answer_run(request: Request, record: RunRecord) -> dict[str, Any]:
    store, state = services(request).store, mlflow_state(request)
    record = store.get_run(record.run_id)
    # What end_run() sent for the executor's run, until the executor ends it; a child run's status is its own.
    recorded = state.status(record.run_id) if record.parent_run_id is None and not record.status.is_terminal \
        else None
    answer = run_object(record, store.get_metrics(record.run_id), state.params_of(record.run_id), recorded)
    if request.url.path.startswith(AZUREML_MLFLOW_ROOT):
        answer["info"]["artifact_uri"] = azureml_artifact_uri(request, record)
    return answer


def azureml_artifact_uri(request: Request, record: RunRecord) -> str:
    """What Azure answers azureml-mlflow (the ``/mlflow/v2.0`` root): ``azureml://<host>/mlflow/v2.0/<workspace>/
    experiments/<name>/runs/<id>/artifacts``, which its artifact repository sends to run history's artifact
    routes (``routes/run_artifacts.py``). Plain MLflow gets ``mlflow-artifacts:`` URIs, which it understands."""
    root = request.url.path[:request.url.path.index("/api/2.0/")]
    return f"azureml://{request.url.netloc}{root}/experiments/{record.experiment}/runs/{record.run_id}/artifacts"


@router.get(API + "/runs/get")
def get_run(request: Request, claims: Claims, run_id: str | None = Query(None, max_length=255),
            run_uuid: str | None = Query(None, max_length=255)) -> dict[str, Any]:
    record = scoped_run(request, claims, run_id or run_uuid or "")
    return {"run": _answer_run(request, record)}


@router.get(API + "/metrics/get-history")
def metric_history(request: Request, claims: Claims, metric_key: str = Query(..., min_length=1, max_length=250),
                   run_id: str | None = Query(None, max_length=255), run_uuid: str | None = Query(None, max_length=255),
                   max_results: int = Query(HISTORY_PAGE, ge=1, le=HISTORY_PAGE),
                   page_token: str | None = Query(None, max_length=20)) -> dict[str, Any]:
    """Every scalar value of one metric, oldest first (autolog reads it inside a run it did not start), paged."""
    record = scoped_run(request, claims, run_id or run_uuid or "")
    try:
        start = int(page_token or 0)
    except ValueError:
        raise bad(f"page_token={page_token!r} is not one this service gave; start again without it.") from None
    values = [m for m in services(request).store.get_metrics(record.run_id, metric_key)
              if m.type == "scalar" and isinstance(m.value, int | float) and not isinstance(m.value, bool)]
    page = values[start:start + max_results]
    answer: dict[str, Any] = {"metrics": [
        {"key": m.name, "value": present(float(m.value)), "timestamp": int(m.time * 1000), "step": m.step or 0}
        for m in page]}
    if start + max_results < len(values):
        answer["next_page_token"] = str(start + max_results)
    return answer


@router.post(API + "/runs/update")
def update_run(request: Request, body: Body,
               claims: WriteClaims) -> dict[str, Any]:
    record = scoped_run(request, claims, run_id_of(body))
    status = body.get("status")
    if status is not None and status not in MLFLOW_STATUSES:
        raise bad(f"status={status!r:.80} is not an MLflow run status; expected one of {sorted(MLFLOW_STATUSES)}.")
    end_time = int64(body.get("end_time"), "end_time")
    name = text(body, "run_name", required=False)
    store = services(request).store
    if name:
        _set_tags(request, record, {"mlflow.runName": name})
    if status is not None:
        if record.parent_run_id is None:  # the executor's run: it alone sets the Azure ML status
            mlflow_state(request).record_status(record.run_id, status, end_time)
        elif status in _CHILD_EVENTS and not (status == "RUNNING" and record.started is not None):
            try:
                store.post_event(record.run_id, _CHILD_EVENTS[status])
            except RunEventLimitError as exc:
                raise MlflowError(409, "RESOURCE_CONFLICT", f"Cannot change the run's status: {exc}.") from None
    return {"run_info": _answer_run(request, record)["info"]}


@router.post(API + "/runs/create")
def create_run(request: Request, body: Body,
               claims: WriteClaims) -> dict[str, Any]:
    tags = dict(key_values(body.get("tags"), "tags", MAX_BATCH_TAGS, value_limit=MAX_TAG_VALUE))
    parent = scoped_run(request, claims, tags.get("mlflow.parentRunId") or claims.run_id)
    wanted = body.get("experiment_id")
    if wanted not in (None, "", parent.experiment_id):
        raise MlflowError(403, "PERMISSION_DENIED", f"experiment_id={wanted!r:.80} is not the experiment of run "
                          f"{parent.run_id!r} ({parent.experiment_id}): inside an Azure ML run, MLflow runs are "
                          "created as its child runs, in its experiment.")
    name = text(body, "run_name", required=False)
    store = services(request).store
    try:
        child = store.create_child_run(str(uuid.uuid4()), parent.run_id, name=name, tags=tags or None)
    except ChildRunLimitError as exc:
        raise MlflowError(409, "RESOURCE_CONFLICT", f"Cannot create a nested run: {exc}.") from None
    except ValueError as exc:
        raise bad(str(exc)) from None
    store.post_event(child.run_id, "Start")
    return {"run": _answer_run(request, child)}


@router.post(API + "/runs/log-metric")
def log_metric(request: Request, body: Body,
               claims: WriteClaims) -> dict[str, Any]:
    record = scoped_run(request, claims, run_id_of(body))
    _add_metrics(request, record, [metric_record(body, "metric")])
    return {}


@router.post(API + "/runs/log-parameter")
def log_parameter(request: Request, body: Body,
                  claims: WriteClaims) -> dict[str, Any]:
    record = scoped_run(request, claims, run_id_of(body))
    (key, value), = key_values([body], "param", 1, value_limit=MAX_PARAM_VALUE)
    _set_tags(request, record, {key: value})
    mlflow_state(request).add_params(record.run_id, [key])
    return {}


@router.post(API + "/runs/set-tag")
def set_tag(request: Request, body: Body,
            claims: WriteClaims) -> dict[str, Any]:
    record = scoped_run(request, claims, run_id_of(body))
    (key, value), = key_values([body], "tag", 1, value_limit=MAX_TAG_VALUE)
    _set_tags(request, record, {key: value})
    return {}


@router.post(API + "/runs/delete-tag")
def delete_tag(request: Request, body: Body,
               claims: WriteClaims) -> dict[str, Any]:
    record = scoped_run(request, claims, run_id_of(body))
    key = str(text(body, "key"))
    if key not in record.tags:
        raise MlflowError(404, "RESOURCE_DOES_NOT_EXIST", f"No tag with name: {key} in run with id {record.run_id}")
    services(request).store.remove_tags(record.run_id, [key])
    return {}


@router.post(API + "/runs/log-batch")
def log_batch(request: Request, body: Body,
              claims: WriteClaims) -> dict[str, Any]:
    record = scoped_run(request, claims, run_id_of(body))
    metrics = body.get("metrics") or []
    if not isinstance(metrics, list) or len(metrics) > MAX_BATCH_METRICS:
        raise bad(f"metrics must be a list of at most {MAX_BATCH_METRICS} metrics (MLflow's limit per batch).")
    params = key_values(body.get("params"), "params", MAX_BATCH_PARAMS, value_limit=MAX_PARAM_VALUE)
    tags = key_values(body.get("tags"), "tags", MAX_BATCH_TAGS, value_limit=MAX_TAG_VALUE)
    if len(metrics) + len(params) + len(tags) > MAX_BATCH_TOTAL:
        raise bad(f"A batch may hold at most {MAX_BATCH_TOTAL} metrics, params and tags in all (MLflow's limit).")
    records = [metric_record(m, f"metrics[{i}]") for i, m in enumerate(metrics)]
    relogged = [r for r, m in zip(records, metrics, strict=True) if m.get("model_id")]
    if relogged:  # only MLflow 3's copies for a logged model are checked against the store (no read otherwise)
        kept = {id(r) for r in _new_values(request, record, relogged)} | {id(r) for r in records} - \
            {id(r) for r in relogged}
        records = [r for r in records if id(r) in kept]
    if params or tags:
        _set_tags(request, record, {**dict(params), **dict(tags)})
        mlflow_state(request).add_params(record.run_id, [k for k, _ in params])
    _add_metrics(request, record, records)
    return {}


def _new_values(request: Request, record: RunRecord, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``records`` without those the run already has (same key, value, timestamp and step), as MLflow's store
    ignores them: MLflow 3 logs a run's metrics again, with a ``model_id``, when a model is logged to the run."""
    store = services(request).store
    seen: set[tuple[str, Any, float, int | None]] = set()
    for name in {r["name"] for r in records}:
        seen.update((m.name, m.value, round(m.time, 3), m.step or 0) for m in store.get_metrics(record.run_id, name)
                    if m.type == "scalar")
    fresh = []
    for item in records:
        key = (item["name"], item["value"], round(item["time"], 3), item["step"] or 0)
        if key not in seen:
            seen.add(key)
            fresh.append(item)
    return fresh


@router.post(API + "/runs/log-inputs")
def log_inputs(request: Request, body: Body,
               claims: WriteClaims) -> dict[str, Any]:
    """Accepted and not stored (Azure ML v1 runs have no dataset inputs of MLflow's kind)."""
    scoped_run(request, claims, run_id_of(body))
    return {}


@router.post(API + "/runs/outputs")
def log_outputs(request: Request, body: Body,
                claims: WriteClaims) -> dict[str, Any]:
    """Accepted; the models named are the logged models autolog made (``logged-models``), not stored again."""
    scoped_run(request, claims, run_id_of(body))
    return {}


@router.get(API + "/experiments/get-by-name")
def experiment_by_name(request: Request, claims: Claims,
                       experiment_name: str = Query(..., min_length=1, max_length=255)) -> dict[str, Any]:
    own = scoped_run(request, claims, claims.run_id)
    if experiment_name != own.experiment:
        raise MlflowError(403, "PERMISSION_DENIED", f"The run token of run {own.run_id!r} may read its own "
                          f"experiment {own.experiment!r} only, not {experiment_name!r:.80}.")
    return {"experiment": experiment_object(own.experiment, own.experiment_id, own.created)}


@router.get(API + "/experiments/get")
def get_experiment(request: Request, claims: Claims,
                   experiment_id_: str = Query(..., alias="experiment_id", max_length=255)) -> dict[str, Any]:
    own = scoped_run(request, claims, claims.run_id)
    if experiment_id_ != experiment_id(own.experiment):
        raise MlflowError(403, "PERMISSION_DENIED", f"The run token of run {own.run_id!r} may read its own "
                          f"experiment ({own.experiment_id}) only, not {experiment_id_!r:.80}.")
    return {"experiment": experiment_object(own.experiment, own.experiment_id, own.created)}


def _set_tags(request: Request, record: RunRecord, tags: dict[str, str]) -> None:
    try:
        services(request).store.set_tags(record.run_id, tags)
    except ValueError as exc:
        raise bad(str(exc)) from None


def _add_metrics(request: Request, record: RunRecord, records: list[dict[str, Any]]) -> None:
    rejected = services(request).store.add_metrics(record.run_id, records) if records else []
    if rejected:
        reasons = "; ".join(str(r) for r in rejected[:5])
        raise bad(f"{len(rejected)} of {len(records)} metrics were not stored (the others were): {reasons}")


def now_ms() -> int:
    return int(time.time() * 1000)
