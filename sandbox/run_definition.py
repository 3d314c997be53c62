"""A run as plain data: what the facade submits, the service stores and the runner executes.

No azureml shapes here: the facade turns a ``ScriptRunConfig`` into a :class:`RunDefinition`
(arguments keep Azure's ``DatasetConsumptionConfig:<name>`` placeholders), and everything after
the submit works on this.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from sandbox.fake_mount import InputSpec

PLACEHOLDER = re.compile(r"^DatasetConsumptionConfig:(?P<name>[a-zA-Z_][a-zA-Z0-9_]*)$")


class RunStatus(StrEnum):
    """Azure ML's run statuses, with Azure's own strings."""

    NOT_STARTED = "NotStarted"
    STARTING = "Starting"
    PREPARING = "Preparing"
    QUEUED = "Queued"
    RUNNING = "Running"
    FINALIZING = "Finalizing"
    CANCEL_REQUESTED = "CancelRequested"
    COMPLETED = "Completed"
    FAILED = "Failed"
    CANCELED = "Canceled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELED})


def new_run_id(experiment: str) -> str:
    """``<experiment>_<unix seconds>_<8 hex>``, as azureml-core makes them for ScriptRunConfig submits."""
    return f"{experiment}_{int(time.time())}_{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class RunDefinition:
    run_id: str
    experiment: str
    workspace: dict[str, str]
    script: str | None
    arguments: list[Any]
    compute_target: str
    environment: dict[str, Any]
    image: str
    snapshot_id: str
    interpreter: str = "python"
    command: list[str] | None = None
    inputs: list[dict[str, Any]] = field(default_factory=list)
    environment_variables: dict[str, str] = field(default_factory=dict)
    max_run_duration_seconds: int | None = None
    shm_size: str | None = None
    tags: dict[str, Any] = field(default_factory=dict)
    properties: dict[str, Any] = field(default_factory=dict)
    submitted_by: str = "local"
    created_utc: float = field(default_factory=time.time)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunDefinition:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown run definition fields {sorted(unknown)}")
        missing = {"run_id", "experiment", "workspace", "script", "arguments", "compute_target", "environment",
                   "image", "snapshot_id"} - set(data)
        if missing:
            raise ValueError(f"run definition lacks {sorted(missing)}")
        definition = cls(**data)
        definition.validate()
        return definition

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][\w\-.]{0,254}", self.run_id):
            raise ValueError(f"run_id {self.run_id!r} is not a valid run id")
        if not self.script and not self.command:
            raise ValueError("a run needs a script or a command")
        if not isinstance(self.arguments, list):
            raise ValueError("arguments must be a list")
        for item in self.inputs:
            InputSpec.from_dict(item)

    @property
    def input_specs(self) -> list[InputSpec]:
        return [InputSpec.from_dict(item) for item in self.inputs]

    def display_arguments(self) -> list[str]:
        """Arguments as the driver log's "Preparing to call script" line shows them: ``$input``, numbers as strings."""
        shown = []
        for arg in self.arguments:
            text = _stringify(arg)
            match = PLACEHOLDER.match(text)
            shown.append(f"${match['name']}" if match else text)
        return shown

    def template_arguments(self) -> list[str]:
        return [_stringify(arg) for arg in self.arguments]

    @property
    def portal_path(self) -> str:
        ws = self.workspace
        return (f"/runs/{self.run_id}?wsid=/subscriptions/{ws['subscription_id']}/resourcegroups/"
                f"{ws['resource_group']}/workspaces/{ws['name']}")



def _stringify(value: Any) -> str:
    """Numbers travel as JSON numbers and reach the script as strings (``0.003`` -> ``'0.003'``)."""
    return value if isinstance(value, str) else str(value)
