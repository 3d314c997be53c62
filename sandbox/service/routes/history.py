"""Azure ML's run history service (``/history/v1.0``), as azureml-core's ``Run`` uses it inside a run.

Routes (``{ws}`` = the workspace scope; docs/design/run-history-routes.md sections 1-2):

* ``GET``/``PATCH {ws}/experiments/{name}/runs/{runId}`` and ``.../experimentids/{id}/runs/{runId}``: the
  run (``RunDto``); a PATCH merges ``tags`` (a null value is a tag without a value) and adds
  ``properties`` (immutable once set: 409). A PATCH naming a run that does not exist, with a
  ``parentRunId`` in the caller's tree, creates that child run (``run.child_run()``).
* ``GET .../runs/{runId}/details``: ``RunDetailsDto`` with ``logFiles``, a read URL (SAS) for each of the
  run's files under ``azureml-logs/`` and ``logs/`` (the first :data:`~sandbox.service.routes.artifacts.PAGE_SIZE`
  of each); ``get_details()`` adds ``user_logs/`` and ``system_logs/`` itself.
* ``POST .../runs/{runId}/events``: ``Microsoft.MachineLearning.Run.<Start|Completed|Failed|Canceled|Error|...>``:
  a child run's status; a submitted run's status stays the executor's (its ``fail()`` posts Error only).
  At most ``store.MAX_RUN_EVENTS`` per run (409 past that, but for the event that starts or ends a child run).
* ``GET .../runs/{runId}/children``, ``GET .../runs/{runId}/token`` (refresh), ``GET {ws}/experiments/{name}``
  and ``{ws}/experimentids/{id}``.

Every route needs a run token (401 without one) and acts only on the token's run and the runs of its
tree (403 otherwise, before anything changes); a PATCH or an event is refused (403) once the token's root
run has finished (``common.write_claims``). A root run has at most ``store.MAX_CHILD_RUNS`` child runs
(409 past that); ``.../children`` answers :data:`CHILDREN_PAGE` of them per page (``$top``,
``$continuationToken``). Not implemented: run deletion, ``runs:query``, ``batch/runs``,
tag deletion, ``runcounts``; and a run token cannot create a run outside its own tree.
"""

from __future__ import annotations

import re
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from sandbox.run_definition import EXPERIMENT_NAME, RUN_ID
from sandbox.service.routes.artifacts import read_urls
from sandbox.service.routes.bodies import SMALL_BODY, read_json_object
from sandbox.service.routes.common import (
    WORKSPACE_SCOPE,
    AzureError,
    WriteClaims,
    require_scope,
    run_claims,
    services,
)
from sandbox.service.run_token import LIFETIME_SECONDS, RunClaims
from sandbox.service.store import (
    MAX_ERROR_CODE,
    MAX_ERROR_MESSAGE,
    ChildRunLimitError,
    PropertyConflictError,
    RunEventLimitError,
    RunNotFoundError,
    RunRecord,
)
from sandbox.service.store import experiment_id as id_of_experiment

router = APIRouter()

HISTORY = "/history/v1.0" + WORKSPACE_SCOPE
BY_NAME = HISTORY + "/experiments/{experiment_name}/runs/{run_id}"
BY_ID = HISTORY + "/experimentids/{experiment_id}/runs/{run_id}"
EVENT_PREFIX = "Microsoft.MachineLearning.Run."
#: What a submitted run's RunDto says it is (``Run.type``); child runs made by ``child_run()`` have none.
SCRIPT_RUN_TYPE = "azureml.scriptrun"
#: The run's files ``logFiles`` lists (Azure's run history lists its log folders; azureml-core adds
#: ``user_logs/`` and ``system_logs/`` from the artifact routes).
LOG_PREFIXES = ("azureml-logs/", "logs/")
#: Child runs per page of ``.../children`` (``$top`` asks for fewer, never more).
CHILDREN_PAGE = 500
#: The checked run token of the request (401 without one).
Claims = Annotated[RunClaims, Depends(run_claims)]


# -- finding a run the caller may act on ----------------------------------------------------

def authorized_run(request: Request, claims: RunClaims, run_id: str, *, experiment_name: str | None = None,
                   experiment_uuid: str | None = None) -> RunRecord:
    """The run, when the token may act on it and it belongs to the experiment named in the path.

    403 for a run outside the token's tree, without saying whether it exists; 404 for the token's own
    tree when the run or the experiment does not match.
    """
    if not RUN_ID.fullmatch(run_id):
        raise AzureError(400, "BadRequest", f"{run_id[:80]!r} is not a run id (a letter or digit, then up to 254 "
                                            "letters, digits, '_', '-' or '.')")
    try:
        record: RunRecord = services(request).store.get_run(run_id)
    except RunNotFoundError:
        require_scope(claims, run_id, None)
        raise AzureError(404, "NotFound", f"Run {run_id!r} was not found in the local workspace's run "
                                          "history.") from None
    require_scope(claims, run_id, record.root_run_id)
    if experiment_name is not None and experiment_name != record.experiment:
        raise AzureError(404, "NotFound", f"Run {run_id!r} is not in experiment {experiment_name[:255]!r} (it is in "
                                          f"{record.experiment!r}).")
    if experiment_uuid is not None and experiment_uuid.lower() != record.experiment_id:
        raise AzureError(404, "NotFound", f"Run {run_id!r} is not in experiment id {experiment_uuid[:80]!r} (its "
                                          f"experiment {record.experiment!r} has id {record.experiment_id}).")
    return record


# -- wire shapes ------------------------------------------------------------------------------

def _strings(values: dict[str, Any], *, keep_none: bool) -> dict[str, Any]:
    """Azure's ``{str: str}``: numbers and booleans as text; a tag without a value stays null."""
    return {k: (None if v is None and keep_none else ("" if v is None else str(v))) for k, v in values.items()}


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(timestamp)) + f".{int(timestamp % 1 * 1e6):06d}Z"


def _error(record: RunRecord) -> dict[str, Any] | None:
    if not record.error:
        return None
    inner = record.error.get("error", record.error) if isinstance(record.error, dict) else {}
    return {"error": {"code": str(inner.get("code") or "UserError"), "message": str(inner.get("message") or "")}}


def run_dto(record: RunRecord) -> dict[str, Any]:
    """The run as azureml-core's ``RunDto`` (``rootRunId``, an integer ``runNumber`` and ``dataContainerId``
    are indexed directly by ``_RunBase``)."""
    definition = record.definition or {}
    submitted_by = definition.get("submitted_by")
    return {
        "runId": record.run_id, "rootRunId": record.root_run_id, "parentRunId": record.parent_run_id,
        "runNumber": int(record.number), "experimentId": record.experiment_id, "status": str(record.status),
        "dataContainerId": f"dcid.{record.run_id}", "name": record.name, "displayName": record.name or record.run_id,
        "target": record.target, "createdUtc": _iso(record.created), "startTimeUtc": _iso(record.started),
        "endTimeUtc": _iso(record.ended), "heartbeatEnabled": False, "hidden": False,
        "runType": SCRIPT_RUN_TYPE if record.parent_run_id is None else None,
        "scriptName": definition.get("script"), "properties": _strings(record.properties, keep_none=False),
        "tags": _strings(record.tags, keep_none=True), "error": _error(record),
        "createdBy": {"userName": submitted_by} if isinstance(submitted_by, str) else None,
    }


def run_details(record: RunRecord, log_files: dict[str, str] | None = None) -> dict[str, Any]:
    """``RunDetailsDto``: ``get_details()`` updates ``logFiles`` (file name -> read URL) in place, so it is
    always a dict."""
    definition = record.definition or {}
    environment = definition.get("environment") if isinstance(definition.get("environment"), dict) else {}
    run_definition: dict[str, Any] = {}
    if record.parent_run_id is None and definition:
        run_definition = {"script": definition.get("script"), "command": definition.get("command"),
                          "arguments": [str(a) for a in definition.get("arguments") or []],
                          "target": record.target, "framework": "Python",
                          "environment": {"name": environment.get("name"), "version": environment.get("version")}}
    return {"runId": record.run_id, "target": record.target, "status": str(record.status),
            "startTimeUtc": _iso(record.started), "endTimeUtc": _iso(record.ended), "error": _error(record),
            "warnings": [], "services": {}, "properties": _strings(record.properties, keep_none=False),
            "runDefinition": run_definition, "logFiles": dict(log_files or {})}


def log_files(request: Request, run_id: str) -> dict[str, str]:
    """Read URLs of the run's files under :data:`LOG_PREFIXES`, by name (one listing page of each)."""
    files: dict[str, str] = {}
    for prefix in LOG_PREFIXES:
        files.update(read_urls(request, run_id, prefix))
    return files


# -- runs ---------------------------------------------------------------------------------------

@router.get(BY_NAME)
def get_run_by_name(request: Request, experiment_name: str, run_id: str,
                    claims: Claims) -> dict[str, Any]:
    return run_dto(authorized_run(request, claims, run_id, experiment_name=experiment_name))


@router.get(BY_ID)
def get_run_by_id(request: Request, experiment_id: str, run_id: str,
                  claims: Claims) -> dict[str, Any]:
    return run_dto(authorized_run(request, claims, run_id, experiment_uuid=experiment_id))


@router.patch(BY_NAME)
async def patch_run_by_name(request: Request, experiment_name: str, run_id: str,
                            claims: WriteClaims) -> dict[str, Any]:
    return await _patch(request, claims, run_id, experiment_name=experiment_name)


@router.patch(BY_ID)
async def patch_run_by_id(request: Request, experiment_id: str, run_id: str,
                          claims: WriteClaims) -> dict[str, Any]:
    return await _patch(request, claims, run_id, experiment_uuid=experiment_id)


async def _patch(request: Request, claims: RunClaims, run_id: str, *, experiment_name: str | None = None,
                 experiment_uuid: str | None = None) -> dict[str, Any]:
    """``CreateRunDto``: merge tags, add properties; create the child run when the run is new."""
    body = await read_json_object(request, SMALL_BODY, "a run PATCH (CreateRunDto)")
    if body.get("runId") not in (None, run_id):
        raise AzureError(400, "BadRequest", f"The body's runId {str(body['runId'])[:80]!r} is not the run of the "
                                            f"path ({run_id!r}).")
    tags, properties = body.get("tags") or {}, body.get("properties") or {}
    for what, value in (("tags", tags), ("properties", properties)):
        if not isinstance(value, dict):
            raise AzureError(400, "BadRequest", f"{what} must be a JSON object of strings, not "
                                                f"{type(value).__name__}.")
    store = services(request).store
    try:
        store.get_run(run_id)
    except RunNotFoundError:
        return await _create_child(request, claims, run_id, body, experiment_name, experiment_uuid)
    authorized_run(request, claims, run_id, experiment_name=experiment_name, experiment_uuid=experiment_uuid)
    try:
        if tags:
            store.set_tags(run_id, tags)
        if properties:
            store.add_properties(run_id, properties)
    except PropertyConflictError as exc:
        raise AzureError(409, "Conflict", f"{exc}; a property cannot be changed once it is set (use a tag).") from None
    except ValueError as exc:
        raise AzureError(400, "BadRequest", str(exc)) from None
    return run_dto(store.get_run(run_id))


async def _create_child(request: Request, claims: RunClaims, run_id: str, body: dict[str, Any],
                        experiment_name: str | None, experiment_uuid: str | None) -> dict[str, Any]:
    parent_id = body.get("parentRunId")
    if not isinstance(parent_id, str):
        require_scope(claims, run_id, None)  # 403: a run token makes child runs of its own tree only
        raise AzureError(404, "NotFound", f"Run {run_id!r} was not found; to create a child run, send its "
                                          "parentRunId.")
    parent = authorized_run(request, claims, parent_id, experiment_name=experiment_name,
                            experiment_uuid=experiment_uuid)
    name = body.get("name") if body.get("name") is not None else body.get("displayName")
    try:
        record = services(request).store.create_child_run(
            run_id, parent.run_id, name=name, target=body.get("target"), tags=body.get("tags") or {},
            properties=body.get("properties") or {})
    except ChildRunLimitError as exc:
        raise AzureError(409, "Conflict", f"Cannot create child run {run_id[:80]!r}: {exc}.") from None
    except ValueError as exc:
        raise AzureError(400, "BadRequest", f"Cannot create child run {run_id[:80]!r}: {exc}") from None
    return run_dto(record)


@router.get(BY_NAME + "/details")
def details_by_name(request: Request, experiment_name: str, run_id: str,
                    claims: Claims) -> dict[str, Any]:
    record = authorized_run(request, claims, run_id, experiment_name=experiment_name)
    return run_details(record, log_files(request, record.run_id))


@router.get(BY_ID + "/details")
def details_by_id(request: Request, experiment_id: str, run_id: str,
                  claims: Claims) -> dict[str, Any]:
    record = authorized_run(request, claims, run_id, experiment_uuid=experiment_id)
    return run_details(record, log_files(request, record.run_id))


@router.post(BY_NAME + "/events")
async def post_event(request: Request, experiment_name: str, run_id: str,
                     claims: WriteClaims) -> dict[str, Any]:
    """``BaseEventDto`` ``{timestamp, name, data}``: answered 200 with an empty object."""
    authorized_run(request, claims, run_id, experiment_name=experiment_name)
    body = await read_json_object(request, SMALL_BODY, "a run event (BaseEventDto)")
    name = body.get("name")
    if not isinstance(name, str) or not name.startswith(EVENT_PREFIX):
        raise AzureError(400, "BadRequest", f"The event name {str(name)[:80]!r} is not a run event "
                                            f"('{EVENT_PREFIX}<Start|Completed|Failed|Canceled|Error|...>').")
    data = body.get("data") if isinstance(body.get("data"), dict) else {}
    if data.get("RunId") not in (None, run_id):
        raise AzureError(400, "BadRequest", f"The event's data.RunId {str(data['RunId'])[:80]!r} is not the run of "
                                            f"the path ({run_id!r}).")
    response = data.get("ErrorResponse")
    error = response.get("error") if isinstance(response, dict) else None
    if isinstance(error, dict):
        error = {"code": str(error.get("code") or "UserError")[:MAX_ERROR_CODE],
                 "message": str(error.get("message") or "")[:MAX_ERROR_MESSAGE]}
    elif error is not None:
        error = {"code": "UserError", "message": str(error)[:MAX_ERROR_MESSAGE]}
    try:
        services(request).store.post_event(run_id, name[len(EVENT_PREFIX):], error=error)
    except RunEventLimitError as exc:
        raise AzureError(409, "Conflict", f"Cannot record event {name[:120]!r}: {exc}.") from None
    except ValueError as exc:
        raise AzureError(400, "BadRequest", str(exc)) from None
    return {}


_COUNT = re.compile(r"[0-9]{1,9}", re.ASCII)
Top = Annotated[str | None, Query(alias="$top")]
Continuation = Annotated[str | None, Query(alias="$continuationToken")]


@router.get(BY_NAME + "/children")
def children_by_name(request: Request, experiment_name: str, run_id: str, claims: Claims, top: Top = None,
                     continuation: Continuation = None) -> dict[str, Any]:
    """``PaginatedRunDto`` of the run's direct children (``run.get_children()``), oldest first, paged."""
    record = authorized_run(request, claims, run_id, experiment_name=experiment_name)
    return _children(request, record, top, continuation)


@router.get(BY_ID + "/children")
def children_by_id(request: Request, experiment_id: str, run_id: str, claims: Claims, top: Top = None,
                   continuation: Continuation = None) -> dict[str, Any]:
    record = authorized_run(request, claims, run_id, experiment_uuid=experiment_id)
    return _children(request, record, top, continuation)


def _children(request: Request, record: RunRecord, top: str | None, continuation: str | None) -> dict[str, Any]:
    """One page of at most ``$top`` (and :data:`CHILDREN_PAGE`) children; the continuation token is the offset."""
    if top is not None and not (_COUNT.fullmatch(top) and int(top) > 0):
        raise AzureError(400, "BadRequest", f"$top={top[:20]!r} must be a whole number above 0.")
    if continuation is not None and not _COUNT.fullmatch(continuation):
        raise AzureError(400, "BadRequest", f"$continuationToken={continuation[:40]!r} is not one this service "
                                            "handed out; list the child runs again without it.")
    offset, size = int(continuation or 0), min(int(top or CHILDREN_PAGE), CHILDREN_PAGE)
    page = services(request).store.get_children(record.run_id, limit=size + 1, offset=offset)
    token = str(offset + size) if len(page) > size else None
    return {"value": [run_dto(child) for child in page[:size]], "continuationToken": token, "nextLink": None}


@router.get(BY_NAME + "/token")
def token_by_name(request: Request, experiment_name: str, run_id: str,
                  claims: Claims) -> dict[str, Any]:
    """``TokenResult``: a fresh run token (azureml-core asks when its token has under 95 s left)."""
    return _token(request, authorized_run(request, claims, run_id, experiment_name=experiment_name))


@router.get(BY_ID + "/token")
def token_by_id(request: Request, experiment_id: str, run_id: str,
                claims: Claims) -> dict[str, Any]:
    return _token(request, authorized_run(request, claims, run_id, experiment_uuid=experiment_id))


def _token(request: Request, record: RunRecord) -> dict[str, Any]:
    now = time.time()
    token = services(request).run_tokens.issue(record.run_id, record.experiment, root_run_id=record.root_run_id,
                                               now=now)
    return {"token": token, "expiryTimeUtc": _iso(int(now) + LIFETIME_SECONDS)}


# -- experiments ----------------------------------------------------------------------------------

@router.get(HISTORY + "/experiments/{experiment_name}")
def experiment_by_name(request: Request, experiment_name: str,
                       claims: Claims) -> dict[str, Any]:
    """``ExperimentDto`` of the token's own experiment (a run token reads no other)."""
    if not EXPERIMENT_NAME.fullmatch(experiment_name):
        raise AzureError(400, "BadRequest", f"{experiment_name[:80]!r} is not an experiment name.")
    return _experiment(request, claims, experiment_name)


@router.get(HISTORY + "/experimentids/{experiment_id}")
def experiment_by_id(request: Request, experiment_id: str, claims: Claims) -> dict[str, Any]:
    own = _own_run(request, claims)
    if experiment_id.lower() != own.experiment_id:
        raise AzureError(403, "Forbidden", f"The run token of run {claims.run_id!r} cannot read experiment id "
                                           f"{experiment_id[:80]!r}.")
    return _experiment(request, claims, own.experiment)


def _own_run(request: Request, claims: RunClaims) -> RunRecord:
    try:
        record: RunRecord = services(request).store.get_run(claims.run_id)
    except RunNotFoundError:
        raise AzureError(404, "NotFound", f"The token's run {claims.run_id!r} is gone.") from None
    return record


def _experiment(request: Request, claims: RunClaims, name: str) -> dict[str, Any]:
    own = _own_run(request, claims)
    if own.experiment != name:
        raise AzureError(403, "Forbidden", f"The run token of run {claims.run_id!r} cannot read experiment "
                                           f"{name!r}.")
    return {"experimentId": id_of_experiment(name), "name": name, "description": None, "tags": {},
            "createdUtc": _iso(own.created), "archivedTime": None}
