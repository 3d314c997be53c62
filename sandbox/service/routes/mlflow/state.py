"""What the MLflow routes keep that the run store has no place for: kept in memory, bounded, per app.

* The status ``mlflow.end_run()`` sends for a run the executor owns: recorded and answered back by
  ``runs/get`` (the executor alone finishes an Azure ML run), never written to the run store.
* Which of a run's tags were logged as MLflow params (Azure ML keeps params among the run's tags), so
  ``runs/get`` answers them as params.
* Logged models (MLflow 3's ``logged-models``): autolog creates one, reads it back, uploads its files under
  its ``artifact_uri`` and finalises it within seconds.

All of it is lost when the service restarts; none of it is needed to read a run's metrics, tags or files.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import Request

#: How many runs (and logged models) the state remembers; the oldest are forgotten first.
MAX_ENTRIES = 10_000

_V = TypeVar("_V")


@dataclass
class LoggedModel:
    model_id: str
    experiment_id: str
    name: str
    source_run_id: str
    artifact_uri: str
    created_ms: int
    updated_ms: int
    status: str = "LOGGED_MODEL_PENDING"
    model_type: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "model_id": self.model_id, "experiment_id": self.experiment_id, "name": self.name,
            "artifact_uri": self.artifact_uri, "status": self.status, "creation_timestamp_ms": self.created_ms,
            "last_updated_timestamp_ms": self.updated_ms, "source_run_id": self.source_run_id,
            "lifecycle_stage": "active", "tags": [{"key": k, "value": v} for k, v in self.tags.items()]}
        if self.model_type:
            info["model_type"] = self.model_type
        return {"info": info, "data": {"params": [{"key": k, "value": v} for k, v in self.params.items()],
                                       "metrics": []}}


class MlflowState:
    """Per-app, thread-safe (handlers run in the thread pool), each table bounded by :data:`MAX_ENTRIES`."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.statuses: OrderedDict[str, tuple[str, int | None]] = OrderedDict()
        self.param_keys: OrderedDict[str, set[str]] = OrderedDict()
        self.models: OrderedDict[str, LoggedModel] = OrderedDict()

    def record_status(self, run_id: str, status: str, end_time: int | None) -> None:
        with self.lock:
            _put(self.statuses, run_id, (status, end_time))

    def status(self, run_id: str) -> tuple[str, int | None] | None:
        with self.lock:
            return self.statuses.get(run_id)

    def add_params(self, run_id: str, keys: list[str]) -> None:
        with self.lock:
            _put(self.param_keys, run_id, self.param_keys.get(run_id, set()) | set(keys))

    def params_of(self, run_id: str) -> set[str]:
        with self.lock:
            return set(self.param_keys.get(run_id, set()))

    def add_model(self, model: LoggedModel) -> None:
        with self.lock:
            _put(self.models, model.model_id, model)

    def model(self, model_id: str) -> LoggedModel | None:
        with self.lock:
            return self.models.get(model_id)

    def all_models(self) -> list[LoggedModel]:
        with self.lock:
            return list(self.models.values())


def _put(table: OrderedDict[str, _V], key: str, value: _V) -> None:
    table[key] = value
    table.move_to_end(key)
    while len(table) > MAX_ENTRIES:
        table.popitem(last=False)


def mlflow_state(request: Request) -> MlflowState:
    """The app's :class:`MlflowState` (owned by the app's services, never a module global)."""
    return request.app.state.services.mlflow
