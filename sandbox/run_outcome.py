"""How a run ended: its final status and Azure's error details, from how its container stopped and what it recorded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sandbox.config import ComputeDefinition
from sandbox.run_definition import RunDefinition, RunStatus


@dataclass
class RunOutcome:
    status: RunStatus
    exit_code: int | None = None
    error: dict[str, Any] | None = None
    #: A line the service adds to the driver log (the run itself could not say it).
    note: str | None = None


def classify(definition: RunDefinition, compute: ComputeDefinition, exit_code: int, oom: bool,
             stop_reason: str | None, errors: list[dict[str, Any]], *, stop_message: str | None = None) -> RunOutcome:
    """The final status and error of a run from how its container ended and what the script recorded.

    ``stop_reason`` is why the service stopped the container (``"canceled"``, ``"timeout"``, ``"disk"`` with
    ``stop_message`` saying what was over the limit), or None.
    """
    if stop_reason == "disk":
        message = stop_message or "The run was stopped: it wrote more than the sandbox allows."
        return RunOutcome(RunStatus.FAILED, exit_code, {"code": "UserError", "message": message,
                                                          "type": "DiskFull"}, message)
    if stop_reason == "canceled":
        return RunOutcome(RunStatus.CANCELED, exit_code,
                          {"code": "UserError", "message": "The run was canceled by the user."},
                          "The run was canceled. Finalizing run...")
    if stop_reason == "timeout":
        message = (f"The run exceeded max_run_duration_seconds={definition.max_run_duration_seconds} and was "
                   "stopped.")
        return RunOutcome(RunStatus.FAILED, exit_code, {"code": "UserError", "message": message}, message)
    if oom:
        limit = compute.memory_bytes / 1024**3
        message = (f"The run was killed because it ran out of memory: it exceeded the {limit:g} GiB memory "
                   f"limit of compute target '{compute.name}' ({compute.vm_size}), exit code "
                   f"{exit_code} (OOMKilled). Use less memory or a compute target with a larger VM size.")
        return RunOutcome(RunStatus.FAILED, exit_code, {"code": "UserError", "message": message,
                                                          "type": "OutOfMemory"}, message)
    explicit = [e for e in errors if e.get("explicit")]
    if exit_code == 0 and not explicit:
        return RunOutcome(RunStatus.COMPLETED, 0)
    error = (errors or [{}])[-1]
    note = None
    if error.get("type") == "DatasetMountValidationException":
        message = f"Dataset initialization failed: DatasetMountValidationException: {error.get('message', '')}"
    elif error.get("type"):
        message = f"User program failed with {error['type']}: {error.get('message', '')}"
    elif error.get("explicit"):
        message = str(error.get("message", "The run was marked as failed"))
    elif exit_code in (137, 143, -1):
        message = (f"The run's container was stopped from outside (exit code {exit_code}) before the script "
                   "finished.")
        note = message
    else:
        message = f"User program failed with exit code {exit_code}"
    details = {"code": error.get("code", "UserError"), "message": message}
    if error.get("type"):
        details["type"] = error["type"]
    if error.get("traceback"):
        details["traceback"] = error["traceback"]
    return RunOutcome(RunStatus.FAILED, exit_code, details, note)
