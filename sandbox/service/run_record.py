"""A run as the run history answers it (:class:`RunRecord`), the store's errors and experiment ids.

Split from ``store.py``: the values the store returns, with no SQL.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sandbox.run_definition import RunStatus

_EXPERIMENT_IDS = uuid.UUID("6f1c8f0e-2d1b-4c55-9a53-5a6e1d0b7c11")


def experiment_id(experiment: str) -> str:
    """The experiment's id (``AZUREML_EXPERIMENT_ID``, ``experimentids/{id}`` routes): a uuid fixed by its name."""
    return str(uuid.uuid5(_EXPERIMENT_IDS, experiment))


class RunNotFoundError(KeyError):
    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(f"Run {run_id!r} was not found in the local workspace's run history")


class PropertyConflictError(ValueError):
    """A property that is set already was given another value (Azure's properties are immutable)."""

    def __init__(self, keys: list[str]) -> None:
        self.keys = keys
        super().__init__(f"Properties are immutable once set: {keys}")


class ChildRunLimitError(ValueError):
    """A run tree already holds as many child runs as one root run may have."""

    def __init__(self, root_run_id: str, limit: int) -> None:
        self.root_run_id = root_run_id
        self.limit = limit
        super().__init__(f"run {root_run_id} already has {limit} child runs, the most one run (with all its "
                         f"descendants) may have in the local workspace; log into fewer child runs")


class RunEventLimitError(ValueError):
    """A run has posted as many run events as one run may keep."""

    def __init__(self, run_id: str, limit: int) -> None:
        self.run_id = run_id
        self.limit = limit
        super().__init__(f"run {run_id} already has {limit} run events, the most one run may post in the local "
                         "workspace; only the event that starts or ends a child run is still taken (post "
                         "fewer Heartbeat, Warning and Error events)")


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
    number: int = 0
    status_history: list[tuple[str, float]] = field(default_factory=list)
    parent_run_id: str | None = None
    root_run_id: str = ""
    name: str | None = None
    #: Loads the run's direct child runs when :attr:`children` is first read (the store sets it; a record
    #: read for a route that does not list children never loads them).
    children_loader: Callable[[], list[RunRecord]] | None = field(default=None, repr=False, compare=False)
    _children: list[RunRecord] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.root_run_id = self.root_run_id or self.run_id

    @property
    def children(self) -> list[RunRecord]:
        """The run's direct child runs, oldest first (at most the store's ``MAX_LISTED_CHILDREN``)."""
        if self._children is None:
            self._children = self.children_loader() if self.children_loader is not None else []
        return self._children

    @children.setter
    def children(self, children: list[RunRecord]) -> None:
        self._children = list(children)

    @property
    def experiment_id(self) -> str:
        return experiment_id(self.experiment)

    def to_dict(self) -> dict[str, Any]:
        return {
            "runId": self.run_id,
            "experiment": self.experiment,
            "experimentId": self.experiment_id,
            "parentRunId": self.parent_run_id,
            "rootRunId": self.root_run_id,
            "name": self.name,
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
            "children": [{"runId": c.run_id, "name": c.name, "status": str(c.status), "runNumber": c.number}
                         for c in self.children],
        }


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(timestamp)) + f".{int(timestamp % 1 * 1e6):06d}Z"
