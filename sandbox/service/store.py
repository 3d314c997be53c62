"""Run history: runs, statuses with timestamps, metrics, tags, properties, files, child runs and run events.

:class:`RunStore` is the contract (MLflow's abstract store); :class:`SqliteRunStore` keeps it in a
SQLite file on the stack's volume (survives ``down``/``up``, gone with ``down -v``); the facade's
``sandbox.service.client.RunHistoryClient`` mirrors the read side over HTTP, and the Azure ML routes
(``sandbox.service.routes``) answer azureml-core's own ``Run`` from it.

Every write is one transaction (:meth:`SqliteRunStore._transaction`) that rolls back on any error, so a
failed write never leaves the shared connection inside an open transaction. The metrics a run logs are
checked and converted (``sandbox.service.records``) before ``BEGIN``; a bad one is skipped and returned
to the caller as a :class:`~sandbox.service.records.RejectedRecord`.

Runs the executor submits have no parent; child runs (``run.child_run()`` inside a run) have one, share
its root run id, and their status comes from the run events their azureml-core posts. The executor
never picks up a child run (:meth:`SqliteRunStore.unfinished_runs`). A root run has at most
:data:`MAX_CHILD_RUNS` descendants (:class:`~sandbox.service.run_record.ChildRunLimitError` past that), and
:meth:`SqliteRunStore.get_run` loads a run's children only when ``children`` is read, at most
:data:`MAX_LISTED_CHILDREN` of them (:meth:`SqliteRunStore.get_children` pages through all). A run keeps
at most :data:`MAX_RUN_EVENTS` run events (:class:`~sandbox.service.run_record.RunEventLimitError` past
that, except the one event that starts a child run and the one that ends it), and an error of at most
:data:`MAX_ERROR_MESSAGE` characters.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sandbox.run_definition import RUN_ID, RunDefinition, RunStatus, validate_tags
from sandbox.service.metrics_store import METRICS_SCHEMA, check_metrics, insert_metrics, metric_names, read_metrics
from sandbox.service.records import Metric, RejectedRecord, metrics_summary
from sandbox.service.run_record import (
    ChildRunLimitError,
    PropertyConflictError,
    RunEventLimitError,
    RunNotFoundError,
    RunRecord,
    experiment_id,
)

__all__ = ["ChildRunLimitError", "Metric", "PropertyConflictError", "RunEventLimitError", "RunNotFoundError",
           "RunRecord", "RunStore", "SqliteRunStore", "experiment_id", "metrics_summary"]

class RunStore(ABC):
    """What the run history keeps and answers."""

    @abstractmethod
    def create_run(self, definition: RunDefinition) -> RunRecord: ...

    @abstractmethod
    def create_child_run(self, run_id: str, parent_run_id: str, *, name: str | None = None,
                         target: str | None = None, tags: dict[str, Any] | None = None,
                         properties: dict[str, Any] | None = None) -> RunRecord: ...

    @abstractmethod
    def get_run(self, run_id: str) -> RunRecord: ...

    def run_status(self, run_id: str) -> RunStatus:
        """The run's status alone (RunNotFoundError when there is no such run)."""
        return self.get_run(run_id).status

    @abstractmethod
    def list_runs(self, experiment: str | None = None, *, include_children: bool = False) -> list[RunRecord]: ...

    @abstractmethod
    def get_children(self, run_id: str, *, limit: int | None = None, offset: int = 0) -> list[RunRecord]: ...

    @abstractmethod
    def list_experiments(self) -> list[tuple[str, int]]: ...

    @abstractmethod
    def set_status(self, run_id: str, status: RunStatus, *, error: dict[str, Any] | None = None,
                   exit_code: int | None = None) -> None: ...

    @abstractmethod
    def post_event(self, run_id: str, name: str, *, error: dict[str, Any] | None = None) -> RunRecord: ...

    @abstractmethod
    def add_metrics(self, run_id: str, records: Iterable[Any]) -> list[RejectedRecord]: ...

    @abstractmethod
    def get_metrics(self, run_id: str, name: str | None = None) -> list[Metric]: ...

    @abstractmethod
    def get_metric_names(self, run_id: str) -> list[str]: ...

    @abstractmethod
    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None: ...

    @abstractmethod
    def add_properties(self, run_id: str, properties: dict[str, Any]) -> None: ...

    @abstractmethod
    def add_files(self, run_id: str, names: list[str]) -> None: ...

    @abstractmethod
    def remove_tags(self, run_id: str, keys: list[str]) -> None: ...


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
    exit_code INTEGER
);
CREATE INDEX IF NOT EXISTS runs_by_experiment ON runs (experiment, created);
CREATE TABLE IF NOT EXISTS status_events (
    run_id TEXT NOT NULL,
    status TEXT NOT NULL,
    time REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS status_by_run ON status_events (run_id, time);
CREATE TABLE IF NOT EXISTS run_events (
    run_id TEXT NOT NULL,
    name TEXT NOT NULL,
    time REAL NOT NULL,
    data TEXT
);
""" + METRICS_SCHEMA

#: Columns added after the first release: ``ALTER TABLE runs ADD COLUMN`` on a database that lacks them.
#: (Databases of older versions also have ``history_offset``, no longer used: it stays, with its default.)
_ADDED_COLUMNS = {"parent_run_id": "TEXT", "root_run_id": "TEXT", "name": "TEXT"}

_RUNNING_STATES = {RunStatus.RUNNING}
_TERMINAL = (RunStatus.COMPLETED.value, RunStatus.FAILED.value, RunStatus.CANCELED.value)
#: The status each run event gives a child run (``Microsoft.MachineLearning.Run.<name>``).
EVENT_STATUS = {"Start": RunStatus.RUNNING, "Completed": RunStatus.COMPLETED, "Failed": RunStatus.FAILED,
                "Canceled": RunStatus.CANCELED, "CancelRequested": RunStatus.CANCEL_REQUESTED}
RUN_EVENTS = frozenset({*EVENT_STATUS, "Error", "Warning", "Heartbeat"})
MAX_NAME = 255
#: Child runs (children, grandchildren, ...) one root run may have: a run cannot fill the store with them.
MAX_CHILD_RUNS = 10_000
#: Child runs a run record carries in ``children`` (its page and ``GET /api/runs/{id}``); the history
#: route ``.../children`` pages through all of them.
MAX_LISTED_CHILDREN = 1000
#: Run events one run may post (azureml-core posts a handful per run: Start, Completed or Failed, Error).
MAX_RUN_EVENTS = 1000
#: A run's error: its code and message are kept up to these many characters.
MAX_ERROR_CODE = 255
MAX_ERROR_MESSAGE = 32 * 1024
#: Each run event keeps its own copy of the error it carried, its message cut to this many characters.
MAX_EVENT_MESSAGE = 1024
#: Events that start a child run and end it: accepted past :data:`MAX_RUN_EVENTS` when they move the run on.
_STARTS = {"Start"}
_ENDS = {"Completed", "Failed", "Canceled"}


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
            with self._transaction() as db:
                present = {row["name"] for row in db.execute("PRAGMA table_info(runs)")}
                for column, kind in _ADDED_COLUMNS.items():
                    if column not in present:
                        db.execute(f"ALTER TABLE runs ADD COLUMN {column} {kind}")
                # Runs stored before child runs existed are the roots of their own trees.
                db.execute("UPDATE runs SET root_run_id = run_id WHERE (root_run_id IS NULL OR root_run_id = '') "
                           "AND parent_run_id IS NULL")
                db.execute("CREATE INDEX IF NOT EXISTS runs_by_parent ON runs (parent_run_id, created)")
                db.execute("CREATE INDEX IF NOT EXISTS runs_by_root ON runs (root_run_id)")
                db.execute("CREATE INDEX IF NOT EXISTS events_by_run ON run_events (run_id, time)")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``; ``ROLLBACK`` on any error (a failed ``COMMIT`` too)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    # -- runs --------------------------------------------------------------------------------

    def create_run(self, definition: RunDefinition) -> RunRecord:
        definition.validate()
        now = time.time()
        stored = (json.dumps(definition.to_dict(), allow_nan=False), json.dumps(definition.tags, allow_nan=False),
                  json.dumps(definition.properties, allow_nan=False))
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM runs WHERE run_id = ?", (definition.run_id,)).fetchone():
                raise ValueError(f"run {definition.run_id!r} exists already")
            db.execute(
                "INSERT INTO runs (run_id, experiment, status, target, number, created, definition, tags, properties,"
                " root_run_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (definition.run_id, definition.experiment, RunStatus.STARTING.value, definition.compute_target,
                 self._next_number(definition.experiment), now, *stored, definition.run_id))
            db.execute("INSERT INTO status_events VALUES (?, ?, ?)", (definition.run_id, RunStatus.STARTING.value, now))
        return self.get_run(definition.run_id)

    def create_child_run(self, run_id: str, parent_run_id: str, *, name: str | None = None,
                         target: str | None = None, tags: dict[str, Any] | None = None,
                         properties: dict[str, Any] | None = None) -> RunRecord:
        """A child run of ``parent_run_id`` (same experiment and root), ``NotStarted`` until its Start event."""
        if not isinstance(run_id, str) or not RUN_ID.fullmatch(run_id):
            raise ValueError(f"run id {run_id!r} must be a letter or digit, then up to 254 letters, digits, '_', "
                             "'-' or '.'")
        for label, text in (("name", name), ("target", target)):
            if text is not None and (not isinstance(text, str) or len(text) > MAX_NAME):
                raise ValueError(f"{label}={text!r:.80} must be a string of at most {MAX_NAME} characters")
        tags = validate_tags("tags", tags or {})
        properties = validate_tags("properties", properties or {})
        now = time.time()
        with self._transaction() as db:
            parent = self.get_run(parent_run_id)
            if db.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone():
                raise ValueError(f"run {run_id!r} exists already")
            descendants = db.execute("SELECT COUNT(*) FROM runs WHERE root_run_id = ? AND run_id != ?",
                                     (parent.root_run_id, parent.root_run_id)).fetchone()[0]
            if descendants >= MAX_CHILD_RUNS:
                raise ChildRunLimitError(parent.root_run_id, MAX_CHILD_RUNS)
            db.execute(
                "INSERT INTO runs (run_id, experiment, status, target, number, created, definition, tags, properties,"
                " parent_run_id, root_run_id, name) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, parent.experiment, RunStatus.NOT_STARTED.value, target or parent.target,
                 self._next_number(parent.experiment), now, "{}", json.dumps(tags), json.dumps(properties),
                 parent.run_id, parent.root_run_id, name))
            db.execute("INSERT INTO status_events VALUES (?, ?, ?)", (run_id, RunStatus.NOT_STARTED.value, now))
        return self.get_run(run_id)

    def _next_number(self, experiment: str) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM runs WHERE experiment = ?", (experiment,)).fetchone()[0]) + 1

    def get_run(self, run_id: str) -> RunRecord:
        """The run; its ``children`` (at most :data:`MAX_LISTED_CHILDREN`) are read from the store when first
        used, so a route that does not list them never loads them."""
        with self._lock:
            row = self._db.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if row is None:
                raise RunNotFoundError(run_id)
            events = self._db.execute("SELECT status, time FROM status_events WHERE run_id = ? ORDER BY time",
                                      (run_id,)).fetchall()
            record = self._record(row, [(e["status"], e["time"]) for e in events])
        record.children_loader = lambda: self.get_children(run_id, limit=MAX_LISTED_CHILDREN)
        return record

    def run_status(self, run_id: str) -> RunStatus:
        with self._lock:
            row = self._db.execute("SELECT status FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            raise RunNotFoundError(run_id)
        return RunStatus(row["status"])

    def get_children(self, run_id: str, *, limit: int | None = None, offset: int = 0) -> list[RunRecord]:
        """The run's direct child runs, oldest first: ``limit`` of them (all when None) from ``offset`` on."""
        if (limit is not None and limit < 0) or offset < 0:
            raise ValueError(f"limit={limit} and offset={offset} must not be negative")
        with self._lock:
            rows = self._db.execute("SELECT * FROM runs WHERE parent_run_id = ? ORDER BY created, number "
                                    "LIMIT ? OFFSET ?", (run_id, -1 if limit is None else limit, offset)).fetchall()
        return [self._record(row, []) for row in rows]

    def list_runs(self, experiment: str | None = None, *, include_children: bool = False) -> list[RunRecord]:
        """The experiment's runs (every experiment's when None), newest first; child runs only when asked,
        as ``Experiment.get_runs(include_children=False)`` does."""
        where = [] if include_children else ["parent_run_id IS NULL"]
        args: tuple[Any, ...] = ()
        if experiment is not None:
            where.append("experiment = ?")
            args = (experiment,)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        with self._lock:
            rows = self._db.execute(f"SELECT * FROM runs{clause} ORDER BY created DESC", args).fetchall()
        return [self._record(row, []) for row in rows]

    def list_experiments(self) -> list[tuple[str, int]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT experiment, COUNT(*) AS n FROM runs WHERE parent_run_id IS NULL GROUP BY experiment "
                "ORDER BY MAX(created) DESC").fetchall()
        return [(row["experiment"], row["n"]) for row in rows]

    def unfinished_runs(self) -> list[RunRecord]:
        """The executor's runs that have not finished (child runs are their own run's, never the executor's)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM runs WHERE status NOT IN (?, ?, ?) AND parent_run_id IS NULL ORDER BY created",
                _TERMINAL).fetchall()
        return [self._record(row, []) for row in rows]

    def snapshot_ids_in_use(self) -> set[str]:
        """The snapshots of runs that have not finished (the orphan-snapshot sweep keeps these)."""
        return {str(record.definition.get("snapshot_id")) for record in self.unfinished_runs()}

    def set_status(self, run_id: str, status: RunStatus, *, error: dict[str, Any] | None = None,
                   exit_code: int | None = None) -> None:
        with self._transaction() as db:
            self._set_status(db, run_id, status, error=error, exit_code=exit_code)

    def _set_status(self, db: sqlite3.Connection, run_id: str, status: RunStatus, *,
                    error: dict[str, Any] | None = None, exit_code: int | None = None) -> None:
        """Inside a transaction: the new status with its time, unless the run has finished already."""
        now = time.time()
        updates: dict[str, Any] = {"status": status.value}
        if error is not None:
            updates["error"] = json.dumps(error, allow_nan=False)
        if exit_code is not None:
            updates["exit_code"] = int(exit_code)
        current = self.get_run(run_id)
        if current.status.is_terminal:
            return
        if status in _RUNNING_STATES and current.started is None:
            updates["started"] = now
        if status.is_terminal:
            updates["ended"] = now
        assignments = ", ".join(f"{key} = ?" for key in updates)
        db.execute(f"UPDATE runs SET {assignments} WHERE run_id = ?", (*updates.values(), run_id))
        if status is not current.status:  # a repeated status adds no line to the run's status history
            db.execute("INSERT INTO status_events VALUES (?, ?, ?)", (run_id, status.value, now))

    def post_event(self, run_id: str, name: str, *, error: dict[str, Any] | None = None) -> RunRecord:
        """Record a run event (``Start``, ``Completed``, ``Failed``, ``Canceled``, ``Error``, ...).

        A child run takes its status from the event; a run the executor submitted keeps the status the
        executor gives it (its azureml-core's ``fail()`` posts ``Error`` only). The first error posted stays
        on the run. ValueError for an event name that is not Azure's or an error that is not
        ``{"code": str, "message": str}`` within :data:`MAX_ERROR_CODE` and :data:`MAX_ERROR_MESSAGE`
        characters; :class:`RunEventLimitError` once the run has :data:`MAX_RUN_EVENTS` events, unless the
        event starts a child run that has not started or ends one that has not ended.
        """
        if name not in RUN_EVENTS:
            raise ValueError(f"run event {name!r:.80} is not one of Azure ML's: {sorted(RUN_EVENTS)}")
        data = event_data = None
        if error is not None:
            data = json.dumps(_check_error(error))
            event_data = json.dumps({**error, "message": error["message"][:MAX_EVENT_MESSAGE]})
        with self._transaction() as db:
            record = self.get_run(run_id)
            posted = db.execute("SELECT COUNT(*) FROM run_events WHERE run_id = ?", (run_id,)).fetchone()[0]
            if posted >= MAX_RUN_EVENTS and not _moves_child_on(record, name):
                raise RunEventLimitError(run_id, MAX_RUN_EVENTS)
            db.execute("INSERT INTO run_events VALUES (?, ?, ?, ?)", (run_id, name, time.time(), event_data))
            if data is not None and record.error is None:
                db.execute("UPDATE runs SET error = ? WHERE run_id = ?", (data, run_id))
            if record.parent_run_id is not None and name in EVENT_STATUS:
                self._set_status(db, run_id, EVENT_STATUS[name])
        return self.get_run(run_id)

    def get_events(self, run_id: str) -> list[tuple[str, float]]:
        """The run events posted for the run: (name, unix time), oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT name, time FROM run_events WHERE run_id = ? ORDER BY time",
                                    (run_id,)).fetchall()
        return [(row["name"], row["time"]) for row in rows]

    # -- metrics, tags, properties, files ------------------------------------------------------

    def add_metrics(self, run_id: str, records: Iterable[Any]) -> list[RejectedRecord]:
        """Append metric records (``{"name", "type", "value", "step", "time"}``) in one transaction; a bad one
        is skipped and returned with its reason (``records.check_metric``)."""
        self.get_run(run_id)
        rows, rejected = check_metrics(records)
        with self._transaction() as db:
            insert_metrics(db, run_id, rows)
        return rejected

    def get_metrics(self, run_id: str, name: str | None = None) -> list[Metric]:
        self.get_run(run_id)
        with self._lock:
            return read_metrics(self._db, run_id, name)

    def get_metric_names(self, run_id: str) -> list[str]:
        self.get_run(run_id)
        with self._lock:
            return metric_names(self._db, run_id)

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        """Merge ``tags`` into the run's (a None value is a tag without a value); ValueError naming the entry
        for a bad key or value."""
        validate_tags("tags", tags)
        with self._transaction() as db:
            merged = validate_tags("tags", {**self.get_run(run_id).tags, **tags})
            db.execute("UPDATE runs SET tags = ? WHERE run_id = ?", (json.dumps(merged), run_id))

    def add_properties(self, run_id: str, properties: dict[str, Any]) -> None:
        """Add properties; :class:`PropertyConflictError` when one is set already with another value."""
        validate_tags("properties", properties)
        with self._transaction() as db:
            current = self.get_run(run_id).properties
            clashes = sorted(k for k, v in properties.items() if k in current and current[k] != v)
            if clashes:
                raise PropertyConflictError(clashes)
            merged = validate_tags("properties", {**current, **properties})
            db.execute("UPDATE runs SET properties = ? WHERE run_id = ?", (json.dumps(merged), run_id))

    def add_files(self, run_id: str, names: list[str]) -> None:
        """Add names to the run's file list (the run folder's at its end, and uploads through the routes)."""
        with self._transaction() as db:
            row = db.execute("SELECT files FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if row is None:
                raise RunNotFoundError(run_id)
            listing = sorted(set(json.loads(row["files"]) if row["files"] else []) | set(names))
            db.execute("UPDATE runs SET files = ? WHERE run_id = ?", (json.dumps(listing), run_id))

    def remove_tags(self, run_id: str, keys: list[str]) -> None:
        with self._transaction() as db:
            tags = self.get_run(run_id).tags
            db.execute("UPDATE runs SET tags = ? WHERE run_id = ?",
                       (json.dumps({k: v for k, v in tags.items() if k not in set(keys)}), run_id))

    @staticmethod
    def _record(row: sqlite3.Row, events: list[tuple[str, float]]) -> RunRecord:
        return RunRecord(
            run_id=row["run_id"], experiment=row["experiment"], status=RunStatus(row["status"]),
            target=row["target"], created=row["created"], definition=json.loads(row["definition"]),
            started=row["started"], ended=row["ended"],
            error=json.loads(row["error"]) if row["error"] else None,
            tags=json.loads(row["tags"]), properties=json.loads(row["properties"]),
            files=json.loads(row["files"]) if row["files"] else None,
            exit_code=row["exit_code"], number=row["number"],
            status_history=events, parent_run_id=row["parent_run_id"], root_run_id=row["root_run_id"] or "",
            name=row["name"],
        )


def _check_error(error: Any) -> dict[str, str]:
    """A run's error as the store keeps it: ``{"code", "message"}``, both strings within their bounds."""
    if not isinstance(error, dict) or set(error) != {"code", "message"}:
        raise ValueError(f"error={error!r:.120} must be an object with exactly 'code' and 'message'")
    for field, limit in (("code", MAX_ERROR_CODE), ("message", MAX_ERROR_MESSAGE)):
        value = error[field]
        if not isinstance(value, str) or len(value) > limit:
            raise ValueError(f"error {field}={value!r:.80} must be a string of at most {limit} characters; "
                             "cut it before posting")
    return {"code": error["code"], "message": error["message"]}


def _moves_child_on(record: RunRecord, name: str) -> bool:
    """The event starts a child run that has not started, or ends one that has not ended (each happens once)."""
    if record.parent_run_id is None:
        return False
    if name in _STARTS:
        return record.status is RunStatus.NOT_STARTED
    return name in _ENDS and not record.status.is_terminal
