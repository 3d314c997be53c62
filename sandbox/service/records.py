"""The metrics a run logs: checked before they are stored, shown as Azure does.

A run is untrusted: every metric it posts (the metric and MLflow routes) goes through :func:`check_metric`,
which returns the row to store or raises :class:`BadRecord` with the reason; the store skips a bad one
and reports it (:class:`RejectedRecord`), so one bad ``run.log`` never reaches SQLite half-converted.
(Tags and properties are checked by ``sandbox.run_definition.validate_tags``.)

Metric values keep Python's ``nan``/``inf`` in memory (azureml-core's ``get_metrics()`` returns floats);
they are stored as strict JSON (:func:`encode_value`) and shown as Azure's service sends them:
the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"`` (:func:`present`; azureml-core turns them back
into floats with ``float(value)`` for float cells).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Any

#: Metric kinds the runtime writes (``run.log``, ``log_list``, ``log_row``, ``log_table``, ``log_image`` and
#: the structured ``log_confusion_matrix``-style kinds).
METRIC_TYPES = frozenset({"scalar", "list", "row", "table", "image", "confusion_matrix", "accuracy_table",
                          "residuals", "predictions"})
MAX_METRIC_NAME = 255
MAX_DESCRIPTION = 4096
#: The service's bound on one metric value as stored JSON.
MAX_VALUE_BYTES = 1024 * 1024
MAX_DEPTH = 32
#: azureml-core refuses numbers over 64 bits (AZUREML_MAX_NUMBER_SIZE_IN_BITS).
INT64 = (-(2 ** 63), 2 ** 63 - 1)
_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


class BadRecord(ValueError):
    """A metric that cannot be stored; the message says which field and why."""


@dataclass(frozen=True)
class RejectedRecord:
    """One skipped record: its place in the batch, its kind and the reason, for the caller's answer."""

    position: int
    kind: str
    reason: str

    def __str__(self) -> str:
        return f"Run history record {self.position} ({self.kind}) was not stored: {self.reason}"


@dataclass(frozen=True)
class MetricRow:
    """A checked metric, converted for the metrics table."""

    name: str
    type: str
    value_json: str
    step: int | None
    time: float
    description: str


def _text(field: str, value: Any, limit: int, *, empty: bool = False) -> str:
    if not isinstance(value, str) or len(value) > limit or (not value and not empty):
        raise BadRecord(f"{field}={_show(value)} must be a {'' if empty else 'non-empty '}string of at most "
                        f"{limit} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRecord(f"{field}={_show(value)} is not valid UTF-8 text") from None
    return value


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_value(value: Any, depth: int = 0) -> None:
    """Plain JSON data only: bounded nesting, int64 integers, UTF-8 strings, string keys."""
    if depth > MAX_DEPTH:
        raise BadRecord(f"value is nested deeper than {MAX_DEPTH} levels")
    if value is None or isinstance(value, bool | float):
        return
    if isinstance(value, int):
        if not INT64[0] <= value <= INT64[1]:
            raise BadRecord(f"value {_show(value)} does not fit in 64 bits (Azure refuses it too)")
    elif isinstance(value, str):
        _text("value", value, MAX_VALUE_BYTES, empty=True)
    elif isinstance(value, list):
        for item in value:
            _check_value(item, depth + 1)
    elif isinstance(value, dict):
        for key, item in value.items():
            _text("a column name", key, MAX_METRIC_NAME)
            _check_value(item, depth + 1)
    else:
        raise BadRecord(f"value {_show(value)} of type {type(value).__name__} is not JSON data")


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float)


def _check_shape(kind: str, value: Any) -> None:
    """The shape each logging call produces (a scalar for ``log``, a list for ``log_list``, ...)."""
    if kind == "scalar" and not _is_scalar(value):
        raise BadRecord(f"a scalar metric needs a number, string, bool or None, not {_show(value)}")
    if kind == "list" and not (isinstance(value, list) and all(_is_scalar(v) for v in value)):
        raise BadRecord(f"a list metric needs a list of scalars, not {_show(value)}")
    if kind == "row" and not (isinstance(value, dict) and all(_is_scalar(v) for v in value.values())):
        raise BadRecord(f"a row metric needs columns of scalars, not {_show(value)}")
    if kind == "table" and not (isinstance(value, dict) and all(
            _is_scalar(v) or (isinstance(v, list) and all(_is_scalar(x) for x in v)) for v in value.values())):
        raise BadRecord(f"a table metric needs columns of lists of scalars, not {_show(value)}")
    if kind == "image":
        _text("value", value, 4096)


def check_metric(record: dict[str, Any], now: float | None = None) -> MetricRow:
    """A metric record as a row to insert, or :class:`BadRecord` naming the bad field."""
    name = _text("name", record.get("name"), MAX_METRIC_NAME)
    kind = record.get("type", "scalar")
    if kind not in METRIC_TYPES:
        raise BadRecord(f"type={_show(kind)} is not a metric type; expected one of {sorted(METRIC_TYPES)}")
    value = record.get("value")
    _check_value(value)
    _check_shape(kind, value)
    value_json = json.dumps(encode_value(value), allow_nan=False)
    if len(value_json) > MAX_VALUE_BYTES:
        raise BadRecord(f"value is {len(value_json)} bytes as JSON; at most {MAX_VALUE_BYTES} are stored")
    step = record.get("step")
    if step is not None and (not isinstance(step, int) or isinstance(step, bool) or not INT64[0] <= step <= INT64[1]):
        raise BadRecord(f"step={_show(step)} must be a whole number (int) or None")
    logged = record.get("time", now if now is not None else time.time())
    if not isinstance(logged, int | float) or isinstance(logged, bool) or not math.isfinite(logged):
        raise BadRecord(f"time={_show(logged)} must be a finite unix time")
    description = record.get("description") or ""
    _text("description", description, MAX_DESCRIPTION, empty=True)
    return MetricRow(name, kind, value_json, step, float(logged), description)


# -- NaN and infinities ---------------------------------------------------------------------

def encode_value(value: Any) -> Any:
    """JSON-safe form for storage: ``nan`` -> ``{"$nonfinite": "NaN"}``; a dict that looks like a marker is
    wrapped in ``{"$dict": ...}`` so no logged value can turn into a float when read back."""
    if isinstance(value, float) and not math.isfinite(value):
        return {"$nonfinite": _non_finite_name(value)}
    if isinstance(value, list):
        return [encode_value(v) for v in value]
    if isinstance(value, dict):
        encoded = {k: encode_value(v) for k, v in value.items()}
        return {"$dict": encoded} if len(encoded) == 1 and next(iter(encoded)) in ("$nonfinite", "$dict") else encoded
    return value


def decode_value(value: Any) -> Any:
    """Inverse of :func:`encode_value` (values stored by older versions are plain JSON and pass through)."""
    if isinstance(value, list):
        return [decode_value(v) for v in value]
    if isinstance(value, dict):
        if len(value) == 1 and value.get("$nonfinite") in _NON_FINITE:
            return _NON_FINITE[value["$nonfinite"]]
        if len(value) == 1 and isinstance(value.get("$dict"), dict):
            return {k: decode_value(v) for k, v in value["$dict"].items()}
        return {k: decode_value(v) for k, v in value.items()}
    return value


def present(value: Any) -> Any:
    """As Azure's service sends metric values: ``nan``/``inf``/``-inf`` as ``"NaN"``/``"Infinity"``/``"-Infinity"``."""
    if isinstance(value, float) and not math.isfinite(value):
        return _non_finite_name(value)
    if isinstance(value, list):
        return [present(v) for v in value]
    if isinstance(value, dict):
        return {k: present(v) for k, v in value.items()}
    return value


def _non_finite_name(value: float) -> str:
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


# -- reading back --------------------------------------------------------------------------

@dataclass(frozen=True)
class Metric:
    name: str
    type: str
    value: Any
    time: float
    step: int | None = None
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The series entry the API sends, NaN and infinities as Azure sends them."""
        return {"name": self.name, "type": self.type, "value": present(self.value), "time": self.time,
                "step": self.step}


def metrics_summary(metrics: list[Metric]) -> dict[str, Any]:
    """``get_metrics()``'s shape: a scalar logged once is a value, logged several times a list; log_list a
    list; log_row/log_table a dict of columns; an image its artifact path. NaN and infinities as Azure's
    service sends them (``"NaN"``, ``"Infinity"``, ``"-Infinity"``), so the result is valid JSON."""
    grouped: dict[str, list[Metric]] = {}
    for metric in metrics:
        grouped.setdefault(metric.name, []).append(metric)
    result: dict[str, Any] = {}
    for name, items in grouped.items():
        kind = items[0].type
        items = [m for m in items if m.type == kind]  # azureml-core skips values logged with another type
        if kind == "scalar":
            values = [m.value for m in items]
            result[name] = values[0] if len(values) == 1 else values
        elif kind == "list":
            merged: list[Any] = []
            for m in items:
                merged += list(m.value)
            result[name] = merged
        elif kind == "row":
            table: dict[str, list[Any]] = {}
            for m in items:
                for column, value in m.value.items():
                    table.setdefault(column, []).append(value)
            result[name] = table
        elif kind == "table":
            table = {}
            for m in items:
                for column, values in m.value.items():
                    table.setdefault(column, []).extend(values if isinstance(values, list) else [values])
            result[name] = table
        else:
            result[name] = items[-1].value
    return present(result)
