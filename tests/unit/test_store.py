"""The run store: one bad record never wedges it; NaN metrics stay valid JSON (issue 16, items 3 and 8)."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from sandbox.run_definition import RunDefinition, RunStatus
from sandbox.service import store as store_module
from sandbox.service.records import decode_value, encode_value
from sandbox.service.store import (
    MAX_ERROR_MESSAGE,
    MAX_EVENT_MESSAGE,
    PropertyConflictError,
    RunEventLimitError,
    SqliteRunStore,
    metrics_summary,
)


def _definition(run_id: str = "exp_1_aaaa") -> RunDefinition:
    return RunDefinition(
        run_id=run_id, experiment="exp",
        workspace={"name": "aml-sandbox-ws", "subscription_id": "00000000-0000-0000-0000-000000000000",
                   "resource_group": "aml-sandbox-rg"},
        script="train.py", arguments=[], compute_target="cpu-cluster", environment={"name": "env"},
        image="aml-sandbox/azureml:abc", snapshot_id="0f8fad5b-d9cb-469f-a165-70867728950e")


@pytest.fixture
def store(tmp_path: Path) -> SqliteRunStore:
    store = SqliteRunStore(tmp_path / "runs.db")
    store.create_run(_definition())
    yield store
    store.close()


def _metric(name: str = "loss", value: Any = 0.5, **fields: Any) -> dict[str, Any]:
    return {"kind": "metric", "name": name, "type": "scalar", "value": value, "time": 1.0, **fields}


def test_a_step_that_is_not_an_int_is_skipped_and_reported_and_the_store_goes_on(store: SqliteRunStore) -> None:
    rejected = store.add_metrics("exp_1_aaaa", [_metric(value=0.1), _metric(value=0.5, step=[3, 100]),
                                                _metric(value=0.2, step=4)])
    assert [(r.position, r.kind) for r in rejected] == [(1, "metric")]
    assert "step=[3, 100] must be a whole number" in str(rejected[0])
    assert [(m.value, m.step) for m in store.get_metrics("exp_1_aaaa")] == [(0.1, None), (0.2, 4)]
    store.set_status("exp_1_aaaa", RunStatus.COMPLETED)  # later writes still work
    store.create_run(_definition("exp_2_bbbb"))
    assert store.get_run("exp_1_aaaa").status is RunStatus.COMPLETED


BAD_RECORDS = [
    ("a list", [1, 2], "must be a JSON object"),
    ("no name", _metric(name=None), "name=None"),
    ("empty name", _metric(name=""), "name=''"),
    ("long name", _metric(name="n" * 300), "name="),
    ("unknown type", _metric(type="exec"), "type='exec'"),
    ("a set-like value", _metric(value={"a": 1}), "a scalar metric needs"),
    ("a huge int", _metric(value=2 ** 80), "does not fit in 64 bits"),
    ("a huge step", _metric(step=2 ** 70), "step="),
    ("a bool step", _metric(step=True), "step=True"),
    ("a text time", _metric(time="now"), "time='now'"),
    ("an infinite time", _metric(time=math.inf), "time=inf"),
    ("a lone surrogate", _metric(name="\ud800"), "not valid UTF-8"),
    ("a huge value", _metric(type="list", value=["x" * 1000] * 2000), "at most 1048576 are stored"),
    ("deep nesting", _metric(type="confusion_matrix", value=json.loads("[" * 100 + "]" * 100)), "nested deeper"),
]


@pytest.mark.parametrize(("record", "reason"), [(r, why) for _, r, why in BAD_RECORDS],
                         ids=[name for name, _, _ in BAD_RECORDS])
def test_a_bad_record_is_skipped_with_its_reason_and_the_good_ones_are_kept(store: SqliteRunStore, record: Any,
                                                                           reason: str) -> None:
    rejected = store.add_metrics("exp_1_aaaa", [record, _metric(value=1.5)])
    assert len(rejected) == 1 and reason in str(rejected[0]), [str(r) for r in rejected]
    assert [m.value for m in store.get_metrics("exp_1_aaaa")] == [1.5]
    assert not store._db.in_transaction


def test_a_failure_inside_a_write_rolls_back_and_the_next_write_works(store: SqliteRunStore) -> None:
    real = sqlite3.Connection.executemany
    calls = {"n": 0}

    def failing_executemany(self: sqlite3.Connection, sql: str, rows: Any) -> Any:
        calls["n"] += 1
        real(self, sql, rows)
        raise sqlite3.OperationalError("disk I/O error")

    db = store._db
    store._db = _Proxy(db, failing_executemany)  # type: ignore[assignment]
    with pytest.raises(sqlite3.OperationalError):
        store.add_metrics("exp_1_aaaa", [_metric(value=9.0)])
    store._db = db
    assert calls["n"] == 1 and not db.in_transaction
    assert store.get_metrics("exp_1_aaaa") == []  # the half-done insert was rolled back
    store.add_metrics("exp_1_aaaa", [_metric(value=1.0)])
    store.set_status("exp_1_aaaa", RunStatus.RUNNING)
    assert [m.value for m in store.get_metrics("exp_1_aaaa")] == [1.0]
    assert store.get_run("exp_1_aaaa").status is RunStatus.RUNNING


def _not_json(name: str) -> None:
    pytest.fail(f"{name} was stored: not valid JSON")


class _Proxy:
    """The store's connection with one method replaced (sqlite3.Connection's methods are read-only)."""

    def __init__(self, db: sqlite3.Connection, executemany: Any) -> None:
        self._db = db
        self._executemany = executemany

    def executemany(self, sql: str, rows: Any) -> Any:
        return self._executemany(self._db, sql, rows)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


def test_nan_and_infinities_are_stored_as_valid_json_and_shown_as_azure_sends_them(store: SqliteRunStore,
                                                                                  tmp_path: Path) -> None:
    store.add_metrics("exp_1_aaaa", [_metric(value=math.nan), _metric(value=math.inf), _metric(value=-math.inf),
                                     _metric("acc", type="list", value=[0.1, math.nan]),
                                     _metric("text", value="NaN")])
    stored = [row[0] for row in sqlite3.connect(tmp_path / "runs.db").execute("SELECT value FROM metrics")]
    for text in stored:
        json.loads(text, parse_constant=_not_json)
    values = [m.value for m in store.get_metrics("exp_1_aaaa")]
    assert math.isnan(values[0]) and values[1:3] == [math.inf, -math.inf] and values[4] == "NaN"
    summary = metrics_summary(store.get_metrics("exp_1_aaaa"))
    assert summary == {"loss": ["NaN", "Infinity", "-Infinity"], "acc": [0.1, "NaN"], "text": "NaN"}
    json.dumps(summary, allow_nan=False)
    series = [m.to_dict()["value"] for m in store.get_metrics("exp_1_aaaa")]
    assert series[:3] == ["NaN", "Infinity", "-Infinity"]


def test_a_logged_dict_that_looks_like_the_nan_marker_comes_back_as_it_was() -> None:
    for value in ({"$nonfinite": "NaN"}, {"$dict": {"a": 1}}, {"a": math.inf}, [{"$nonfinite": "x"}]):
        back = decode_value(json.loads(json.dumps(encode_value(value), allow_nan=False)))
        assert back == value


def test_a_value_logged_with_another_type_is_left_out_of_get_metrics_as_azureml_core_does(
        store: SqliteRunStore) -> None:
    store.add_metrics("exp_1_aaaa", [_metric("m", value=1.0), _metric("m", type="list", value=[2.0]),
                                     _metric("m", value=3.0)])
    assert metrics_summary(store.get_metrics("exp_1_aaaa")) == {"m": [1.0, 3.0]}


def test_properties_are_immutable_and_a_clash_is_refused_whole(store: SqliteRunStore) -> None:
    store.add_properties("exp_1_aaaa", {"p": "1"})
    with pytest.raises(PropertyConflictError, match=r"\['p'\]"):
        store.add_properties("exp_1_aaaa", {"p": "2", "q": "4"})
    store.add_properties("exp_1_aaaa", {"p": "1", "r": "5"})  # the same value again is no change
    assert store.get_run("exp_1_aaaa").properties == {"p": "1", "r": "5"}
    assert not store._db.in_transaction


def test_set_tags_refuses_a_bad_value_naming_it_and_keeps_the_old_tags(store: SqliteRunStore) -> None:
    store.set_tags("exp_1_aaaa", {"a": "1"})
    with pytest.raises(ValueError, match=r"tags\['b'\]"):
        store.set_tags("exp_1_aaaa", {"b": ["x"]})
    assert store.get_run("exp_1_aaaa").tags == {"a": "1"}
    assert not store._db.in_transaction


def test_snapshot_ids_in_use_are_those_of_unfinished_runs(store: SqliteRunStore) -> None:
    assert store.snapshot_ids_in_use() == {"0f8fad5b-d9cb-469f-a165-70867728950e"}
    store.set_status("exp_1_aaaa", RunStatus.FAILED)
    assert store.snapshot_ids_in_use() == set()


# -- child runs, run events, direct metrics (issue 17) ------------------------------------------

def test_a_database_of_an_older_version_gains_the_new_columns_and_keeps_its_runs(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE runs (run_id TEXT PRIMARY KEY, experiment TEXT NOT NULL, status TEXT NOT NULL, target TEXT NOT "
        "NULL, number INTEGER NOT NULL, created REAL NOT NULL, started REAL, ended REAL, definition TEXT NOT NULL, "
        "error TEXT, tags TEXT NOT NULL DEFAULT '{}', properties TEXT NOT NULL DEFAULT '{}', files TEXT, exit_code "
        "INTEGER, history_offset INTEGER NOT NULL DEFAULT 0);"
        "INSERT INTO runs (run_id, experiment, status, target, number, created, definition) "
        "VALUES ('old_1', 'exp', 'Completed', 'cpu-cluster', 1, 1.0, '{}');")
    old.commit()
    old.close()
    store = SqliteRunStore(path)
    try:
        record = store.get_run("old_1")
        assert (record.root_run_id, record.parent_run_id, record.status) == ("old_1", None, RunStatus.COMPLETED)
        child = store.create_child_run("old_1_kid", "old_1", name=">kid")
        assert child.root_run_id == "old_1" and child.number == 2
        assert store.post_event("old_1_kid", "Start").status is RunStatus.RUNNING
        store.add_metrics("old_1_kid", [_metric(value=1.0)])
        assert [m.value for m in store.get_metrics("old_1_kid")] == [1.0]
    finally:
        store.close()
    SqliteRunStore(path).close()  # opening it again changes nothing


def test_a_child_run_shares_its_parents_root_and_is_never_the_executors(store: SqliteRunStore) -> None:
    store.set_status("exp_1_aaaa", RunStatus.RUNNING)
    child = store.create_child_run("kid_1", "exp_1_aaaa", name=">kid", tags={"t": None})
    grandchild = store.create_child_run("kid_2", "kid_1")
    assert (child.status, child.target, child.tags) == (RunStatus.NOT_STARTED, "cpu-cluster", {"t": None})
    assert (grandchild.parent_run_id, grandchild.root_run_id) == ("kid_1", "exp_1_aaaa")
    assert [c.run_id for c in store.get_run("exp_1_aaaa").children] == ["kid_1"]
    assert [r.run_id for r in store.unfinished_runs()] == ["exp_1_aaaa"]
    assert [r.run_id for r in store.list_runs("exp")] == ["exp_1_aaaa"]
    assert {r.run_id for r in store.list_runs("exp", include_children=True)} == {"exp_1_aaaa", "kid_1", "kid_2"}
    assert store.list_experiments() == [("exp", 1)]
    with pytest.raises(ValueError, match="exists already"):
        store.create_child_run("kid_1", "exp_1_aaaa")
    with pytest.raises(ValueError, match=r"run id '\.\./x'"):
        store.create_child_run("../x", "exp_1_aaaa")


def test_events_set_a_child_runs_status_but_not_a_submitted_runs(store: SqliteRunStore) -> None:
    store.set_status("exp_1_aaaa", RunStatus.RUNNING)
    store.create_child_run("kid_1", "exp_1_aaaa")
    assert store.post_event("kid_1", "Start").status is RunStatus.RUNNING
    done = store.post_event("kid_1", "Completed")
    assert done.status is RunStatus.COMPLETED and done.started is not None and done.ended is not None
    failed = store.post_event("exp_1_aaaa", "Error", error={"code": "UserError", "message": "boom"})
    assert failed.status is RunStatus.RUNNING and failed.error == {"code": "UserError", "message": "boom"}
    assert store.post_event("exp_1_aaaa", "Completed").status is RunStatus.RUNNING
    assert [name for name, _ in store.get_events("exp_1_aaaa")] == ["Error", "Completed"]
    with pytest.raises(ValueError, match="'Exec'"):
        store.post_event("kid_1", "Exec")


def test_tags_merge_and_a_null_value_is_a_tag_without_a_value(store: SqliteRunStore) -> None:
    store.set_tags("exp_1_aaaa", {"a": "1", "b": "2"})
    store.set_tags("exp_1_aaaa", {"b": "3", "flag": None})
    assert store.get_run("exp_1_aaaa").tags == {"a": "1", "b": "3", "flag": None}


def test_add_metrics_skips_a_bad_value_and_a_failed_insert_rolls_back(store: SqliteRunStore) -> None:
    rejected = store.add_metrics("exp_1_aaaa", [_metric(value=0.5, step=1), _metric(value=2 ** 80)])
    assert [r.position for r in rejected] == [1]
    db = store._db

    def failing_executemany(self: sqlite3.Connection, sql: str, rows: Any) -> Any:
        raise sqlite3.OperationalError("disk I/O error")

    store._db = _Proxy(db, failing_executemany)  # type: ignore[assignment]
    with pytest.raises(sqlite3.OperationalError):
        store.add_metrics("exp_1_aaaa", [_metric(value=9.0)])
    store._db = db
    assert not db.in_transaction
    assert [(m.value, m.step) for m in store.get_metrics("exp_1_aaaa")] == [(0.5, 1)]
    assert store.get_metric_names("exp_1_aaaa") == ["loss"]


def test_a_new_database_has_no_history_offset_column(tmp_path: Path) -> None:
    SqliteRunStore(tmp_path / "new.db").close()
    columns = {row[1] for row in sqlite3.connect(tmp_path / "new.db").execute("PRAGMA table_info(runs)")}
    assert "history_offset" not in columns and {"run_id", "parent_run_id", "root_run_id"} <= columns


def test_events_per_run_are_bounded_but_a_child_run_can_still_start_and_end_once(
        store: SqliteRunStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "MAX_RUN_EVENTS", 3)
    store.set_status("exp_1_aaaa", RunStatus.RUNNING)
    store.create_child_run("kid_1", "exp_1_aaaa")
    for _ in range(3):
        store.post_event("kid_1", "Heartbeat")
    with pytest.raises(RunEventLimitError, match="run kid_1 already has 3 run events"):
        store.post_event("kid_1", "Warning")
    assert store.post_event("kid_1", "Start").status is RunStatus.RUNNING
    for again in ("Start", "CancelRequested", "Heartbeat"):  # none of these moves the child on
        with pytest.raises(RunEventLimitError):
            store.post_event("kid_1", again)
    ended = store.post_event("kid_1", "Failed", error={"code": "UserError", "message": "boom"})
    assert ended.status is RunStatus.FAILED and ended.error == {"code": "UserError", "message": "boom"}
    with pytest.raises(RunEventLimitError):
        store.post_event("kid_1", "Completed")
    assert [name for name, _ in store.get_events("kid_1")] == ["Heartbeat"] * 3 + ["Start", "Failed"]
    assert [status for status, _ in store.get_run("kid_1").status_history] == ["NotStarted", "Running", "Failed"]

    for _ in range(3):  # a submitted run's events never set its status: nothing is taken past the bound
        store.post_event("exp_1_aaaa", "Heartbeat")
    with pytest.raises(RunEventLimitError, match="exp_1_aaaa"):
        store.post_event("exp_1_aaaa", "Completed")
    assert not store._db.in_transaction


def test_a_repeated_start_event_adds_no_status_history(store: SqliteRunStore) -> None:
    store.create_child_run("kid_1", "exp_1_aaaa")
    for _ in range(5):
        store.post_event("kid_1", "Start")
    assert [status for status, _ in store.get_run("kid_1").status_history] == ["NotStarted", "Running"]


@pytest.mark.parametrize(("error", "named"), [
    ({"code": "UserError", "message": "m" * (MAX_ERROR_MESSAGE + 1)}, "error message="),
    ({"code": "c" * 256, "message": "m"}, "error code="),
    ({"code": "UserError", "message": "m", "details": ["x"] * 1000}, "exactly 'code' and 'message'"),
    ({"code": "UserError", "message": {"nested": "m"}}, "error message="),
])
def test_an_error_over_its_bounds_is_refused_naming_the_field(store: SqliteRunStore, error: dict[str, Any],
                                                               named: str) -> None:
    with pytest.raises(ValueError, match=named):
        store.post_event("exp_1_aaaa", "Error", error=error)
    assert store.get_run("exp_1_aaaa").error is None and store.get_events("exp_1_aaaa") == []


def test_the_run_keeps_its_whole_error_and_each_event_a_bounded_copy(store: SqliteRunStore, tmp_path: Path) -> None:
    message = "m" * MAX_ERROR_MESSAGE
    for _ in range(3):
        store.post_event("exp_1_aaaa", "Error", error={"code": "UserError", "message": message})
    assert store.get_run("exp_1_aaaa").error == {"code": "UserError", "message": message}
    stored = [json.loads(row[0]) for row in sqlite3.connect(tmp_path / "runs.db").execute(
        "SELECT data FROM run_events")]
    assert [len(data["message"]) for data in stored] == [MAX_EVENT_MESSAGE] * 3
