"""What the MLflow routes keep that the run store has no place for: kept in memory, bounded, per app.

* The status ``mlflow.end_run()`` sends for a run the executor owns: recorded and answered back by
  ``runs/get`` (the executor alone finishes an Azure ML run), never written to the run store.
* Which of a run's tags were logged as MLflow params (Azure ML keeps params among the run's tags), so
  ``runs/get`` answers them as params.
* Logged models (MLflow 3's ``logged-models``): autolog creates one, reads it back, uploads its files under
  its ``artifact_uri`` and finalises it within seconds.

All of it is lost when the service restarts; none of it is needed to read a run's metrics, tags or files.
Each table is bounded by its entries (:data:`MAX_ENTRIES`) AND by the bytes its values hold
(:data:`MAX_TABLE_BYTES`, an estimate counting characters plus a fixed overhead per item): the oldest
entries are forgotten first, so no run can make the service hold more, whatever it logs. The values
themselves are bounded by MLflow's own limits before they get here (``wire.key_values``).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from fastapi import Request

#: How many runs (and logged models) the state remembers; the oldest are forgotten first.
MAX_ENTRIES = 10_000
#: The most (estimated) bytes the values of one table may hold; the oldest entries are forgotten first.
MAX_TABLE_BYTES = 32 * 1024 * 1024
#: What one stored item (a dict entry, a set element, a string object) is counted for, besides its characters.
ITEM_OVERHEAD = 100

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

    def size(self) -> int:
        """The bytes it holds, estimated: characters of its strings plus :data:`ITEM_OVERHEAD` per item."""
        texts = (self.model_id, self.experiment_id, self.name, self.source_run_id, self.artifact_uri, self.status,
                 self.model_type or "")
        pairs = [*self.tags.items(), *self.params.items()]
        return (sum(len(t) for t in texts) + sum(len(k) + len(v) for k, v in pairs)
                + ITEM_OVERHEAD * (len(texts) + 2 * len(pairs) + 1))

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


class BoundedTable(Generic[_V]):
    """An ordered table that forgets its oldest entries past ``max_entries`` or ``max_bytes`` (not thread-safe:
    :class:`MlflowState` holds its lock around every call)."""

    def __init__(self, size_of: Callable[[str, _V], int], *, max_entries: int = MAX_ENTRIES,
                 max_bytes: int = MAX_TABLE_BYTES) -> None:
        self._size_of = size_of
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._entries: OrderedDict[str, tuple[_V, int]] = OrderedDict()
        self.bytes = 0

    def put(self, key: str, value: _V) -> None:
        """Store (or re-count, after ``value`` changed in place) ``key`` as the newest entry; forget the oldest
        entries while the table is over either bound."""
        self._forget(key)
        size = self._size_of(key, value)
        self._entries[key] = (value, size)
        self.bytes += size
        while len(self._entries) > self.max_entries or (self.bytes > self.max_bytes and len(self._entries) > 1):
            self._forget(next(iter(self._entries)))

    def get(self, key: str) -> _V | None:
        entry = self._entries.get(key)
        return None if entry is None else entry[0]

    def values(self) -> list[_V]:
        return [value for value, _size in self._entries.values()]

    def __len__(self) -> int:
        return len(self._entries)

    def _forget(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.bytes -= entry[1]


class MlflowState:
    """Per-app, thread-safe (handlers run in the thread pool), each table a :class:`BoundedTable`."""

    def __init__(self, *, max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_TABLE_BYTES) -> None:
        self.lock = threading.RLock()
        self.statuses: BoundedTable[tuple[str, int | None]] = BoundedTable(
            lambda key, _value: len(key) + 3 * ITEM_OVERHEAD, max_entries=max_entries, max_bytes=max_bytes)
        self.param_keys: BoundedTable[set[str]] = BoundedTable(
            lambda key, keys: len(key) + sum(len(k) + ITEM_OVERHEAD for k in keys) + 2 * ITEM_OVERHEAD,
            max_entries=max_entries, max_bytes=max_bytes)
        self.models: BoundedTable[LoggedModel] = BoundedTable(
            lambda _key, model: model.size(), max_entries=max_entries, max_bytes=max_bytes)

    def record_status(self, run_id: str, status: str, end_time: int | None) -> None:
        with self.lock:
            self.statuses.put(run_id, (status, end_time))

    def status(self, run_id: str) -> tuple[str, int | None] | None:
        with self.lock:
            return self.statuses.get(run_id)

    def add_params(self, run_id: str, keys: list[str]) -> None:
        with self.lock:
            self.param_keys.put(run_id, (self.param_keys.get(run_id) or set()) | set(keys))

    def params_of(self, run_id: str) -> set[str]:
        with self.lock:
            return set(self.param_keys.get(run_id) or set())

    def add_model(self, model: LoggedModel) -> None:
        """Store a new model, or count again one whose tags or params changed (call it under :attr:`lock`)."""
        with self.lock:
            self.models.put(model.model_id, model)

    def model(self, model_id: str) -> LoggedModel | None:
        with self.lock:
            return self.models.get(model_id)

    def all_models(self) -> list[LoggedModel]:
        with self.lock:
            return self.models.values()


def mlflow_state(request: Request) -> MlflowState:
    """The app's :class:`MlflowState` (owned by the app's services, never a module global)."""
    return request.app.state.services.mlflow
