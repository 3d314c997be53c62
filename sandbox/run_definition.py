"""A run as plain data: what the facade submits, the service stores and the runner executes.

No azureml shapes here: the facade turns a ``ScriptRunConfig`` into a :class:`RunDefinition`
(arguments keep Azure's ``DatasetConsumptionConfig:<name>`` placeholders), and everything after
the submit works on this.
"""

from __future__ import annotations

import json
import math
import re
import time
import uuid
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from sandbox.fake_mount import InputSpec

PLACEHOLDER = re.compile(r"^DatasetConsumptionConfig:(?P<name>[a-zA-Z_][a-zA-Z0-9_]*)$")

# Azure's own rules (azureml/_base_sdk_common/common.py, azureml/data/_config_helper.py, the ARM and run
# history REST patterns), in ASCII: run ids become docker container names and labels.
RUN_ID = re.compile(r"[A-Za-z0-9][\w\-.]{0,254}", re.ASCII)
EXPERIMENT_NAME = re.compile(r"[a-zA-Z0-9][\w\-]{0,254}", re.ASCII)
EXPERIMENT_NAME_RULE = ("Experiment name must be between 1 and 255 characters long. Its first character has to be "
                        "alphanumeric, and the rest may contain hyphens and underscores. No whitespace is allowed.")
WORKSPACE_NAME = re.compile(r"[a-zA-Z0-9][\w\-]{2,32}", re.ASCII)
RESOURCE_GROUP = re.compile(r"[-\w._()]{1,90}", re.ASCII)
SUBSCRIPTION_ID = re.compile(r"[A-Za-z0-9][\w\-]{0,63}", re.ASCII)
SNAPSHOT_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
INPUT_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]{0,254}", re.ASCII)
ENVIRONMENT_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}", re.ASCII)
INPUT_MODES = ("mount", "download", "direct")
#: docker's reference grammar (distribution/reference): [registry[:port]/]path[:tag][@digest].
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
IMAGE_REFERENCE = re.compile(
    rf"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?/)?"
    rf"{_COMPONENT}(?:/{_COMPONENT})*(?::[\w][\w.-]{{0,127}})?(?:@sha256:[0-9a-f]{{64}})?", re.ASCII)
INTERPRETER = re.compile(r"[\w./+-]{1,255}", re.ASCII)
SHM_SIZE = re.compile(r"(?P<number>[0-9]{1,13})(?P<unit>[bkmg]?)", re.ASCII | re.IGNORECASE)
# The service's own bounds (Azure states none for these; they keep one request from filling the host).
MAX_IMAGE_LENGTH = 255
MAX_ARGUMENTS = 1000
MAX_TEXT = 32 * 1024
MAX_ENTRIES = 1000
MAX_ENVIRONMENT_BYTES = 1024 * 1024
MAX_RUN_DURATION_SECONDS = 365 * 24 * 3600
MAX_SHM_BYTES = 1024 ** 4
MAX_INPUTS = 100


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
        """Check every field with Azure's rules (or a stated bound); a bad one is a ValueError naming the field.

        ``from_dict`` (every submit the service receives) and the store (before it keeps a run) call it, so
        a token holder cannot put a path, a second docker option or an unbounded value into a run.
        """
        _check_name("run_id", self.run_id, RUN_ID, "a letter or digit, then up to 254 letters, digits, '_', '-' "
                    "or '.'")
        _check_name("experiment", self.experiment, EXPERIMENT_NAME, EXPERIMENT_NAME_RULE)
        _check_workspace(self.workspace)
        _check_name("snapshot_id", self.snapshot_id, SNAPSHOT_ID, "a uuid4 in lowercase hex (as the client makes it)")
        if self.script is None and not self.command:
            raise ValueError("a run needs a script or a command")
        if self.script is not None:
            _check_relative_path("script", self.script)
        if self.command is not None:
            _check_list("command", self.command, MAX_ARGUMENTS, (str,))
        _check_list("arguments", self.arguments, MAX_ARGUMENTS, (str, int, float, bool, type(None)))
        _check_text("compute_target", self.compute_target, 255)
        _check_json_object("environment", self.environment, MAX_ENVIRONMENT_BYTES)
        _check_environment_variables("environment.environmentVariables",
                                     self.environment.get("environmentVariables") or {}, (str, int, float, bool))
        _check_name("image", self.image, IMAGE_REFERENCE, "a docker image reference of at most "
                    f"{MAX_IMAGE_LENGTH} characters, like 'aml-sandbox/azureml:3f2a...' or "
                    "'mcr.microsoft.com/azureml/base:latest'", MAX_IMAGE_LENGTH)
        _check_name("interpreter", self.interpreter, INTERPRETER, "a program name or absolute path in the image "
                    "(no spaces), like 'python' or '/opt/conda/bin/python'")
        _check_inputs(self.inputs)
        _check_environment_variables("environment_variables", self.environment_variables)
        mrd = self.max_run_duration_seconds
        if mrd is not None and (not isinstance(mrd, int) or isinstance(mrd, bool)
                                or not 0 < mrd <= MAX_RUN_DURATION_SECONDS):
            raise ValueError(f"max_run_duration_seconds={_show(mrd)} must be a whole number of seconds from 1 to "
                             f"{MAX_RUN_DURATION_SECONDS} (365 days), or None for no limit")
        if self.shm_size is not None:
            _check_shm_size(self.shm_size)
        validate_tags("tags", self.tags)
        validate_tags("properties", self.properties)
        _check_text("submitted_by", self.submitted_by, 255)
        created = self.created_utc
        if not isinstance(created, int | float) or isinstance(created, bool) or not 0 <= created < 1e11:
            raise ValueError(f"created_utc={_show(created)} must be a unix time in seconds")

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


# -- field rules ------------------------------------------------------------------------------

def _show(value: Any) -> str:
    """The value as the message quotes it: its repr, cut to 80 characters."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_text(name: str, value: Any, limit: int) -> None:
    if not isinstance(value, str) or not value or len(value) > limit:
        raise ValueError(f"{name}={_show(value)} must be a non-empty string of at most {limit} characters")
    if any(c in value for c in "\x00\r\n\x1b"):
        raise ValueError(f"{name}={_show(value)} must not contain NUL, newlines or escape characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{name}={_show(value)} is not valid UTF-8 text ({exc.reason})") from None


def _check_name(name: str, value: Any, rule: re.Pattern[str], expected: str, limit: int = 255) -> None:
    if not isinstance(value, str) or len(value) > limit or not rule.fullmatch(value):
        raise ValueError(f"{name}={_show(value)} is not valid: expected {expected}")


def _check_relative_path(name: str, value: Any) -> None:
    _check_text(name, value, 1024)
    parts = value.replace("\\", "/").split("/")
    if value.startswith(("/", "\\")) or ".." in parts:
        raise ValueError(f"{name}={_show(value)} must be a path inside source_directory (relative, no '..')")


def _check_scalar(name: str, value: Any, allowed: tuple[type, ...]) -> None:
    if not isinstance(value, allowed):
        kinds = ", ".join(t.__name__ for t in allowed)
        raise ValueError(f"{name}={_show(value)} must be one of: {kinds}")
    if isinstance(value, str) and len(value) > MAX_TEXT:
        raise ValueError(f"{name}={_show(value)} is longer than {MAX_TEXT} characters")
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(f"{name}={_show(value)} is not valid UTF-8 text ({exc.reason})") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name}={_show(value)} must be a finite number (JSON has no NaN or Infinity)")


def _check_list(name: str, value: Any, limit: int, allowed: tuple[type, ...]) -> None:
    if not isinstance(value, list) or len(value) > limit:
        raise ValueError(f"{name}={_show(value)} must be a list of at most {limit} items")
    for index, item in enumerate(value):
        _check_scalar(f"{name}[{index}]", item, allowed)


def _check_json_object(name: str, value: Any, limit: int) -> None:
    if not isinstance(value, dict):
        raise ValueError(f"{name}={_show(value)} must be a JSON object")
    try:
        size = len(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} is not plain JSON: {exc}") from None
    if size > limit:
        raise ValueError(f"{name} is {size} bytes of JSON; at most {limit} are accepted")


def _check_environment_variables(name: str, value: Any, allowed: tuple[type, ...] = (str,)) -> None:
    if not isinstance(value, dict) or len(value) > MAX_ENTRIES:
        raise ValueError(f"{name}={_show(value)} must be a mapping of at most {MAX_ENTRIES} variables")
    for key, item in value.items():
        if not isinstance(key, str) or not ENVIRONMENT_VARIABLE.fullmatch(key):
            raise ValueError(f"{name}: variable name {_show(key)} is not valid: expected [A-Za-z_][A-Za-z0-9_]* "
                             "of at most 255 characters")
        _check_scalar(f"{name}[{key!r}]", item, allowed)
        if "\x00" in str(item):
            raise ValueError(f"{name}[{key!r}]={_show(item)} must not contain NUL")


def _check_workspace(value: Any) -> None:
    if not isinstance(value, dict):
        raise ValueError(f"workspace={_show(value)} must be an object with name, subscription_id, resource_group")
    unknown = sorted(set(value) - {"name", "subscription_id", "resource_group", "id"})
    if unknown:
        raise ValueError(f"workspace has unknown fields {unknown}; known: id, name, resource_group, subscription_id")
    _check_name("workspace.name", value.get("name"), WORKSPACE_NAME,
                "Workspace name must be between 3 and 33 characters long. Its first character has to be "
                "alphanumeric, and the rest may contain hyphens and underscores. No whitespace is allowed.")
    _check_name("workspace.subscription_id", value.get("subscription_id"), SUBSCRIPTION_ID,
                "a subscription id (a GUID; letters, digits, '-' and '_' up to 64 characters)")
    _check_name("workspace.resource_group", value.get("resource_group"), RESOURCE_GROUP,
                "1 to 90 letters, digits, '-', '_', '.', '(' or ')' (Azure's resource group rule)")
    if value.get("id") is not None:
        _check_name("workspace.id", value["id"], SUBSCRIPTION_ID, "a workspace id (a GUID)")


def _check_inputs(inputs: Any) -> None:
    if not isinstance(inputs, list) or len(inputs) > MAX_INPUTS:
        raise ValueError(f"inputs={_show(inputs)} must be a list of at most {MAX_INPUTS} inputs")
    seen: set[str] = set()
    for index, item in enumerate(inputs):
        where = f"inputs[{index}]"
        if not isinstance(item, dict):
            raise ValueError(f"{where}={_show(item)} must be an object")
        name = item.get("name")
        _check_name(f"{where}.name", name, INPUT_NAME,
                    "an input name: letters, digits and '_', not starting with a digit (Azure's as_named_input "
                    "rule; it becomes an environment variable)")
        if name in seen:
            raise ValueError(f"{where}.name={name!r} is used by two inputs; give each as_named_input a different name")
        seen.add(name)
        if item.get("mode") not in INPUT_MODES:
            raise ValueError(f"{where}.mode={_show(item.get('mode'))} must be one of {list(INPUT_MODES)}")
        sources = item.get("sources")
        if not isinstance(sources, list) or not sources or len(sources) > MAX_ENTRIES:
            raise ValueError(f"{where}.sources={_show(sources)} must be a list of 1 to {MAX_ENTRIES} datastore paths")
        for number, source in enumerate(sources):
            if not isinstance(source, dict) or set(source) != {"datastore", "container", "path"}:
                raise ValueError(f"{where}.sources[{number}]={_show(source)} must be "
                                 "{'datastore': str, 'container': str, 'path': str}")
            for key in ("datastore", "container"):
                _check_text(f"{where}.sources[{number}].{key}", source[key], 255)
            if not isinstance(source["path"], str) or len(source["path"]) > 1024 or "\x00" in source["path"]:
                raise ValueError(f"{where}.sources[{number}].path={_show(source['path'])} must be a string of at "
                                 "most 1024 characters")
        for key in ("dataset_id", "dataset_str"):
            _check_scalar(f"{where}.{key}", item.get(key), (str,))
        path_on_compute = item.get("path_on_compute")
        if path_on_compute is not None:
            _check_text(f"{where}.path_on_compute", path_on_compute, 1024)
            if ".." in path_on_compute.split("/") or any(c in path_on_compute for c in ":,\\"):
                raise ValueError(f"{where}.path_on_compute={_show(path_on_compute)} must be a plain path on the "
                                 "compute (no '..', ':', ',' or backslash)")
        unknown = sorted(set(item) - {"name", "mode", "sources", "dataset_id", "dataset_str", "path_on_compute"})
        if unknown:
            raise ValueError(f"{where} has unknown fields {unknown}")


def _check_shm_size(value: Any) -> None:
    match = SHM_SIZE.fullmatch(value) if isinstance(value, str) else None
    scale = {"": 1, "b": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}
    if match is None or not 0 < int(match["number"]) * scale[match["unit"].lower()] <= MAX_SHM_BYTES:
        raise ValueError(f"shm_size={_show(value)} must be a docker size like '2g' or '512m' (a number with b, k, "
                         "m or g) of at most 1024g")


def validate_tags(name: str, value: Any) -> dict[str, Any]:
    """Tags or properties: at most 1000 string keys of 1 to 255 characters; values strings (at most 32 KiB),
    numbers, booleans or None. Returns the mapping; raises ValueError naming ``name`` and the bad entry."""
    if not isinstance(value, dict) or len(value) > MAX_ENTRIES:
        raise ValueError(f"{name}={_show(value)} must be a mapping of at most {MAX_ENTRIES} entries")
    for key, item in value.items():
        if not isinstance(key, str) or not 0 < len(key) <= 255:
            raise ValueError(f"{name}: key {_show(key)} must be a string of 1 to 255 characters")
        _check_scalar(f"{name}[{_show(key)}]", key, (str,))
        _check_scalar(f"{name}[{_show(key)}]", item, (str, int, float, bool, type(None)))
    return value
