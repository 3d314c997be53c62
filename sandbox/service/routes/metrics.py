"""Azure ML's metrics service (``/metric/v2.0``), as azureml-core's ``Run`` logs and reads metrics.

* ``POST {ws}/runs/{runId}/batch``: ``BatchMetricV2Dto``; each value is stored as the run store's metric
  type (``azureml.v1.scalar`` -> scalar, ``azureml.v1.list`` -> one list element, ``azureml.v1.table`` (and
  ``row``) -> one row, ``azureml.v1.image``/``azureml.v2.image`` -> image), checked by
  ``sandbox.service.records`` (bounded, NaN/inf as Azure); a bad value is skipped and answered in
  ``errors`` (azureml-core logs a warning), the good ones are stored in one transaction. Refused (403)
  once the token's root run has finished (``common.write_claims``).
* ``POST {ws}/runs/{runId}/list`` and ``/full``: the names, then every value of one name
  (``MetricV2Dto``), from which azureml-core's ``get_metrics()`` builds its shapes itself (one value: a
  scalar; several: a list; table rows: ``{column: value}`` or ``{column: [values]}``).
* ``GET /history/v1.0/{ws}/experiments/{name}/runs/{runId}/metricsingest/wait``: ``{}`` at once (values are
  stored when posted; any ``Location`` header would make the client poll for minutes).

Not implemented: the artifact-backed v2 types (``azureml.v2.confusion_matrix``, ``accuracy_table``,
``residuals``, ``predictions``, ``forecast_table``) are answered as errors in the batch; pagination
(one page holds everything); the v1 ``batch/metrics`` route.
"""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from sandbox.service.records import Metric, RejectedRecord, present
from sandbox.service.routes.bodies import SMALL_BODY, read_json_object
from sandbox.service.routes.common import WORKSPACE_SCOPE, AzureError, WriteClaims, run_claims, services
from sandbox.service.routes.history import BY_ID, BY_NAME, authorized_run
from sandbox.service.run_token import RunClaims

router = APIRouter()
Claims = Annotated[RunClaims, Depends(run_claims)]

METRICS = "/metric/v2.0" + WORKSPACE_SCOPE + "/runs/{run_id}"
#: One batch body (azureml-core sends at most 45 metrics per batch; a ``log_list`` is one metric).
#: azureml-core sends at most 45 metrics per batch (a few KiB); these bounds leave room and keep memory small.
MAX_BATCH_BYTES = 2 * 1024 * 1024
MAX_BATCH_VALUES = 100_000
MAX_BATCH_ENTRIES = 10_000
#: Errors named one by one in an answer; the rest are counted in one more entry.
MAX_NAMED_ERRORS = 100
#: ``uxMetricType`` -> the run store's metric type.
UX_TYPES = {"azureml.v1.scalar": "scalar", "azureml.v1.list": "list", "azureml.v1.table": "row",
            "azureml.v1.row": "row", "azureml.v1.image": "image", "azureml.v2.image": "image"}
#: The run store's type -> the ``uxMetricType`` it is read back as.
STORED_TYPES = {"scalar": "azureml.v1.scalar", "list": "azureml.v1.list", "row": "azureml.v1.table",
                "table": "azureml.v1.table", "image": "azureml.v2.image"}
_IDS = uuid.UUID("0b8e4a52-7f43-4d0e-9f0e-2f1f0d6b9a27")


# -- batch ---------------------------------------------------------------------------------------

@router.post(METRICS + "/batch")
async def post_batch(request: Request, run_id: str, claims: WriteClaims) -> dict[str, Any]:
    """Store a ``BatchMetricV2Dto``; answer ``PostRunMetricsResultDto`` (``errors`` lists what was skipped)."""
    authorized_run(request, claims, run_id)
    body = await read_json_object(request, MAX_BATCH_BYTES, "a metrics batch (BatchMetricV2Dto)", non_finite=True)
    entries = body.get("values")
    if not isinstance(entries, list):
        raise AzureError(400, "BadRequest", "A metrics batch needs \"values\": a list of metrics (BatchMetricV2Dto).")
    if len(entries) > MAX_BATCH_ENTRIES:
        raise AzureError(413, "RequestEntityTooLarge", f"A metrics batch holds at most {MAX_BATCH_ENTRIES} metrics, "
                                                       f"not {len(entries)}; send fewer per batch.")
    records, owners, errors = [], [], []
    for entry in entries:
        try:
            converted = _records(entry)
        except ValueError as exc:
            errors.append(_error(entry, str(exc)))
            continue
        if len(records) + len(converted) > MAX_BATCH_VALUES:
            raise AzureError(413, "RequestEntityTooLarge", f"A metrics batch holds at most {MAX_BATCH_VALUES} values; "
                                                           "send fewer per batch.")
        records += converted
        owners += [entry] * len(converted)
    rejected: list[RejectedRecord] = services(request).store.add_metrics(run_id, records)
    errors += [_error(owners[r.position], r.reason) for r in rejected]
    if len(errors) > MAX_NAMED_ERRORS:
        more = len(errors) - MAX_NAMED_ERRORS
        errors = [*errors[:MAX_NAMED_ERRORS], _error({}, f"{more} more metrics were not stored (not named here)")]
    return {"errors": errors}


def _records(entry: Any) -> list[dict[str, Any]]:
    """One ``MetricV2Dto`` of a batch as run-store metric records (ValueError naming what is wrong)."""
    if not isinstance(entry, dict):
        raise ValueError(f"a metric must be a JSON object, not {type(entry).__name__}")
    name = entry.get("name")
    if not isinstance(name, str):
        raise ValueError(f"name={str(name)[:80]!r} must be a string")
    properties = entry.get("properties") if isinstance(entry.get("properties"), dict) else {}
    ux_type = properties.get("uxMetricType", "azureml.v1.scalar")
    kind = UX_TYPES.get(ux_type) if isinstance(ux_type, str) else None
    if kind is None:
        raise ValueError(f"uxMetricType {str(ux_type)[:80]!r} is not supported by the local workspace service "
                         f"(it stores {sorted(UX_TYPES)})")
    values = entry.get("value")
    if not isinstance(values, list):
        raise ValueError("value must be a list of metric values")
    records = []
    for value in values:
        if not isinstance(value, dict) or not isinstance(value.get("data"), dict):
            raise ValueError("each metric value needs \"data\": an object of columns")
        data = value["data"]
        if kind != "row" and name not in data:
            raise ValueError(f"the value's data has no column {name[:80]!r} (the metric's name)")
        cell = data if kind == "row" else data[name]
        record = {"name": name, "type": kind, "value": [cell] if kind == "list" else cell, "step": value.get("step")}
        created = _unix_time(value.get("createdUtc"))
        if created is not None:  # else the time it arrived
            record["time"] = created
        records.append(record)
    return records


def _unix_time(created: Any) -> float | None:
    if isinstance(created, str) and len(created) <= 64:
        try:
            stamp = datetime.fromisoformat(created)
        except ValueError:
            return None
        return stamp.timestamp() if stamp.tzinfo is not None else None
    return None


def _error(entry: Any, message: str) -> dict[str, Any]:
    name = entry.get("name") if isinstance(entry, dict) and isinstance(entry.get("name"), str) else ""
    return {"metric": {"name": name[:255]}, "errorResponse": {"error": {"code": "ValidationError", "message": message}}}


# -- reading -------------------------------------------------------------------------------------

@router.post(METRICS + "/list")
async def list_metrics(request: Request, run_id: str, claims: Claims) -> dict[str, Any]:
    """``PaginatedMetricDefinitionDto``: one definition per name that azureml-core can read back."""
    authorized_run(request, claims, run_id)
    await read_json_object(request, SMALL_BODY, "a metrics listing (ListMetricsDto)")
    store = services(request).store
    value = []
    for name in store.get_metric_names(run_id):
        metric = full_metric(run_id, name, store.get_metrics(run_id, name))
        if metric is not None:
            value.append({"metricKey": {"namespace": None, "name": name}, "columns": metric["columns"]})
    return {"value": value, "continuationToken": None, "nextLink": None}


@router.post(METRICS + "/full")
async def full(request: Request, run_id: str, claims: Claims) -> dict[str, Any]:
    """``MetricV2Dto`` with every value of ``metricName`` (404 when the run has none, as Azure answers)."""
    authorized_run(request, claims, run_id)
    body = await read_json_object(request, SMALL_BODY, "a metric query (RetrieveFullFidelityMetricRequestDto)")
    name = body.get("metricName")
    if not isinstance(name, str) or not 0 < len(name) <= 255:
        raise AzureError(400, "BadRequest", f"metricName={str(name)[:80]!r} must be a metric name (1 to 255 "
                                            "characters).")
    metrics = services(request).store.get_metrics(run_id, name)
    start, end = _unix_time(body.get("startTime")), _unix_time(body.get("endTime"))
    metrics = [m for m in metrics if (start is None or m.time >= start) and (end is None or m.time <= end)]
    metric = full_metric(run_id, name, metrics)
    if metric is None:
        raise AzureError(404, "NotFound", f"Run {run_id!r} has no metric {name!r}.")
    return metric


def full_metric(run_id: str, name: str, metrics: list[Metric]) -> dict[str, Any] | None:
    """The stored values of one name as a ``MetricV2Dto``, or None when none can be read back.

    As azureml-core does, the first value's type is the metric's type and values of another type are left
    out. A stored list (``log_list``) gives one value per element and a stored table (``log_table``) one
    value per row, as azureml-core posts them; a row missing a column gets null for it.
    """
    if not metrics or metrics[0].type not in STORED_TYPES:
        return None
    kind = metrics[0].type
    rows: list[tuple[Metric, dict[str, Any]]] = []
    for metric in (m for m in metrics if m.type == kind):
        if kind == "list":
            rows += [(metric, {name: item}) for item in metric.value]
        elif kind == "row":
            rows.append((metric, dict(metric.value)))
        elif kind == "table":
            columns = {c: (v if isinstance(v, list) else [v]) for c, v in metric.value.items()}
            length = max((len(v) for v in columns.values()), default=0)
            rows += [(metric, {c: (v[i] if i < len(v) else None) for c, v in columns.items()}) for i in range(length)]
        else:
            rows.append((metric, {name: metric.value}))
    if not rows:
        return None
    column_names: list[str] = []
    for _, data in rows:
        column_names += [c for c in data if c not in column_names]
    if kind == "image":
        columns = {name: "Artifact"}
    else:
        columns = {c: _column_type([data.get(c) for _, data in rows]) for c in column_names}
    value = [{"metricId": str(uuid.uuid5(_IDS, f"{run_id}/{name}/{index}")), "createdUtc": _iso(metric.time),
              "step": metric.step, "data": {c: present(data.get(c)) for c in column_names}}
             for index, (metric, data) in enumerate(rows)]
    return {"dataContainerId": f"dcid.{run_id}", "name": name, "columns": columns,
            "properties": {"uxMetricType": STORED_TYPES[kind]}, "namespace": None, "value": value,
            "continuationToken": None, "nextLink": None}


def _column_type(cells: list[Any]) -> str:
    """azureml-core casts ``double`` cells with ``float()``, so only all-number columns are ``double``."""
    present_cells = [c for c in cells if c is not None]
    if not present_cells or len(present_cells) < len(cells):
        return "string" if present_cells else "none"
    if all(isinstance(c, bool) for c in present_cells):
        return "bool"
    if all(isinstance(c, int) and not isinstance(c, bool) for c in present_cells):
        return "int"
    if all(isinstance(c, int | float) and not isinstance(c, bool) for c in present_cells):
        return "double"
    return "string"


def _iso(timestamp: float) -> str:
    if not math.isfinite(timestamp):
        timestamp = 0.0
    return datetime.fromtimestamp(timestamp, tz=UTC).isoformat().replace("+00:00", "Z")


# -- flush ---------------------------------------------------------------------------------------

@router.get(BY_NAME + "/metricsingest/wait")
def ingest_wait_by_name(request: Request, experiment_name: str, run_id: str, claims: Claims) -> dict[str, Any]:
    """Values are stored when posted: nothing to wait for (a plain 200 ``{}``, no polling headers)."""
    authorized_run(request, claims, run_id, experiment_name=experiment_name)
    return {}


@router.get(BY_ID + "/metricsingest/wait")
def ingest_wait_by_id(request: Request, experiment_id: str, run_id: str, claims: Claims) -> dict[str, Any]:
    authorized_run(request, claims, run_id, experiment_uuid=experiment_id)
    return {}
