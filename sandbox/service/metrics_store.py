"""The metrics table of the run store: rows in, :class:`~sandbox.service.records.Metric` values out.

Split from ``store.py`` along the metrics seam: these functions work inside the store's transaction
(``SqliteRunStore._transaction``) or under its lock, on its one connection; the values are checked by
``sandbox.service.records`` before any SQL runs.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from typing import Any

from sandbox.service.records import BadRecord, Metric, MetricRow, RejectedRecord, check_metric, decode_value

METRICS_SCHEMA = """
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


def check_metrics(records: Iterable[Any], now: float | None = None) -> tuple[list[MetricRow], list[RejectedRecord]]:
    """Each metric record checked (``records.check_metric``): the rows to insert and the rejected ones."""
    now = time.time() if now is None else now
    rows, rejected = [], []
    for position, record in enumerate(records):
        try:
            if not isinstance(record, dict):
                raise BadRecord(f"a metric must be a JSON object, not {type(record).__name__}")
            rows.append(check_metric(record, now))
        except BadRecord as exc:
            rejected.append(RejectedRecord(position, "metric", str(exc)))
    return rows, rejected


def insert_metrics(db: sqlite3.Connection, run_id: str, rows: list[MetricRow]) -> None:
    """Append checked rows (call inside the store's transaction)."""
    db.executemany(
        "INSERT INTO metrics (run_id, name, type, value, step, time, description) VALUES (?, ?, ?, ?, ?, ?, ?)",
        [(run_id, r.name, r.type, r.value_json, r.step, r.time, r.description) for r in rows])


def read_metrics(db: sqlite3.Connection, run_id: str, name: str | None = None) -> list[Metric]:
    """The run's metrics in the order they were logged (only ``name``'s when given).

    By the time each value was logged (azureml-core's ``createdUtc``, MLflow's ``timestamp``), then by arrival:
    azureml-core sends its batches from a thread pool, so a later batch can arrive first."""
    if name is None:
        rows = db.execute("SELECT * FROM metrics WHERE run_id = ? ORDER BY time, id", (run_id,)).fetchall()
    else:
        rows = db.execute("SELECT * FROM metrics WHERE run_id = ? AND name = ? ORDER BY time, id",
                          (run_id, name)).fetchall()
    return [Metric(r["name"], r["type"], decode_value(json.loads(r["value"])), r["time"], r["step"], r["description"])
            for r in rows]


def metric_names(db: sqlite3.Connection, run_id: str) -> list[str]:
    """The names the run has logged, in the order each first appeared."""
    rows = db.execute("SELECT name, MIN(id) AS first FROM metrics WHERE run_id = ? GROUP BY name ORDER BY first",
                      (run_id,)).fetchall()
    return [row["name"] for row in rows]
