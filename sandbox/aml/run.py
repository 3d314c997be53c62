"""``Run``: a submitted run, seen from the control script, through the workspace service's API.

Ids, ``repr``, statuses, ``get_details()``, ``wait_for_completion(show_output=True)`` (the driver log
streamed in Azure's frame, ``ActivityFailedException`` on failure, Ctrl-C stops the streaming and not
the run), ``get_metrics()``, files, ``cancel()``, ``get_portal_url()`` follow azureml-core (PARITY.md 4).
``Run(experiment, run_id)`` finds a run from any process. ``Run.get_context()`` outside a run is
azureml-core's own offline run; inside a sandbox run the runtime answers it.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from typing import IO, TYPE_CHECKING, Any

from sandbox.aml.exceptions import ActivityFailedException, ExperimentExecutionException, UserErrorException
from sandbox.errors import ServiceError
from sandbox.run_definition import TERMINAL, RunStatus
from sandbox.service.client import ServiceClient

if TYPE_CHECKING:  # pragma: no cover
    from sandbox.aml.experiment import Experiment

_LOG_PATTERN = re.compile(r"(user_logs/std_log[\D]*[0]*(?:_ps)?\.txt)|(azureml-logs/[\d]{2}.+\.txt)")
DETAILS_URI = "https://aka.ms/azureml-run-troubleshooting"
POLL_SECONDS = 1.0


def _client(experiment: Experiment) -> ServiceClient:
    return ServiceClient(experiment.workspace.service_context)


class Run:
    """A run of an experiment in the local workspace (``azureml.core.Run``)."""

    def __init__(self, experiment: Experiment, run_id: str, outputs: Any = None, **kwargs: Any) -> None:
        self._experiment = experiment
        self._run_id = run_id
        self._client = _client(experiment)
        record = kwargs.pop("_record", None)
        if record is None:
            try:
                record = self._client.get_run(run_id)
            except ServiceError as exc:
                if exc.status_code == 404:
                    raise UserErrorException(f"Run {run_id!r} was not found in experiment "
                                             f"{experiment.name!r} of the local workspace.") from exc
                raise
        if record.get("experiment") != experiment.name:
            raise UserErrorException(f"Run {run_id!r} belongs to experiment {record.get('experiment')!r}, "
                                     f"not {experiment.name!r}.")
        self._record = record

    # -- offline context ---------------------------------------------------------------------

    @classmethod
    def get_context(cls, allow_offline: bool = True, used_for_context_manager: bool = False, **kwargs: Any) -> Any:
        """Outside a submitted run: azureml-core's offline run, unchanged."""
        from azureml.core import Run as AzureRun

        return AzureRun.get_context(allow_offline=allow_offline, used_for_context_manager=used_for_context_manager,
                                    **kwargs)

    # -- identity ----------------------------------------------------------------------------

    @property
    def id(self) -> str:
        return self._run_id

    @property
    def experiment(self) -> Experiment:
        return self._experiment

    @property
    def type(self) -> str:
        return "azureml.scriptrun"

    @property
    def number(self) -> int:
        return int(self._record.get("runNumber") or 0)

    @property
    def status(self) -> str:
        return self.get_status()

    def _refresh(self) -> dict[str, Any]:
        self._record = self._client.get_run(self._run_id)
        return self._record

    def get_status(self) -> str:
        return self._refresh()["status"]

    def get_portal_url(self) -> str:
        ws = self._experiment.workspace
        return (f"{ws.service_context.service_url}/runs/{self._run_id}?wsid=/subscriptions/{ws.subscription_id}"
                f"/resourcegroups/{ws.resource_group}/workspaces/{ws.name}")

    def __repr__(self) -> str:
        return (f"Run(Experiment: {self._experiment.name},\nId: {self._run_id},\nType: {self.type},\n"
                f"Status: {self._record.get('status')})")

    def __str__(self) -> str:
        return self.__repr__()

    # -- details -----------------------------------------------------------------------------

    def get_details(self) -> dict[str, Any]:
        record = self._refresh()
        definition = record.get("definition") or {}
        files = self._client.files(self._run_id)
        details: dict[str, Any] = {
            "runId": self._run_id,
            "target": record.get("target"),
            "status": record.get("status"),
            "startTimeUtc": record.get("startTimeUtc"),
        }
        if record.get("endTimeUtc"):
            details["endTimeUtc"] = record["endTimeUtc"]
        details["services"] = {}
        details["properties"] = {
            "_azureml.ComputeTargetType": "amlcompute" if record.get("target") != "local" else "local",
            "ContentSnapshotId": definition.get("snapshot_id"),
            "azureml.runsource": "experiment",
            "ProcessInfoFile": "azureml-logs/process_info.json",
            "ProcessStatusFile": "azureml-logs/process_status.json",
            **(record.get("properties") or {}),
        }
        details["inputDatasets"] = [
            {"dataset": {"id": item["dataset_id"]},
             "consumptionDetails": {"type": "RunInput", "inputName": item["name"],
                                    "mechanism": item["mode"].capitalize()}}
            for item in definition.get("inputs", [])
        ]
        details["outputDatasets"] = []
        details["runDefinition"] = {
            "script": definition.get("script"),
            "command": definition.get("command") or "",
            "arguments": definition.get("arguments", []),
            "target": definition.get("compute_target"),
            "environment": definition.get("environment"),
            "data": {item["name"]: {"dataLocation": {"dataset": {"id": item["dataset_id"], "name": None,
                                                                  "version": None}},
                                    "mechanism": item["mode"].capitalize(), "environmentVariableName": item["name"],
                                    "pathOnCompute": item.get("path_on_compute"), "overwrite": False,
                                    "options": None}
                     for item in definition.get("inputs", [])},
            "maxRunDurationSeconds": definition.get("max_run_duration_seconds"),
        }
        details["logFiles"] = {
            name: f"{self._client.base_url}/api/runs/{self._run_id}/files/{name}"
            for name in files if _LOG_PATTERN.match(name) or name.startswith("logs/")
        }
        details["submittedBy"] = definition.get("submitted_by", "local")
        if record.get("error"):
            details["error"] = self._azure_error(record)
        return details

    @staticmethod
    def _azure_error(record: dict[str, Any]) -> dict[str, Any]:
        error = record["error"]
        return {
            "error": {"code": error.get("code", "UserError"), "message": error.get("message", ""),
                      "messageParameters": {}, "detailsUri": DETAILS_URI, "details": []},
            "time": record.get("endTimeUtc") or "0001-01-01T00:00:00.000Z",
        }

    # -- waiting -----------------------------------------------------------------------------

    def wait_for_completion(self, show_output: bool = False, wait_post_processing: bool = False,
                            raise_on_error: bool = True) -> dict[str, Any]:
        try:
            if show_output:
                self._stream_run_output(sys.stdout, raise_on_error=raise_on_error)
            else:
                while self.get_status() not in TERMINAL:
                    time.sleep(POLL_SECONDS)
                details = self.get_details()
                if details["status"] == RunStatus.FAILED and raise_on_error:
                    raise ActivityFailedException(error_details=json.dumps(details.get("error"), indent=4))
            return self.get_details()
        except KeyboardInterrupt:
            raise ExperimentExecutionException(
                "The output streaming for the run interrupted.\nBut the run is still executing on the compute "
                "target. \nDetails for canceling the run can be found here: https://aka.ms/aml-docs-cancel-run"
            ) from None

    def _stream_run_output(self, out: IO[str], raise_on_error: bool = True) -> None:
        web = self.get_portal_url()
        out.write(f"RunId: {self._run_id}\nWeb View: {web}\n")
        current: str | None = None
        offset = 0
        pending = b""
        while True:
            status = self.get_status()
            logs = sorted(name for name in self._client.files(self._run_id) if _LOG_PATTERN.match(name))
            best = logs[-1] if logs else None
            if best and best != current:
                if pending:
                    out.write(pending.decode("utf-8", "replace") + "\n")
                current, offset, pending = best, 0, b""
                out.write(f"\nStreaming {current}\n{'=' * (len(current) + 10)}\n\n")
            if current:
                data, offset, _ = self._client.read_file(self._run_id, current, offset)
                pending += data
                if b"\n" in pending:
                    complete, _, pending = pending.rpartition(b"\n")
                    out.write(complete.decode("utf-8", "replace") + "\n")
            out.flush()
            if status in TERMINAL:
                if current:  # the last bytes written before the end
                    data, offset, _ = self._client.read_file(self._run_id, current, offset)
                    pending += data
                if pending:
                    out.write(pending.decode("utf-8", "replace").rstrip("\n") + "\n")
                break
            time.sleep(POLL_SECONDS)
        out.write(f"\nExecution Summary\n=================\nRunId: {self._run_id}\nWeb View: {web}\n")
        record = self._record
        if record.get("status") == RunStatus.FAILED:
            error = self._azure_error(record) if record.get("error") else \
                "Detailed error not set on the Run. Please check the logs for details."
            if raise_on_error:
                out.flush()
                raise ActivityFailedException(error_details=json.dumps(error, indent=4))
            out.write("\nError:\n" + json.dumps(error, indent=4) + "\n")
        out.write("\n")
        out.flush()

    # -- metrics, tags, properties -----------------------------------------------------------

    def get_metrics(self, name: str | None = None, recursive: bool = False, run_type: str | None = None,
                    populate: bool = False) -> dict[str, Any]:
        metrics = {key: _non_finite_back(value) for key, value in self._client.metrics(self._run_id)["metrics"].items()}
        if name is not None:
            return {name: metrics[name]} if name in metrics else {}
        return metrics

    def get_tags(self) -> dict[str, Any]:
        return dict(self._refresh().get("tags") or {})

    def get_properties(self) -> dict[str, Any]:
        return dict(self.get_details()["properties"])

    @property
    def tags(self) -> dict[str, Any]:
        return self.get_tags()

    @property
    def properties(self) -> dict[str, Any]:
        return self.get_properties()

    def tag(self, key: str, value: Any = None) -> None:
        self.set_tags({key: value})

    def set_tags(self, tags: dict[str, Any]) -> None:
        self._record = self._client.set_tags(self._run_id, tags)

    def add_properties(self, properties: dict[str, Any]) -> None:
        try:
            self._record = self._client.add_properties(self._run_id, properties)
        except ServiceError as exc:
            raise UserErrorException(exc.message) from exc

    # -- files -------------------------------------------------------------------------------

    def get_file_names(self) -> list[str]:
        return self._client.files(self._run_id)

    def download_file(self, name: str, output_file_path: str | None = None, _validate_checksum: bool = False) -> None:
        if name not in self.get_file_names():
            raise UserErrorException(f"File {name!r} is not in run {self._run_id}; its files are "
                                     f"{self.get_file_names()}")
        target = output_file_path or os.path.basename(name)
        if os.path.isdir(target):
            target = os.path.join(target, os.path.basename(name))
        os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
        partial = f"{target}.part"
        with self._client.stream_file(self._run_id, name) as response, open(partial, "wb") as handle:
            for chunk in response.iter_bytes():
                handle.write(chunk)
        os.replace(partial, target)

    def download_files(self, prefix: str | None = None, output_directory: str | None = None,
                       output_paths: list[str] | None = None, batch_size: int = 100, append_prefix: bool = True,
                       timeout_seconds: int | None = None) -> None:
        names = [n for n in self.get_file_names() if not prefix or n.startswith(prefix)]
        base = output_directory or os.getcwd()
        for index, name in enumerate(names):
            relative = name if append_prefix or not prefix else name[len(prefix):].lstrip("/")
            target = output_paths[index] if output_paths else os.path.join(base, relative)
            self.download_file(name, target)

    # -- cancel ------------------------------------------------------------------------------

    def cancel(self) -> None:
        self._record = self._client.cancel(self._run_id)

    def complete(self) -> None:
        raise NotImplementedError("Run.complete() from the control script is not supported locally: a submitted "
                                  "run completes when its script ends")

    def fail(self, error_details: Any = None, error_code: str | None = None) -> None:
        raise NotImplementedError("Run.fail() from the control script is not supported locally; use cancel()")


_NON_FINITE = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}


def _non_finite_back(value: Any) -> Any:
    """The service sends NaN and infinities as Azure's does (``"NaN"``, ``"Infinity"``); azureml-core's
    ``get_metrics`` turns them back into floats, and so does this."""
    if isinstance(value, str):
        return _NON_FINITE.get(value, value)
    if isinstance(value, list):
        return [_non_finite_back(item) for item in value]
    if isinstance(value, dict):
        return {key: _non_finite_back(item) for key, item in value.items()}
    return value
