"""Run history: runs, statuses with timestamps, metrics, tags, properties, files.

:class:`RunStore` is the contract (MLflow's abstract store); :class:`SqliteRunStore` keeps it in a
SQLite file on the stack's volume (survives ``down``/``up``, gone with ``down -v``); the facade's
``sandbox.service.client.RunHistoryClient`` mirrors the read side over HTTP.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandbox.run_definition import RunDefinition, RunStatus


class RunNotFoundError(KeyError):
    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(f"Run {run_id!r} was not found in the local workspace's run history")


@dataclass
class RunRecord:
    run_id: str
    experiment: str
    status: RunStatus
    target: str
    created: float
    definition: dict[str, Any]
    started: float | None = None
    ended: float | None = None
    error: dict[str, Any] | None = None
    tags: dict[str, Any] = field(default_factory=dict)
    properties: dict[str, Any] = field(default_factory=dict)
    files: list[str] | None = None
    exit_code: int | None = None
    history_offset: int = 0
    number: int = 0
    status_history: list[tuple[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "runId": self.run_id,
            "experiment": self.experiment,
            "status": str(self.status),
            "target": self.target,
            "runNumber": self.number,
            "createdUtc": _iso(self.created),
            "startTimeUtc": _iso(self.started),
            "endTimeUtc": _iso(self.ended),
            "error": self.error,
            "tags": self.tags,
            "properties": self.properties,
            "files": self.files,
            "exitCode": self.exit_code,
            "statusHistory": [{"status": s, "time": _iso(t)} for s, t in self.status_history],
            "definition": self.definition,
        }


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(timestamp)) + f".{int(timestamp % 1 * 1e6):06d}Z"


@dataclass(frozen=True)
class Metric:
    name: str
    type: str
    value: Any
    time: float
    step: int | None = None
    description: str = ""


class RunStore(ABC):
    """What the run history keeps and answers."""

    @abstractmethod
    def create_run(self, definition: RunDefinition) -> RunRecord: ...

    @abstractmethod
    def get_run(self, run_id: str) -> RunRecord: ...

    @abstractmethod
    def list_runs(self, experiment: str | None = None) -> list[RunRecord]: ...

    @abstractmethod
    def list_experiments(self) -> list[tuple[str, int]]: ...

    @abstractmethod
    def set_status(self, run_id: str, status: RunStatus, *, error: dict[str, Any] | None = None,
                   exit_code: int | None = None) -> None: ...

    @abstractmethod
    def apply_history(self, run_id: str, records: Iterable[dict[str, Any]], new_offset: int) -> None: ...

    @abstractmethod
    def get_metrics(self, run_id: str) -> list[Metric]: ...

    @abstractmethod
    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None: ...

    @abstractmethod
    def add_properties(self, run_id: str, properties: dict[str, Any]) -> None: ...

    @abstractmethod
    def set_files(self, run_id: str, files: list[str]) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    experiment TEXT NOT NULL,
    status TEXT NOT NULL,
    target TEXT NOT NULL,
    number INTEGER NOT NULL,
    created REAL NOT NULL,
    started REAL,
    ended REAL,
    definition TEXT NOT NULL,
    error TEXT,
    tags TEXT NOT NULL DEFAULT '{}',
    properties TEXT NOT NULL DEFAULT '{}',
    files TEXT,
    exit_code INTEGER,
    history_offset INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS runs_by_experiment ON runs (experiment, created);
CREATE TABLE IF NOT EXISTS status_events (
    run_id TEXT NOT NULL,
    status TEXT NOT NULL,
    time REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS status_by_run ON status_events (run_id, time);
CREATE TABLE IF NOT EXISTS metrics (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    name TEXT NOT NULL,
    type TEXT NOT NULL,
    value TEXT NOT NULL,
    step INTEGER,
    time REAL NOT NULL,
    description TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS metrics_by_run ON metrics (run_id, id);
"""

_RUNNING_STATES = {RunStatus.RUNNING}


class SqliteRunStore(RunStore):
    """The run history in one SQLite file; safe to share between the API and executor threads."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- runs --------------------------------------------------------------------------------

    def create_run(self, definition: RunDefinition) -> RunRecord:
        now = time.time()
        with self._lock:
            if self._db.execute("SELECT 1 FROM runs WHERE run_id = ?", (definition.run_id,)).fetchone():
                raise ValueError(f"run {definition.run_id!r} exists already")
            number = self._db.execute("SELECT COUNT(*) FROM runs WHERE experiment = ?",
                                      (definition.experiment,)).fetchone()[0] + 1
            self._db.execute("BEGIN")
            self._db.execute(
                "INSERT INTO runs (run_id, experiment, status, target, number, created, definition, tags, properties)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (definition.run_id, definition.experiment, RunStatus.STARTING.value, definition.compute_target,
                 number, now, json.dumps(definition.to_dict()), json.dumps(definition.tags),
                 json.dumps(definition.properties)))
            self._db.execute("INSERT INTO status_events VALUES (?, ?, ?)",
                             (definition.run_id, RunStatus.STARTING.value, now))
            self._db.execute("COMMIT")
        return self.get_run(definition.run_id)

    def get_run(self, run_id: str) -> RunRecord:
        with self._lock:
            row = self._db.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if row is None:
                raise RunNotFoundError(run_id)
            events = self._db.execute("SELECT status, time FROM status_events WHERE run_id = ? ORDER BY time",
                                      (run_id,)).fetchall()
        return self._record(row, [(e["status"], e["time"]) for e in events])

    def list_runs(self, experiment: str | None = None) -> list[RunRecord]:
        with self._lock:
            if experiment is None:
                rows = self._db.execute("SELECT * FROM runs ORDER BY created DESC").fetchall()
            else:
                rows = self._db.execute("SELECT * FROM runs WHERE experiment = ? ORDER BY created DESC",
                                        (experiment,)).fetchall()
        return [self._record(row, []) for row in rows]

    def list_experiments(self) -> list[tuple[str, int]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT experiment, COUNT(*) AS n FROM runs GROUP BY experiment ORDER BY MAX(created) DESC").fetchall()
        return [(row["experiment"], row["n"]) for row in rows]

    def unfinished_runs(self) -> list[RunRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM runs WHERE status NOT IN (?, ?, ?) ORDER BY created",
                (RunStatus.COMPLETED.value, RunStatus.FAILED.value, RunStatus.CANCELED.value)).fetchall()
        return [self._record(row, []) for row in rows]

    def set_status(self, run_id: str, status: RunStatus, *, error: dict[str, Any] | None = None,
                   exit_code: int | None = None) -> None:
        now = time.time()
        with self._lock:
            current = self.get_run(run_id)
            if current.status.is_terminal:
                return
            self._db.execute("BEGIN")
            updates = {"status": status.value}
            if status in _RUNNING_STATES and current.started is None:
                updates["started"] = now
            if status.is_terminal:
                updates["ended"] = now
            if error is not None:
                updates["error"] = json.dumps(error)
            if exit_code is not None:
                updates["exit_code"] = exit_code
            assignments = ", ".join(f"{key} = ?" for key in updates)
            self._db.execute(f"UPDATE runs SET {assignments} WHERE run_id = ?", (*updates.values(), run_id))
            self._db.execute("INSERT INTO status_events VALUES (?, ?, ?)", (run_id, status.value, now))
            self._db.execute("COMMIT")

    # -- history -----------------------------------------------------------------------------

    def apply_history(self, run_id: str, records: Iterable[dict[str, Any]], new_offset: int) -> None:
        with self._lock:
            run = self.get_run(run_id)
            tags, properties = dict(run.tags), dict(run.properties)
            self._db.execute("BEGIN")
            for record in records:
                kind = record.get("kind")
                if kind == "metric":
                    self._db.execute(
                        "INSERT INTO metrics (run_id, name, type, value, step, time, description) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (run_id, str(record.get("name")), str(record.get("type", "scalar")),
                         json.dumps(record.get("value")), record.get("step"), float(record.get("time", time.time())),
                         str(record.get("description") or "")))
                elif kind == "tags":
                    tags.update(record.get("values") or {})
                elif kind == "tags_removed":
                    for key in record.get("values") or []:
                        tags.pop(key, None)
                elif kind == "properties":
                    properties.update(record.get("values") or {})
            self._db.execute("UPDATE runs SET tags = ?, properties = ?, history_offset = ? WHERE run_id = ?",
                             (json.dumps(tags), json.dumps(properties), new_offset, run_id))
            self._db.execute("COMMIT")

    def get_metrics(self, run_id: str) -> list[Metric]:
        self.get_run(run_id)
        with self._lock:
            rows = self._db.execute("SELECT * FROM metrics WHERE run_id = ? ORDER BY id", (run_id,)).fetchall()
        return [Metric(r["name"], r["type"], json.loads(r["value"]), r["time"], r["step"], r["description"])
                for r in rows]

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        with self._lock:
            run = self.get_run(run_id)
            self._db.execute("UPDATE runs SET tags = ? WHERE run_id = ?", (json.dumps({**run.tags, **tags}), run_id))

    def add_properties(self, run_id: str, properties: dict[str, Any]) -> None:
        with self._lock:
            run = self.get_run(run_id)
            clashes = sorted(k for k, v in properties.items() if k in run.properties and run.properties[k] != v)
            if clashes:
                raise ValueError(f"Properties are immutable once set: {clashes}")
            self._db.execute("UPDATE runs SET properties = ? WHERE run_id = ?",
                             (json.dumps({**run.properties, **properties}), run_id))

    def set_files(self, run_id: str, files: list[str]) -> None:
        with self._lock:
            self._db.execute("UPDATE runs SET files = ? WHERE run_id = ?", (json.dumps(sorted(files)), run_id))

    @staticmethod
    def _record(row: sqlite3.Row, events: list[tuple[str, float]]) -> RunRecord:
        return RunRecord(
            run_id=row["run_id"], experiment=row["experiment"], status=RunStatus(row["status"]),
            target=row["target"], created=row["created"], definition=json.loads(row["definition"]),
            started=row["started"], ended=row["ended"],
            error=json.loads(row["error"]) if row["error"] else None,
            tags=json.loads(row["tags"]), properties=json.loads(row["properties"]),
            files=json.loads(row["files"]) if row["files"] else None,
            exit_code=row["exit_code"], history_offset=row["history_offset"], number=row["number"],
            status_history=events,
        )


def metrics_summary(metrics: list[Metric]) -> dict[str, Any]:
    """``get_metrics()``'s shape: a scalar logged once is a value, logged several times a list; log_list a
    list; log_row/log_table a dict of columns; an image its artifact path."""
    grouped: dict[str, list[Metric]] = {}
    for metric in metrics:
        grouped.setdefault(metric.name, []).append(metric)
    result: dict[str, Any] = {}
    for name, items in grouped.items():
        kind = items[0].type
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
    return result
