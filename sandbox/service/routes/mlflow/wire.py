"""MLflow's wire format: its error shape, its request fields (checked), its run and experiment objects.

MLflow clients read errors as ``{"error_code": "RESOURCE_DOES_NOT_EXIST", "message": ...}``
(``mlflow.exceptions.RestException``), so every MLflow route answers in that shape, whatever raised
(:class:`MlflowRoute`). Request bodies are JSON as ``mlflow.utils.proto_json_utils.message_to_json``
writes them: int64 fields may come as numbers or as digit strings, doubles as numbers or as
``"NaN"``/``"Infinity"``/``"-Infinity"``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.responses import Response

from sandbox.run_definition import RUN_ID, RunStatus
from sandbox.service.records import INT64, present
from sandbox.service.routes.common import (
    WORKSPACE_SCOPE,
    AzureError,
    require_scope,
    run_claims,
    services,
    write_claims,
)
from sandbox.service.run_record import RunNotFoundError, RunRecord
from sandbox.service.run_token import RunClaims

#: Azure's MLflow tracking root (``azureml-mlflow`` turns ``azureml://<region>.api.azureml.ms/mlflow/v1.0/{ws}``
#: into ``https://<region>.api.azureml.ms/mlflow/v1.0/{ws}``): MLFLOW_TRACKING_URI is the service URL + this.
TRACKING_ROOT = "/mlflow/v1.0" + WORKSPACE_SCOPE
#: Where ``mlflow-artifacts:`` URIs resolve under the tracking URI (``MlflowArtifactsRepository.resolve_uri``).
ARTIFACTS_ROOT = "/api/2.0/mlflow-artifacts/artifacts"
#: A run's ``artifact_uri``: Azure's artifact origin and container for the run, so that the file
#: ``mlflow.log_artifact("a.txt")`` sends lands at ``ExperimentRun/dcid.<run id>/a.txt`` in the ``azureml``
#: container, where the run's other files are.
ARTIFACT_URI = "mlflow-artifacts:/ExperimentRun/dcid.{run_id}"
MAX_BODY_BYTES = 1024 * 1024
#: MLflow's own limits for one ``runs/log-batch`` (``mlflow.utils.validation``).
MAX_BATCH_METRICS, MAX_BATCH_PARAMS, MAX_BATCH_TAGS, MAX_BATCH_TOTAL = 1000, 100, 100, 1000
#: MLflow's own length limits (``mlflow.utils.validation``: ``MAX_ENTITY_KEY_LENGTH``, ``MAX_PARAM_VAL_LENGTH``,
#: ``MAX_TAG_VAL_LENGTH``) for metric, param and tag keys (and run names), param values and tag values.
MAX_KEY = 250
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000

_CODES = {400: "INVALID_PARAMETER_VALUE", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
          404: "RESOURCE_DOES_NOT_EXIST", 409: "RESOURCE_ALREADY_EXISTS", 413: "INVALID_PARAMETER_VALUE",
          422: "INVALID_PARAMETER_VALUE"}
_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
#: Azure ML's run status -> MLflow's (``mlflow.entities.RunStatus``).
_STATUS = {RunStatus.NOT_STARTED: "SCHEDULED", RunStatus.STARTING: "SCHEDULED", RunStatus.PREPARING: "SCHEDULED",
           RunStatus.QUEUED: "SCHEDULED", RunStatus.RUNNING: "RUNNING", RunStatus.FINALIZING: "RUNNING",
           RunStatus.CANCEL_REQUESTED: "RUNNING", RunStatus.COMPLETED: "FINISHED", RunStatus.FAILED: "FAILED",
           RunStatus.CANCELED: "KILLED"}
MLFLOW_STATUSES = frozenset(_STATUS.values())


class MlflowError(AzureError):
    """An error with MLflow's own ``error_code`` (``INVALID_PARAMETER_VALUE``, ...)."""


def error_response(exc: HTTPException) -> JSONResponse:
    code = exc.code if isinstance(exc, MlflowError) else _CODES.get(exc.status_code, "INTERNAL_ERROR")
    return JSONResponse({"error_code": code, "message": str(exc.detail)}, status_code=exc.status_code)


class MlflowRoute(APIRoute):
    """A route that answers every error (a bad token, a bad body, a missing run) in MLflow's error shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def answer(request: Request) -> Response:
            try:
                return await handler(request)
            except HTTPException as exc:
                return error_response(exc)
            except RequestValidationError as exc:
                problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}"
                                     for e in exc.errors()[:5])
                return error_response(MlflowError(400, "INVALID_PARAMETER_VALUE", f"Invalid request: {problems}"))

        return answer


def bad(message: str) -> MlflowError:
    return MlflowError(400, "INVALID_PARAMETER_VALUE", message)


async def json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object, read up to :data:`MAX_BODY_BYTES` (a FastAPI dependency)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise bad(f"The request body is {declared} bytes; an MLflow tracking request may have at most "
                  f"{MAX_BODY_BYTES}. Log fewer values per call.")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise bad(f"The request body is over {MAX_BODY_BYTES} bytes, the limit of an MLflow tracking request.")
        chunks.append(chunk)
    try:
        body = json.loads(b"".join(chunks) or b"{}")
    except (ValueError, RecursionError) as exc:
        raise bad(f"The request body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise bad(f"The request body must be a JSON object, not {type(body).__name__}.")
    return body


#: A handler's checked run token and its JSON body (FastAPI dependencies).
Claims = Annotated[RunClaims, Depends(run_claims)]
Body = Annotated[dict[str, Any], Depends(json_body)]
#: The run token of a handler that writes: refused (403 PERMISSION_DENIED) once the token's root run has finished.
WriteClaims = Annotated[RunClaims, Depends(write_claims)]


# -- fields ---------------------------------------------------------------------------------------

def text(body: dict[str, Any], field: str, *, limit: int = MAX_KEY, required: bool = True,
         empty: bool = False) -> str | None:
    value = body.get(field)
    if value is None and not required:
        return None
    if not isinstance(value, str) or len(value) > limit or (not value and not empty):
        raise bad(f"{field}={_show(value)} must be a {'' if empty else 'non-empty '}string of at most {limit} "
                  "characters.")
    return value


def double(value: Any, field: str) -> float:
    """A proto double as JSON: a number, or ``"NaN"``/``"Infinity"``/``"-Infinity"`` (or a number as a string)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise bad(f"{field}={_show(value)} must be a number.")
    if isinstance(value, str):
        if value in _NON_FINITE:
            return _NON_FINITE[value]
        try:
            return float(value)
        except ValueError:
            raise bad(f"{field}={_show(value)} must be a number.") from None
    return float(value)


def int64(value: Any, field: str, default: int | None = None) -> int | None:
    """A proto int64 as JSON: a whole number or a string of one."""
    if value is None:
        return default
    if isinstance(value, str) and value.lstrip("-").isdigit() and len(value) <= 20:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not INT64[0] <= value <= INT64[1]:
        raise bad(f"{field}={_show(value)} must be a whole number that fits in 64 bits.")
    return value


def run_id_of(body: dict[str, Any]) -> str:
    """``run_id`` (or the older ``run_uuid``) of a request."""
    run_id = body.get("run_id") or body.get("run_uuid")
    if not isinstance(run_id, str) or not run_id:
        raise bad(f"run_id={_show(run_id)} is required: the Azure ML run id (MLFLOW_RUN_ID).")
    return run_id


def key_values(items: Any, field: str, limit: int, *, value_limit: int) -> list[tuple[str, str]]:
    """``[{"key", "value"}, ...]`` (params or tags) as pairs; values as MLflow sends them, strings.

    Keys of at most :data:`MAX_KEY` characters, values of at most ``value_limit`` (:data:`MAX_PARAM_VALUE`
    or :data:`MAX_TAG_VALUE`, MLflow's own): 400 ``INVALID_PARAMETER_VALUE`` naming the key otherwise.
    """
    if items is None:
        return []
    if not isinstance(items, list) or len(items) > limit:
        raise bad(f"{field} must be a list of at most {limit} {{\"key\", \"value\"}} objects; got {_show(items)}.")
    pairs = []
    for position, item in enumerate(items):
        if not isinstance(item, dict):
            raise bad(f"{field}[{position}]={_show(item)} must be an object with key and value.")
        key = item.get("key")
        if isinstance(key, str) and len(key) > MAX_KEY:
            raise bad(f"'{field}[{position}].key' {_show(key)} is {len(key)} characters: it exceeds the maximum "
                      f"length of {MAX_KEY} characters (MLflow's limit for a key); use a shorter key.")
        value = item.get("value", "")
        value = value if isinstance(value, str) else json.dumps(value)
        if len(value) > value_limit:
            raise bad(f"'{field}[{position}].value' of key {_show(key)} is {len(value)} characters: it exceeds the "
                      f"maximum length of {value_limit} characters (MLflow's limit); log longer text as an "
                      "artifact (mlflow.log_text).")
        pairs.append((str(text(item, "key")), value))
    return pairs


def metric_record(item: dict[str, Any], where: str) -> dict[str, Any]:
    """An MLflow metric (``key``, ``value``, ``timestamp`` in ms, ``step``) as a run history metric record."""
    if not isinstance(item, dict):
        raise bad(f"{where}={_show(item)} must be an object with key, value, timestamp and step.")
    timestamp = int64(item.get("timestamp"), f"{where}.timestamp", int(time.time() * 1000))
    return {"name": text(item, "key"), "type": "scalar", "value": double(item.get("value"), f"{where}.value"),
            "time": (timestamp or 0) / 1000, "step": int64(item.get("step"), f"{where}.step", 0)}


def _show(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 80 else shown[:77] + "..."


# -- the run the request names, checked against the caller's run token --------------------------------

def scoped_run(request: Request, claims: RunClaims, run_id: str) -> RunRecord:
    """The run ``run_id`` names: 400 for a malformed id, 404 for an unknown one, 403 outside the token's tree."""
    if not RUN_ID.fullmatch(run_id):
        raise bad(f"run_id={_show(run_id)} is not a run id (a letter or digit, then up to 254 letters, digits, "
                  "'_', '-' or '.').")
    try:
        record = services(request).store.get_run(run_id)
    except RunNotFoundError:
        raise MlflowError(404, "RESOURCE_DOES_NOT_EXIST", f"Run '{run_id}' not found in the local workspace "
                          "(MLFLOW_RUN_ID must be the Azure ML run id of the run this token was issued to).") from None
    require_scope(claims, run_id, record.root_run_id)
    return record


# -- answers ---------------------------------------------------------------------------------------

def millis(timestamp: float | None) -> int | None:
    return None if timestamp is None else int(timestamp * 1000)


def mlflow_status(record: RunRecord) -> str:
    return _STATUS.get(record.status, "RUNNING")


def run_info(record: RunRecord, recorded: tuple[str, int | None] | None = None) -> dict[str, Any]:
    """MLflow's ``RunInfo`` of an Azure ML run; ``recorded``: the (status, end time) MLflow last sent for it."""
    status, end_time = recorded if recorded is not None else (mlflow_status(record), millis(record.ended))
    info: dict[str, Any] = {
        "run_id": record.run_id, "run_uuid": record.run_id, "experiment_id": record.experiment_id,
        "run_name": record.name or str(record.tags.get("mlflow.runName") or record.run_id),
        "user_id": str(record.definition.get("submitted_by") or ""), "status": status,
        "start_time": millis(record.started or record.created),
        "artifact_uri": ARTIFACT_URI.format(run_id=record.run_id), "lifecycle_stage": "active"}
    if end_time is not None:
        info["end_time"] = end_time
    return info


def run_object(record: RunRecord, metrics: list[Any], param_keys: set[str],
               recorded: tuple[str, int | None] | None = None) -> dict[str, Any]:
    """MLflow's ``Run``: its info, the last value of each scalar metric, its params and tags (params are
    kept among the Azure ML run's tags; those logged as params are answered as params)."""
    latest: dict[str, Any] = {}
    for metric in metrics:
        if metric.type == "scalar" and isinstance(metric.value, int | float) and not isinstance(metric.value, bool):
            latest[metric.name] = {"key": metric.name, "value": present(float(metric.value)),
                                   "timestamp": int(metric.time * 1000), "step": metric.step or 0}
    tags = {key: "" if value is None else str(value) for key, value in record.tags.items()}
    return {"info": run_info(record, recorded),
            "data": {"metrics": list(latest.values()),
                     "params": [{"key": k, "value": v} for k, v in tags.items() if k in param_keys],
                     "tags": [{"key": k, "value": v} for k, v in tags.items() if k not in param_keys]},
            "inputs": {}}


def experiment_object(name: str, experiment_id: str, created: float | None) -> dict[str, Any]:
    stamp = millis(created) or 0
    return {"experiment_id": experiment_id, "name": name, "artifact_location": "mlflow-artifacts:/ExperimentRun",
            "lifecycle_stage": "active", "creation_time": stamp, "last_update_time": stamp, "tags": []}
